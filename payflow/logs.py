"""structlog configuration (called once by the entry point), request/payment context binding, and `redact_url`
for every URL that is printed."""

from __future__ import annotations

import contextvars
import logging
import re
import sys
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


# `?password=...`, `&sslpassword=...`, `?token=...`: a query parameter whose name says it holds a secret
_SECRET_PARAMETER = re.compile(r"(?i)([?&][^=&#]*(?:pass|pwd|secret|token)[^=&#]*=)[^&#]*")


def redact_url(url: str) -> str:
    """The URL fit for a log line or a message: `postgresql://u:secret@h/db?password=x` →
    `postgresql://u:***@h/db?password=***`. Every place that prints a database URL goes through this.

    Errs towards hiding too much: the userinfo runs to the last `@` of the authority, and the authority ends at
    the first `/`, `?` or `#` after the first `@`, so an unescaped `@` or `/` in a password is hidden as well."""
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme (a mistyped URL): all of it is the rest
        scheme, rest = "", url
    first_at = rest.find("@")
    if first_at >= 0 and not rest.startswith("/"):  # `sqlite:///a@b.db` has no authority to hide
        end = next((i for i in range(first_at, len(rest)) if rest[i] in "/?#"), len(rest))
        at = rest.rindex("@", 0, end)
        user, colon, password = rest[:at].partition(":")
        if colon and password:
            rest = f"{user}:***{rest[at:]}"
    return _SECRET_PARAMETER.sub(r"\1***", f"{scheme}{sep}{rest}")


class bound:  # noqa: N801 — used like a function: `with logs.bound(out_trade_no=...):`
    """Bind context (request_id, out_trade_no, ...) for the current task only; on exit, each key gets back
    exactly the value it had. (structlog's `bound_contextvars` does the same, but copies the whole context
    on entry; this runs on every request.)

    A key is bound through structlog once, which creates its context variable; after that the variable
    (`Token.var`) is set and reset directly, skipping structlog's per-call key formatting and lookups."""

    __slots__ = ("_context", "_tokens")

    def __init__(self, **context: Any) -> None:
        self._context = context
        self._tokens: list[contextvars.Token[Any]] = []

    def __enter__(self) -> None:
        tokens = self._tokens
        for key, value in self._context.items():
            var = _VARS.get(key)
            if var is None:
                token = structlog.contextvars.bind_contextvars(**{key: value})[key]
                _VARS[key] = token.var
            else:
                token = var.set(value)
            tokens.append(token)

    def __exit__(self, *exc: object) -> None:
        for token in reversed(self._tokens):
            token.var.reset(token)
        self._tokens.clear()


# key → the context variable structlog created for it (structlog's merge_contextvars reads the same ones)
_VARS: dict[str, contextvars.ContextVar[Any]] = {}
