"""Trade bills (WECHATPAY_V3.md §8, docs/wechatpay-refunds.md): the ALL (27 columns), SUCCESS (20) and
REFUND (29) files rendered from the ledger, and the short-lived download tokens of `GET /v3/bill/tradebill`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import secrets
from collections.abc import Iterable

from payflow.clock import SHANGHAI
from simulator.wechat.ledger import Order, Refund, RefundStatus

DETAIL_HEADER = (
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,交易状态,付款银行,货币种类,"
    "应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,"
    "费率,订单金额,申请退款金额,费率备注"
)
# SUCCESS drops the refund columns; REFUND adds 退款申请时间 and 退款成功时间 after 代金券金额.
_SUCCESS_FIELDS = (*range(14), 20, 21, 22, 23, 24, 26)
SUCCESS_HEADER = ",".join(DETAIL_HEADER.split(",")[i] for i in _SUCCESS_FIELDS)
REFUND_HEADER = DETAIL_HEADER.replace("代金券金额,", "代金券金额,退款申请时间,退款成功时间,")
SUMMARY_HEADER = (
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
)
FEE_RATE_PER_MILLE = 6  # 0.60%, the common rate for ordinary merchants
TOKEN_TTL = dt.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class _Row:
    at: dt.datetime
    fields: tuple[str, ...]  # the 27 of ALL
    settled: int
    refunded: int
    fee: int
    ordered: int
    # REFUND bills only: the payment's time, when the refund was applied for, when it succeeded ("" until then).
    paid_at: str = ""
    applied_at: str = ""
    succeeded_at: str = ""


def _all(row: _Row) -> tuple[str, ...]:
    return row.fields


def _success(row: _Row) -> tuple[str, ...]:
    return tuple(row.fields[i] for i in _SUCCESS_FIELDS)


def _refund(row: _Row) -> tuple[str, ...]:
    # The REFUND bill's 交易时间 is the payment's; the refund's own times get columns of their own.
    return (row.paid_at, *row.fields[1:14], row.applied_at, row.succeeded_at, *row.fields[14:])


def render(orders: Iterable[Order], day: dt.date, bill_type: str = "ALL") -> bytes:
    """The bill of one Asia/Shanghai calendar day: UTF-8 BOM, CRLF lines, backtick-prefixed data fields.

    A payment is listed on the day of its success_time (as SUCCESS even if refunded later); each refund
    is a REFUND line on the day it was applied for, with the status it has now, unless it was closed.
    """
    rows: list[_Row] = []
    for order in orders:
        if order.success_time is not None and _day(order.success_time) == day and bill_type != "REFUND":
            rows.append(_payment_row(order))
        if bill_type != "SUCCESS":
            rows.extend(_refund_row(order, r) for r in order.refunds
                        if r.status is not RefundStatus.CLOSED and _day(r.created) == day)
    rows.sort(key=lambda row: (row.at, row.fields[6], row.fields[9]))
    header, shape = {"ALL": (DETAIL_HEADER, _all), "SUCCESS": (SUCCESS_HEADER, _success),
                     "REFUND": (REFUND_HEADER, _refund)}[bill_type]
    summary = (
        str(len(rows)),
        _yuan(sum(r.settled for r in rows)),
        _yuan(sum(r.refunded for r in rows)),
        "0.00",
        _fee(sum(r.fee for r in rows)),
        _yuan(sum(r.ordered for r in rows)),
        _yuan(sum(r.refunded for r in rows)),
    )
    lines = [header, *(_data_line(shape(r)) for r in rows), SUMMARY_HEADER, _data_line(summary)]
    return b"\xef\xbb\xbf" + "".join(line + "\r\n" for line in lines).encode("utf-8")


def _payment_row(order: Order) -> _Row:
    assert order.success_time is not None and order.paid_amount is not None
    paid = order.paid_amount
    fee = fee_fen(paid)
    fields = (
        _time(order.success_time), order.appid, order.mchid, "0", "", order.transaction_id or "",
        order.out_trade_no, order.openid, order.trade_type, "SUCCESS", "OTHERS", "CNY", _yuan(paid), "0.00", "0",
        "0", "0.00", "0.00", "", "", order.description, order.attach, _fee(fee), _rate(), _yuan(paid), "0.00", "",
    )
    return _Row(order.success_time, fields, settled=paid, refunded=0, fee=fee, ordered=paid)


def _refund_row(order: Order, refund: Refund) -> _Row:
    # The fee is returned pro rata, so a refund line carries a negative fee.
    fee = -fee_fen(refund.amount)
    fields = (
        _time(refund.created), order.appid, order.mchid, "0", "", order.transaction_id or "",
        order.out_trade_no, order.openid, order.trade_type, "REFUND", "OTHERS", "CNY", "0.00", "0.00",
        refund.refund_id, refund.out_refund_no, _yuan(refund.amount), "0.00", "ORIGINAL", str(refund.status),
        order.description, order.attach, _fee(fee), _rate(), "0.00", _yuan(refund.amount), "",
    )
    assert order.success_time is not None
    return _Row(refund.created, fields, settled=0, refunded=refund.amount, fee=fee, ordered=0,
                paid_at=_time(order.success_time), applied_at=_time(refund.created),
                succeeded_at="" if refund.success_time is None else _time(refund.success_time))


def _data_line(fields: Iterable[str]) -> str:
    return ",".join("`" + field for field in fields)


def _day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(SHANGHAI).date()


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")


def fee_fen(amount: int) -> int:
    """WeChat's fee on `amount` fen (a refund returns its share: `refund_fee`)."""
    return (amount * FEE_RATE_PER_MILLE + 500) // 1000  # half up, to the fen


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


def _fee(fen: int) -> str:
    return _yuan(fen) + "000"


def _rate() -> str:
    return f"{FEE_RATE_PER_MILLE / 10:.2f}%"


@dataclasses.dataclass(frozen=True)
class BillFile:
    data: bytes  # what is served: gzip-compressed when asked for
    gzip: bool
    expires: dt.datetime


class BillFiles:
    """Download tokens; the bill is frozen at application time so the announced hash stays true."""

    def __init__(self) -> None:
        self._files: dict[str, BillFile] = {}

    def issue(self, plain: bytes, *, compress: bool, now: dt.datetime) -> str:
        self._files = {t: f for t, f in self._files.items() if f.expires > now}
        token = secrets.token_urlsafe(24)
        # mtime=0 keeps the archive bytes a pure function of the bill.
        data = gzip.compress(plain, mtime=0) if compress else plain
        self._files[token] = BillFile(data=data, gzip=compress, expires=now + TOKEN_TTL)
        return token

    def get(self, token: str, now: dt.datetime) -> BillFile | None:
        found = self._files.get(token)
        return found if found is not None and found.expires > now else None
