"""The `payflow` command and what ships with it: the console script is `run.py`'s command, the version is kept in
one place, and the package carries py.typed, its licence and a changelog entry for its version."""

from __future__ import annotations

import configparser
import pathlib
import re
import subprocess
import sys

import payflow
from payflow.wechat import client
from simulator import cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMANDS = ["keys", "serve", "backup", "reconcile", "inspect", "simulate-chaos", "wechat-sim", "backend-sim"]


def _setup() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def test_the_console_script_is_the_run_py_command() -> None:
    scripts = _setup()["options.entry_points"]["console_scripts"].split("\n")
    assert "payflow = simulator.cli:main" in [line.strip() for line in scripts]
    run = (ROOT / "run.py").read_text()
    assert "from simulator.cli import main" in run and "argparse" not in run  # a thin wrapper
    listed = re.findall(r"^    (\S+)", cli.parser().format_help(), re.MULTILINE)
    assert listed == COMMANDS


def test_version_prints_the_one_version() -> None:
    result = subprocess.run([sys.executable, "run.py", "--version"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == f"payflow {payflow.__version__}\n"
    assert _setup()["metadata"]["version"] == "attr: payflow.__version__"
    assert client.USER_AGENT == f"payflow/{payflow.__version__} (+aiohttp)"


def test_the_package_ships_py_typed_its_licence_and_a_changelog_entry() -> None:
    setup = _setup()
    assert (ROOT / "payflow" / "py.typed").is_file()
    assert setup["options.package_data"]["payflow"].split() == ["py.typed"]
    assert setup["metadata"]["license"] == "MIT" and setup["metadata"]["license_files"] == "LICENSE"
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License\n") and "Copyright (c) 2026 payflow contributors" in licence
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(payflow.__version__)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.MULTILINE)
