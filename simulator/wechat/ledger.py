"""The simulated WeChat Pay order book: orders (JSAPI, Native, H5, App), their trade states, payments and refunds.

Pure: no I/O, no clock of its own — every operation is given `now`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import itertools
from collections.abc import Mapping
from typing import Any

from payflow.clock import SHANGHAI
from simulator.wechat import products

PREPAY_TTL = dt.timedelta(hours=2)
DEFAULT_EXPIRY = dt.timedelta(days=7)
MIN_EXPIRY = dt.timedelta(minutes=1)
MAX_EXPIRY = dt.timedelta(days=90)


class TradeState(enum.StrEnum):
    NOTPAY = "NOTPAY"
    USERPAYING = "USERPAYING"
    SUCCESS = "SUCCESS"
    CLOSED = "CLOSED"
    REFUND = "REFUND"


TRADE_STATE_DESC = {
    TradeState.NOTPAY: "订单未支付",
    TradeState.USERPAYING: "用户支付中",
    TradeState.SUCCESS: "支付成功",
    TradeState.CLOSED: "订单已关闭",
    TradeState.REFUND: "转入退款",
}
_PAID = (TradeState.SUCCESS, TradeState.REFUND)
_OPEN = (TradeState.NOTPAY, TradeState.USERPAYING)
MAX_REFUNDS = 50  # "每个支付订单的部分退款次数不能超过50次"
REFUND_WINDOW = dt.timedelta(days=365)  # refunds within a year of success_time


class RefundStatus(enum.StrEnum):
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    ABNORMAL = "ABNORMAL"
    CLOSED = "CLOSED"


def rfc3339(moment: dt.datetime) -> str:
    """WeChat's time format: seconds precision, Beijing time, explicit +08:00."""
    return moment.astimezone(SHANGHAI).replace(microsecond=0).isoformat()


