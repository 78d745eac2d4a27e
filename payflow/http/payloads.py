"""Request parsing and validation: JSON bodies and path parameters → typed requests, or a clear 4xx."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from payflow import errors
from payflow.service import STUCK, NewPayment, NewRefund
from payflow.states import State
from payflow.wechat.api import H5_TYPES, TRADE_TYPES

OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_-]{6,32}$")
MAX_EXPIRES_IN = 7 * 86400  # WeChat's default order lifetime; longer is almost always a unit mistake

_NEW_PAYMENT_FIELDS = {"order_id", "amount", "description", "openid", "attach", "out_trade_no", "expires_in",
                       "trade_type", "payer_client_ip", "h5_type"}
# The fields each product needs beyond the common ones; a field of another product is refused, not ignored.
_PRODUCT_FIELDS = {"jsapi": ("openid",), "miniprogram": ("openid",), "native": (), "h5": ("payer_client_ip", "h5_type"),
                   "app": ()}
if _PRODUCT_FIELDS.keys() != TRADE_TYPES.keys():
    raise ImportError("payloads: every product of wechat.api.TRADE_TYPES needs its fields here")


class BadJson(errors.InvalidRequest):
    code = "invalid_json"


class UnsupportedMediaType(errors.InvalidRequest):
    code = "unsupported_media_type"


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; 415 for another content type, 400 for malformed JSON, 413 if too big."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {request.content_type!r}")
    raw = await request.read()  # raises 413 past the app's client_max_size
    try:
        body = json.loads(raw)
        # Lone surrogates ("\ud800") decode fine but cannot be stored or logged as UTF-8; refuse them here.
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:
        raise BadJson(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadJson("the body must be a JSON object")
    return body


def date_param(value: str | None) -> dt.date:
    if not value:
        raise errors.InvalidRequest("date is required (YYYY-MM-DD)", field="date")
    if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
        raise errors.InvalidRequest(f"date {value!r} is not YYYY-MM-DD", field="date")
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise errors.InvalidRequest(f"date {value!r} is not YYYY-MM-DD", field="date") from None


MAX_NOTE = 500  # characters: an operator's note never goes to WeChat
MAX_LIMIT = 500


def note(body: dict[str, Any]) -> str:
    unknown = sorted(set(body) - {"note"})
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    value = _required_text(body, "note", max_bytes=4 * MAX_NOTE)
    if len(value) > MAX_NOTE:
        raise errors.InvalidRequest(f"note must be at most {MAX_NOTE} characters", field="note")
    return value


def listing(query: Mapping[str, str]) -> tuple[str | None, int, str | None]:
    """(state or "stuck" or None, limit, cursor) of `GET /v1/admin/payments`."""
    state = query.get("state")
    if state is not None and state != STUCK and state not in {s.value for s in State}:
        raise errors.InvalidRequest(f"state must be one of {', '.join(s.value for s in State)} or stuck",
                                    field="state")
    raw = query.get("limit", "50")
    limit = int(raw) if re.fullmatch(r"[0-9]{1,3}", raw) else -1
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.InvalidRequest(f"limit must be an integer between 1 and {MAX_LIMIT}", field="limit")
    return state, limit, query.get("cursor") or None


def out_trade_no(value: str) -> str:
    if not OUT_TRADE_NO.match(value):
        raise errors.InvalidRequest("out_trade_no must be 6-32 characters of [0-9A-Za-z_-]", field="out_trade_no")
    return value


# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that make text display other than
# it reads (an attach or description is shown to operators and payers).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# WeChat accepts UTF-8 characters of one to three bytes only (no emoji and nothing else above U+FFFF).
_ABOVE_BMP = re.compile("[\U00010000-\U0010ffff]")


def _text(body: dict[str, Any], name: str, *, max_bytes: int, wechat: bool = False) -> str | None:
    """An optional text field: at most `max_bytes` of UTF-8 (WeChat counts bytes), no control or bidi
    characters; `wechat`: a field sent to WeChat, so only characters WeChat accepts."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"{name} must be a string", field=name)
    if not value.strip():
        raise errors.InvalidRequest(f"{name} must not be empty", field=name)
    if len(value.encode()) > max_bytes:
        raise errors.InvalidRequest(f"{name} must be at most {max_bytes} bytes of UTF-8 (a Chinese character "
                                    f"is 3)", field=name)
    if _UNSAFE.search(value):
        raise errors.InvalidRequest(f"{name} must not contain control or bidirectional-override characters",
                                    field=name)
    if wechat and _ABOVE_BMP.search(value):
        raise errors.InvalidRequest(f"{name} must not contain emoji or other characters WeChat Pay refuses "
                                    f"(above U+FFFF)", field=name)
    return value


