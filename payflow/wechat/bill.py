"""Strict parser of WeChat Pay's ALL trade bill (WECHATPAY_V3.md §8.3): detail lines with amounts in integer fen
and Beijing times, and a summary that must agree with them. Pure: bytes in, a frozen `TradeBill` out."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Callable
from decimal import Decimal
from operator import attrgetter
from typing import TypeVar

from payflow import errors
from payflow.clock import SHANGHAI

# China has kept +08:00 without DST since 1991 and bills reach back three months, so a fixed offset is exact.

DETAIL_NAMES = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识", "交易类型",
    "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额",
    "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额",
    "费率备注",
)
SUMMARY_NAMES = (
    "总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额",
)
DETAIL_HEADER = ",".join(DETAIL_NAMES)
SUMMARY_HEADER = ",".join(SUMMARY_NAMES)

_BOM = b"\xef\xbb\xbf"
MONEY_PLACES = 2  # yuan amounts: at most fen precision
FEE_PLACES = 5  # 手续费 is printed with five decimals (`0.00000`, `0.74000`)
_MAX_INTEGER_DIGITS = 15  # with 5 decimals, even the sum of 10**6 fees stays well inside _EXACT's precision
# Our own context: the caller's (thread-local) one may have a lower precision; Inexact makes rounding impossible
# to miss rather than silent.
_EXACT = decimal.Context(prec=40, traps=[decimal.Inexact, decimal.InvalidOperation])


class BillFormatError(errors.PayflowError):
    """The bill is not a well-formed ALL trade bill; `line` is the 1-based line of the file that is wrong."""

    code = "bill_format"

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclasses.dataclass(frozen=True, slots=True)
class BillLine:
    """One detail line. Amounts are integer fen, except `fee`; identifiers are kept verbatim (WeChat writes `0`
    for the refund ids of a payment line and for `sub_mchid` of a direct merchant)."""

    trade_time: dt.datetime  # 交易时间: Beijing time, tz-aware (+08:00)
    appid: str  # 公众账号ID
    mchid: str  # 商户号
    sub_mchid: str  # 特约商户号
    device_info: str  # 设备号
    transaction_id: str  # 微信订单号
    out_trade_no: str  # 商户订单号
    openid: str  # 用户标识
    trade_type: str  # 交易类型: JSAPI, NATIVE, ...
    trade_state: str  # 交易状态: SUCCESS, REFUND, ...
    bank_type: str  # 付款银行
    currency: str  # 货币种类: CNY
    settlement_total: int  # 应结订单金额 (fen); 0 on refund lines
    coupon_amount: int  # 代金券金额 (fen)
    refund_id: str  # 微信退款单号
    out_refund_no: str  # 商户退款单号
    refund_amount: int  # 退款金额 (fen)
    recharge_coupon_refund: int  # 充值券退款金额 (fen)
    refund_type: str  # 退款类型: ORIGINAL, ...
    refund_status: str  # 退款状态: SUCCESS, ...
    description: str  # 商品名称
    attach: str  # 商户数据包
    # 手续费 is printed with five decimals, so it is kept as exact yuan rather than rounded to fen;
    # negative on refund lines (the fee is returned pro rata).
    fee: Decimal
    rate: str  # 费率, e.g. "0.60%"
    order_amount: int  # 订单金额 (fen)
    refund_requested: int  # 申请退款金额 (fen)
    rate_note: str  # 费率备注
    raw: tuple[str, ...]  # the 27 fields as read, each without its leading backtick


@dataclasses.dataclass(frozen=True, slots=True)
class BillSummary:
    """The summary row. Its amount fields carry the names of the detail fields they total."""

    trade_count: int  # 总交易单数: number of detail lines, refund lines included
    settlement_total: int  # 应结订单总金额 (fen)
    refund_amount: int  # 退款总金额 (fen)
    recharge_coupon_refund: int  # 充值券退款总金额 (fen)
    fee: Decimal  # 手续费总金额 (yuan)
    order_amount: int  # 订单总金额 (fen)
    refund_requested: int  # 申请退款总金额 (fen)
    raw: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class TradeBill:
    lines: tuple[BillLine, ...]
    summary: BillSummary


# Summary column -> the BillLine field it must equal the sum of, over every detail line (as the simulator computes
# it; refund lines carry 应结/订单金额 0.00 and payment lines 退款/申请退款金额 0.00, so no filtering is needed).
_TOTALS = (
    (1, "settlement_total"),
    (2, "refund_amount"),
    (3, "recharge_coupon_refund"),
    (4, "fee"),
    (5, "order_amount"),
    (6, "refund_requested"),
)


_T = TypeVar("_T")


class _BadValue(Exception):
    """A field parser's complaint; the caller adds the line and the column."""


