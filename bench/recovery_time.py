"""Time from "payer pays at WeChat" to "backend acknowledged" when every notification is lost.

    python bench/recovery_time.py [--orders N] [--quick] [--json FILE]

Runs the chaos topology (simulators in-process, payflow as its own process) with notifications never
delivered, no other faults and no crashes: payflow's default schedules and the compressed ones
simulate-chaos uses, each with the payer's status poll (query on read) off, so only the sweeper
finds payments, and on. Each is one real run (≥ 60 s: WeChat's minimum order lifetime bounds the
scenario). Payers pay 0.5-12 s after creating the order and poll 0.5 s after paying.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from payflow import logs  # noqa: E402
from simulator.backend.faults import BackendFaults  # noqa: E402
from simulator.chaos.driver import simulate  # noqa: E402
from simulator.chaos.scenario import Options  # noqa: E402
from simulator.wechat.faults import WechatFaults  # noqa: E402

DEFAULTS = {"PAYFLOW_QUERY_SCHEDULE": "30s,1m,2m,5m,10m", "PAYFLOW_SWEEP_INTERVAL": "5s",
            "PAYFLOW_QUERY_ON_READ": "0"}
MODES = {
    "default schedules, sweeper only": DEFAULTS,
    "default schedules + query on read": {**DEFAULTS, "PAYFLOW_QUERY_ON_READ": "2s"},
    "compressed, sweeper only": {"PAYFLOW_QUERY_ON_READ": "0"},
    "compressed + query on read (chaos)": {},
}


async def run(orders: int) -> list[dict[str, object]]:
    rows = []
    for name, env in MODES.items():
        options = Options(orders=orders, seed=11, crashes=0, wechat=WechatFaults(never_deliver=1.0),
                          backend=BackendFaults(), progress=False, env=env, settle_timeout=120.0)
        outcome = await simulate(options)
        assert outcome.ok, [i for i in outcome.invariants if not i.holds]
        rows.append({"mode": name, **outcome.summary["time_to_backend_seconds"],
                     "recovered_via": outcome.summary["recovered_via"]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="10 orders")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/recovery_time.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")
    rows = asyncio.run(run(10 if args.quick else args.orders))
    print(f"{'mode':<38}{'n':>5}{'p50 s':>9}{'p95 s':>9}{'max s':>9}  recovered via")
    for r in rows:
        print(f"{r['mode']:<38}{r['n']:>5}{r['p50']:>9}{r['p95']:>9}{r['max']:>9}  {r['recovered_via']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
