"""The products a merchant sells through (docs/wechatpay-products.md): JSAPI (official accounts and mini programs
alike), Native, H5 and App — each a place-order path, the `trade_type` WeChat reports for its orders and what
its answer carries — and the appids bound to the merchant's mchid.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

# What an appid is registered as (P.2). Informational: WeChat's per-kind rules are not simulated (UNVERIFIED).
APP_KINDS = ("official_account", "mini_program", "app")
DEFAULT_KIND = "official_account"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclasses.dataclass(frozen=True)
class Product:
    name: str  # the last segment of the place-order path
    trade_type: str  # as query answers, notifications and bills report it (P.1)
    answer_field: str  # prepay_id, code_url or h5_url
    openid_required: bool = False  # payer.openid: JSAPI only
    h5_scene_required: bool = False  # scene_info.payer_client_ip and scene_info.h5_info.type: H5 only

    @property
    def path(self) -> str:
        return f"/v3/pay/transactions/{self.name}"

    def answer(self, prepay_id: str) -> dict[str, str]:
        """The place-order answer of an order whose (internal) prepay_id is `prepay_id`. Native's code_url and
        H5's h5_url are derived from it, so they last (2 hours) and renew on re-entry exactly as it does."""
        if self.answer_field == "code_url":
            return {"code_url": code_url(prepay_id)}
        if self.answer_field == "h5_url":
            return {"h5_url": h5_url(prepay_id)}
        return {"prepay_id": prepay_id}


JSAPI = Product("jsapi", "JSAPI", "prepay_id", openid_required=True)
NATIVE = Product("native", "NATIVE", "code_url")
H5 = Product("h5", "MWEB", "h5_url", h5_scene_required=True)
APP = Product("app", "APP", "prepay_id")
PRODUCTS = (JSAPI, NATIVE, H5, APP)
BY_TRADE_TYPE = {product.trade_type: product for product in PRODUCTS}
# h5_info.type values the official pages give as examples (P.3).
H5_TYPES = ("iOS", "Android", "Wap")


def code_url(prepay_id: str) -> str:
    # Shaped like the official sample's weixin://wxpay/bizpayurl?pr=JyC91EIz1 (§11.3).
    value = int.from_bytes(hashlib.sha1(f"code_url:{prepay_id}".encode()).digest()[:8], "big")
    token = ""
    for _ in range(9):
        value, digit = divmod(value, 62)
        token += _BASE62[digit]
    return f"weixin://wxpay/bizpayurl?pr={token}"


def h5_url(prepay_id: str) -> str:
    # Shaped like the official sample: checkmweb?prepay_id=wx2016121516420242444321ca0631331346&package=1405458241
    package = int(hashlib.sha1(f"h5_url:{prepay_id}".encode()).hexdigest(), 16) % 10**10
    return f"https://wx.tenpay.com/cgi-bin/mmpayweb-bin/checkmweb?prepay_id={prepay_id}&package={package:010d}"


def payer_openid(appid: str, out_trade_no: str) -> str:
    """The openid (under `appid`) of whoever pays an order placed without one: like oUpF8uMuAJO_M2pxb1Q9zNjWeS6o,
    "o" and 27 more characters; the same order always gets the same payer."""
    digest = hashlib.sha1(f"payer:{appid}:{out_trade_no}".encode()).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode("ascii")[:27]


class AppIds:
    """The appids bound to one mchid (商户号绑定APPID): an order's appid must be one of them, else WeChat answers
    400 APPID_MCHID_NOT_MATCH. The key set's appid is bound from the start."""

    def __init__(self, primary: str, extra: Mapping[str, str] | Iterable[str] = ()) -> None:
        self.primary = primary
        self._kinds: dict[str, str] = {primary: DEFAULT_KIND}
        items = extra.items() if isinstance(extra, Mapping) else ((appid, DEFAULT_KIND) for appid in extra)
        for appid, kind in items:
            self.bind(appid, kind)

    def bind(self, appid: str, kind: str = DEFAULT_KIND) -> None:
        if not isinstance(appid, str) or not 1 <= len(appid) <= 32:
            raise ValueError(f"appid must be a string of 1 to 32 characters, got {appid!r}")
        if kind not in APP_KINDS:
            raise ValueError(f"kind must be one of {', '.join(APP_KINDS)}, got {kind!r}")
        self._kinds[appid] = kind

    def unbind(self, appid: str) -> bool:
        """Unbind `appid` (its existing orders stay as they are); False if it was not bound."""
        return self._kinds.pop(appid, None) is not None

    def kind(self, appid: str) -> str | None:
        return self._kinds.get(appid)

    def __contains__(self, appid: object) -> bool:
        return appid in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(self._kinds)

    def to_json(self) -> list[dict[str, Any]]:
        return [{"appid": appid, "kind": kind, "primary": appid == self.primary}
                for appid, kind in self._kinds.items()]
