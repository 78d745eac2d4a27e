"""Operator commands that work on the store directly: `run.py reconcile`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from collections.abc import Mapping

from payflow import errors, logs
from payflow.backend import BackendClient
from payflow.reconcile import ReconcileFailed, Reconciler, Report
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import open_store
from payflow.wechat.client import WechatPayClient

EXIT_CLEAN, EXIT_DISCREPANCIES, EXIT_ERROR = 0, 1, 2
_WECHAT = ("PAYFLOW_WECHAT_MCHID", "PAYFLOW_WECHAT_APPID", "PAYFLOW_WECHAT_MCH_SERIAL", "PAYFLOW_WECHAT_MCH_KEY_FILE",
           "PAYFLOW_WECHAT_APIV3_KEY", "PAYFLOW_WECHAT_PUBKEY_ID", "PAYFLOW_WECHAT_PUBKEY_FILE")


def reconcile(environ: Mapping[str, str], day: str, *, as_json: bool) -> int:
    """Exit 0 when the day is clean, 1 when it has discrepancies, 2 when it could not be reconciled."""
    try:
        bill_date = dt.date.fromisoformat(day)
        settings = Settings.from_env(environ)
    except ValueError:
        return _fail(f"--date {day!r} is not YYYY-MM-DD")
    except errors.SettingsError as exc:
        return _fail(str(exc))
    missing = [name for name in settings.missing_for_serve() if name in _WECHAT]
    if missing:
        return _fail(f"missing {', '.join(missing)}")
    logs.configure_logging(settings.log_format, level="WARNING")
    try:
        report = asyncio.run(_reconcile(settings, bill_date))
    except (ReconcileFailed, errors.SettingsError, errors.StoreUnavailable) as exc:
        return _fail(str(exc))
    print(json.dumps(report.to_json(), indent=2, ensure_ascii=False) if as_json else render(report))
    return EXIT_CLEAN if report.clean else EXIT_DISCREPANCIES


async def _reconcile(settings: Settings, bill_date: dt.date) -> Report:
    store = await open_store(settings.database_url)
    client = WechatPayClient.from_settings(settings, timeout=settings.wechat_timeout)
    backend = (BackendClient(settings.backend_url, settings.backend_secret, timeout=settings.backend_timeout)
               if settings.backend_url and settings.backend_secret else None)
    service = PaymentService(store, settings, wechat=client, backend=backend)
    try:
        report = await Reconciler(service, client).run(bill_date)
        await service.drain(grace=settings.backend_timeout + 1)  # healed payments are forwarded at once
        return report
    finally:
        await client.aclose()
        if backend is not None:
            await backend.aclose()
        await store.close()


def render(report: Report) -> str:
    run = report.run
    lines = [f"reconciliation of {run.bill_date}: {run.status}",
             "  " + ", ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))]
    if report.discrepancies:
        width = max(len(d.out_trade_no) for d in report.discrepancies)
        lines.append("")
        lines.append(f"  {'category':<17} {'out_trade_no':<{width}}  detail")
        for d in report.discrepancies:
            detail = ", ".join(f"{k}={v}" for k, v in d.detail.items())
            lines.append(f"  {d.category:<17} {d.out_trade_no:<{width}}  {detail}")
    return "\n".join(lines)


def _fail(message: str) -> int:
    print(f"reconcile: {message}", file=sys.stderr)
    return EXIT_ERROR
