"""`payflow backup DEST`: a consistent copy of the SQLite store, taken online (while `serve` runs) with SQLite's
backup API; for PostgreSQL, the message naming its own tools.

There is no restore command: copy the file back and start payflow. Whatever happened after the copy is healed
as after any crash: the sweeper queries WeChat about every payment the copy left unpaid, and the daily bill
matches what the copy does not know (README, "Backups").
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import sys
import urllib.parse
from collections.abc import Mapping

from payflow import errors, logs
from payflow.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

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


def run(environ: Mapping[str, str], dest: str) -> int:
    """Exit 0 with a copy at `dest`; 2 when there is nothing payflow can copy (PostgreSQL, no store, bad
    settings); 1 when the copy failed (then `dest` is untouched)."""
    try:
        settings = Settings.from_env(environ)
    except errors.SettingsError as exc:
        return _fail(str(exc), EXIT_USAGE)
    url = settings.database_url
    if not url.startswith("sqlite:///"):
        return _fail(POSTGRES_ADVICE, EXIT_USAGE)
    source = pathlib.Path(url.removeprefix("sqlite:///"))
    if not source.is_file():
        return _fail(f"no SQLite store at {str(source)!r} (PAYFLOW_DATABASE_URL={logs.redact_url(url)})", EXIT_USAGE)
    try:
        copy = copy_sqlite(source, pathlib.Path(dest))
    except BackupFailed as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(f"backed up {source} to {copy.path}: {copy.payments} payments, {copy.events} events, "
          f"schema version {copy.schema_version}, {copy.size} bytes")
    return EXIT_OK


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


def _fail(message: str, code: int) -> int:
    print(f"backup: {message}", file=sys.stderr)
    return code
