"""`python -m simulator.wechat --keys DIR ...`: the same as `run.py wechat-sim`."""

from __future__ import annotations

import argparse
import sys

from simulator.wechat.server import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="wechat-sim", description="WeChat Pay APIv3 simulator")
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
