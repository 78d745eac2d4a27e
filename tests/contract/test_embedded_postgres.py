"""The throwaway PostgreSQL the tests start when none is given (tests/postgres_server.py): it answers, restarts
like a crashed server, and leaves no process or directory behind, also when the process that owns it dies."""

from __future__ import annotations

import asyncio
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys

import asyncpg
import pytest

from tests import postgres_server

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether the process (not a child of ours) ends within the timeout; a pidfd says so without polling."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


async def test_an_embedded_server_starts_answers_and_leaves_nothing_behind() -> None:
    with postgres_server.EmbeddedPostgres.start() as server:
        pid, directory = server.pid, server.directory
        assert server.url == f"postgresql://postgres@127.0.0.1:{server.port}/test"
        connection = await asyncpg.connect(server.url)
        try:
            assert await connection.fetchval("SELECT current_database()") == "test"
            assert await connection.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
            await connection.execute("CREATE SCHEMA s; CREATE TABLE s.t (x int); INSERT INTO s.t VALUES (1)")
            assert await connection.fetchval("SELECT sum(x) FROM s.t") == 1
        finally:
            await connection.close()
        assert _alive(pid)
    assert not _alive(pid)  # stop() returns after the postmaster, which outlives its children, has exited
    assert not directory.exists()


async def test_restart_ends_every_session_and_the_server_comes_back_with_its_data() -> None:
    with postgres_server.EmbeddedPostgres.start() as server:
        before = await asyncpg.connect(server.url)
        await before.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        process = await asyncio.create_subprocess_shell(postgres_server.restart_command(server.url))
        assert await process.wait() == 0
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await before.fetchval("SELECT 1")  # the session did not survive the restart
        before.terminate()
        after = await asyncpg.connect(server.url)
        try:
            assert await after.fetchval("SELECT x FROM kept") == 7  # committed before the crash: still there
        finally:
            await after.close()


def test_the_server_stops_when_the_process_that_started_it_is_killed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "import os, signal; from tests.postgres_server import EmbeddedPostgres; "
         "s = EmbeddedPostgres.start(); print(s.pid, s.directory, flush=True); os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = owner.communicate(timeout=120)
    finally:
        owner.kill()
        owner.wait()
    assert owner.returncode == -signal.SIGKILL, out
    pid, directory = out.split()
    try:
        assert _wait_exit(int(pid), 30), "the postmaster outlived the process that owned it"
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # the killed owner could not
