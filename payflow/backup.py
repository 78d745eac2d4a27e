"""A consistent copy of the SQLite store, taken online (while `serve` runs) with SQLite's backup API: what
`payflow backup DEST` (payflow.commands.backup) runs; for PostgreSQL, the message naming its own tools.

There is no restore command: copy the file back and start payflow. Whatever happened after the copy is healed
as after any crash: the sweeper queries WeChat about every payment the copy left unpaid, and the daily bill
matches what the copy does not know (README, "Backups").
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import urllib.parse

from payflow import errors

POSTGRES_ADVICE = (
    "PAYFLOW_DATABASE_URL is PostgreSQL, which payflow does not copy itself: use PostgreSQL's own tools, "
    "pg_dump (e.g. `pg_dump --format=custom --file=payflow.dump \"$PAYFLOW_DATABASE_URL\"`) or continuous WAL "
    "archiving with point-in-time recovery (PITR). After a restore payflow needs nothing: every schedule is in "
    "the rows."
)


class BackupFailed(errors.PayflowError):
    code = "backup_failed"


@dataclasses.dataclass(frozen=True)
class Copy:
    path: pathlib.Path
    schema_version: int
    payments: int
    events: int
    size: int


def copy_sqlite(source: pathlib.Path, dest: pathlib.Path) -> Copy:
    """Copy the store at `source` to `dest` as one consistent snapshot, then check the copy.

    The copy is written beside `dest` under a temporary name, checked (`PRAGMA integrity_check`), synced and only
    then renamed over `dest`, so `dest` is either the old file or a complete new copy. It is made readable by its
    owner only: it holds what the store holds."""
    if dest.is_dir():
        raise BackupFailed(f"{str(dest)!r} is a directory; name the file to write")
    if dest.exists() and dest.resolve() == source.resolve():
        raise BackupFailed(f"{str(dest)!r} is the store itself")
    if not dest.parent.is_dir():
        raise BackupFailed(f"no directory {str(dest.parent)!r} to write the copy in")
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        # Created empty and private first: SQLite would create it with the umask's mode (often world-readable).
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # Read-only, by URI: a mistyped path fails instead of creating an empty store; nothing is written to it.
        reader = sqlite3.connect(f"file:{urllib.parse.quote(str(source.resolve()))}?mode=ro", uri=True, timeout=30)
        try:
            schema_version = _payflow_schema(reader, source)
            writer = sqlite3.connect(partial)
            try:
                # pages=-1: the whole store in one step, i.e. inside one read transaction. In WAL mode that
                # snapshot neither waits for serve's writer nor holds it up; every transaction is in or out whole.
                reader.backup(writer, pages=-1)
                # One self-contained file: no -wal beside it to lose (payflow turns WAL back on when it opens it).
                writer.execute("PRAGMA journal_mode = DELETE")
                copy = _check(writer, partial, dest, schema_version)
            finally:
                writer.close()
        finally:
            reader.close()
        _fsync(partial)
        os.replace(partial, dest)
        _fsync(dest.parent)
        return dataclasses.replace(copy, size=dest.stat().st_size)
    except sqlite3.Error as exc:
        raise BackupFailed(f"copying {str(source)!r}: {exc}") from None
    except OSError as exc:
        raise BackupFailed(f"writing {str(dest)!r}: {exc.strerror or exc}") from None
    finally:
        partial.unlink(missing_ok=True)


def _payflow_schema(reader: sqlite3.Connection, source: pathlib.Path) -> int:
    (version,) = reader.execute("PRAGMA user_version").fetchone()
    tables = {name for (name,) in reader.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not version or "payments" not in tables:
        raise BackupFailed(f"{str(source)!r} is not a payflow store (no payments table, schema version {version})")
    return int(version)


def _check(copy: sqlite3.Connection, partial: pathlib.Path, dest: pathlib.Path, schema_version: int) -> Copy:
    problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise BackupFailed(f"the copy failed its integrity check: {'; '.join(problems[:5])}")
    (payments,) = copy.execute("SELECT count(*) FROM payments").fetchone()
    (events,) = copy.execute("SELECT count(*) FROM order_events").fetchone()
    return Copy(dest, schema_version, int(payments), int(events), partial.stat().st_size)


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
