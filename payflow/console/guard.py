"""The console's one middleware: security headers on every answer, the sign-in gate, a CSRF check on every
POST, and every error as an HTML page (never a traceback); plus `render()` and `redirect()` for handlers."""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import structlog
from aiohttp import web

from payflow import errors, logs
from payflow.console import sessions
from payflow.http import keys, middlewares, payloads
from payflow.service import PaymentService

log = logs.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Nothing but this origin's stylesheet and script, no framing, no <base>, forms post only here.
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # console URLs name payments
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

SIGNER = web.AppKey("console_signer", sessions.Signer)  # absent while no admin token is configured
SESSION = web.RequestKey("console_session", str)  # the signed-in session's nonce

SIGN_IN = "/console/sign-in"
HOME = "/console/"


class Access(enum.Enum):
    SESSION = "session"  # signed in (the default)
    SIGN_IN = "sign_in"  # the sign-in form: its CSRF token is bound to the sign-in cookie instead
    STATIC = "static"  # the stylesheet and script: no cookie, no check


def access(level: Access) -> Callable[[Handler], Handler]:
    def mark(handler: Handler) -> Handler:
        handler.console_access = level  # type: ignore[attr-defined]
        return handler

    return mark


class SignInRequired(errors.Unauthorized):
    code = "sign_in_required"


class CsrfRefused(errors.PayflowError):
    code = "csrf_refused"


class ConsoleUnavailable(errors.NotConfigured):
    code = "console_unavailable"


@web.middleware
async def console_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await _guarded(request, handler)
    except errors.PayflowError as exc:
        response = _payflow_error(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            response = web.Response(status=exc.status, headers=exc.headers)
        else:
            response = _error_page(request, exc.status, exc.reason, _http_message(exc))
            if "Allow" in exc.headers:  # a 405 says what is allowed (RFC 9110)
                response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("console.crashed", method=request.method, path=request.path)
        response = _error_page(request, 500, "Internal error",
                               "Something went wrong on payflow's side; the log has the details.")
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    level: Access = getattr(request.match_info.handler, "console_access", Access.SESSION)
    if level is Access.STATIC:
        return await handler(request)
    if request.path == "/console":
        return redirect(HOME)
    if request.match_info.http_exception is not None:
        raise request.match_info.http_exception  # no such page (404), or not by this method (405)
    signer = request.config_dict.get(SIGNER)
    if signer is None:
        raise ConsoleUnavailable("the console is off because PAYFLOW_ADMIN_TOKEN is not set: it signs in with "
                                 "the admin token")
    now = service(request).now()
    if level is Access.SESSION:
        session = signer.unsign("session", request.cookies.get(sessions.SESSION_COOKIE), now=now)
        nonce = session.get("n") if session else None
        if not isinstance(nonce, str):
            if request.method in ("GET", "HEAD"):
                return redirect(f"{SIGN_IN}?next={quote(request.path_qs, safe='/')}")
            raise SignInRequired("your console session has ended (or never began): sign in again")
        request[SESSION] = nonce
    if request.method == "POST":
        await _check_csrf(request, signer, level, now)
    return await handler(request)


async def _check_csrf(request: web.Request, signer: sessions.Signer, level: Access, now: dt.datetime) -> None:
    """Every form carries a token bound to the session (or, signing in, to the sign-in cookie). A cross-site
    POST could not read it; SameSite=Strict and Sec-Fetch-Site are further locks on the same door."""
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise CsrfRefused("this form was sent from another site")
    if level is Access.SESSION:
        nonce = request[SESSION]
    else:
        pre = signer.unsign("sign-in", request.cookies.get(sessions.PRE_COOKIE), now=now)
        found = pre.get("n") if pre else None
        if not isinstance(found, str):
            raise CsrfRefused("this sign-in form has expired: load the sign-in page again")
        nonce = found
    form = await request.post()
    given = form.get("csrf")
    if not isinstance(given, str) or not signer.csrf_ok(nonce, given):
        raise CsrfRefused("this form's security token is missing or stale: load the page again and resend")


def service(request: web.Request) -> PaymentService:
    return request.config_dict[keys.SERVICE]


def signer(request: web.Request) -> sessions.Signer:
    """The cookie signer; the middleware has already refused every request while there is none."""
    return request.config_dict[SIGNER]


def render(request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200) -> web.Response:
    """A page, with what every page needs: the session's CSRF token and the time now."""
    signer = request.config_dict.get(SIGNER)
    nonce = request.get(SESSION)
    base = {"csrf": signer.csrf(nonce) if signer is not None and nonce is not None else "",
            "signed_in": nonce is not None, "now": _now(request), "path": request.path}
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)


def redirect(location: str) -> web.Response:
    """303 See Other: after a POST the browser GETs the page (reloading it does not resend the form)."""
    return web.Response(status=303, headers={"Location": location})


_SAFE_NEXT = re.compile(r"^/console/[^\\]*$")


def safe_next(value: object) -> str:
    """Where to go after signing in: a console page of this origin, never anywhere else (`//evil`, `/\\evil`)."""
    if isinstance(value, str) and _SAFE_NEXT.match(value) and not value.startswith("//"):
        return value
    return HOME


def _now(request: web.Request) -> dt.datetime:
    try:
        return service(request).now()
    except KeyError:  # before the service context ran (the app is starting); only an error page gets here
        return dt.datetime.now(dt.UTC)


def _payflow_error(request: web.Request, exc: errors.PayflowError) -> web.Response:
    if isinstance(exc, SignInRequired):
        status = 401
    elif isinstance(exc, CsrfRefused):
        status = 403
    else:
        status = middlewares._status_of(request, exc)  # the admin API's mapping, so both answer alike
    if status >= 500:
        log.warning("console.failed", status=status, error=exc.code, message=str(exc))
    message = "The store is unavailable; try again shortly." if isinstance(exc, errors.StoreUnavailable) else str(exc)
    return _error_page(request, status, _TITLES.get(status, "Error"), message,
                       state=getattr(exc, "state", None))


_TITLES = {401: "Sign-in required", 403: "Refused", 404: "Not found", 409: "Not applicable",
           413: "Too large", 422: "Invalid input", 502: "WeChat Pay refused", 503: "Unavailable"}


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "There is no such console page."
    if exc.status == 405:
        return f"{exc.reason}: this page does not take that method."
    return exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason


def _error_page(request: web.Request, status: int, title: str, message: str, *, state: object = None) -> web.Response:
    back = HOME
    number = request.match_info.get("out_trade_no", "")
    if payloads.OUT_TRADE_NO.match(number):
        back = f"/console/payments/{number}"
    context = {"status": status, "title": title, "message": message, "back": back,
               "state": str(state) if state is not None else None,
               "request_id": structlog.contextvars.get_contextvars().get("request_id"),
               "sign_in": status == 401}
    try:
        return render(request, "error.html", context, status=status)
    except Exception:  # the page itself failed: a plain answer still says what happened, and nothing more
        log.exception("console.error_page_failed", status=status)
        return web.Response(status=status, text=f"{status} {title}", content_type="text/plain")