def parse_trade_bill(data: bytes) -> TradeBill:
    """Parse an ALL trade bill as downloaded (after gunzip): optional UTF-8 BOM, CRLF or LF line endings.

    Raises `BillFormatError` naming the line for anything but: the 27-column header, detail lines, the summary
    header, one summary row that agrees with the detail lines, and blank lines at the end.
    """
    with decimal.localcontext(_EXACT):
        return _parse(data)


def _parse(data: bytes) -> TradeBill:
    # Split on "\n" only: str.splitlines() would also break on U+2028, \x1c, \x85 ... inside 商品名称.
    rows = _decode(data).replace("\r\n", "\n").split("\n")
    end = len(rows)
    while end and not rows[end - 1].strip():
        end -= 1
    if end == 0:
        raise BillFormatError(1, "empty bill: expected the detail header")
    _check_header(rows[0], DETAIL_NAMES, 1)
    at = _find_summary_header(rows, end)
    if at + 1 == end:
        raise BillFormatError(at + 2, "missing the summary row after the summary header")
    for index in range(at + 2, end):
        if rows[index].strip():
            raise BillFormatError(index + 1, f"unexpected line after the summary row: {_clip(rows[index])}")
    lines = _detail_lines(rows, at)
    summary = _summary(rows[at + 1], at + 2)
    _cross_check(lines, summary, at + 2)
    return TradeBill(lines=lines, summary=summary)


def _decode(data: bytes) -> str:
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BillFormatError(line, f"not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _find_summary_header(rows: list[str], end: int) -> int:
    try:
        return rows.index(SUMMARY_HEADER, 1, end)
    except ValueError:
        pass
    # Not there verbatim: a header-like row (no backtick, seven columns) is a summary header misnamed.
    for index in range(1, end):
        if "`" not in rows[index] and rows[index].count(",") == len(SUMMARY_NAMES) - 1:
            _check_header(rows[index], SUMMARY_NAMES, index + 1)
    raise BillFormatError(end + 1, f"missing the summary header ({SUMMARY_HEADER}) and summary row")


def _check_header(row: str, names: tuple[str, ...], number: int) -> None:
    got = row.split(",")
    if len(got) != len(names):
        problem = f"expected the {len(names)}-column header {','.join(names)}, got {len(got)} columns"
        raise BillFormatError(number, f"{problem}: {_clip(row)}")
    for position, (name, seen) in enumerate(zip(names, got, strict=True), 1):
        if name != seen:
            raise BillFormatError(number, f"unknown header: column {position} is {seen!r}, expected {name!r}")


def _detail_lines(rows: list[str], stop: int) -> tuple[BillLine, ...]:
    fen = _Memo(_fen)
    fee = _Memo(_fee)
    width = len(DETAIL_NAMES)
    lines = []
    for index in range(1, stop):
        row = rows[index]
        f = _split(row, width)
        if f is None:
            raise BillFormatError(index + 1, _width_problem(row, width))
        try:
            # Positional for speed: this runs once per line of a bill that may have 10**5 lines.
            lines.append(BillLine(
                _beijing(f[0]), f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11],
                fen[f[12]], fen[f[13]], f[14], f[15], fen[f[16]], fen[f[17]], f[18], f[19],
                f[20], f[21], fee[f[22]], f[23], fen[f[24]], fen[f[25]], f[26], tuple(f),
            ))
        except _BadValue:
            raise BillFormatError(index + 1, _first_bad_field(f, _DETAIL_PARSED, DETAIL_NAMES)) from None
    return tuple(lines)


def _summary(row: str, number: int) -> BillSummary:
    f = _split(row, len(SUMMARY_NAMES))
    if f is None:
        raise BillFormatError(number, f"summary row: {_width_problem(row, len(SUMMARY_NAMES))}")
    try:
        return BillSummary(_count(f[0]), _fen(f[1]), _fen(f[2]), _fen(f[3]), _fee(f[4]), _fen(f[5]), _fen(f[6]),
                           tuple(f))
    except _BadValue:
        raise BillFormatError(number, f"summary row: {_first_bad_field(f, _SUMMARY_PARSED, SUMMARY_NAMES)}") from None


