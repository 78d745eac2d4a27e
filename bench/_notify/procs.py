"""Child processes of the notification benchmarks: a server under test (payflow's `run.py serve` or a
reference handler) and the load generator. Each is a context manager that always ends its process."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pathlib
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # payflow drains its forwards for backend_timeout + 1 s; past this it is killed

_PR_SET_PDEATHSIG = 1
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine used so far (/proc/stat: user+nice+system+irq+softirq+steal)."""
    fields = pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    times = os.times()
    return times.user + times.system


def die_with_parent() -> None:
    # If the bench itself is SIGKILLed, its children go too instead of holding ports and files.
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerProcess:
    """Starts `argv` (told to listen on `port`) with stderr to `log_path`; ready once it logs
    `serve.listening` or, at a log level that hides that line, once the port accepts a connection.
    Stopped on exit."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: pathlib.Path, log_path: pathlib.Path,
                 port: int) -> None:
        self.argv, self.env, self.cwd, self.log_path, self.port = argv, env, cwd, log_path, port
        self.process: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def __aenter__(self) -> ServerProcess:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=log, preexec_fn=die_with_parent)
        try:
            await self._listening()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = b""
        with self.log_path.open("rb") as reader:
            while time.monotonic() < deadline:
                pending += reader.read()
                *lines, pending = pending.split(b"\n")
                if any(_event(line) == "serve.listening" for line in lines) or await self._accepts():
                    return
                if self.process.returncode is not None:
                    raise RuntimeError(f"{self.argv[1:3]} exited with {self.process.returncode} before listening; "
                                       f"its log ends:\n{self.log_tail()}")
                await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.argv[1:3]} was not listening on {self.port} within {STARTUP_TIMEOUT} s; "
                           f"its log ends:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def stop(self) -> int | None:
        """SIGTERM and wait for a clean exit; SIGKILL if it does not come."""
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        except BaseException:
            if self.process is not None and self.process.returncode is None:
                self.process.kill()
            raise

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU time of the server process so far, all its threads together."""
        fields = pathlib.Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def status_mib(self, field: str) -> float:
        """A memory field of /proc/PID/status (VmRSS, VmHWM, ...) of the server process, in MiB."""
        for line in pathlib.Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError(f"no {field} for pid {self.pid}")


class LoadGenerator:
    """`python -m bench._notify.loadgen KEYS_DIR` as a separate process, spoken to in JSON lines."""

    def __init__(self, keys_dir: pathlib.Path) -> None:
        self.keys_dir = keys_dir
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> LoadGenerator:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench._notify.loadgen", str(self.keys_dir), cwd=ROOT, env=base_env(),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent)
        return self

    async def call(self, op: str, **arguments: Any) -> dict[str, Any]:
        process = self.process
        assert process is not None and process.stdin is not None and process.stdout is not None
        process.stdin.write((json.dumps({"op": op, **arguments}) + "\n").encode())
        await process.stdin.drain()
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited ({await process.wait()}) during {op!r}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"load generator: {answer['error']}")
        return answer

    async def __aexit__(self, *exc: object) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        try:
            with contextlib.suppress(TimeoutError, OSError):
                assert process.stdin is not None
                process.stdin.write(b'{"op": "quit"}\n')
                process.stdin.close()
                async with asyncio.timeout(10):
                    await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def _event(line: bytes) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("event") if isinstance(record, dict) else None


def count(db_path: pathlib.Path, sql: str, *params: Any) -> int:
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10) as db:
        return int(db.execute(sql, params).fetchone()[0])


WAIT_LIMIT = 120.0


async def wait_for_count(db_path: pathlib.Path, sql: str, expected: int) -> float:
    """Seconds until `sql` counts `expected` rows (polled from another connection); raises past WAIT_LIMIT."""
    began = time.perf_counter()
    while True:
        found = await asyncio.to_thread(count, db_path, sql)
        if found >= expected:
            return time.perf_counter() - began
        if time.perf_counter() - began > WAIT_LIMIT:
            raise RuntimeError(f"{sql!r} counted {found} of {expected} after {WAIT_LIMIT} s")
        await asyncio.sleep(0.02)
