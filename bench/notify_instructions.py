"""The in-process notify path, N notifications in a row, for an instruction count under callgrind.

    python bench/notify_instructions.py prepare /tmp/ni200 --count 200
    python bench/notify_instructions.py prepare /tmp/ni1200 --count 1200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.200 python bench/notify_instructions.py run /tmp/ni200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.1200 python bench/notify_instructions.py run /tmp/ni1200
    callgrind_annotate /tmp/cg.200 | grep TOTALS; callgrind_annotate /tmp/cg.1200 | grep TOTALS

`prepare` writes a key set, a database of `prepaid` payments and the signed notifications that pay them
(signing is not part of the path, so it happens outside the measured process). `run` copies the database
and handles every notification in order: verify the signature, decrypt, decide, and commit the
notification row and the `pay` CAS through the group-commit writer, one at a time (each commit a lone
write). No HTTP, no forward: the forward backlog is 0, so `pay` leaves the forward to the sweeper as under
a full queue. The difference of the two totals divided by 1,000 is one notification's instructions, with
start-up and imports cancelled out. `run` exits 1 unless every notification was accepted.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench._notify import fixture  # noqa: E402
from payflow import devkeys, logs  # noqa: E402
from payflow.service import PaymentService  # noqa: E402
from payflow.settings import Settings  # noqa: E402
from payflow.store import open_store  # noqa: E402
from payflow.wechat.notify import NotificationVerifier  # noqa: E402


def _settings(directory: pathlib.Path, database: pathlib.Path) -> Settings:
    keys = devkeys.load_keyset(directory / "keys")
    env = devkeys.env_lines(keys, payflow_url="http://127.0.0.1:1", wechat_url="http://127.0.0.1:2",
                            backend_url="http://127.0.0.1:3/events")
    env["PAYFLOW_DATABASE_URL"] = f"sqlite:///{database}"
    return dataclasses.replace(Settings.from_env(env), forward_backlog=0)


async def prepare(directory: pathlib.Path, count: int) -> None:
    keys = devkeys.write_keyset(directory / "keys")
    await fixture.prefill(directory / "seed.db", count)
    notes = [{"body": body.decode(), "headers": headers} for body, headers in fixture.build(keys, 0, count)]
    (directory / "notifications.json").write_text(json.dumps(notes, ensure_ascii=False))


async def run(directory: pathlib.Path, scratch: pathlib.Path) -> dict[str, int]:
    database = scratch / "notify.db"
    shutil.copyfile(directory / "seed.db", database)
    settings = _settings(directory, database)
    notes = [(n["body"].encode(), n["headers"]) for n in json.loads((directory / "notifications.json").read_text())]
    keys = devkeys.load_keyset(directory / "keys")
    # As if the notifications arrived the moment they were signed, however long ago `prepare` ran.
    signed_at = float(notes[0][1]["Wechatpay-Timestamp"])
    verifier = NotificationVerifier({keys.pub_key_id: keys.platform_public_key}, keys.apiv3_key,
                                    now=lambda: signed_at)
    store = await open_store(settings.database_url)
    try:
        service = PaymentService(store, settings, verifier=verifier)
        outcomes: dict[str, int] = {}
        for body, headers in notes:
            outcome = await service.handle_notification(headers, body)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        return outcomes
    finally:
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=("prepare", "run"))
    parser.add_argument("dir", type=pathlib.Path)
    parser.add_argument("--count", type=int, default=200, help="notifications to prepare")
    args = parser.parse_args()
    logs.configure_logging("json", logging.ERROR)
    if args.phase == "prepare":
        args.dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(prepare(args.dir, args.count))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        outcomes = asyncio.run(run(args.dir, pathlib.Path(scratch)))
    expected = len(json.loads((args.dir / "notifications.json").read_text()))
    if outcomes != {"accepted": expected}:
        print(f"not every notification was accepted: {outcomes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
