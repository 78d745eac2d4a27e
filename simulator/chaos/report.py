"""The chaos verdict: ledgers gathered, invariants checked, and the report as a table, JSON and a plot."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import pathlib
import statistics
from typing import Any, Protocol

from aiohttp import web

from payflow.clock import SHANGHAI
from payflow.store import PaymentStore
from simulator import backend as backend_sim
from simulator.chaos import checks
from simulator.chaos.process import PayflowProcess
from simulator.chaos.scenario import Options, Scenario
from simulator.wechat.appkeys import FAULTS, LEDGER, NOTIFIER, REFUNDS


@dataclasses.dataclass
class Outcome:
    options: Options
    invariants: list[checks.Invariant]
    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    latencies: list[float]

    @property
    def ok(self) -> bool:
        return all(i.holds for i in self.invariants)


class FinishedRun(Protocol):
    """What `build` reads from the driver's run, while its simulators and payflow's store are still up."""

    options: Options
    plan: Scenario
    store: PaymentStore
    wechat_app: web.Application
    backend_app: web.Application
    replicas: list[PayflowProcess]
    acknowledged: dict[str, str]
    pay_refused: dict[str, str]
    creation_failed: list[str]
    placements: dict[str, dict[str, Any]]
    timeline: list[dict[str, Any]]
    crash_times: list[float]
    rotation_times: list[float]
    reconcile_runs: list[dict[str, Any]]
    db_restarts: int
    # out_refund_no → what became of the driver's request: order_id, out_trade_no, amount, tries, first, result
    refund_requests: dict[str, dict[str, Any]]
    refunds_acknowledged: dict[str, str]  # out_refund_no → out_trade_no
    outside_refund: dict[str, Any] | None  # the refund made outside payflow: out_refund_no, out_trade_no, ...

    @property
    def kills(self) -> int: ...

    def elapsed(self) -> float: ...


async def build(run: FinishedRun, exit_code: int | None) -> Outcome:
    now = dt.datetime.now(dt.UTC)
    payflow = await read_store(run.store)
    wechat_orders = run.wechat_app[LEDGER].orders(now)
    wechat: dict[str, dict[str, Any]] = {
        o.out_trade_no: {"trade_state": o.state.value, "amount": o.total, "paid_amount": o.paid_amount,
                         "success_time": o.success_time, "refunded_amount": o.refunded_amount}
        for o in wechat_orders}
    wechat_refunds: dict[str, dict[str, Any]] = {
        r.out_refund_no: {"out_trade_no": o.out_trade_no, "amount": r.amount, "status": str(r.status),
                          "via": "api" if r.params is not None else "platform",
                          "day": r.created.astimezone(SHANGHAI).date().isoformat()}
        for o, r in run.wechat_app[REFUNDS].refunds(now)}
    backend: dict[str, dict[str, Any]] = {
        o.order_id: {"status": o.status, "paid_amount": o.paid_amount, "out_trade_no": o.out_trade_no,
                     "duplicates": o.duplicates, "events": o.paid_events_received,
                     "first_paid_at": o.first_paid_at, "closed_events": list(o.closed_events),
                     "refunds": dict(o.refunds), "failed_refunds": list(o.failed_refunds),
                     "refunded_amount": o.refunded_amount}
        for o in run.backend_app[backend_sim.LEDGER].orders.values()}
    payflow_refunds = {rno: {**refund, "out_trade_no": no} for no, row in payflow.items()
                       for rno, refund in row["refunds"].items()}
    days = sorted({t["success_time"].astimezone(SHANGHAI).date() for t in wechat.values()
                   if t["success_time"] is not None}
                  | {dt.date.fromisoformat(r["day"]) for r in wechat_refunds.values()})
    discrepancies = [d.view() for day in days for d in await run.store.discrepancies(day)]
    fates = {o.order_id: o.fate for o in run.plan.orders}
    outside = {run.plan.outside.out_refund_no: run.acknowledged.get(run.plan.outside.order_id, "")} \
        if run.plan.outside is not None else {}
    reconciled = frozenset(r["date"] for r in run.reconcile_runs if r["exit"] in (0, 1))
    invariants = checks.check(checks.Ledgers(
        wechat, backend, payflow, discrepancies, run.acknowledged, fates, wechat_refunds=wechat_refunds,
        payflow_refunds=payflow_refunds, refunds_acknowledged=run.refunds_acknowledged, outside=outside,
        reconciled_days=reconciled))

    latencies = []
    for no, t in wechat.items():
        order_id = payflow.get(no, {}).get("order_id")
        paid = backend.get(order_id or "", {})
        if t["success_time"] is not None and paid.get("first_paid_at") is not None:
            latencies.append(max(0.0, (paid["first_paid_at"] - t["success_time"]).total_seconds()))
    rows = []
    by_order = {row["order_id"]: (no, row) for no, row in payflow.items()}
    for order in run.plan.orders:
        no, row = by_order.get(order.order_id, (run.acknowledged.get(order.order_id), {}))
        t, b = wechat.get(no or "", {}), backend.get(order.order_id, {})
        rows.append({
            "order_id": order.order_id, "fate": order.fate, "amount": order.amount, "out_trade_no": no,
            "payflow_state": row.get("state"), "payflow_reason": row.get("reason"),
            "paid_via": row.get("pay_source"), "wechat_state": t.get("trade_state"),
            "wechat_paid_amount": t.get("paid_amount"), "backend_status": b.get("status"),
            "backend_paid_amount": b.get("paid_amount"), "backend_events": b.get("events"),
            "backend_duplicates": b.get("duplicates"), "pay_refused": run.pay_refused.get(order.order_id),
            "refund_kind": order.refund_kind, "wechat_refunded_amount": t.get("refunded_amount"),
            "payflow_refunds": row.get("refunds"), "backend_refunds": b.get("refunds"),
            "backend_closed_events": len(b.get("closed_events") or []),
        })

    notifier = collections.Counter[str]()
    for n in run.wechat_app[NOTIFIER].notifications():
        notifier.update(n.stats.to_json())
    summary = {
        "strategy": run.options.strategy, "seed": run.options.seed, "orders": len(run.plan.orders),
        "wall_seconds": round(run.elapsed(), 1),
        "scenario": dict(collections.Counter(fates.values())),
        "payflow_states": dict(collections.Counter(r["state"] for r in payflow.values())),
        "recovered_via": dict(collections.Counter(r["pay_source"] for r in payflow.values() if r["pay_source"])),
        "paid_at_wechat": sum(1 for t in wechat.values() if t["trade_state"] in ("SUCCESS", "REFUND")),
        "paid_at_backend": sum(1 for b in backend.values() if b["status"] == "paid"),
        "paid_at_wechat_not_at_backend": len(invariants[0].failures),
        "crashes": run.kills, "crash_times": run.crash_times, "payflow_exit_on_sigterm": exit_code,
        "trade_types": dict(collections.Counter(o.trade_type for o in run.plan.orders)),
        "key_mode": run.options.key_mode, "certificate_rotations": run.rotation_times,
        "replicas": len(run.replicas), "database": "postgresql" if run.options.database else "sqlite",
        "db_restarts": run.db_restarts,
        "duplicate_deliveries": sum(b["duplicates"] or 0 for b in backend.values()),
        "faults": {"wechat_notifications": dict(notifier), "wechat": dict(run.wechat_app[FAULTS].injected),
                   "backend": dict(run.backend_app[backend_sim.FAULTS].injected)},
        "time_to_backend_seconds": _percentiles(latencies),
        "reconcile_runs": [{"date": r["date"], "exit": r["exit"], "status": r.get("run", {}).get("status"),
                            "counts": r.get("run", {}).get("counts"), "error": r.get("error")}
                           for r in run.reconcile_runs],
        "creation_gave_up": len(run.creation_failed),
        "placement": placement_summary(run),
        "payer_refused_at_wechat": dict(collections.Counter(run.pay_refused.values())),
        "discrepancies": dict(collections.Counter(d["category"] for d in discrepancies)),
        "refunds": refund_summary(run, wechat, wechat_refunds, payflow_refunds, backend),
        "closed_at_wechat": sum(1 for t in wechat.values() if t["trade_state"] == "CLOSED"),
        "closed_events_at_backend": sum(1 for b in backend.values() if b["closed_events"]),
        "invariants": {i.name: i.holds for i in invariants},
    }
    return Outcome(run.options, invariants, summary, rows, run.timeline, latencies)


# Of the payers who found payflow up, the share whose first create got its payment (issue 15's target).
FIRST_TRY_TARGET = 0.99


def placement_summary(run: FinishedRun) -> dict[str, Any]:
    """How payers fared at `POST /v1/payments`: served at all, served on the first try, and how long the
    first try took. A payer whose first try found payflow killed (`down`: refused connection) or was cut by
    the kill (`connection_lost`) could not be served by it, and is left out of the share."""
    records = list(run.placements.values())
    first = collections.Counter(r.get("first", "none") for r in records)
    orders = len(run.plan.orders)
    arrived_up = orders - first["down"] - first["connection_lost"]
    window = max((o.create_at for o in run.plan.orders), default=0.0)
    share = first["ok"] / arrived_up if arrived_up else 1.0
    return {
        "offered_per_second": round(orders / window, 1) if window else None,
        "served": len(run.acknowledged), "first_try": first["ok"],
        "first_try_share_while_up": round(share, 4), "target": FIRST_TRY_TARGET,
        "target_met": share >= FIRST_TRY_TARGET,
        "first_outcomes": dict(first),
        "retries": sum(r["tries"] - 1 for r in records),
        "first_try_ms": _percentiles([r["first_ms"] for r in records if r.get("first") == "ok"]),
    }


def refund_summary(run: FinishedRun, wechat: dict[str, dict[str, Any]], wechat_refunds: dict[str, dict[str, Any]],
                   payflow_refunds: dict[str, dict[str, Any]], backend: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What the refunds came to: asked through payflow's API (full or partial of the paid amount), made by
    payflow itself (PAYFLOW_AUTO_REFUND), made outside payflow; what WeChat and the backend saw of them."""
    requests = list(run.refund_requests.values())
    paid = {no: t["paid_amount"] for no, t in wechat.items()}
    full = sum(1 for r in requests if r["amount"] == paid.get(r["out_trade_no"]))
    told = {rno for b in backend.values() for rno in b["refunds"]}
    outside = run.outside_refund or {}
    succeeded = [rno for rno, r in wechat_refunds.items() if r["status"] == "SUCCESS"]
    ours = [rno for rno in succeeded if rno != outside.get("out_refund_no")]
    return {
        "requested": len(requests), "full": full, "partial": len(requests) - full,
        "orders": dict(collections.Counter(o.refund_kind for o in run.plan.orders if o.refund_kind)),
        "acknowledged": len(run.refunds_acknowledged),
        "request_results": dict(collections.Counter(r.get("result", "none") for r in requests)),
        "first_outcomes": dict(collections.Counter(r.get("first", "none") for r in requests)),
        "retries": sum(max(0, r.get("tries", 0) - 1) for r in requests),
        "automatic": sum(1 for r in payflow_refunds.values() if r["origin"] == "auto"),
        "outside": 1 if outside.get("refund_id") else 0,
        "outside_refund": outside or None,
        "payflow_states": dict(collections.Counter(r["state"] for r in payflow_refunds.values())),
        "at_wechat": dict(collections.Counter(r["status"] for r in wechat_refunds.values())),
        "succeeded_at_wechat": len(succeeded), "succeeded_for_payflow": len(ours),
        "reached_backend": sum(1 for rno in ours if rno in told),
        "refunded_amount_at_wechat": sum(r["amount"] for r in wechat_refunds.values() if r["status"] == "SUCCESS"),
        "payments_refunded_in_full": sum(1 for no, total in _totals(wechat_refunds, ours).items()
                                         if paid.get(no) is not None and total >= paid[no]),
    }


