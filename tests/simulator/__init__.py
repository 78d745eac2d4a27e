"""Simulator tests: WeChat Pay and business backend stand-ins, in-process."""
