"""`python -m simulator.backend --keys DIR ...`: the same as `run.py backend-sim`."""

from __future__ import annotations

import argparse
import sys

import simulator.backend
from simulator.backend.server import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m simulator.backend", description=simulator.backend.__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