def _totals(refunds: dict[str, dict[str, Any]], names: list[str]) -> dict[str, int]:
    """out_trade_no → what the named refunds refunded of it."""
    totals: collections.Counter[str] = collections.Counter()
    for name in names:
        totals[refunds[name]["out_trade_no"]] += refunds[name]["amount"]
    return dict(totals)


async def read_store(store: PaymentStore) -> dict[str, dict[str, Any]]:
    """payflow's ledger: every payment with its state, why it was flagged, how it was paid and its refunds."""
    payments: dict[str, dict[str, Any]] = {}
    after = None
    while batch := await store.list_payments(after=after, limit=500):
        for payment in batch:
            events = await store.events(payment.out_trade_no)
            flags = [e for e in events if e.trigger == "flag"]
            pays = [e for e in events if e.trigger == "pay"]
            payments[payment.out_trade_no] = {
                "order_id": payment.order_id, "amount": payment.amount, "state": payment.state.value,
                "reason": flags[-1].detail.get("reason") if flags else None,
                "pay_source": pays[-1].source if pays else None,
                "transitions": len(events) - 1,
                "refunds": {r.out_refund_no: {"amount": r.amount, "state": r.state.value, "origin": r.origin}
                            for r in await store.refunds_of(payment.out_trade_no)},
            }
        after = batch[-1].out_trade_no
    return payments


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)
    cut = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"p50": round(cut[49], 3), "p95": round(cut[94], 3), "p99": round(cut[98], 3),
            "max": round(ordered[-1], 3), "n": len(ordered)}


