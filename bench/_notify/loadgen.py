"""The load generator, run as its own process: pre-builds signed, encrypted notifications (in a small
process pool, before any timing) and drives them at a fixed concurrency over keep-alive connections.

Commands arrive as JSON lines on stdin and each gets one JSON line on stdout:
  {"op": "build", "start": a, "count": n, "background": false}   (background: answer at once, build meanwhile)
  {"op": "drive", "url": u, "start": a, "stop": b, "concurrency": c}
  {"op": "drop", "start": a, "stop": b}
  {"op": "quit"}
A notification older than MAX_AGE when its drive starts is re-signed first (outside the timing), because
the handlers refuse timestamps 300 s or more away from their clock.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import multiprocessing
import pathlib
import sys
import time
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

import aiohttp  # noqa: E402

from bench._notify import fixture, procs  # noqa: E402
from payflow import devkeys  # noqa: E402

MAX_AGE = 200.0
_PART = 2000  # notifications per pool task

_worker_keys: devkeys.KeySet | None = None


def _init_worker(keys_dir: str) -> None:
    global _worker_keys
    procs.die_with_parent()
    _worker_keys = devkeys.load_keyset(keys_dir)


def _noop(_: int) -> None:
    return None


def _build_part(start: int, count: int) -> list[tuple[bytes, dict[str, str]]]:
    assert _worker_keys is not None
    return fixture.build(_worker_keys, start, count)


class Generator:
    def __init__(self, keys_dir: str, pool: concurrent.futures.ProcessPoolExecutor) -> None:
        self.keys_dir = keys_dir
        self.pool = pool
        self.built: dict[int, tuple[bytes, dict[str, str]]] = {}
        self.built_at: dict[int, float] = {}
        self.pending: asyncio.Task[dict[str, Any]] | None = None

    async def start_build(self, start: int, count: int, background: bool = False) -> dict[str, Any]:
        await self.settle()
        if not background:
            return await self.build(start, count)
        self.pending = asyncio.get_running_loop().create_task(self.build(start, count))
        return {"building": count}

    async def settle(self) -> None:
        """Wait for a background build (the pool signs while the previous chunk is being sent)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await pending

    async def build(self, start: int, count: int) -> dict[str, Any]:
        began = time.perf_counter()
        loop = asyncio.get_running_loop()
        parts = [(s, min(_PART, start + count - s)) for s in range(start, start + count, _PART)]
        results = await asyncio.gather(*(loop.run_in_executor(self.pool, _build_part, s, n) for s, n in parts))
        now = time.time()
        for (s, _), items in zip(parts, results, strict=True):
            for offset, item in enumerate(items):
                self.built[s + offset] = item
                self.built_at[s + offset] = now
        return {"built": count, "seconds": round(time.perf_counter() - began, 3)}

    def drop(self, start: int, stop: int) -> dict[str, Any]:
        for i in range(start, stop):
            self.built.pop(i, None)
            self.built_at.pop(i, None)
        return {"dropped": stop - start}

    async def drive(self, url: str, start: int, stop: int, concurrency: int) -> dict[str, Any]:
        if any(i not in self.built for i in range(start, stop)):
            await self.settle()
        stale = [i for i in range(start, stop) if time.time() - self.built_at.get(i, 0.0) > MAX_AGE]
        rebuilt = 0
        if stale:  # contiguous in practice: the bench builds and drives whole ranges
            await self.build(min(stale), max(stale) - min(stale) + 1)
            rebuilt = len(stale)
        items = [self.built[i] for i in range(start, stop)]
        latencies: list[float] = []
        statuses: collections.Counter[str] = collections.Counter()
        connector = aiohttp.TCPConnector(limit=concurrency)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            feed = iter(items)

            async def worker() -> None:
                for body, headers in feed:
                    sent = time.perf_counter()
                    try:
                        async with session.post(url, data=body, headers=headers) as response:
                            await response.read()
                            status = str(response.status)
                    except (aiohttp.ClientError, TimeoutError) as exc:
                        status = type(exc).__name__
                    if status == "204":
                        latencies.append(time.perf_counter() - sent)
                    statuses[status] += 1

            began, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
        latencies.sort()
        acked = len(latencies)

        def quantile(q: float) -> float:
            return round(latencies[min(acked - 1, int(q * acked))] * 1000, 3) if acked else 0.0

        return {"sent": len(items), "acked": acked, "errors": {k: v for k, v in statuses.items() if k != "204"},
                "seconds": round(seconds, 4), "per_second": round(acked / seconds, 1) if seconds else 0.0,
                "p50_ms": quantile(0.50), "p99_ms": quantile(0.99), "max_ms": quantile(1.0), "rebuilt": rebuilt,
                "cpu_seconds": round(cpu, 3)}


async def serve_commands(generator: Generator) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return  # the bench went away
        command = json.loads(line)
        op = command.pop("op")
        if op == "quit":
            await generator.settle()
            return
        if op == "build":
            answer = await generator.start_build(**command)
        elif op == "drive":
            answer = await generator.drive(**command)
        elif op == "drop":
            answer = generator.drop(**command)
        else:
            answer = {"error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def main() -> int:
    keys_dir = sys.argv[1]
    workers = max(1, procs.cpu_count())
    # Forked now, before the event loop or any thread exists; the workers only sign and encrypt.
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                                  initializer=_init_worker, initargs=(keys_dir,))
    try:
        list(pool.map(_noop, range(workers)))
        asyncio.run(serve_commands(Generator(keys_dir, pool)))
    finally:
        pool.shutdown(cancel_futures=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
