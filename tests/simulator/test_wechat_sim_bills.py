"""WeChat simulator trade bills: apply, download, SHA1, gzip and the ALL file format (WECHATPAY_V3.md §8)."""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import pytest

from tests.simulator.conftest import Merchant

DETAIL_COLUMNS = 27


async def _bill(wechat: Merchant, day: str, *, extra: str = "") -> tuple[dict[str, Any], bytes]:
    applied = await wechat.request("GET", f"/v3/bill/tradebill?bill_date={day}&bill_type=ALL{extra}")
    assert applied.status == 200, applied.body
    info = applied.json()
    base = str(wechat.client.make_url(""))
    assert info["download_url"].startswith(base.rstrip("/") + "/v3/billdownload/file?token=")
    path = info["download_url"][len(base.rstrip("/")):]
    download = await wechat.request("GET", path, verify=False)
    assert download.status == 200
    assert "Wechatpay-Signature" not in download.headers and "Content-Encoding" not in download.headers
    assert download.headers["Request-ID"].endswith("-0")
    return info, download.body


def _rows(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf")
    text = data[3:].decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")
    return [line.split(",") for line in text[:-2].split("\r\n")]


async def _paid(wechat: Merchant, out_trade_no: str, total: int, **order: Any) -> None:
    assert (await wechat.place(out_trade_no, amount={"total": total}, **order)).status == 200
    assert (await wechat.pay(out_trade_no))[0] == 200


async def test_an_all_bill_has_the_documented_layout_and_hash(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000101", 12345, attach="cart-1")
    await wechat.place("T20261126000102")  # unpaid: not in the bill
    info, data = await _bill(wechat, "2026-11-26")
    assert info["hash_type"] == "SHA1" and info["hash_value"] == hashlib.sha1(data).hexdigest()
    rows = _rows(data)
    assert len(rows[0]) == DETAIL_COLUMNS and rows[0][0] == "交易时间" and rows[0][-1] == "费率备注"
    detail = rows[1]
    assert len(detail) == DETAIL_COLUMNS and all(field.startswith("`") for field in detail)
    values = [field[1:] for field in detail]
    assert values[0] == "2026-11-26 12:00:00"
    assert values[1:4] == [wechat.keys.appid, wechat.keys.mchid, "0"]
    assert values[6:10] == ["T20261126000101", "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", "JSAPI", "SUCCESS"]
    assert values[12] == "123.45" and values[24] == "123.45" and values[25] == "0.00"
    assert values[21] == "cart-1" and values[22] == "0.74000" and values[23] == "0.60%"
    assert rows[2][0] == "总交易单数" and len(rows[2]) == 7
    assert rows[3] == ["`1", "`123.45", "`0.00", "`0.00", "`0.74000", "`123.45", "`0.00"]
    assert len(rows) == 4


async def test_a_gzip_bill_downloads_compressed_and_hashes_the_plain_file(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000103", 1)
    info, data = await _bill(wechat, "2026-11-26", extra="&tar_type=GZIP")
    plain = gzip.decompress(data)
    assert data[:2] == b"\x1f\x8b" and info["hash_value"] == hashlib.sha1(plain).hexdigest()
    assert _rows(plain)[1][6] == "`T20261126000103"


async def test_a_refund_is_a_refund_line_and_counts_in_the_summary(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000104", 1000)
    wechat.clock.advance(60)
    status, view = await wechat.control("POST", "/sim/v1/transactions/T20261126000104/refund",
                                        {"amount": 300, "out_refund_no": "R20261126000104"})
    assert status == 200 and view["refunded_amount"] == 300
    rows = _rows((await _bill(wechat, "2026-11-26"))[1])
    payment, refund = rows[1], rows[2]
    assert payment[9] == "`SUCCESS" and payment[12] == "`10.00"
    assert [f[1:] for f in refund[9:20]] == [
        "REFUND", "OTHERS", "CNY", "0.00", "0.00", view["refunds"][0]["refund_id"], "R20261126000104", "3.00",
        "0.00", "ORIGINAL", "SUCCESS"]
    assert refund[0] == "`2026-11-26 12:01:00" and refund[24:26] == ["`0.00", "`3.00"]
    assert rows[4] == ["`2", "`10.00", "`3.00", "`0.00", "`0.04000", "`10.00", "`3.00"]


async def test_bill_types_success_and_refund_filter_lines(wechat: Merchant) -> None:
    await _paid(wechat, "T20261126000105", 500)
    await wechat.control("POST", "/sim/v1/transactions/T20261126000105/refund", {})
    for bill_type, state in (("SUCCESS", "`SUCCESS"), ("REFUND", "`REFUND")):
        path = f"/v3/bill/tradebill?bill_date=2026-11-26&bill_type={bill_type}"
        url = (await wechat.request("GET", path)).json()["download_url"]
        base = str(wechat.client.make_url("")).rstrip("/")
        rows = _rows((await wechat.request("GET", url[len(base):], verify=False)).body)
        assert [row[9] for row in rows[1:-2]] == [state]


async def test_bills_split_days_on_the_shanghai_calendar(wechat: Merchant) -> None:
    wechat.clock.advance(11 * 3600 + 59 * 60 + 59)  # 23:59:59 in Shanghai
    await _paid(wechat, "T20261126000106", 100)
    wechat.clock.advance(1)  # midnight in Shanghai, 16:00 UTC the same UTC day
    await _paid(wechat, "T20261127000107", 200)
    day1, day2 = _rows((await _bill(wechat, "2026-11-26"))[1]), _rows((await _bill(wechat, "2026-11-27"))[1])
    assert [row[6] for row in day1[1:-2]] == ["`T20261126000106"]
    assert [row[6] for row in day2[1:-2]] == ["`T20261127000107"] and day2[1][0] == "`2026-11-27 00:00:00"


async def test_an_order_recorded_behind_payflows_back_is_in_its_days_bill(wechat: Merchant) -> None:
    status, _ = await wechat.control("POST", "/sim/v1/transactions", {
        "out_trade_no": "X20261125000001", "amount": 777, "paid": True,
        "success_time": "2026-11-25T08:30:00+08:00"})
    assert status == 201
    rows = _rows((await _bill(wechat, "2026-11-25"))[1])
    assert (rows[1][0], rows[1][6], rows[1][12]) == ("`2026-11-25 08:30:00", "`X20261125000001", "`7.77")


async def test_a_day_without_trades_has_an_empty_bill(wechat: Merchant) -> None:
    rows = _rows((await _bill(wechat, "2026-11-20"))[1])
    assert len(rows) == 3 and rows[2] == ["`0", "`0.00", "`0.00", "`0.00", "`0.00000", "`0.00", "`0.00"]


@pytest.mark.parametrize(
    ("query", "code"),
    [("bill_date=2026-11-27", "NO_STATEMENT_EXIST"), ("bill_date=2026/11/26", "PARAM_ERROR"),
     ("bill_date=2026-02-30", "PARAM_ERROR"), ("", "PARAM_ERROR"),
     ("bill_date=2026-11-26&bill_type=ODD", "PARAM_ERROR"),
     ("bill_date=2026-11-26&tar_type=ZIP", "PARAM_ERROR")],
)
async def test_a_bad_or_future_bill_date_is_400(wechat: Merchant, query: str, code: str) -> None:
    answer = await wechat.request("GET", f"/v3/bill/tradebill?{query}" if query else "/v3/bill/tradebill")
    assert (answer.status, answer.json()["code"]) == (400, code)


async def test_a_download_needs_a_signed_request_and_a_live_token(wechat: Merchant) -> None:
    applied = (await wechat.request("GET", "/v3/bill/tradebill?bill_date=2026-11-26")).json()
    path = applied["download_url"][len(str(wechat.client.make_url("")).rstrip("/")):]
    async with wechat.client.get(path, headers={"Accept": "*/*"}) as unsigned:
        assert unsigned.status == 401
    bogus = await wechat.request("GET", "/v3/billdownload/file?token=nope")
    assert (bogus.status, bogus.json()["code"]) == (400, "INVALID_REQUEST")
    wechat.clock.advance(5 * 60)
    expired = await wechat.request("GET", path)
    assert (expired.status, expired.json()["code"]) == (400, "INVALID_REQUEST")