class LedgerError(Exception):
    """A business rule refused the operation; `code` is ledger-level, the HTTP layers map it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class JsapiRequest:
    """A validated place-order body of any product (the name is JSAPI's, the first one); `params` is the whole
    JSON object, compared on re-entry with `trade_type`. `openid` is the payer's, given for JSAPI only."""

    appid: str
    mchid: str
    description: str
    out_trade_no: str
    notify_url: str
    total: int
    openid: str | None
    params: Mapping[str, Any]
    time_expire: dt.datetime | None = None
    attach: str | None = None
    trade_type: str = "JSAPI"


@dataclasses.dataclass(frozen=True)
class RefundRequest:
    """A validated refund body; `params` is the whole JSON object. One of out_trade_no / transaction_id."""

    out_refund_no: str
    refund: int
    total: int
    params: Mapping[str, Any]
    out_trade_no: str | None = None
    transaction_id: str | None = None
    reason: str | None = None
    notify_url: str | None = None
    funds_account: str | None = None


@dataclasses.dataclass(eq=False)
class Refund:
    """One refund of an order. `status` is what WeChat reports; a PROCESSING one turns into `outcome` at
    `due` (see refunds.py, which drives it on the simulator's clock)."""

    refund_id: str
    out_refund_no: str
    amount: int
    created: dt.datetime
    out_trade_no: str = ""
    status: RefundStatus = RefundStatus.SUCCESS
    success_time: dt.datetime | None = None
    finished_at: dt.datetime | None = None  # when it left PROCESSING
    reason: str | None = None
    notify_url: str | None = None
    funds_account: str | None = None
    params: Mapping[str, Any] | None = None  # the API body, compared on re-entry; None: made through /sim
    due: dt.datetime | None = None
    outcome: RefundStatus = RefundStatus.SUCCESS

    @property
    def counts(self) -> bool:
        """Whether it takes from the order's refundable amount: a closed refund gives it back."""
        return self.status is not RefundStatus.CLOSED


@dataclasses.dataclass(eq=False)
class Order:
    out_trade_no: str
    appid: str
    mchid: str
    description: str
    total: int
    openid: str  # the payer's; "" until an order placed without one (Native, H5, App) is paid
    notify_url: str | None
    attach: str
    created: dt.datetime
    time_expire: dt.datetime
    params: Mapping[str, Any] | None  # None: recorded through the control API, never placed
    prepay_id: str | None = None
    prepay_issued: dt.datetime | None = None
    state: TradeState = TradeState.NOTPAY
    transaction_id: str | None = None
    success_time: dt.datetime | None = None
    paid_amount: int | None = None
    closed_at: dt.datetime | None = None
    expired: bool = False
    refunds: list[Refund] = dataclasses.field(default_factory=list)
    trade_type: str = "JSAPI"  # JSAPI (official accounts and mini programs), NATIVE, MWEB (H5) or APP

    @property
    def refunded_amount(self) -> int:
        return sum(refund.amount for refund in self.refunds if refund.counts)

    def transaction(self) -> dict[str, Any]:
        """The query / notification resource, in the field order of real notifications (§6.3)."""
        base: dict[str, Any] = {"mchid": self.mchid, "appid": self.appid, "out_trade_no": self.out_trade_no}
        if self.state not in _PAID:
            # Unpaid shapes carry no transaction_id, payer, attach, success_time or bank_type (§4.1).
            return {
                **base,
                "trade_state": str(self.state),
                "trade_state_desc": TRADE_STATE_DESC[self.state],
                "amount": {"payer_currency": "CNY", "total": self.total},
                "scene_info": {"device_id": ""},
                "promotion_detail": [],
            }
        assert self.success_time is not None and self.paid_amount is not None
        return {
            **base,
            "transaction_id": self.transaction_id,
            "trade_type": self.trade_type,
            "trade_state": str(self.state),
            "trade_state_desc": TRADE_STATE_DESC[self.state],
            "bank_type": "OTHERS",
            "attach": self.attach,
            "success_time": rfc3339(self.success_time),
            "payer": {"openid": self.openid},
            "amount": {
                "total": self.paid_amount,
                "payer_total": self.paid_amount,
                "currency": "CNY",
                "payer_currency": "CNY",
            },
            "promotion_detail": [],
        }


class Ledger:
    """Every order one merchant has at the simulated WeChat Pay, keyed by out_trade_no."""

    def __init__(self, mchid: str, appid: str) -> None:
        self.mchid = mchid
        self.appid = appid
        self._orders: dict[str, Order] = {}
        self._by_transaction: dict[str, Order] = {}
        self._refunds: dict[str, Refund] = {}  # by out_refund_no: unique per merchant
        self._serial = itertools.count(1)

    # -- reads ----------------------------------------------------------------------------------

    def get(self, out_trade_no: str, now: dt.datetime) -> Order:
        order = self._orders.get(out_trade_no)
        if order is None:
            raise LedgerError("ORDER_NOT_EXIST", f"order {out_trade_no} does not exist")
        self._expire(order, now)
        return order

    def by_transaction_id(self, transaction_id: str, now: dt.datetime) -> Order:
        order = self._by_transaction.get(transaction_id)
        if order is None:
            raise LedgerError("ORDER_NOT_EXIST", f"transaction {transaction_id} does not exist")
        self._expire(order, now)
        return order

    def orders(self, now: dt.datetime) -> list[Order]:
        for order in self._orders.values():
            self._expire(order, now)
        return list(self._orders.values())

    def find_refund(self, out_refund_no: str) -> Refund | None:
        return self._refunds.get(out_refund_no)

    def refunds(self) -> list[Refund]:
        return list(self._refunds.values())

    # -- merchant operations --------------------------------------------------------------------

    def place(self, request: JsapiRequest, now: dt.datetime) -> Order:
        """Create the order, or re-enter it: identical parameters get the current prepay_id (§3.2)."""
        order = self._orders.get(request.out_trade_no)
        if order is None:
            order = Order(
                out_trade_no=request.out_trade_no,
                appid=request.appid,
                mchid=request.mchid,
                description=request.description,
                total=request.total,
                openid=request.openid or "",
                notify_url=request.notify_url,
                attach=request.attach or "",
                created=now,
                time_expire=_clamp_expiry(request.time_expire, now),
                params=dict(request.params),
                trade_type=request.trade_type,
            )
            self._orders[order.out_trade_no] = order
        else:
            self._expire(order, now)
            self._refuse_finished(order)
            # The same body sent to another product's endpoint is not the same order either.
            if order.params != request.params or order.trade_type != request.trade_type:
                raise LedgerError("PARAMS_MISMATCH", "请求重入时，参数与首次请求时不一致")
        if order.prepay_issued is None or now - order.prepay_issued >= PREPAY_TTL:
            order.prepay_id = self._prepay_id(order.out_trade_no, now)
            order.prepay_issued = now
        return order

    def close(self, out_trade_no: str, now: dt.datetime) -> Order:
        """Close an unpaid order; closing a closed one again is accepted (the API is re-entrant)."""
        order = self.get(out_trade_no, now)
        if order.state in _PAID:
            raise LedgerError("ORDER_PAID", "订单已支付")
        if order.state is TradeState.USERPAYING:
            raise LedgerError("USER_PAYING", "用户支付中，请稍后再试")
        if order.state is TradeState.NOTPAY:
            order.state, order.closed_at = TradeState.CLOSED, now
        return order

    # -- payer and operator actions (control API) -----------------------------------------------

    def start_paying(self, out_trade_no: str, now: dt.datetime) -> Order:
        order = self.get(out_trade_no, now)
        self._refuse_finished(order)
        order.state = TradeState.USERPAYING
        return order

    def pay(self, out_trade_no: str, now: dt.datetime, amount: int | None = None, *,
            openid: str | None = None) -> Order:
        """The payer pays (by default the order's total; another amount simulates a tampered payment). An order
        placed without a payer (Native, H5, App) learns its payer's openid now: `openid`, else a stable one."""
        order = self.get(out_trade_no, now)
        self._refuse_finished(order)
        paid = order.total if amount is None else amount
        if paid < 1:
            raise LedgerError("INVALID_AMOUNT", "amount must be at least 1 fen")
        if not order.openid:
            order.openid = openid or products.payer_openid(order.appid, order.out_trade_no)
        self._mark_paid(order, now, paid)
        return order

    def refund(
        self, out_trade_no: str, now: dt.datetime, amount: int | None = None, out_refund_no: str | None = None,
        *, status: RefundStatus = RefundStatus.SUCCESS, reason: str | None = None, notify_url: str | None = None,
        funds_account: str | None = None, params: Mapping[str, Any] | None = None,
    ) -> Refund:
        """Accept a refund of a paid order (by default what is left of it). It is `status` at once: SUCCESS
        for an operator's instant refund, PROCESSING for one that refunds.py completes later."""
        order = self.get(out_trade_no, now)
        if order.state not in _PAID or order.paid_amount is None:
            raise LedgerError("NOT_PAID", f"order {out_trade_no} is {order.state}, only paid orders refund")
        if out_refund_no is not None and out_refund_no in self._refunds:
            raise LedgerError("REFUND_NO_USED", f"out_refund_no {out_refund_no} is already used")
        if len(order.refunds) >= MAX_REFUNDS:
            raise LedgerError("TOO_MANY_REFUNDS", f"order {out_trade_no} has had {MAX_REFUNDS} refunds")
        remaining = order.paid_amount - order.refunded_amount
        amount = remaining if amount is None else amount
        if not 1 <= amount <= remaining:
            raise LedgerError("INVALID_AMOUNT", f"refund amount must be between 1 and {remaining} fen")
        serial = next(self._serial)
        day = now.astimezone(SHANGHAI)
        refund = Refund(
            refund_id=f"50000{serial:05d}{day:%Y%m%d}{_digits(out_trade_no, serial, 11)}",
            out_refund_no=out_refund_no or f"RF{out_trade_no}{len(order.refunds) + 1}"[:64],
            amount=amount,
            created=now,
            out_trade_no=out_trade_no,
            status=status,
            reason=reason,
            notify_url=notify_url,
            funds_account=funds_account,
            params=None if params is None else dict(params),
        )
        if refund.out_refund_no in self._refunds:
            raise LedgerError("REFUND_NO_USED", f"out_refund_no {refund.out_refund_no} is already used")
        if status is RefundStatus.SUCCESS:
            refund.success_time = refund.finished_at = now
        order.refunds.append(refund)
        self._refunds[refund.out_refund_no] = refund
        # 转入退款: the order reads REFUND from the moment a refund is accepted (§4.2).
        order.state = TradeState.REFUND
        return refund

    def record_paid(
        self,
        out_trade_no: str,
        amount: int,
        now: dt.datetime,
        *,
        openid: str,
        description: str,
        attach: str = "",
        success_time: dt.datetime | None = None,
        appid: str | None = None,
        trade_type: str = "JSAPI",
    ) -> Order:
        """A paid order the merchant never placed (e.g. placed by another system); no notification."""
        if out_trade_no in self._orders:
            raise LedgerError("ORDER_EXISTS", f"order {out_trade_no} already exists")
        if amount < 1:
            raise LedgerError("INVALID_AMOUNT", "amount must be at least 1 fen")
        paid_at = success_time or now
        order = Order(
            out_trade_no=out_trade_no, appid=appid or self.appid, mchid=self.mchid, description=description,
            total=amount, openid=openid, notify_url=None, attach=attach, created=paid_at,
            time_expire=paid_at, params=None, trade_type=trade_type,
        )
        self._orders[out_trade_no] = order
        self._mark_paid(order, paid_at, amount)
        return order

    # -- internals ------------------------------------------------------------------------------

    def _mark_paid(self, order: Order, now: dt.datetime, amount: int) -> None:
        serial = next(self._serial)
        order.transaction_id = (
            f"42000{serial:05d}{now.astimezone(SHANGHAI):%Y%m%d}{_digits(order.out_trade_no, serial, 10)}"
        )
        order.state, order.success_time, order.paid_amount = TradeState.SUCCESS, now, amount
        self._by_transaction[order.transaction_id] = order

    def _refuse_finished(self, order: Order) -> None:
        if order.state in _PAID:
            raise LedgerError("ORDER_PAID", "该订单已支付")
        if order.state is TradeState.CLOSED:
            code = "ORDER_EXPIRED" if order.expired else "ORDER_CLOSED"
            raise LedgerError(code, "订单已关闭")

    @staticmethod
    def _expire(order: Order, now: dt.datetime) -> None:
        # Auto-close is observed lazily: an unpaid order past time_expire reads CLOSED from then on.
        if order.state in _OPEN and now >= order.time_expire:
            order.state, order.closed_at, order.expired = TradeState.CLOSED, order.time_expire, True

    def _prepay_id(self, out_trade_no: str, now: dt.datetime) -> str:
        serial = next(self._serial)
        digest = hashlib.sha1(f"{self.mchid}:{out_trade_no}:{serial}".encode()).hexdigest()[:20]
        return f"wx{now.astimezone(SHANGHAI):%Y%m%d%H%M%S}{digest}"


def _clamp_expiry(requested: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    # §3.1: earlier than +1 min is raised to +1 min, beyond the maximum it is clamped.
    if requested is None:
        return now + DEFAULT_EXPIRY
    return min(max(requested, now + MIN_EXPIRY), now + MAX_EXPIRY)


def _digits(seed: str, serial: int, width: int) -> str:
    value = int(hashlib.sha1(f"{seed}:{serial}".encode()).hexdigest(), 16)
    return f"{value % 10**width:0{width}d}"