def _required_text(body: dict[str, Any], name: str, *, max_bytes: int, wechat: bool = False) -> str:
    value = _text(body, name, max_bytes=max_bytes, wechat=wechat)
    if value is None:
        raise errors.InvalidRequest(f"{name} is required", field=name)
    return value


def _integer(body: dict[str, Any], name: str, *, low: int, high: int, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise errors.InvalidRequest(f"{name} is required", field=name)
        return None
    # bool is an int in Python; 1.0 is not an amount in fen.
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidRequest(f"{name} must be an integer", field=name)
    if not low <= value <= high:
        raise errors.InvalidRequest(f"{name} must be between {low} and {high}", field=name)
    return value


def new_payment(body: dict[str, Any]) -> NewPayment:
    unknown = sorted(set(body) - _NEW_PAYMENT_FIELDS)
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    trade_no = _text(body, "out_trade_no", max_bytes=32)
    if trade_no is not None:
        out_trade_no(trade_no)
    # WeChat's amount.total is a signed 32-bit integer of fen.
    amount = _integer(body, "amount", low=1, high=2**31 - 1)
    if amount is None:
        raise errors.InvalidRequest("amount is required", field="amount")
    trade_type = body.get("trade_type", "jsapi")
    if not isinstance(trade_type, str) or trade_type not in _PRODUCT_FIELDS:
        raise errors.InvalidRequest(f"trade_type must be one of {', '.join(_PRODUCT_FIELDS)}", field="trade_type")
    needed = _PRODUCT_FIELDS[trade_type]
    for name in ("openid", "payer_client_ip", "h5_type"):
        if name not in needed and body.get(name) is not None:
            raise errors.InvalidRequest(f"{name} does not apply to trade_type {trade_type}", field=name)
    return NewPayment(
        order_id=_required_text(body, "order_id", max_bytes=64),
        amount=amount,
        # WeChat's limits (DOC-JSAPI): description string(127), attach string(128), payer.openid string(128).
        description=_required_text(body, "description", max_bytes=127, wechat=True),
        openid=_required_text(body, "openid", max_bytes=128, wechat=True) if "openid" in needed else "",
        attach=_text(body, "attach", max_bytes=128, wechat=True),
        out_trade_no=trade_no,
        expires_in=_integer(body, "expires_in", low=60, high=MAX_EXPIRES_IN, required=False),
        trade_type=trade_type,
        payer_client_ip=_client_ip(body) if "payer_client_ip" in needed else None,
        h5_type=_choice(body, "h5_type", H5_TYPES) if "h5_type" in needed else None,
    )


_NEW_REFUND_FIELDS = {"amount", "reason", "out_refund_no"}
OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_\-|*@]{1,64}$")  # WeChat's


def new_refund(out_trade_no: str, body: dict[str, Any]) -> NewRefund:
    """`POST /v1/payments/{out_trade_no}/refunds`."""
    unknown = sorted(set(body) - _NEW_REFUND_FIELDS)
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    amount = _integer(body, "amount", low=1, high=2**31 - 1)
    assert amount is not None
    refund_no = _text(body, "out_refund_no", max_bytes=64)
    if refund_no is not None:
        out_refund_no(refund_no)
    # WeChat's reason is string(80) and shown to the payer.
    return NewRefund(out_trade_no, amount, reason=_text(body, "reason", max_bytes=80, wechat=True),
                     out_refund_no=refund_no)


def admin_refund(body: dict[str, Any]) -> tuple[str, int | None]:
    """`POST /v1/admin/payments/{out_trade_no}/refund`: (note, amount or None for all that is left)."""
    unknown = sorted(set(body) - {"note", "amount"})
    if unknown:
        raise errors.InvalidRequest(f"unknown field(s): {', '.join(unknown)}", field=unknown[0])
    amount = _integer(body, "amount", low=1, high=2**31 - 1, required=False)
    return note({"note": body.get("note")}), amount


def out_refund_no(value: str) -> str:
    if not OUT_REFUND_NO.match(value):
        raise errors.InvalidRequest("out_refund_no must be 1-64 characters of [0-9A-Za-z_-|*@]", field="out_refund_no")
    return value


def _client_ip(body: dict[str, Any]) -> str:
    """H5's scene_info.payer_client_ip: the payer's IPv4 or IPv6 address, string(45) at WeChat."""
    value = _required_text(body, "payer_client_ip", max_bytes=45)
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise errors.InvalidRequest("payer_client_ip must be an IPv4 or IPv6 address",
                                    field="payer_client_ip") from None
    return value


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        raise errors.InvalidRequest(f"{name} is required", field=name)
    if value not in choices:
        raise errors.InvalidRequest(f"{name} must be one of {', '.join(choices)}", field=name)
    return str(value)
