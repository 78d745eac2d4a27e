"""The WeChat Pay operations the service needs, as an interface; `WechatPayClient` implements it.

Keeping the service on this interface lets tests use a fake, and nothing in payflow pretends to be WeChat.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any, Protocol

# The products a payment is sold through (`trade_type` of `POST /v1/payments`) and WeChat's API for each:
# a mini program pays by JSAPI with the mini program's appid; H5 is WeChat's MWEB.
TRADE_TYPES: dict[str, str] = {"jsapi": "jsapi", "miniprogram": "jsapi", "native": "native", "h5": "h5",
                               "app": "app"}
# What a query or notification calls each product (`trade_type`): JSAPI covers official accounts and mini programs.
WECHAT_TRADE_TYPES: dict[str, str] = {"jsapi": "JSAPI", "miniprogram": "JSAPI", "native": "NATIVE", "h5": "MWEB",
                                      "app": "APP"}
H5_TYPES = ("iOS", "Android", "Wap")  # scene_info.h5_info.type


@dataclasses.dataclass(frozen=True, slots=True)
class Order:
    """A place-order request of any product; resending the identical order is safe (WeChat re-entry)."""

    out_trade_no: str
    description: str
    amount: int  # fen
    time_expire: dt.datetime
    notify_url: str
    trade_type: str = "jsapi"  # a key of TRADE_TYPES
    appid: str | None = None  # None: the client's own
    openid: str | None = None  # jsapi and miniprogram only
    attach: str | None = None
    payer_client_ip: str | None = None  # h5 only
    h5_type: str | None = None  # h5 only

    @property
    def api(self) -> str:
        """WeChat's place-order API for this product: the path's last part and the budget's name."""
        return TRADE_TYPES[self.trade_type]


@dataclasses.dataclass(frozen=True, slots=True)
class Placed:
    """WeChat's answer to a placement: a prepay_id (JSAPI, mini program, App) or a URL (Native, H5)."""

    prepay_id: str | None = None
    code_url: str | None = None
    h5_url: str | None = None


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


@dataclasses.dataclass(frozen=True, slots=True)
class RefundRequest:
    """An apply-for-refund request; resending the identical request is safe (re-entry by out_refund_no)."""

    out_refund_no: str
    out_trade_no: str
    transaction_id: str | None
    amount: int  # fen, this refund
    total: int  # fen, what the order paid
    notify_url: str | None = None
    reason: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RefundAnswer:
    """What WeChat says about one refund (apply or query answer, decrypted refund notification)."""

    out_refund_no: str
    status: str  # PROCESSING, SUCCESS, ABNORMAL, CLOSED
    out_trade_no: str | None = None
    refund_id: str | None = None
    amount: int | None = None  # `amount.refund` in fen
    total: int | None = None  # `amount.total`
    success_time: dt.datetime | None = None
    mchid: str | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)


REFUND_STATUSES = ("PROCESSING", "SUCCESS", "ABNORMAL", "CLOSED")


class WechatApi(Protocol):
    """Raises `errors.WechatRetryable` when the outcome is unknown or temporary, `errors.WechatFinal` otherwise."""

    async def place(self, order: Order) -> Placed:
        """Place (or re-enter) the order; returns what the front end needs to pay it."""
        ...

    async def query(self, out_trade_no: str, appid: str | None = None) -> Transaction | None:
        """The order as WeChat sees it; None when WeChat does not know it (ORDER_NOT_EXIST). The answer must
        name `appid` (the payment's; None: the client's own)."""
        ...

    async def close_order(self, out_trade_no: str) -> None:
        """Close an unpaid order; raises `WechatFinal` with code ORDERPAID when it was paid."""
        ...

    def pay_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        """The signed JSAPI / mini program parameters {appId, timeStamp, nonceStr, package, signType, paySign}."""
        ...

    def app_params(self, prepay_id: str, appid: str | None = None) -> dict[str, str]:
        """The signed App parameters {appid, partnerid, prepayid, package, noncestr, timestamp, sign}."""
        ...

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """Apply for (or re-enter) a refund; the answer's status is normally PROCESSING."""
        ...

    async def query_refund(self, out_refund_no: str) -> RefundAnswer | None:
        """The refund as WeChat sees it; None when WeChat does not know it (RESOURCE_NOT_EXISTS)."""
        ...