def _cross_check(lines: tuple[BillLine, ...], summary: BillSummary, number: int) -> None:
    if summary.trade_count != len(lines):
        raise BillFormatError(number, f"{SUMMARY_NAMES[0]} is {summary.trade_count} but the bill has "
                                      f"{len(lines)} detail lines")
    for column, field in _TOTALS:
        total = sum(map(attrgetter(field), lines))
        if getattr(summary, field) != total:
            shown = str(total) if field == "fee" else _yuan(total)
            raise BillFormatError(number, f"{SUMMARY_NAMES[column]} is {summary.raw[column]} but the detail lines "
                                          f"sum to {shown}")


def _split(row: str, width: int) -> list[str] | None:
    """The fields of a data row without their backtick, or None when they cannot number `width`.

    WeChat neither quotes nor escapes (a `"` is data, a comma in 商品名称 is not escaped), so the csv module
    adds nothing over str.split and is slower. Every data field starts with a backtick, which is what lets a
    comma inside free text be told apart from a separator.
    """
    commas = row.count(",")
    if commas == width - 1:
        if row[:1] == "`" and row.count(",`") == commas:
            return row[1:].split(",`")  # every field carries its backtick: one split strips them all
        return [field[1:] if field[:1] == "`" else field for field in row.split(",")]
    if commas > width - 1 and row[:1] == "`":
        # More commas than separators: some are inside 商品名称/商户数据包. Only ",`" starts a field.
        fields = row[1:].split(",`")
        if len(fields) == width:
            return fields
    return None


def _width_problem(row: str, width: int) -> str:
    if not row.strip():
        return "blank line where a data row was expected"
    return f"expected {width} fields, got {row.count(',') + 1}: {_clip(row)}"


def _first_bad_field(fields: list[str], parsed: tuple[tuple[int, Callable[[str], object]], ...],
                     names: tuple[str, ...]) -> str:
    """Which field broke a row, found again field by field: the fast path does not track columns."""
    for column, parse in parsed:
        try:
            parse(fields[column])
        except _BadValue as exc:
            return f"{names[column]} {_clip(fields[column])} {exc}"
    raise AssertionError("no field of the row is bad")  # pragma: no cover


def _clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class _Memo(dict[str, _T]):
    """A field parser memoized for one bill: amounts repeat (`0.00`, a few prices) line after line, and a hit
    is a dict subscript instead of a Python call."""

    def __init__(self, parse: Callable[[str], _T]) -> None:
        super().__init__()
        self.parse = parse

    def __missing__(self, text: str) -> _T:
        value = self[text] = self.parse(text)
        return value


def _fen(text: str) -> int:
    return int(_decimal(text, MONEY_PLACES).scaleb(MONEY_PLACES))


def _fee(text: str) -> Decimal:
    return _decimal(text, FEE_PLACES)


def _decimal(text: str, places: int) -> Decimal:
    # Validated by hand because Decimal() also takes "1e3", "NaN", "1_000", " 1 " and non-ASCII digits.
    digits = text[1:] if text[:1] == "-" else text
    whole, dot, fraction = digits.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (fraction.isascii() and fraction.isdigit())):
        raise _BadValue("is not a yuan amount")
    if len(fraction) > places:
        raise _BadValue(f"has more than {places} decimal places")
    if len(whole) > _MAX_INTEGER_DIGITS:
        raise _BadValue("is out of range")
    return Decimal(text)


def _count(text: str) -> int:
    # The official PHP SDK fixture writes the count as `45.0`: accept a zero fraction, nothing else.
    whole, dot, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (fraction and fraction.strip("0") == "")):
        raise _BadValue("is not a count")
    return int(whole)


def _beijing(text: str) -> dt.datetime:
    # Fixed separators and length first: fromisoformat() alone would also take dates, offsets and fractions.
    if len(text) != 19 or text[4:17:3] != "-- ::" or not text.isascii():
        raise _BadValue("is not YYYY-MM-DD HH:MM:SS")
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise _BadValue("is not a valid date and time") from None
    # The constructor, not .replace(tzinfo=): on 3.11 this is twice as fast, and it runs once per line.
    return dt.datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, 0, SHANGHAI)


def _yuan(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


# The parsed (non-text) columns in the order the fast path evaluates them.
_DETAIL_PARSED: tuple[tuple[int, Callable[[str], object]], ...] = (
    (0, _beijing), (12, _fen), (13, _fen), (16, _fen), (17, _fen), (22, _fee), (24, _fen), (25, _fen),
)
_SUMMARY_PARSED: tuple[tuple[int, Callable[[str], object]], ...] = (
    (0, _count), (1, _fen), (2, _fen), (3, _fen), (4, _fee), (5, _fen), (6, _fen),
)
