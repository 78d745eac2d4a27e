"""The console's signed cookies: the session (sign-in with the admin token), the sign-in form's pre-session,
one-shot flash messages, and the CSRF tokens bound to them. Stateless: every value carries its purpose and
expiry under an HMAC whose key is derived from the admin token, so rotating the token signs everyone out."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import secrets
from typing import Any

from aiohttp import web

SESSION_COOKIE = "payflow_console"
PRE_COOKIE = "payflow_console_signin"
FLASH_COOKIE = "payflow_console_flash"
COOKIE_PATH = "/console/"

SESSION_TTL = dt.timedelta(hours=8)  # one working shift; the cookie itself also ends with the browser session
PRE_TTL = dt.timedelta(hours=1)  # how long a sign-in form stays usable
FLASH_TTL = dt.timedelta(minutes=1)

# The key is HMAC(admin token, label): never the token itself, and useless for anything but the console.
_KEY_LABEL = b"payflow console cookie key v1"


@dataclasses.dataclass(frozen=True, slots=True)
class Signer:
    """Signs and checks the console's cookie values with one key derived from the admin token."""

    key: bytes

    @classmethod
    def for_token(cls, admin_token: str) -> Signer:
        return cls(hmac.new(admin_token.encode("utf-8", "surrogatepass"), _KEY_LABEL, hashlib.sha256).digest())

    def sign(self, purpose: str, data: dict[str, Any], *, expires: dt.datetime) -> str:
        body = _b64(json.dumps({"p": purpose, "exp": int(expires.timestamp()), "d": data},
                               separators=(",", ":")).encode())
        return f"{body}.{_b64(self._mac(purpose, body))}"

    def unsign(self, purpose: str, value: str | None, *, now: dt.datetime) -> dict[str, Any] | None:
        """The data of a value this signer made for `purpose`, or None: missing, tampered, another
        purpose's, or expired."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        try:
            given = _unb64(mac)
        except ValueError:
            return None
        if not hmac.compare_digest(given, self._mac(purpose, body)):
            return None
        try:
            claims = json.loads(_unb64(body))
        except ValueError:
            return None
        if not isinstance(claims, dict) or claims.get("p") != purpose or not isinstance(claims.get("d"), dict):
            return None
        expires = claims.get("exp")
        if not isinstance(expires, int) or isinstance(expires, bool) or expires <= now.timestamp():
            return None
        data: dict[str, Any] = claims["d"]
        return data

    def csrf(self, nonce: str) -> str:
        """The CSRF token of the forms shown to the holder of the session (or sign-in form) `nonce`."""
        return _b64(hmac.new(self.key, b"csrf\x00" + nonce.encode(), hashlib.sha256).digest())

    def csrf_ok(self, nonce: str, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                         self.csrf(nonce).encode())

    def _mac(self, purpose: str, body: str) -> bytes:
        # The purpose is inside the signed body too; keying the MAC by it as well keeps the check obvious.
        return hmac.new(self.key, f"{purpose}\x00{body}".encode(), hashlib.sha256).digest()


def flash(signer: Signer, session: str, out_trade_no: str, message: dict[str, str], *, now: dt.datetime) -> str:
    """A one-shot message for the next view of one payment's page (an action's outcome), in this session only."""
    return signer.sign("flash", {"n": session, "p": out_trade_no, "m": message}, expires=now + FLASH_TTL)


def read_flash(signer: Signer, session: str, out_trade_no: str, value: str | None, *,
               now: dt.datetime) -> dict[str, str] | None:
    data = signer.unsign("flash", value, now=now)
    if data is None or data.get("n") != session or data.get("p") != out_trade_no:
        return None
    message = data.get("m")
    if not isinstance(message, dict) or not all(isinstance(v, str) for v in message.values()):
        return None
    return message


def token_matches(admin_token: str, given: str) -> bool:
    """The sign-in form's token against the admin token, in constant time (as the admin API compares them)."""
    return bool(given) and hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                               admin_token.encode("utf-8", "surrogatepass"))


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, *,
               max_age: dt.timedelta | None = None) -> None:
    """HttpOnly, SameSite=Strict, path /console/; Secure when this very connection is TLS (request.secure
    reads the transport, never X-Forwarded-Proto, which any client can send)."""
    response.set_cookie(name, value, path=COOKIE_PATH, httponly=True, samesite="Strict", secure=request.secure,
                        max_age=int(max_age.total_seconds()) if max_age is not None else None)


def clear_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=COOKIE_PATH, secure=request.secure, httponly=True, samesite="Strict")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
