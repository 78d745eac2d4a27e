"""Operator commands that work on the store directly: `run.py reconcile`, `run.py inspect`."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import pathlib
import sys
from collections.abc import Mapping

from payflow import backup as backups
from payflow import errors, logs, models
from payflow.backend import BackendClient
from payflow.reconcile import Reconciler, Report
from payflow.service import PaymentService
from payflow.settings import Settings
from payflow.store import open_store
from payflow.wechat.client import WechatPayClient

EXIT_CLEAN, EXIT_DISCREPANCIES, EXIT_ERROR = 0, 1, 2
EXIT_FAILED = 1  # backup: the copy failed
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
    except errors.PayflowError as exc:  # ReconcileFailed, the store, settings: a message, not a traceback
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


def backup(environ: Mapping[str, str], dest: str) -> int:
    """`payflow backup DEST`: exit 0 with a copy at `dest`; 2 when there is nothing payflow can copy
    (PostgreSQL, no store, bad settings); 1 when the copy failed (then `dest` is untouched)."""
    try:
        settings = Settings.from_env(environ)
    except errors.SettingsError as exc:
        return _fail(str(exc), command="backup")
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return _fail(backups.POSTGRES_ADVICE, command="backup")
    source = pathlib.Path(url.removeprefix("sqlite:///"))
    if not source.is_file():
        return _fail(f"no SQLite store at {str(source)!r} (PAYFLOW_DATABASE_URL={logs.redact_url(url)})",
                     command="backup")
    try:
        copy = backups.copy_sqlite(source, pathlib.Path(dest))
    except backups.BackupFailed as exc:
        return _fail(str(exc), command="backup", code=EXIT_FAILED)
    print(f"backed up {source} to {copy.path}: {copy.payments} payments, {copy.events} events, "
          f"schema version {copy.schema_version}, {copy.size} bytes")
    return EXIT_CLEAN


def _fail(message: str, *, command: str = "reconcile", code: int = EXIT_ERROR) -> int:
    print(f"{command}: {message}", file=sys.stderr)
    return code


def inspect(environ: Mapping[str, str], out_trade_no: str, *, as_json: bool) -> int:
    """`run.py inspect`: one payment's state, schedule and timeline, read from the store directly."""
    try:
        settings = Settings.from_env(environ)
    except errors.SettingsError as exc:
        return _fail(str(exc), command="inspect")
    try:
        found = asyncio.run(_inspect(settings, out_trade_no))
    except errors.StoreUnavailable as exc:
        return _fail(str(exc), command="inspect")
    if found is None:
        return _fail(f"no payment with out_trade_no {out_trade_no!r} in {logs.redact_url(settings.database_url)}",
                     command="inspect")
    payment, events, refunds = found
    if as_json:
        body = {"payment": {**payment.view(), "attempts": payment.attempts, "event_id": payment.event_id,
                            "next_attempt_at": payment.next_attempt_at.isoformat() if payment.next_attempt_at else None,
                            "created_at": payment.created_at.isoformat()},
                "events": [e.view() for e in events],
                "refunds": [{**refund.view(), "origin": refund.origin, "cause": refund.cause,
                             "attempts": refund.attempts, "next_attempt_at": _iso(refund.next_attempt_at),
                             "events": [e.view() for e in refund_events]} for refund, refund_events in refunds]}
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join([render_timeline(payment, events), *(render_refund(r, e) for r, e in refunds)]))
    return 0


Inspected = tuple[models.Payment, list[models.Event], list[tuple[models.Refund, list[models.RefundEvent]]]]


async def _inspect(settings: Settings, out_trade_no: str) -> Inspected | None:
    store = await open_store(settings.database_url)
    try:
        payment = await store.get(out_trade_no)
        if payment is None:
            return None
        refunds = [(refund, await store.refund_events(refund.out_refund_no))
                   for refund in await store.refunds_of(out_trade_no)]
        return payment, await store.events(out_trade_no), refunds
    finally:
        await store.close()


def render_refund(refund: models.Refund, events: list[models.RefundEvent]) -> str:
    """One refund beside the payment's timeline: its facts, then its own timeline."""
    lines = [
        f"  refund {refund.out_refund_no} · {refund.amount / 100:.2f} ({refund.amount} fen) · {refund.state.value}"
        f" · {refund.origin}" + (f" ({refund.cause})" if refund.cause else ""),
        f"    WeChat refund {refund.refund_id or '—'} · succeeded at {_when(refund.succeeded_at)}"
        + (f" · failure {refund.failure}" if refund.failure else ""),
        f"    next attempt {_when(refund.next_attempt_at)} · attempts so far {refund.attempts}",
    ]
    lines += _table([(_when(e.at), f"{e.from_state.value if e.from_state else '—'} → {e.to_state.value}", e.trigger,
                      e.source, _detail(e.detail)) for e in events], indent="    ")
    return "\n".join(lines)


def _detail(detail: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in detail.items() if v is not None)


def _table(rows: list[tuple[str, str, str, str, str]], *, indent: str) -> list[str]:
    header = ("time", "from → to", "trigger", "source", "detail")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    return [indent + "  ".join(str(row[i]).ljust(widths[i]) for i in range(4)) + "  " + row[4]
            for row in [header, *rows]]


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def render_timeline(payment: models.Payment, events: list[models.Event]) -> str:
    lines = [
        f"{payment.out_trade_no} · order {payment.order_id} · {payment.amount / 100:.2f} {payment.currency} "
        f"({payment.amount} fen) · {payment.state.value}{' · paid' if payment.paid else ''}",
        f"  transaction {payment.transaction_id or '—'} · paid at {_when(payment.paid_at)} · "
        f"expires at {_when(payment.expires_at)}",
        f"  next attempt {_when(payment.next_attempt_at)} · attempts so far {payment.attempts}"
        + (" · leased by a worker" if payment.lease_token else ""),
        "",
    ]
    lines += _table([(_when(e.at), f"{e.from_state.value if e.from_state else '—'} → {e.to_state.value}", e.trigger,
                      e.source, _detail(e.detail)) for e in events], indent="  ")
    return "\n".join(lines)


def _when(moment: dt.datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else "—"