def render(outcome: Outcome) -> str:
    s = outcome.summary
    t = s["time_to_backend_seconds"]
    faults = s["faults"]
    lines = [
        f"simulate-chaos · strategy {s['strategy']} · seed {s['seed']} · {s['orders']} orders · "
        f"{s['wall_seconds']} s · {s['replicas']} replica(s) on {s['database']} · payflow SIGKILLed "
        f"{s['crashes']}×" + (f" · PostgreSQL restarted {s['db_restarts']}×" if s["db_restarts"] else ""),
        "",
        f"  scenario            {_kv(s['scenario'])}",
        f"  products            {_kv(s['trade_types'])} · WeChat keys {s['key_mode']}"
        + (f", platform certificate rotated at {', '.join(f'{t} s' for t in s['certificate_rotations'])}"
           if s["certificate_rotations"] else ""),
        f"  payflow states      {_kv(s['payflow_states'])}",
        f"  paid at WeChat      {s['paid_at_wechat']}   paid at the backend {s['paid_at_backend']}   "
        f"paid at WeChat but not at the backend: {s['paid_at_wechat_not_at_backend']}",
        f"  recovered via       {_kv(s['recovered_via'])}",
        f"  notifications       {_kv(faults['wechat_notifications'])}",
        f"  WeChat faults       {_kv(faults['wechat'])}",
        f"  backend faults      {_kv(faults['backend'])}",
        f"  WeChat → backend    p50 {t['p50']} s · p95 {t['p95']} s · p99 {t['p99']} s · max {t['max']} s "
        f"(n={t['n']})",
        f"  discrepancies       {_kv(s['discrepancies']) or 'none'}",
        _placement_line(s["placement"]),
        *_refund_lines(s),
        "",
    ]
    for invariant in outcome.invariants:
        if invariant.name == "R1":
            lines.append("")
        mark = "PASS" if invariant.holds else f"FAIL ({len(invariant.failures)})"
        lines.append(f"  {invariant.name} {mark:<10} {invariant.description}")
        lines.extend(f"       - {failure}" for failure in invariant.failures[:10])
        if len(invariant.failures) > 10:
            lines.append(f"       … and {len(invariant.failures) - 10} more (see --json)")
    return "\n".join(lines)


