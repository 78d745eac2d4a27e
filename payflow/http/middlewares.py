"""Request id, bearer auth and the one error → JSON mapping; no handler builds its own error body."""

from __future__ import annotations

import asyncio
import hmac
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web

from payflow import errors, logs, tokens
from payflow.http import keys
from payflow.ratelimit import Throttled
from payflow.wechat.notify import NotificationRejected

log = logs.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AuthLevel = Literal["api", "admin", "metrics"]

_REQUEST_ID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
NOTIFY_PATH = "/v1/wechat/notify"

# Seconds a client has to send a request body once its head arrived; `serve` sets it from its limits.
BODY_TIMEOUT = web.AppKey("body_timeout", float)
DEFAULT_BODY_TIMEOUT = 15.0

_STATUS: list[tuple[type[errors.PayflowError], int]] = [
    (errors.Unauthorized, 401),
    (errors.NotFound, 404),
    (errors.IllegalTransition, 409),
    (errors.GuardRejected, 409),
    (errors.StaleState, 409),
    (errors.Conflict, 409),
    (errors.RefundExceedsPayment, 422),
    (errors.WechatRetryable, 503),
    (errors.WechatFinal, 502),
    (errors.StoreUnavailable, 503),
    (errors.NotConfigured, 503),
]


def requires(level: AuthLevel) -> Callable[[Handler], Handler]:
    """Mark a handler as needing the api token (or admin token) or the admin token."""

    def mark(handler: Handler) -> Handler:
        handler.auth = level  # type: ignore[attr-defined]
        return handler

    return mark


def _status_of(request: web.Request, exc: errors.PayflowError) -> int:
    if isinstance(exc, NotificationRejected):
        return exc.status
    if request.path == NOTIFY_PATH and isinstance(exc, errors.StoreUnavailable | errors.NotConfigured):
        return 500  # WeChat retries on any 5xx; 500 is what its documentation names
    if isinstance(exc, errors.InvalidRequest):
        return {"invalid_json": 400, "unsupported_media_type": 415}.get(exc.code, 422)
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _error(request: web.Request, status: int, code: str, message: str, **extra: Any) -> web.Response:
    if request.path == NOTIFY_PATH:
        # WeChat reads {"code": "FAIL", "message": ...}; any non-2xx makes it retry.
        return web.json_response({"code": "FAIL", "message": message}, status=status)
    body: dict[str, Any] = {"code": code, "message": message, **extra}
    return web.json_response({"error": body}, status=status)


@web.middleware
async def api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request: its id (X-Request-Id, bound to its log lines), then the body limit and bearer auth,
    then the handler; any error becomes one JSON shape. One middleware, not four: each layer costs a
    coroutine frame per request, and the notify path answers thousands per second."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if given and _REQUEST_ID.match(given) else tokens.request_id()
    with logs.bound(request_id=request_id):
        try:
            _check_body_limit(request)
            _authenticate(request)
            if request.body_exists and request.match_info.http_exception is None:  # a 404/405 stays one
                await _read_body(request)
            response = await handler(request)
        except errors.PayflowError as exc:
            response = _payflow_error(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = _http_error(request, exc)
        except Exception:
            # The trace goes to the log, never to the client.
            log.exception("request.crashed", method=request.method, path=request.path)
            response = _error(request, 500, "internal", "internal error; the request id is in X-Request-Id")
    response.headers["X-Request-Id"] = request_id
    return response


def _payflow_error(request: web.Request, exc: errors.PayflowError) -> web.Response:
    status = _status_of(request, exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, errors.InvalidRequest) and exc.field is not None:
        extra["field"] = exc.field
    if isinstance(exc, errors.WechatError) and exc.wechat_code:
        extra["wechat_code"] = exc.wechat_code
    state = getattr(exc, "state", None)
    if state is not None and status == 409:
        extra["state"] = str(state)  # what the payment is now, so the operator can decide
    if isinstance(exc, errors.RefundExceedsPayment):
        extra["refundable"] = exc.refundable  # what is left to refund
    refund = getattr(exc, "refund", None)
    if refund is not None:
        extra["out_refund_no"] = refund.out_refund_no  # stored: retry with it, or read it later
    if status >= 500:
        log.warning("request.failed", status=status, error=exc.code, message=str(exc))
    # A driver's message names hosts, ports and paths: the log has it; /readyz and WeChat get a fixed one.
    message = "store unavailable" if isinstance(exc, errors.StoreUnavailable) else str(exc)
    response = _error(request, status, exc.code, message, **extra)
    if isinstance(exc, Throttled):
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, errors.WechatRetryable) and status == 503:
        response.headers["Retry-After"] = "1"  # the same request again re-enters the kept payment
    return response


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status, exc.reason.lower().replace(" ", "_"))
    message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
    response = _error(request, exc.status, code, message)
    if "Allow" in exc.headers:  # a 405 must say what is allowed (RFC 9110)
        response.headers["Allow"] = exc.headers["Allow"]
    if exc.status == 408:
        response.force_close()  # a client too slow to send its body does not get the connection for another
    return response


def _authenticate(request: web.Request) -> None:
    route_handler = request.match_info.route.handler
    level: AuthLevel | None = getattr(route_handler, "auth", None)
    if level is None:
        return
    settings = request.app[keys.SETTINGS]
    if level == "metrics":
        if settings.metrics_token is None:
            return  # scrapes are open unless PAYFLOW_METRICS_TOKEN is set
        allowed = [settings.metrics_token, settings.admin_token]
    else:
        allowed = [settings.admin_token] if level == "admin" else [settings.api_token, settings.admin_token]
    presented = _bearer(request)
    # Compare against every configured token (constant time each) so timing says nothing about which.
    matches = [hmac.compare_digest(presented, _octets(token)) for token in allowed if token]
    if presented == b"" or not any(matches):
        raise errors.Unauthorized(f"a valid {level} bearer token is required")


def _bearer(request: web.Request) -> bytes:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return _octets(token.strip()) if scheme.lower() == "bearer" else b""


def _octets(text: str) -> bytes:
    """aiohttp decodes header bytes that are not UTF-8 to lone surrogates (and the environment does the same
    to tokens): "surrogatepass" encodes every str, one to one, so such a header compares unequal, not a 500."""
    return text.encode("utf-8", "surrogatepass")


async def _read_body(request: web.Request) -> None:
    """Read the body under a deadline, before the handler (which gets aiohttp's cached copy): a client that
    trickles it in would otherwise hold a connection and a task for as long as it likes."""
    if request.content.is_eof():
        return  # the usual case, a notification whole in the head's packets: no timer to arm and cancel
    timeout = request.app.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            await request.read()  # raises 413 past the app's client_max_size
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {timeout:g}s") from None


def _check_body_limit(request: web.Request) -> None:
    """Refuse a declared oversized body before reading it; chunked bodies hit client_max_size on read."""
    limit = request.app[keys.SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
