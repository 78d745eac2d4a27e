#!/usr/bin/env python3
"""payflow's command line from a checkout: the installed `payflow` command, without installing (simulator/cli.py)."""

from __future__ import annotations

import sys

from simulator.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
