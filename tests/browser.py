"""Debian's Chromium for the console's browser tests: found, or installed with apt-get when missing.

Playwright's own browser download cannot work on these machines, so the tests launch the system Chromium.
A fresh machine has none; like the throwaway PostgreSQL of `tests/postgres_server.py`, the suite sets up
what it needs: as root with apt-get at hand it installs Debian's `chromium` once, otherwise it fails saying
what to install. `python -m tests.browser` does the same ahead of a run (`.ci/run` calls it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM = "/usr/bin/chromium"


class ChromiumMissing(RuntimeError):
    pass


def chromium() -> str:
    """The path of Debian's Chromium, installing the package first if it is missing and we may."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ChromiumMissing(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise ChromiumMissing(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    if not os.access(CHROMIUM, os.X_OK):
        raise ChromiumMissing(f"apt-get installed chromium but {CHROMIUM} is not there")
    return CHROMIUM


if __name__ == "__main__":
    try:
        print(chromium())
    except ChromiumMissing as exc:
        sys.exit(f"tests.browser: {exc}")
