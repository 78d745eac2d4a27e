"""`wechat-sim` as a real process: flags, the printed address, answering, stopping on SIGTERM."""

from __future__ import annotations

import json
import pathlib
import re
import select
import signal
import subprocess
import sys
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "simulator.wechat"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*COMMAND, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_the_simulator_serves_on_the_printed_address_and_stops_on_sigterm(keys_dir: pathlib.Path) -> None:
    args = ["--keys", str(keys_dir), "--port", "0", "--seed", "3", "--drop-first", "0.25",
            "--time-factor", "60"]
    process = subprocess.Popen([*COMMAND, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the simulator printed no address"
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", process.stdout.readline())
        assert match is not None
        with urllib.request.urlopen(match.group(1) + "/sim/v1/faults", timeout=10) as response:
            assert json.load(response)["drop_first"] == 0.25
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
        assert "wechat_sim.stopped" in stderr and "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.parametrize(("args", "message"), [
    (["--keys", "/nonexistent/keys"], "keys.json is missing"),
    (["--drop-first", "2"], "drop_first"),
    (["--time-factor", "0"], "time-factor"),
])
def test_bad_options_exit_2_with_a_message(keys_dir: pathlib.Path, args: list[str], message: str) -> None:
    full = args if "--keys" in args else ["--keys", str(keys_dir), *args]
    result = _run(*full, "--port", "0")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
