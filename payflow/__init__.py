"""payflow: a WeChat Pay gateway that never leaves a paid order pending."""

__version__ = "0.1.0"
