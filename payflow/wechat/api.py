"""The WeChat Pay operations the service needs, as an interface; `WechatPayClient` implements it.

Keeping the service on this interface lets tests use a fake, and nothing in payflow pretends to be WeChat.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class JsapiOrder:
    """A JSAPI place-order request; resending the identical order is safe (WeChat re-entry)."""

    out_trade_no: str
    description: str
    amount: int  # fen
    openid: str
    time_expire: dt.datetime
    notify_url: str
    attach: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Transaction:
    """What WeChat says about one order (query answer, decrypted notification, close outcome)."""

    out_trade_no: str
    trade_state: str  # SUCCESS, NOTPAY, CLOSED, REFUND, USERPAYING, PAYERROR, REVOKED
    transaction_id: str | None = None
    amount: int | None = None  # `amount.total` in fen
    payer_total: int | None = None
    success_time: dt.datetime | None = None
    mchid: str | None = None
    appid: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


class WechatApi(Protocol):
    """Raises `errors.WechatRetryable` when the outcome is unknown or temporary, `errors.WechatFinal` otherwise."""

    async def place_jsapi(self, order: JsapiOrder) -> str:
        """Place (or re-enter) the order; returns the prepay_id."""
        ...

    async def query(self, out_trade_no: str) -> Transaction | None:
        """The order as WeChat sees it; None when WeChat does not know it (ORDER_NOT_EXIST)."""
        ...

    async def close_order(self, out_trade_no: str) -> None:
        """Close an unpaid order; raises `WechatFinal` with code ORDERPAID when it was paid."""
        ...

    def pay_params(self, prepay_id: str) -> dict[str, str]:
        """The signed front-end parameters {appId, timeStamp, nonceStr, package, signType, paySign}."""
        ...