def _placement_line(p: dict[str, Any]) -> str:
    ms = p["first_try_ms"]
    verdict = "met" if p["target_met"] else "MISSED"
    return (f"  payers              {p['offered_per_second']}/s offered · served {p['served']} · first try "
            f"{p['first_try']} ({p['first_try_share_while_up']:.2%} of those who found payflow up; target "
            f"{p['target']:.0%} {verdict}) · first try p50 {ms['p50']} ms · p99 {ms['p99']} ms · "
            f"first outcomes {_kv(p['first_outcomes'])}")


def _refund_lines(s: dict[str, Any]) -> list[str]:
    r = s["refunds"]
    outside = r["outside_refund"] or {}
    return [
        f"  refunds             requested {r['requested']} (full {r['full']} · partial {r['partial']}) for "
        f"{sum(r['orders'].values())} orders ({_kv(r['orders'])}) · automatic {r['automatic']} · outside "
        f"{r['outside']}" + (f" ({outside.get('out_refund_no')}, {outside.get('amount')} fen)" if r["outside"] else ""),
        f"  refunds settled     succeeded at WeChat {r['succeeded_at_wechat']} · of payflow's "
        f"{r['succeeded_for_payflow']}, reached the backend {r['reached_backend']} · payments refunded in full "
        f"{r['payments_refunded_in_full']} · {r['refunded_amount_at_wechat'] / 100:.2f} yuan refunded",
        f"  refund requests     {_kv(r['request_results'])} · first outcomes {_kv(r['first_outcomes'])} · "
        f"retries {r['retries']} · payflow {_kv(r['payflow_states'])} · WeChat {_kv(r['at_wechat'])}",
        f"  closed payments     at WeChat {s['closed_at_wechat']} · told to the backend "
        f"{s['closed_events_at_backend']}",
    ]


