"""structlog configuration (called once by the entry point) and request/payment context binding."""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
]


def configure_logging(fmt: str | None = None, level: int | str = logging.INFO) -> None:
    """JSON lines when stderr is not a TTY (or `fmt="json"`), colourless console lines otherwise.

    stdlib loggers (aiohttp.access, asyncio, aiosqlite) are routed through the same processors.
    """
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        # Dropping below-level events first means a disabled debug line costs a level check, not a render.
        processors=[structlog.stdlib.filter_by_level, *_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosqlite logs every statement at DEBUG, and transitions two lines per event at INFO (every plan());
    # keep them quiet unless asked for.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


class bound:  # noqa: N801 — used like a function: `with logs.bound(out_trade_no=...):`
    """Bind context (request_id, out_trade_no, ...) for the current task only; on exit, each key gets back
    exactly the value it had. (structlog's `bound_contextvars` does the same, but copies the whole context
    on entry; this runs on every request.)"""

    __slots__ = ("_context", "_tokens")

    def __init__(self, **context: Any) -> None:
        self._context = context
        self._tokens: Mapping[str, contextvars.Token[Any]] = {}

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._context)

    def __exit__(self, *exc: object) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
