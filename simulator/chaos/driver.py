"""Runs one chaos scenario: both simulators in-process, payflow as a separate process, payers,
faults and SIGKILLs; then converges, reconciles and checks the invariants from the ledgers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import pathlib
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import unused_port

from payflow import devkeys, logs
from payflow.clock import SHANGHAI
from payflow.errors import StoreUnavailable
from payflow.states import State
from payflow.states.refunds import RefundState
from payflow.store import open_store
from simulator import backend as backend_sim
from simulator.chaos import report, scenario
from simulator.chaos.process import ROOT, PayflowProcess, base_env
from simulator.chaos.proxy import create_app as proxy_app
from simulator.chaos.scenario import Options
from simulator.wechat.app import create_app as create_wechat_sim
from simulator.wechat.appkeys import CLOCK, LEDGER, REFUNDS, SIGNER

log = logs.get_logger(__name__)

UNSETTLED = (State.CREATED, State.PREPAID, State.NOTIFIED)
# Refunds still on their way: to be submitted, followed at WeChat, or told to the backend.
UNSETTLED_REFUNDS = (RefundState.CREATED, RefundState.PROCESSING, RefundState.SUCCEEDED)
# Refunds that ended without money moving: told to the backend once (`refund.failed`).
ENDED_REFUNDS = (RefundState.CLOSED, RefundState.FAILED)
# How long the merchant keeps asking for one refund (payflow killed, the payment not yet known paid).
REFUND_DEADLINE = 60.0
# How long the outside refund waits for its order to be paid at the backend.
OUTSIDE_DEADLINE = 60.0
# What a create answers the payer's front end, by product.
FRONT_ENDS = ("pay_params", "code_url", "h5_url", "app_params")
# `run.py reconcile` passes at the end, at most: each fails only if WeChat fails the bill API three times.
RECONCILE_PASSES = 5

# payflow's schedules compressed so that the default run takes about a minute and a half.
TUNING = {
    "PAYFLOW_QUERY_SCHEDULE": "1s,2s,3s,5s",
    "PAYFLOW_REFUND_QUERY_SCHEDULE": "1s,2s,3s,5s,5s,5s,5s,5s",
    "PAYFLOW_FORWARD_SCHEDULE": "200ms,400ms,800ms,1s,2s,2s,3s,3s,5s,5s,5s,5s,5s,5s,5s",
    "PAYFLOW_SWEEP_INTERVAL": "200ms",
    "PAYFLOW_LEASE": "2s",
    "PAYFLOW_CREATED_GRACE": "1s",
    "PAYFLOW_PLACEMENT_GRACE": "10s",
    "PAYFLOW_BACKEND_TIMEOUT": "1s",
    "PAYFLOW_WECHAT_TIMEOUT": "2s",
    "PAYFLOW_RECONCILE_AT": "off",
    "PAYFLOW_LOG_FORMAT": "json",
}
# The seed's design, by configuration: forward once when the notification comes, nothing re-drives it.
NAIVE = {"PAYFLOW_SWEEP_INTERVAL": "0", "PAYFLOW_QUERY_ON_READ": "0"}


class Run:
    def __init__(self, options: Options, workdir: pathlib.Path) -> None:
        self.options = options
        self.workdir = workdir
        self.plan = scenario.build(options.seed, options.orders, ttl=options.ttl, crashes=options.crashes,
                                   placement_rate=options.placement_rate)
        # Each payer's first create: its outcome (`ok`, an HTTP status, `down` while payflow was killed,
        # `timeout`) and how long it took; `tries` counts every create until one answered.
        self.placements: dict[str, dict[str, Any]] = {}
        self.acknowledged: dict[str, str] = {}
        self.paid_at_wechat: dict[str, float] = {}
        self.pay_refused: dict[str, str] = {}
        self.creation_failed: list[str] = []
        self.timeline: list[dict[str, Any]] = []
        self.crash_times: list[float] = []
        self.rotation_times: list[float] = []  # when WeChat's platform certificate was rotated
        self.started = 0.0
        self.done_payers = 0
        self.db_restarts = 0
        self.reconcile_runs: list[dict[str, Any]] = []  # run.py reconcile: date, exit code, its JSON report
        # Each refund the merchant asks payflow for: its outcome (`ok`, `refused:<code>`, `gave_up`), its tries and
        # the first try's outcome; `refunds_acknowledged` those payflow answered for (200, 201, 503 "stored").
        self.refund_requests: dict[str, dict[str, Any]] = {}
        self.refunds_acknowledged: dict[str, str] = {}
        self.outside_refund: dict[str, Any] | None = None
        self.keep = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def execute(self) -> report.Outcome:
        options = self.options
        keys = devkeys.write_keyset(self.workdir / "keys")
        wechat_app = create_wechat_sim(keys, faults=options.wechat, time_factor=options.time_factor,
                                       seed=options.seed, key_mode=options.key_mode)
        backend_app = backend_sim.create_app(keys.backend_secret, faults=options.backend, seed=options.seed)
        runners = []
        async with contextlib.AsyncExitStack() as stack:
            urls = []
            for app in (wechat_app, backend_app):
                runner = web.AppRunner(app, access_log=None, handle_signals=False)
                await runner.setup()
                stack.push_async_callback(runner.cleanup)
                await web.TCPSite(runner, "127.0.0.1", 0).start()
                host, port = runner.addresses[0][:2]
                urls.append(f"http://{host}:{port}")
                runners.append(runner)
            ports = [unused_port() for _ in range(options.replicas)]
            database = f"sqlite:///{self.workdir / 'payflow.db'}"
            if options.database:
                database = await stack.enter_async_context(fresh_schema(options.database, keep=self.keep))
            if options.replicas > 1:
                # Payers and WeChat's notifications reach the replicas through one round-robin proxy.
                proxy = web.AppRunner(proxy_app([f"http://127.0.0.1:{p}" for p in ports]), access_log=None,
                                      handle_signals=False)
                await proxy.setup()
                stack.push_async_callback(proxy.cleanup)
                await web.TCPSite(proxy, "127.0.0.1", 0).start()
                host, proxy_port = proxy.addresses[0][:2]
                self.payflow_url = f"http://{host}:{proxy_port}"
            else:
                self.payflow_url = f"http://127.0.0.1:{ports[0]}"
            env = base_env()
            env.update(devkeys.env_lines(keys, payflow_url=self.payflow_url, wechat_url=urls[0],
                                         backend_url=urls[1] + devkeys.BACKEND_SIM_PATH))
            env.update(TUNING, PAYFLOW_PAYMENT_TTL=f"{int(options.ttl)}s", PAYFLOW_DATABASE_URL=database,
                       PAYFLOW_API_TOKEN="chaos-api", PAYFLOW_ADMIN_TOKEN="chaos-admin",
                       PAYFLOW_WECHAT_KEY_MODE=options.key_mode, PAYFLOW_AUTO_REFUND=scenario.AUTO_REFUND,
                       PAYFLOW_WECHAT_CERTIFICATES_FILE=str(self.workdir / "wechat-certificates.json"))
            if options.strategy == "naive":
                env.update(NAIVE)
            env.update(options.env)
            self.env = env
            self.wechat_url = urls[0]
            self.wechat_app, self.backend_app = wechat_app, backend_app
            self.replicas = [PayflowProcess({**env, "PAYFLOW_PORT": str(port)}, self.workdir / f"payflow-{i}.log")
                             for i, port in enumerate(ports)]
            for replica in self.replicas:
                await replica.start()
                stack.push_async_callback(replica.kill)
            self.store = await open_store(database)
            stack.push_async_callback(self.store.close)
            self.http = await stack.enter_async_context(aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), headers={"Authorization": "Bearer chaos-api"}))
            self.started = time.monotonic()
            sampler = asyncio.create_task(self._sample(), name="chaos-sampler")
            try:
                await asyncio.gather(self._crasher(), self._db_restarter(), self._rotator(),
                                     *(self._payer(o) for o in self.plan.orders))
                await self._settle()
                if options.strategy != "naive":
                    await self._reconcile()
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            counts = {state.value: n for state, n in (await self.store.count_by_state()).items()}
            self.timeline.append({"t": round(self.elapsed(), 2), **counts})  # the end state, after reconciliation
            exit_codes = [await replica.stop() for replica in self.replicas]
            return await self._outcome(max((c for c in exit_codes if c is not None), default=None))

    # --- the payers ---------------------------------------------------------------------------

    async def _at(self, moment: float) -> None:
        await asyncio.sleep(max(0.0, moment - self.elapsed()))

    async def _payer(self, order: scenario.Order) -> None:
        try:
            await self._at(order.create_at)
            self.backend_app[backend_sim.LEDGER].register(order.order_id, order.amount)
            view = await self._create(order)
            if view is None:
                self.creation_failed.append(order.order_id)
                return
            self.acknowledged[order.order_id] = view["out_trade_no"]
            if order.fate == "cancelled":
                self.backend_app[backend_sim.LEDGER].cancel(order.order_id)
            if order.pay_after is None or not any(view.get(k) for k in FRONT_ENDS):
                return  # a payer without what the front end needs (pay_params, a code_url, ...) cannot pay
            await self._at(order.create_at + order.pay_after)
            paid = await self._pay(order, view["out_trade_no"])
            for _ in range(order.polls):
                await asyncio.sleep(0.5)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with self.http.get(f"{self.payflow_url}/v1/payments/{view['out_trade_no']}") as response:
                        await response.read()
            if not paid:
                return
            paid_at = order.create_at + order.pay_after
            for plan in order.refunds:  # the merchant refunds it, one refund after the other
                await self._at(paid_at + plan.after)
                await self._refund(order, view["out_trade_no"], plan)
            outside = self.plan.outside
            if outside is not None and outside.order_id == order.order_id:
                await self._at(paid_at + outside.after)
                await self._refund_outside(order, view["out_trade_no"], outside)
        finally:
            self.done_payers += 1

    async def _create(self, order: scenario.Order) -> dict[str, Any] | None:
        body: dict[str, Any] = {"order_id": order.order_id, "amount": order.amount,
                                "description": f"chaos {order.order_id}", "trade_type": order.trade_type}
        body.update({"jsapi": {"openid": f"o{order.order_id}"},
                     "h5": {"payer_client_ip": "203.0.113.7", "h5_type": "Wap"}}.get(order.trade_type, {}))
        deadline = self.elapsed() + 30.0
        record: dict[str, Any] = {"tries": 0}
        self.placements[order.order_id] = record
        while self.elapsed() < deadline:
            record["tries"] += 1
            started = time.perf_counter()
            outcome: str
            try:
                async with self.http.post(f"{self.payflow_url}/v1/payments", json=body) as response:
                    outcome = "ok" if response.status in (200, 201) else str(response.status)
                    if response.status in (200, 201, 502):
                        view: dict[str, Any] = await response.json()
                        if record["tries"] == 1:
                            record.update(first=outcome, first_ms=(time.perf_counter() - started) * 1000)
                        return view
            except (aiohttp.ClientError, TimeoutError) as exc:
                # payflow is down (killed) or the answer was lost: the same request again is safe
                outcome = _transport_outcome(exc)
            if record["tries"] == 1:
                record.update(first=outcome, first_ms=(time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.3)
        return None

    async def _pay(self, order: scenario.Order, out_trade_no: str) -> bool:
        body = {} if order.pay_amount == order.amount else {"amount": order.pay_amount}
        async with self.http.post(f"{self.wechat_url}/sim/v1/transactions/{out_trade_no}/pay", json=body) as response:
            if response.status == 200:
                self.paid_at_wechat[order.order_id] = time.time()
                return True
            self.pay_refused[order.order_id] = (await response.json()).get("error", {}).get("code", "?")
            return False

    async def _refund(self, order: scenario.Order, out_trade_no: str, plan: scenario.RefundPlan) -> None:
        """Ask payflow for one refund, as a merchant's back office would: the same request (the same out_refund_no)
        again after a 503, a lost connection or while payflow is down, and while payflow does not know the payment
        is paid yet (409 with an unpaid state); until payflow answers for it or refuses it for good."""
        body = {"amount": plan.amount, "out_refund_no": plan.out_refund_no, "reason": scenario.REFUND_REASON}
        record: dict[str, Any] = {"order_id": order.order_id, "out_trade_no": out_trade_no, "amount": plan.amount,
                                  "tries": 0, "outcomes": collections.Counter()}
        self.refund_requests[plan.out_refund_no] = record
        deadline = self.elapsed() + REFUND_DEADLINE
        url = f"{self.payflow_url}/v1/payments/{out_trade_no}/refunds"
        while self.elapsed() < deadline:
            record["tries"] += 1
            outcome: str
            try:
                async with self.http.post(url, json=body) as response:
                    answer = await _json(response)
                    error = answer.get("error") or {}
                    outcome = "ok" if response.status in (200, 201) else str(response.status)
                    if response.status in (200, 201):
                        self.refunds_acknowledged[plan.out_refund_no] = out_trade_no
                        record.update(result="ok", state=answer.get("state"))
                    elif response.status == 503 and error.get("out_refund_no") == plan.out_refund_no:
                        # Stored; WeChat could not be asked now. payflow re-drives it; the merchant asks again.
                        self.refunds_acknowledged[plan.out_refund_no] = out_trade_no
                        outcome = "deferred"
                    elif response.status == 409 and error.get("state") in ("created", "prepaid"):
                        outcome = "not_yet_paid"  # payflow has not heard of the payment yet: ask again shortly
                    elif response.status in (400, 404, 409, 422):
                        record.update(result=f"refused:{error.get('code', response.status)}",
                                      error=error.get("message"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = _transport_outcome(exc)
            record["outcomes"][outcome] += 1
            record.setdefault("first", outcome)
            if "result" in record:
                break
            await asyncio.sleep(0.5)
        record.setdefault("result", "gave_up")
        record["outcomes"] = dict(record["outcomes"])

    async def _refund_outside(self, order: scenario.Order, out_trade_no: str, outside: scenario.OutsideRefund) -> None:
        """The one refund payflow never asked for: made on the merchant platform (the simulator's control API)
        once the backend has the order paid, so that payflow learns of it only from WeChat."""
        self.outside_refund = {"order_id": order.order_id, "out_trade_no": out_trade_no,
                               "out_refund_no": outside.out_refund_no, "amount": outside.amount}
        ledger = self.backend_app[backend_sim.LEDGER]
        for _ in range(int(OUTSIDE_DEADLINE / 0.5)):
            known = ledger.orders.get(order.order_id)
            if known is not None and known.status == "paid":
                break
            await asyncio.sleep(0.5)
        body = {"amount": outside.amount, "out_refund_no": outside.out_refund_no, "reason": "merchant platform"}
        url = f"{self.wechat_url}/sim/v1/transactions/{out_trade_no}/refunds"
        async with self.http.post(url, json=body) as response:
            answer = await _json(response)
        if response.status == 201:
            self.outside_refund.update(refund_id=answer.get("refund_id"), at=round(self.elapsed(), 2))
        else:
            self.outside_refund["error"] = answer.get("error") or response.status

    # --- payflow's life -----------------------------------------------------------------------

    @property
    def kills(self) -> int:
        return sum(replica.kills for replica in self.replicas)

    async def _crasher(self) -> None:
        rng = random.Random(f"chaos-crash:{self.options.seed}")
        for moment in self.plan.crashes:
            await self._at(moment)
            self.crash_times.append(round(self.elapsed(), 2))
            # With replicas, one at random dies; the others keep serving (always at least one alive).
            victim = self.replicas[rng.randrange(len(self.replicas))]
            await victim.kill()
            await asyncio.sleep(0.5 if len(self.replicas) == 1 else 2.0)
            await victim.start()

    async def _rotator(self) -> None:
        """WeChat rotates its platform certificate halfway through the arrivals: the successor signs at once
        (no overlap), so payflow learns it from the first message that names it."""
        if not self.options.rotate_certificates or self.options.key_mode == "pubkey":
            return
        await self._at(max(o.create_at for o in self.plan.orders) / 2)
        self.wechat_app[SIGNER].certificates.rotate(self.wechat_app[CLOCK].now(), overlap=dt.timedelta(0))
        self.rotation_times.append(round(self.elapsed(), 2))

    async def _db_restarter(self) -> None:
        if not self.options.db_restart:
            return
        await self._at(self.plan.crashes[-1] + 3.0 if self.plan.crashes else 10.0)
        self.db_restarts = 1
        process = await asyncio.create_subprocess_shell(
            self.options.db_restart_command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"restarting PostgreSQL failed: {err.decode().strip()}")
        self.db_restart_time = round(self.elapsed(), 2)

    async def _sample(self) -> None:
        last_print = 0.0
        while True:
            try:
                counts = {state.value: n for state, n in (await self.store.count_by_state()).items()}
            except StoreUnavailable:  # the database is restarting: sample again in a moment
                await asyncio.sleep(0.5)
                continue
            self.timeline.append({"t": round(self.elapsed(), 2), **counts})
            if self.options.progress and self.elapsed() - last_print >= 1.0:
                last_print = self.elapsed()
                line = (f"[{self.elapsed():6.1f}s] payers {self.done_payers}/{len(self.plan.orders)} · "
                        f"paid at WeChat {len(self.paid_at_wechat)} · "
                        + " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                        + f" · refunds answered {len(self.refunds_acknowledged)}/{self.plan.refund_requests}"
                        + f" · crashes {self.kills}")
                tty = sys.stderr.isatty()
                print(f"\r{line:<120}" if tty else line, file=sys.stderr, end="" if tty else "\n", flush=True)
            await asyncio.sleep(0.5)

    async def _settle(self) -> None:
        """Wait until nothing is left to re-drive (or the deadline: then the invariants will say why): no payment
        unsettled or with a `payment.closed` untold, no refund on its way or untold, no automatic refund owed."""
        async with asyncio.timeout(self.options.settle_timeout):
            while True:
                try:
                    left = await self._unsettled()
                except StoreUnavailable:
                    await asyncio.sleep(0.5)
                    continue
                if not left:
                    return
                if self.options.strategy == "naive":
                    # nothing re-drives a naive payflow: give late events a moment, then stop waiting
                    await asyncio.sleep(5.0)
                    return
                await asyncio.sleep(0.5)

    async def _unsettled(self) -> dict[str, int]:
        """What is left to re-drive, by kind (empty: settled)."""
        store = self.store
        counts = await store.count_by_state()
        left = {s.value: counts[s] for s in UNSETTLED if counts.get(s)}
        # Scheduled at all (however far ahead): besides the unsettled states, a closed payment not yet told.
        scheduled, _ = await store.due_stats(dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
        if scheduled > sum(left.values()):
            left["scheduled"] = scheduled - sum(left.values())
        refunds = await store.count_refunds_by_state()
        left.update({f"refund_{s.value}": refunds[s] for s in UNSETTLED_REFUNDS if refunds.get(s)})
        if any(refunds.get(s) for s in ENDED_REFUNDS):
            untold = 0
            for no in set(self.acknowledged.values()):
                untold += sum(1 for r in await store.refunds_of(no)
                              if r.state in ENDED_REFUNDS and r.next_attempt_at is not None)
            if untold:
                left["refund_untold"] = untold
        if counts.get(State.NEEDS_REVIEW):
            owed = 0
            reasons = set(self.env.get("PAYFLOW_AUTO_REFUND", "").split(",")) - {""}
            for payment in await store.list_payments(state=State.NEEDS_REVIEW, limit=10_000):
                flags = [e for e in await store.events(payment.out_trade_no) if e.trigger == "flag"]
                if flags and flags[-1].detail.get("reason") in reasons and payment.transaction_id is not None \
                        and await store.get_refund(f"auto-{payment.out_trade_no}") is None:
                    owed += 1
            if owed:
                left["auto_refund_owed"] = owed
        return left

    async def _reconcile(self) -> None:
        """Reconcile every day with payments or refunds (normally today, Asia/Shanghai), again while any payment is left
        `synced`: forwards were pending during a pass, or a pass failed (WeChat's bill API has faults too)."""
        now = dt.datetime.now(SHANGHAI)
        days = sorted({o.success_time.astimezone(SHANGHAI).date()
                       for o in self.wechat_app[LEDGER].orders(now) if o.success_time is not None}
                      | {r.created.astimezone(SHANGHAI).date() for _, r in self.wechat_app[REFUNDS].refunds(now)})
        for _ in range(RECONCILE_PASSES):
            for day in days:
                self.reconcile_runs.append(await self._reconcile_day(day))
            with contextlib.suppress(TimeoutError):
                await self._settle()
            counts = await self.store.count_by_state()
            if not counts.get(State.SYNCED):
                return

    async def _reconcile_day(self, day: dt.date) -> dict[str, Any]:
        # Its log goes beside payflow's, so a run that failed can be read afterwards (--keep).
        log_path = self.workdir / f"reconcile-{len(self.reconcile_runs)}.log"
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "run.py"), "reconcile", "--date", day.isoformat(), "--json",
                cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log_file)
            out, _ = await process.communicate()
        run: dict[str, Any] = {"date": day.isoformat(), "exit": process.returncode}
        try:
            run.update(json.loads(out) if out else {})
        except ValueError:
            run["output"] = out.decode(errors="replace")[-2000:]
        if process.returncode not in (0, 1):  # not reconciled: its last words say why
            lines = log_path.read_text(errors="replace").strip().splitlines()
            run["error"] = lines[-1] if lines else f"exit {process.returncode}"
        return run

    # --- the verdict ---------------------------------------------------------------------------

    async def _outcome(self, exit_code: int | None) -> report.Outcome:
        return await report.build(self, exit_code)


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _transport_outcome(exc: BaseException) -> str:
    """What a request that got no answer says about payflow: down (refused), the answer lost, or too slow."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "down"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return "connection_lost"
    return "timeout" if isinstance(exc, TimeoutError) else "client_error"


@contextlib.asynccontextmanager
async def fresh_schema(url: str, *, keep: bool) -> AsyncIterator[str]:
    """A new schema in the given PostgreSQL database for this run (dropped afterwards unless kept)."""
    import asyncpg

    schema = f"chaos_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
    finally:
        await admin.close()
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}search_path={schema}"
    finally:
        if not keep:
            admin = await asyncpg.connect(url)
            try:
                await admin.execute(f"DROP SCHEMA {schema} CASCADE")
            finally:
                await admin.close()


async def simulate(options: Options, keep: pathlib.Path | None = None,
                   on_workdir: Callable[[pathlib.Path], None] | None = None) -> report.Outcome:
    with tempfile.TemporaryDirectory(prefix="payflow-chaos-") as tmp:
        workdir = keep or pathlib.Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if on_workdir:
            on_workdir(workdir)
        run = Run(options, workdir)
        run.keep = keep is not None
        return await run.execute()
