"""payflow as a separate OS process: started, SIGKILLed and restarted by the chaos driver."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

from payflow import logs

log = logs.get_logger(__name__)

ROOT = pathlib.Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # payflow's own grace periods are shorter; past this it is killed


class PayflowProcess:
    """One `run.py serve` at a time on a fixed port and database; its stderr goes to a log file."""

    def __init__(self, env: dict[str, str], log_path: pathlib.Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0

    async def start(self) -> None:
        self.starts += 1
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "run.py"), "serve", cwd=ROOT, env=self.env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.process.stderr is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while True:
                line = await self.process.stderr.readline()
                if not line:
                    raise RuntimeError(f"payflow exited with {await self.process.wait()} before listening; "
                                       f"see {self.log_path}")
                self._log(line)
                if _event(line) == "serve.listening":
                    break
        self._pump = asyncio.get_running_loop().create_task(self._drain_stderr(self.process), name="payflow-log")

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            self._log(line)

    def _log(self, line: bytes) -> None:
        with self.log_path.open("ab") as handle:
            handle.write(line)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, mid-whatever-it-was-doing."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._pump
        self.kills += 1
        log.info("chaos.payflow_killed", kills=self.kills)

    async def stop(self) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL if it does not come)."""
        if self.process is None:
            return None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._pump
        return self.process.returncode


def _event(line: bytes) -> str | None:
    try:
        return json.loads(line).get("event")
    except ValueError:
        return None


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PAYFLOW_")}
