"""`run.py inspect OUT_TRADE_NO`: the timeline and schedule, read from the store directly."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from payflow.service import NewPayment, PaymentService
from payflow.states import Source, Trigger
from tests.fakes import FakeWechat

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _inspect(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
    env["PAYFLOW_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "run.py", "inspect", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


async def test_timeline_table_and_json(service: PaymentService, wechat: FakeWechat) -> None:
    created = await service.create_payment(NewPayment("order-1", 1999, "Beans", "oPayer"))
    paid = await service.core.apply(created.payment, Trigger.PAY, source=Source.QUERY,
                                payload={"amount": 1999, "transaction_id": "4200000001"})
    url = service.settings.database_url
    result = _inspect(url, paid.out_trade_no)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{paid.out_trade_no} · order order-1 · 19.99 CNY (1999 fen) · notified · paid")
    assert "next attempt" in lines[2]
    rows = [line.split() for line in lines[4:]]
    assert [(r[1], r[3], r[4], r[5]) for r in rows[1:]] == [
        ("—", "created", "create", "api"), ("created", "prepaid", "prepay", "api"),
        ("prepaid", "notified", "pay", "query")]
    assert "transaction_id=4200000001" in lines[-1]

    body = json.loads(_inspect(url, paid.out_trade_no, "--json").stdout)
    assert body["payment"]["state"] == "notified" and body["payment"]["event_id"] == paid.event_id
    assert [e["trigger"] for e in body["events"]] == ["create", "prepay", "pay"]


async def test_unknown_payment_and_bad_settings(service: PaymentService) -> None:
    result = _inspect(service.settings.database_url, "NOPE000001")
    assert result.returncode == 2 and "NOPE000001" in result.stderr and "Traceback" not in result.stderr
    result = _inspect("mysql://x", "NOPE000001")
    assert result.returncode == 2 and "PAYFLOW_DATABASE_URL" in result.stderr


async def test_refunds_are_shown_beside_the_timeline(service: PaymentService, wechat: FakeWechat) -> None:
    from payflow.service import NewRefund

    created = await service.create_payment(NewPayment("order-1", 1999, "Beans", "oPayer"))
    paid = await service.core.apply(created.payment, Trigger.PAY, source=Source.QUERY,
                                    payload={"amount": 1999, "transaction_id": "4200000001"},
                                    changes={"transaction_id": "4200000001", "paid_amount": 1999})
    await service.core.apply(paid, Trigger.SYNC, source=Source.BACKEND)
    await service.create_refund(NewRefund(paid.out_trade_no, 500, reason="damaged", out_refund_no="R-1"))
    url = service.settings.database_url
    result = _inspect(url, paid.out_trade_no)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "refund R-1 · 5.00 (500 fen) · processing · api" in text
    assert "WeChat refund 5030R-1" in text and "created → processing" in text and "accept" in text
    body = json.loads(_inspect(url, paid.out_trade_no, "--json").stdout)
    [refund] = body["refunds"]
    assert refund["out_refund_no"] == "R-1" and refund["state"] == "processing" and refund["origin"] == "api"
    assert [e["trigger"] for e in refund["events"]] == ["create", "accept"]
