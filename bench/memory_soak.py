"""RSS of payflow's `run.py serve` across many notifications: does memory settle after warm-up?

    python bench/memory_soak.py [--notifications 200000] [--concurrency 64] [--quick] [--json FILE]
                                [--payflow-root CHECKOUT]

One `serve` process on a temporary SQLite database pre-filled with N `prepaid` payments; a separate
load-generator process sends N distinct, validly signed and encrypted notifications (one per payment) in
eight chunks, each signed while the previous one is sent (the signatures carry a timestamp payflow
accepts for 300 s). Every `pay` is forwarded to an always-200 backend stub, as in `notify_throughput.py`. After
each chunk the bench waits until every forward has synced its payment (so no in-flight work is
counted), then reads VmRSS from /proc/PID/status. Growth is measured from the sample after warm-up
(N/4 notifications: 50,000 of 200,000) to the last; issue 8's target is at most 10%.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import pathlib
import platform
import signal
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._notify import fixture, procs, runner  # noqa: E402
from bench._notify.procs import ROOT, LoadGenerator, wait_for_count  # noqa: E402
from bench._notify.stub import BackendStub  # noqa: E402
from payflow import devkeys, logs  # noqa: E402

TARGET_GROWTH = 0.10
CHUNKS = 8


@dataclasses.dataclass
class Sample:
    notifications: int  # sent so far
    acked: int  # acknowledged (204) so far
    rss_mib: float
    hwm_mib: float  # VmHWM: the peak RSS so far
    chunk_per_second: float | None  # throughput of the chunk that ended here
    chunk_errors: dict[str, int]


async def soak(n: int, concurrency: int, root: pathlib.Path, log_level: str) -> tuple[list[Sample], float]:
    chunk = n // CHUNKS
    with tempfile.TemporaryDirectory(prefix="memory-soak-") as tmp:
        workdir = pathlib.Path(tmp)
        keys = devkeys.write_keyset(workdir / "keys")
        db_path = workdir / "soak.db"
        started = time.perf_counter()
        await fixture.prefill(db_path, n)
        print(f"seeded {n} prepaid payments in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        samples: list[Sample] = []
        async with BackendStub() as stub, LoadGenerator(keys.directory) as loadgen:
            handler = runner.Handler(runner.PAYFLOW, runner.PAYFLOW, root)
            async with runner.server(handler, keys=keys, db_path=db_path, log_path=workdir / "serve.log",
                                     backend_url=stub.url, log_level=log_level) as proc:
                samples.append(Sample(0, 0, proc.status_mib("VmRSS"), proc.status_mib("VmHWM"), None, {}))
                url = proc.url + runner.NOTIFY_PATH
                driving, acked = 0.0, 0
                await loadgen.call("build", start=0, count=chunk)
                for start in range(0, chunk * CHUNKS, chunk):
                    if start + chunk < chunk * CHUNKS:  # signed while this chunk is sent, fresh when its turn comes
                        await loadgen.call("build", start=start + chunk, count=chunk, background=True)
                    result = await loadgen.call("drive", url=url, start=start, stop=start + chunk,
                                                concurrency=concurrency)
                    driving += result["seconds"]
                    await loadgen.call("drop", start=start, stop=start + chunk)
                    acked += result["acked"]
                    await wait_for_count(db_path, runner.SYNCED, acked)  # forwards finished: nothing in flight
                    samples.append(Sample(start + chunk, acked, proc.status_mib("VmRSS"), proc.status_mib("VmHWM"),
                                          result["per_second"], result["errors"]))
                    print(f"{start + chunk:>8} notifications  RSS {samples[-1].rss_mib} MiB  "
                          f"({result['per_second']}/s, errors {result['errors']})", file=sys.stderr)
        return samples, driving


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="20,000 notifications, samples at 5k and 20k (< 60 s)")
    parser.add_argument("--payflow-root", type=pathlib.Path, default=ROOT,
                        help="run `run.py serve` from this checkout (e.g. a scratch copy with a proposed change)")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="PAYFLOW_LOG_LEVEL of `serve` (its log goes to a temporary file either way)")
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/results/memory_soak.json"))
    args = parser.parse_args()
    logs.configure_logging("json", level="WARNING")
    # SIGTERM unwinds like Ctrl-C, so every child process is stopped and the temporary files removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    n = 20_000 if args.quick else args.notifications
    if n < CHUNKS * 100:
        parser.error(f"--notifications must be at least {CHUNKS * 100}")
    started = time.perf_counter()
    root = args.payflow_root.resolve()
    samples, driving = asyncio.run(soak(n, args.concurrency, root, args.log_level))
    wall = time.perf_counter() - started
    warm = next(s for s in samples if s.notifications >= n // 4)
    last = samples[-1]
    growth = (last.rss_mib - warm.rss_mib) / warm.rss_mib
    errors: dict[str, int] = {}
    for s in samples:
        for status, count in s.chunk_errors.items():
            errors[status] = errors.get(status, 0) + count

    print(f"payflow `run.py serve` RSS across {last.notifications} notifications (concurrency {args.concurrency}, "
          f"PAYFLOW_LOG_LEVEL={args.log_level}, forwards to an always-200 backend)")
    print(f"{'notifications':>14}{'RSS MiB':>10}{'peak MiB':>10}{'vs warm-up':>12}{'chunk /s':>10}")
    for s in samples:
        mark = " <- warm-up" if s is warm else (" <- end" if s is last else "")
        rate = "" if s.chunk_per_second is None else s.chunk_per_second
        print(f"{s.notifications:>14}{s.rss_mib:>10}{s.hwm_mib:>10}{(s.rss_mib / warm.rss_mib - 1):>+12.1%}"
              f"{rate:>10}{mark}")
    print(f"growth {warm.notifications} -> {last.notifications}: {growth:+.1%} (target <= {TARGET_GROWTH:.0%}: "
          f"{'met' if growth <= TARGET_GROWTH else 'NOT met'}); non-204 answers: {errors or 'none'}")
    print(f"wall time {wall:.1f} s ({driving:.1f} s sending)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": procs.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "params": {"notifications": n, "concurrency": args.concurrency, "chunks": CHUNKS, "payflow_root": str(root),
                   "log_level": args.log_level},
        "samples": [dataclasses.asdict(s) for s in samples],
        "warmup_at": warm.notifications, "growth": round(growth, 4), "target": TARGET_GROWTH,
        "met": growth <= TARGET_GROWTH, "errors": errors, "wall_seconds": round(wall, 1),
    }, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
