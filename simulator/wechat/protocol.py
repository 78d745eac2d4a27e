"""APIv3 wire rules on the WeChat side: request authentication, signed answers, error bodies
and `Request-ID`s (WECHATPAY_V3.md §1, §2, §7)."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from payflow.devkeys import KeySet
from payflow.wechat import crypto
from simulator.wechat.signing import SigningKey

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
REQUEST_SKEW = 300

# Numeric suffixes of Request-ID (§2.1, SK-TROUBLE's top-20 list where known).
_NUMERIC_CODES = {
    "PARAM_ERROR": 268435461,
    "SIGN_ERROR": 268443699,
    "FREQUENCY_LIMITED": 268447840,
    "ORDERPAID": 268449538,
    "INVALID_REQUEST": 268498688,
    "ORDER_NOT_EXIST": 268512771,
}
_OTHER_ERROR = 268435456


class ApiError(Exception):
    """An APIv3 error answer: status, `code`, `message` and the optional `detail` of §7.1."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail: dict[str, Any] | None = None
        if field is not None:
            self.detail = {"field": field, "issue": message, "location": location or "body"}
            if value is not None:
                self.detail["value"] = value

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return body


def param_error(field: str, message: str, value: Any = None, location: str = "body") -> ApiError:
    return ApiError(400, "PARAM_ERROR", message, field=field, value=value, location=location)


def request_id(code: str | None = None) -> str:
    suffix = 0 if code is None else _NUMERIC_CODES.get(code, _OTHER_ERROR)
    return f"{secrets.token_hex(22).upper()}-{suffix}"


def check_headers(request: web.Request, keys: KeySet, *, known_serial: Callable[[str], bool] | None = None) -> None:
    """The HTTP-level rules of §1.4; WeChat checks these before the signature. `known_serial` says whether a
    `Wechatpay-Serial` names one of WeChat's keys (default: the public key only)."""
    if not request.headers.get("Accept") or not request.headers.get("User-Agent"):
        raise ApiError(400, "INVALID_REQUEST", "Http头缺少Accept或User-Agent")
    if request.method in ("POST", "PUT", "PATCH") and not request.content_type.startswith("application/json"):
        raise ApiError(400, "INVALID_REQUEST", "Http头Content-Type值必须为application/json")
    serial = request.headers.get("Wechatpay-Serial")
    if serial is not None and not (serial == keys.pub_key_id if known_serial is None else known_serial(serial)):
        raise ApiError(400, "INVALID_REQUEST", f"Wechatpay-Serial {serial!r} is not this merchant's key")


def authenticate(request: web.Request, body: bytes, keys: KeySet, now: dt.datetime, *,
                 certificates: Mapping[str, RSAPublicKey] | None = None) -> None:
    """Verify the merchant's `Authorization` over the request target and body exactly as received, with the
    merchant certificate its `serial_no` names (`certificates`; default: the key set's own)."""
    if certificates is None:
        certificates = {keys.mch_serial: keys.merchant_public_key}
    header = request.headers.get("Authorization")
    if not header:
        raise _sign_error("Authorization header is missing")
    try:
        auth = crypto.parse_authorization_header(header)
    except crypto.SignatureInvalid as exc:
        raise _sign_error(f"malformed Authorization: {exc}") from None
    if auth["mchid"] != keys.mchid:
        raise _sign_error(f"mchid {auth['mchid']!r} in Authorization is unknown")
    public_key = certificates.get(auth["serial_no"])
    if public_key is None:
        raise _sign_error(f"serial_no {auth['serial_no']!r} is not the merchant certificate serial")
    if abs(now.timestamp() - int(auth["timestamp"])) >= REQUEST_SKEW:
        raise _sign_error(f"timestamp {auth['timestamp']} is not within {REQUEST_SKEW}s of the server time")
    try:
        # raw_path is the request target as it came off the wire, percent-encoding included (§1.1).
        message = crypto.build_request_message(
            request.method, request.raw_path, auth["timestamp"], auth["nonce_str"], body
        )
        crypto.verify(public_key, message, auth["signature"])
    except (ValueError, crypto.SignatureInvalid):
        raise _sign_error("sign not match") from None


def _sign_error(issue: str) -> ApiError:
    return ApiError(401, "SIGN_ERROR", f"签名错误，请检查后再试: {issue}", field="signature",
                    location="authorization")


def signed_answer(
    key: SigningKey, now: dt.datetime, status: int, payload: Mapping[str, Any] | None, *, code: str | None = None
) -> web.Response:
    """A JSON (or, for 204, empty) answer with the Wechatpay-* signature headers of §2.1, signed with `key`
    (the public key's or a platform certificate's: signing.py)."""
    body = b"" if payload is None else json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    headers = crypto.sign_response_headers(key.private_key, key.serial, body, timestamp=int(now.timestamp()))
    headers["Request-ID"] = request_id(code)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    return web.Response(status=status, body=body, headers=headers)
