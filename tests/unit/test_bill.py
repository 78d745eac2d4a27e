"""Trade bill parsing (WECHATPAY_V3.md §8.3): the §11.8 fixture, round trips through the simulator's bill writer,
yuan to fen, and every way a bill can be malformed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from payflow import errors
from payflow.wechat.bill import (
    DETAIL_HEADER,
    SHANGHAI,
    SUMMARY_HEADER,
    BillFormatError,
    BillLine,
    BillSummary,
    TradeBill,
    parse_trade_bill,
)
from simulator.wechat import bills
from simulator.wechat.ledger import JsapiRequest, Ledger

VECTORS = Path(__file__).parent / "vectors"
BOM = b"\xef\xbb\xbf"

# A valid detail row (fields without their backtick); tests override single columns.
BASE_ROW = (
    "2026-11-26 10:00:00", "wxd678efh567hg6787", "1230000109", "0", "", "4200000001202611260000000001",
    "T20261126000001", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", "SUCCESS", "OTHERS", "CNY", "1.00", "0.00", "0", "0",
    "0.00", "0.00", "", "", "desc", "attach", "0.01000", "0.60%", "1.00", "0.00", "",
)
BASE_SUMMARY = ("1", "1.00", "0.00", "0.00", "0.01000", "1.00", "0.00")
SETTLEMENT, ORDER_AMOUNT, FEE = 12, 24, 22


def _row(**columns: str) -> list[str]:
    """BASE_ROW with columns replaced, given as c<index>=value."""
    row = list(BASE_ROW)
    for key, value in columns.items():
        row[int(key[1:])] = value
    return row


def _data(fields: list[str] | tuple[str, ...]) -> str:
    return ",".join("`" + field for field in fields)


def _bill(
    rows: list[list[str]] | None = None,
    summary: list[str] | tuple[str, ...] | None = BASE_SUMMARY,
    *,
    after: Sequence[str] = (),
) -> bytes:
    """A bill as WeChat writes it: BOM, CRLF, backtick-prefixed data fields."""
    lines = [DETAIL_HEADER, *(_data(r) for r in ([_row()] if rows is None else rows))]
    if summary is not None:
        lines += [SUMMARY_HEADER, _data(summary)]
    return BOM + "".join(line + "\r\n" for line in [*lines, *after]).encode()


def _error(data: bytes) -> BillFormatError:
    with pytest.raises(BillFormatError) as caught:
        parse_trade_bill(data)
    return caught.value


# -- the §11.8 fixture --------------------------------------------------------------------------------


FIXTURE_LF = (VECTORS / "gunsluo_tradebill_lf.csv").read_bytes()

FIRST_LINE = BillLine(
    trade_time=dt.datetime(2021, 1, 28, 17, 7, 11, tzinfo=SHANGHAI), appid="wx81be3101902f7cb2",
    mchid="1601959334", sub_mchid="0", device_info="", transaction_id="4200000925202101284997714292",
    out_trade_no="S20210128170702357723", openid="ofyak5qR_1wYsC99CsWA6R9MJazA", trade_type="NATIVE",
    trade_state="SUCCESS", bank_type="OTHERS", currency="CNY", settlement_total=1, coupon_amount=0, refund_id="0",
    out_refund_no="0", refund_amount=0, recharge_coupon_refund=0, refund_type="", refund_status="",
    description="for testing", attach="cipher code", fee=Decimal("0.00000"), rate="1.00%", order_amount=1,
    refund_requested=0, rate_note="",
    raw=("2021-01-28 17:07:11", "wx81be3101902f7cb2", "1601959334", "0", "", "4200000925202101284997714292",
         "S20210128170702357723", "ofyak5qR_1wYsC99CsWA6R9MJazA", "NATIVE", "SUCCESS", "OTHERS", "CNY", "0.01",
         "0.00", "0", "0", "0.00", "0.00", "", "", "for testing", "cipher code", "0.00000", "1.00%", "0.01", "0.00",
         ""),
)


@pytest.mark.parametrize(
    "wire",
    [
        BOM + FIXTURE_LF.replace(b"\n", b"\r\n"),  # what WeChat serves (the hash of §11.8 is over these bytes)
        FIXTURE_LF,
        BOM + FIXTURE_LF,
        FIXTURE_LF.replace(b"\n", b"\r\n"),
    ],
    ids=["bom-crlf", "lf", "bom-lf", "crlf"],
)
def test_the_gunsluo_fixture_parses_field_by_field_whatever_the_bom_and_line_endings(wire: bytes) -> None:
    bill = parse_trade_bill(wire)
    assert bill.lines[0] == FIRST_LINE
    assert bill.lines[0].trade_time.utcoffset() == dt.timedelta(hours=8)
    assert bill.lines[0].trade_time.isoformat() == "2021-01-28T17:07:11+08:00"
    assert [line.out_trade_no for line in bill.lines] == [
        "S20210128170702357723", "S20210128153505214586", "S20210128165824499930",
    ]
    assert [line.trade_time.hour for line in bill.lines] == [17, 15, 16]
    assert bill.summary == BillSummary(
        trade_count=3, settlement_total=3, refund_amount=0, recharge_coupon_refund=0, fee=Decimal("0"),
        order_amount=3, refund_requested=0, raw=("3", "0.03", "0.00", "0.00", "0.00000", "0.03", "0.00"),
    )


def test_a_parsed_bill_is_frozen() -> None:
    bill = parse_trade_bill(FIXTURE_LF)
    assert isinstance(bill, TradeBill) and isinstance(bill.lines, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        bill.lines[0].order_amount = 2  # type: ignore[misc]


# -- round trip through the simulator's writer -----------------------------------------------------------

DAY = dt.date(2026, 11, 26)


def _at(hour: int, minute: int = 0, second: int = 0, day: dt.date = DAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, second), SHANGHAI)


def _ledger() -> Ledger:
    ledger = Ledger("1230000109", "wxd678efh567hg6787")

    def paid(out_trade_no: str, total: int, at: dt.datetime, description: str, attach: str | None = None) -> None:
        body = {"out_trade_no": out_trade_no, "total": total}
        ledger.place(JsapiRequest(appid=ledger.appid, mchid=ledger.mchid, description=description,
                                  out_trade_no=out_trade_no, notify_url="https://pay.example.com/n", total=total,
                                  openid=f"o-{out_trade_no}", params=body, attach=attach), at)
        ledger.pay(out_trade_no, at)

    paid("T1", 12345, _at(10), "咖啡, 大杯", attach="cart-1,2")  # commas inside fields: WeChat does not escape
    paid("T2", 1, _at(11), "一分钱")
    ledger.refund("T2", _at(12), out_refund_no="R2")
    paid("T3", 100000, _at(13), "手机")
    ledger.refund("T3", _at(14), amount=33333, out_refund_no="R3")
    paid("T4", 500, _at(23, 59, 59, DAY - dt.timedelta(days=1)), "昨天")  # paid the day before, refunded today
    ledger.refund("T4", _at(0, 0, 30), amount=200, out_refund_no="R4")
    ledger.place(JsapiRequest(appid=ledger.appid, mchid=ledger.mchid, description="unpaid", out_trade_no="T5",
                              notify_url="https://pay.example.com/n", total=9, openid="o-T5", params={}), _at(9))
    return ledger


def test_a_simulator_bill_round_trips_to_exact_fen() -> None:
    ledger = _ledger()
    data = bills.render(ledger.orders(_at(23)), DAY)
    assert data.startswith(BOM) and b"\r\n" in data
    bill = parse_trade_bill(data)

    assert [(line.out_trade_no, line.trade_state) for line in bill.lines] == [
        ("T4", "REFUND"), ("T1", "SUCCESS"), ("T2", "SUCCESS"), ("T2", "REFUND"), ("T3", "SUCCESS"),
        ("T3", "REFUND"),
    ]
    t4_refund, t1, t2, t2_refund, t3, t3_refund = bill.lines
    assert t1.trade_time == _at(10) and t1.trade_time.tzinfo is SHANGHAI
    assert (t1.settlement_total, t1.order_amount, t1.refund_amount, t1.refund_requested) == (12345, 12345, 0, 0)
    assert t1.fee == Decimal("0.74") and t1.rate == "0.60%"
    assert (t1.description, t1.attach) == ("咖啡, 大杯", "cart-1,2")
    assert len(t1.raw) == 27 and t1.raw[20] == "咖啡, 大杯"
    order = ledger.get("T1", _at(23))
    assert (t1.appid, t1.mchid, t1.sub_mchid, t1.transaction_id, t1.openid) == (
        "wxd678efh567hg6787", "1230000109", "0", order.transaction_id, "o-T1",
    )
    assert (t1.refund_id, t1.out_refund_no, t1.refund_type, t1.refund_status) == ("0", "0", "", "")

    assert (t2.order_amount, t2.fee) == (1, Decimal("0"))
    assert (t2_refund.settlement_total, t2_refund.order_amount, t2_refund.refund_amount) == (0, 0, 1)
    assert (t2_refund.refund_requested, t2_refund.out_refund_no) == (1, "R2")
    assert t2_refund.refund_id == ledger.get("T2", _at(23)).refunds[0].refund_id
    assert (t2_refund.refund_type, t2_refund.refund_status, t2_refund.trade_time) == ("ORIGINAL", "SUCCESS", _at(12))

    assert (t3.order_amount, t3.fee) == (100000, Decimal("6.00"))
    assert (t3_refund.refund_amount, t3_refund.refund_requested) == (33333, 33333)
    assert t3_refund.fee == Decimal("-2.00")  # the fee returned pro rata is negative
    assert (t4_refund.refund_amount, t4_refund.fee, t4_refund.trade_time) == (200, Decimal("-0.01"), _at(0, 0, 30))

    assert bill.summary == BillSummary(
        trade_count=6, settlement_total=112346, refund_amount=33534, recharge_coupon_refund=0,
        fee=Decimal("4.73"), order_amount=112346, refund_requested=33534,
        raw=("6", "1123.46", "335.34", "0.00", "4.73000", "1123.46", "335.34"),
    )


def test_the_simulators_day_before_and_empty_day_parse() -> None:
    ledger = _ledger()
    before = parse_trade_bill(bills.render(ledger.orders(_at(23)), DAY - dt.timedelta(days=1)))
    assert [(line.out_trade_no, line.order_amount) for line in before.lines] == [("T4", 500)]
    assert before.summary.trade_count == 1 and before.summary.settlement_total == 500

    empty = parse_trade_bill(bills.render(ledger.orders(_at(23)), DAY + dt.timedelta(days=1)))
    assert empty.lines == ()
    assert empty.summary == BillSummary(0, 0, 0, 0, Decimal("0"), 0, 0, ("0", "0.00", "0.00", "0.00", "0.00000",
                                                                       "0.00", "0.00"))


def test_success_and_refund_bill_types_of_the_simulator_are_not_all_bills() -> None:
    # WeChat's SUCCESS bill has 20 columns and its REFUND bill 29 (docs/wechatpay-refunds.md); payflow reads ALL.
    orders = _ledger().orders(_at(23))
    for bill_type, width in (("SUCCESS", 20), ("REFUND", 29)):
        with pytest.raises(BillFormatError, match=f"got {width} columns") as raised:
            parse_trade_bill(bills.render(orders, DAY, bill_type))
        assert raised.value.line == 1


# -- fields -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yuan", "fen"),
    [("0.01", 1), ("0.10", 10), ("1.1", 110), ("100", 10000), ("-0.01", -1), ("12345678.99", 1234567899),
     ("0", 0), ("007.50", 750)],
)
def test_yuan_becomes_exact_integer_fen(yuan: str, fen: int) -> None:
    summary = ("1", yuan, "0.00", "0.00", "0.01", yuan, "0.00")
    bill = parse_trade_bill(_bill([_row(c12=yuan, c24=yuan)], summary))
    line = bill.lines[0]
    assert line.settlement_total == fen and line.order_amount == fen and bill.summary.order_amount == fen
    assert type(line.settlement_total) is int and type(bill.summary.settlement_total) is int


@pytest.mark.parametrize(
    ("amount", "problem"),
    [("1.001", "more than 2 decimal places"), ("abc", "is not a yuan amount"), ("", "is not a yuan amount"),
     ("1.", "is not a yuan amount"), (".5", "is not a yuan amount"), ("1e2", "is not a yuan amount"),
     ("NaN", "is not a yuan amount"), ("+1.00", "is not a yuan amount"), (" 1.00", "is not a yuan amount"),
     ("1_000", "is not a yuan amount"), ("１.00", "is not a yuan amount"), ("--1", "is not a yuan amount"),
     ("1234567890123456.00", "out of range")],
)
def test_a_bad_amount_names_its_line_and_column(amount: str, problem: str) -> None:
    data = _bill([_row(), _row(c24=amount)], ("2", "2.00", "0.00", "0.00", "0.02", "2.00", "0.00"))
    error = _error(data)
    assert error.line == 3 and str(error).startswith("line 3: 订单金额 ")
    assert repr(amount) in str(error) and problem in str(error)


def test_amounts_stay_exact_under_a_callers_low_precision_decimal_context() -> None:
    summary = ("2", "24691357.98", "0.00", "0.00", "0.02002", "24691357.98", "0.00")
    data = _bill([_row(c12="12345678.99", c22="0.01001", c24="12345678.99")] * 2, summary)
    with decimal.localcontext(decimal.Context(prec=3)):
        bill = parse_trade_bill(data)
    assert bill.lines[0].order_amount == 1234567899 and bill.summary.order_amount == 2469135798
    assert bill.summary.fee == Decimal("0.02002")


def test_fees_keep_five_decimals_as_yuan_and_no_more() -> None:
    bill = parse_trade_bill(_bill([_row(c22="0.00601")], ("1", "1.00", "0.00", "0.00", "0.00601", "1.00", "0.00")))
    assert bill.lines[0].fee == Decimal("0.00601") and bill.summary.fee == Decimal("0.00601")
    error = _error(_bill([_row(c22="0.006011")]))
    assert error.line == 2 and "手续费 '0.006011' has more than 5 decimal places" in str(error)


def test_a_bad_amount_in_the_summary_names_the_summary_line() -> None:
    error = _error(_bill(summary=("1", "1.00", "0.00", "0.00", "0.01", "1.00", "0.001")))
    assert error.line == 4 and "summary row: 申请退款总金额 '0.001' has more than 2 decimal places" in str(error)


def test_the_trade_count_takes_the_php_fixtures_zero_fraction_but_nothing_else() -> None:
    assert parse_trade_bill(_bill(summary=("1.0", *BASE_SUMMARY[1:]))).summary.trade_count == 1
    for count in ("1.5", "-1", "1.", "one", ""):
        error = _error(_bill(summary=(count, *BASE_SUMMARY[1:])))
        assert error.line == 4 and "总交易单数" in str(error) and "is not a count" in str(error)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("2021-01-28T17:07:11", "is not YYYY-MM-DD HH:MM:SS"), ("2021/01/28 17:07:11", "is not YYYY-MM-DD HH:MM:SS"),
     ("2021-01-28 17:07", "is not YYYY-MM-DD HH:MM:SS"), ("2021-01-28 17:07:11+08:00", "is not YYYY-MM-DD HH:MM:SS"),
     ("2021-02-30 10:00:00", "is not a valid date and time"), ("2021-01-28 24:00:00", "is not a valid date and time"),
     ("２021-01-28 17:07:11", "is not YYYY-MM-DD HH:MM:SS")],
)
def test_a_bad_trade_time_names_its_line(text: str, problem: str) -> None:
    error = _error(_bill([_row(c0=text)]))
    assert error.line == 2 and f"交易时间 {text!r} {problem}" in str(error)


def test_exactly_one_backtick_is_stripped_and_a_field_without_one_is_tolerated() -> None:
    row = _data(_row(c20="`quoted", c21='say "hi"'))
    row = row.replace("`JSAPI", "JSAPI").replace("`oUpF8", "oUpF8").replace("`1.00", "1.00", 1)
    data = BOM + "\r\n".join([DETAIL_HEADER, row, SUMMARY_HEADER, _data(BASE_SUMMARY), ""]).encode()
    line = parse_trade_bill(data).lines[0]
    assert (line.description, line.attach) == ("`quoted", 'say "hi"')
    assert (line.trade_type, line.openid, line.settlement_total) == ("JSAPI", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", 100)


def test_commas_inside_free_text_are_told_apart_by_the_backticks() -> None:
    line = parse_trade_bill(_bill([_row(c20="a,b,,c", c21=",x,")])).lines[0]
    assert (line.description, line.attach, line.fee, line.rate) == ("a,b,,c", ",x,", Decimal("0.01"), "0.60%")


def test_only_line_breaks_end_a_line() -> None:
    # A lone CR, U+2028 or U+0085 in 商品名称 is data: str.splitlines() would have cut the line there.
    line = parse_trade_bill(_bill([_row(c20="a\rb\u2028c\x85d")])).lines[0]
    assert line.description == "a\rb\u2028c\x85d"


def test_blank_lines_at_the_end_are_fine() -> None:
    bill = parse_trade_bill(_bill(after=["", "  ", ""]))
    assert bill.summary.trade_count == 1
    assert parse_trade_bill(_bill().replace(b"\r\n", b"\n") + b"\n\n") == bill


def test_the_error_is_a_payflow_error_with_its_code() -> None:
    error = _error(b"")
    assert isinstance(error, errors.PayflowError) and error.code == "bill_format"
    assert error.line == 1 and str(error) == "line 1: empty bill: expected the detail header"
    assert _error(BOM + b"\r\n\r\n").line == 1


# -- structure ------------------------------------------------------------------------------------------


def test_a_detail_row_with_the_wrong_number_of_fields_names_its_line() -> None:
    error = _error(_bill([_row(), _row()[:26]], ("2", "2.00", "0.00", "0.00", "0.02", "2.00", "0.00")))
    assert error.line == 3 and "expected 27 fields, got 26" in str(error)
    error = _error(_bill([[*_row(), "extra"]]))
    assert error.line == 2 and "expected 27 fields, got 28" in str(error)


def test_a_summary_row_with_the_wrong_number_of_fields_names_its_line() -> None:
    error = _error(_bill(summary=BASE_SUMMARY[:6]))
    assert error.line == 4 and "summary row: expected 7 fields, got 6" in str(error)


def test_a_blank_line_between_detail_rows_is_refused() -> None:
    data = _bill([_row(), _row()], ("2", "2.00", "0.00", "0.00", "0.02", "2.00", "0.00"))
    head, rest = data.split(b"\r\n", 2)[:2], data.split(b"\r\n", 2)[2]
    error = _error(b"\r\n".join([*head, b"", rest]))
    assert error.line == 3 and "blank line" in str(error)


def test_an_unknown_detail_header_names_the_column() -> None:
    error = _error(_bill().replace("商户号".encode(), "商户编号".encode(), 1))
    assert error.line == 1 and "unknown header: column 3 is '商户编号', expected '商户号'" in str(error)
    error = _error(_bill().replace(",费率备注".encode(), b"", 1))
    assert error.line == 1 and "expected the 27-column header" in str(error) and "got 26 columns" in str(error)
    assert _error(_bill().replace(BOM, BOM + BOM)).line == 1  # a second BOM is part of the header


def test_an_unknown_summary_header_names_its_line() -> None:
    error = _error(_bill().replace("退款总金额".encode(), "退款总额".encode(), 1))
    assert error.line == 3 and "unknown header: column 3 is '退款总额', expected '退款总金额'" in str(error)


def test_a_missing_summary_is_refused() -> None:
    error = _error(_bill([_row(), _row()], summary=None))
    assert error.line == 4 and "missing the summary header" in str(error)
    without_row = _bill().rsplit(b"\r\n", 2)[0] + b"\r\n"
    error = _error(without_row)
    assert error.line == 4 and "missing the summary row" in str(error)


def test_a_detail_row_after_the_summary_is_refused() -> None:
    error = _error(_bill(after=[_data(_row())]))
    assert error.line == 5 and "unexpected line after the summary row" in str(error)
    error = _error(_bill(after=["", _data(_row()), ""]))
    assert error.line == 6
    error = _error(_bill(after=[SUMMARY_HEADER, _data(BASE_SUMMARY)]))
    assert error.line == 5


@pytest.mark.parametrize(
    ("column", "value", "name"),
    [(0, "2", "总交易单数"), (1, "1.01", "应结订单总金额"), (2, "0.01", "退款总金额"), (3, "0.01", "充值券退款总金额"),
     (4, "0.01001", "手续费总金额"), (5, "0.99", "订单总金额"), (6, "-0.01", "申请退款总金额")],
)
def test_a_summary_that_disagrees_with_the_details_names_the_summary_line(column: int, value: str, name: str) -> None:
    summary = list(BASE_SUMMARY)
    summary[column] = value
    error = _error(_bill(summary=summary))
    assert error.line == 4 and str(error).startswith(f"line 4: {name} is ")


def test_the_summary_check_counts_refund_lines_and_sums_signed_fees() -> None:
    refund = _row(c9="REFUND", c12="0.00", c14="5000", c15="R1", c16="0.40", c18="ORIGINAL", c19="SUCCESS",
                  c22="-0.00240", c24="0.00", c25="0.40")
    good = ("2", "1.00", "0.40", "0.00", "0.00760", "1.00", "0.40")
    bill = parse_trade_bill(_bill([_row(), refund], good))
    assert bill.summary.fee == Decimal("0.0076") and bill.lines[1].refund_requested == 40
    # Summing absolute fees, or leaving refund lines out of the count or the refund totals, would disagree.
    for wrong in (("1", *good[1:]), (*good[:4], "0.01240", *good[5:]), (*good[:2], "0.00", *good[3:])):
        assert _error(_bill([_row(), refund], wrong)).line == 5


def test_a_bill_that_is_not_utf8_names_the_line() -> None:
    data = _bill([_row(c20="ok"), _row(c20="bad")], ("2", "2.00", "0.00", "0.00", "0.02", "2.00", "0.00"))
    error = _error(data.replace(b"bad", b"b\xffd"))
    assert error.line == 3 and "not UTF-8" in str(error)