def compare(payflow: Outcome, naive: Outcome) -> str:
    rows = [("", "payflow", "naive"),
            ("paid at WeChat", payflow.summary["paid_at_wechat"], naive.summary["paid_at_wechat"]),
            ("paid at the backend", payflow.summary["paid_at_backend"], naive.summary["paid_at_backend"]),
            ("paid at WeChat, unpaid at the backend", payflow.summary["paid_at_wechat_not_at_backend"],
             naive.summary["paid_at_wechat_not_at_backend"]),
            ("invariants held", sum(i.holds for i in payflow.invariants), sum(i.holds for i in naive.invariants))]
    return "\n".join(f"  {a:<40}{b!s:>10}{c!s:>10}" for a, b, c in rows)


def _kv(counts: dict[str, Any]) -> str:
    return " · ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)


def write_json(outcome: Outcome, path: pathlib.Path) -> None:
    body = {"ok": outcome.ok, "summary": outcome.summary,
            "invariants": [{"name": i.name, "description": i.description, "holds": i.holds,
                            "failures": list(i.failures)} for i in outcome.invariants],
            "orders": outcome.rows, "timeline": outcome.timeline, "latencies": outcome.latencies}
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False, default=str))


def write_plot(outcome: Outcome, path: pathlib.Path) -> None:
    """Time-to-consistency CDF and payments by state over time (needs the `plot` extra: matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cdf, states) = plt.subplots(1, 2, figsize=(12, 4.5))
    values = sorted(outcome.latencies)
    if values:
        cdf.step(values, [(i + 1) / len(values) for i in range(len(values))], where="post")
    cdf.set_xlabel("seconds from payment at WeChat to acknowledgement by the backend")
    cdf.set_ylabel("fraction of paid orders")
    cdf.set_title("time to consistency (CDF)")
    cdf.grid(alpha=0.3)
    names = ["created", "prepaid", "notified", "synced", "reconciled", "closed", "needs_review", "refunded"]
    ts = [row["t"] for row in outcome.timeline]
    for name in names:
        states.plot(ts, [row.get(name, 0) for row in outcome.timeline], label=name)
    for i, moment in enumerate(outcome.summary.get("crash_times", [])):
        states.axvline(moment, color="black", linestyle=":", linewidth=1, label="SIGKILL" if i == 0 else None)
    states.set_xlabel("seconds since start")
    states.set_ylabel("payments")
    states.set_title(f"payments by state ({outcome.summary['strategy']}, {outcome.summary['crashes']} SIGKILLs)")
    states.legend(fontsize=8)
    states.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
