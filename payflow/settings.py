"""Frozen `Settings` read once from the environment (DESIGN §6.4); bad values fail at start-up by name.

`VARIABLES` is the one table of environment variables: `Settings.from_env` walks it, and it renders
README's configuration table (`markdown_table()`) and the list in `serve --help` (`help_text()`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import textwrap
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from payflow import errors, logs, ratelimit
from payflow.wechat.api import TRADE_TYPES

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

WECHAT_BASE_URL = "https://api.mch.weixin.qq.com"
# WeChat's documented second domain, for when the first cannot be reached (payflow/wechat/failover.py).
WECHAT_BACKUP_URL = "https://api2.mch.weixin.qq.com"
DEFAULT_QUERY_SCHEDULE = "30s,1m,2m,5m,10m"
# WeChat's own notification schedule (24h4m in all); the first forward happens at once.
DEFAULT_FORWARD_SCHEDULE = "15s,15s,30s,3m,10m,20m,30m,30m,30m,60m,3h,3h,3h,6h,6h"
# Queries of a processing refund; after the last step, every REFUND_QUERY_AFTER (an abnormal one: only that).
DEFAULT_REFUND_QUERY_SCHEDULE = "1m,5m,30m,1h"
REFUND_QUERY_AFTER = 6 * 3600.0
# The review reasons an automatic refund may answer (PAYFLOW_AUTO_REFUND).
AUTO_REFUND_REASONS = ("paid_after_close", "backend_rejected", "amount_mismatch")


def parse_duration(text: str, *, name: str = "duration") -> float:
    """`200ms`, `15s`, `2h`, `1d` → seconds. A bare `0` is accepted; other unitless numbers are not."""
    if text.strip() == "0":
        return 0.0
    match = _DURATION.match(text)
    if not match:
        raise errors.SettingsError(f"{name}: {text!r} is not a duration like 200ms, 15s, 5m, 2h or 1d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_schedule(text: str, *, name: str = "schedule") -> tuple[float, ...]:
    """A comma list of durations, e.g. `15s,3m,1h` → (15.0, 180.0, 3600.0)."""
    parts = text.split(",")
    if not text.strip() or any(not p.strip() for p in parts):
        raise errors.SettingsError(f"{name}: {text!r} is not a comma list of durations like 15s,3m,1h")
    return tuple(parse_duration(p, name=name) for p in parts)


@dataclasses.dataclass(frozen=True)
class Settings:
    # The defaults of the fields in `VARIABLES` are spelled again there, as the environment would spell
    # them; tests/unit/test_settings.py keeps the two equal.
    database_url: str = "sqlite:///payflow.db"
    host: str = "127.0.0.1"
    port: int = 8080
    wechat_base_url: str = WECHAT_BASE_URL
    wechat_mchid: str | None = None
    wechat_appid: str | None = None
    wechat_key_mode: str = "pubkey"  # pubkey, certificates or both (payflow.wechat.trust)
    wechat_certificates_file: str = "wechat-certificates.json"
    # (trade_type, appid) pairs: a mini program's or an app's own appid (PAYFLOW_WECHAT_APPIDS)
    wechat_appids: tuple[tuple[str, str], ...] = ()
    wechat_mch_serial: str | None = None
    wechat_mch_key_file: str | None = None
    wechat_apiv3_key: str | None = dataclasses.field(default=None, repr=False)
    wechat_pubkey_id: str | None = None
    wechat_pubkey_file: str | None = None
    notify_url: str | None = None
    backend_url: str | None = None
    # The first signs paid events; the others are secrets being retired (a backend verifies with all of them).
    backend_secrets: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)
    api_token: str | None = dataclasses.field(default=None, repr=False)
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    metrics_token: str | None = dataclasses.field(default=None, repr=False)
    query_schedule: tuple[float, ...] = parse_schedule(DEFAULT_QUERY_SCHEDULE)
    forward_schedule: tuple[float, ...] = parse_schedule(DEFAULT_FORWARD_SCHEDULE)
    payment_ttl: float = 2 * 3600.0
    refund_query_schedule: tuple[float, ...] = parse_schedule(DEFAULT_REFUND_QUERY_SCHEDULE)
    auto_refund: frozenset[str] = frozenset()  # of AUTO_REFUND_REASONS
    sweep_interval: float = 5.0
    log_format: str | None = None  # None: JSON when stderr is not a TTY
    log_level: str = "INFO"
    # Beyond the contract of DESIGN §6.4 (documented in README); chaos runs compress them.
    created_grace: float = 10.0  # first query of a payment whose placement outcome is unknown
    placement_grace: float = 60.0  # absent at WeChat this long after creation → never placed → close
    lease: float = 60.0  # how long a claimed payment stays with its worker if that worker dies
    backend_timeout: float = 10.0
    wechat_timeout: float = 10.0
    wechat_rate: float = 50.0  # WeChat calls per second for an API without a budget of its own
    # calls/s per WeChat API; what is not named keeps ratelimit.DEFAULT_BUDGETS
    wechat_budgets: tuple[tuple[str, float], ...] = tuple(ratelimit.DEFAULT_BUDGETS.items())
    wechat_backup_url: str | None = None  # None: the default (see `wechat_backup()`); "": no failover
    # Decrypts what the current APIv3 key cannot, while notifications encrypted before a key change are in flight.
    wechat_apiv3_key_previous: str | None = dataclasses.field(default=None, repr=False)
    jitter: float = 0.1  # ± fraction applied to every backoff step
    reconcile_at: dt.time | None = dt.time(10, 30)  # Asia/Shanghai; yesterday's bill; None: no daily run
    read_query_interval: float = 2.0  # query on read: at most once per payment per this long; 0 disables
    console: bool = True  # the operator console under /console/; False: no such routes
    # Not in the environment; tests and benchmarks override them directly.
    max_body_bytes: int = 64 * 1024
    sweep_batch: int = 100
    sweep_concurrency: int = 8
    # PAYFLOW_FORWARD_CONCURRENCY, the exception: forwards started by this process (after `pay`) in flight
    # at once; 1 while notifications are in flight.
    forward_concurrency: int = 16
    forward_backlog: int = 50_000  # queued first forwards kept in memory; beyond it, the lease and sweeper

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Every variable of `VARIABLES` that is set (blank counts as unset); the others keep their defaults."""
        # Any: each parser returns its own field's type, which the table cannot say to mypy; the tests
        # check every parser against its field's default.
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            text = environ.get(variable.name)
            if text is not None and (text.strip() or variable.empty):
                values[variable.field] = variable.parse(text, variable.name)
        return cls(**values)

    @property
    def backend_secret(self) -> str | None:
        """The secret payflow signs paid events with: the first of PAYFLOW_BACKEND_SECRET."""
        return self.backend_secrets[0] if self.backend_secrets else None

    def appid_for(self, trade_type: str) -> str | None:
        """The appid a payment of this product is placed with: PAYFLOW_WECHAT_APPIDS', else PAYFLOW_WECHAT_APPID."""
        return dict(self.wechat_appids).get(trade_type, self.wechat_appid)

    @property
    def merchant_appids(self) -> frozenset[str]:
        """Every appid of this merchant that payflow places with: a notification naming another is refused."""
        return frozenset(a for a in (self.wechat_appid, *(a for _, a in self.wechat_appids)) if a)

    def wechat_backup(self) -> str | None:
        """Where WeChat calls fail over to: PAYFLOW_WECHAT_BACKUP_URL; unset, WeChat's second domain when the base
        URL is WeChat's own (a simulator has none); set empty, nowhere."""
        if self.wechat_backup_url is None:
            return WECHAT_BACKUP_URL if self.wechat_base_url.rstrip("/") == WECHAT_BASE_URL else None
        return self.wechat_backup_url or None

    def missing_for_serve(self) -> list[str]:
        """Every variable `serve` needs that is unset, in contract order (the public key's two are not needed
        when payflow trusts platform certificates only)."""
        skip = PUBKEY_VARIABLES if self.wechat_key_mode == "certificates" else ()
        return [v.name for v in VARIABLES if v.required and getattr(self, v.field) is None and v.name not in skip]


# Parsers: the variable's text as it is set (never blank) and its name, for the message naming it.
Parser = Callable[[str, str], object]


def _text(text: str, name: str) -> str:
    return text.strip()


def _database_url(text: str, name: str) -> str:
    url = text.strip()
    if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise errors.SettingsError(f"{name}: {logs.redact_url(url)!r} is not sqlite:///path or postgresql://...")
    if not url.startswith("sqlite:///"):
        try:  # what the driver would otherwise fail on later, with a traceback
            parts = urllib.parse.urlsplit(url)
            parts.port, parts.hostname  # noqa: B018 — read for the ValueError a malformed authority raises
        except ValueError:
            raise errors.SettingsError(
                f"{name}: {logs.redact_url(url)!r} is not a valid URL (check the host and port)") from None
    return url


def _apiv3_key(text: str, name: str) -> str:
    key = text.strip()
    if len(key) != 32 or not key.isascii():
        raise errors.SettingsError(f"{name}: must be exactly 32 ASCII characters")
    return key


def _secrets(text: str, name: str) -> tuple[str, ...]:
    secrets = tuple(part.strip() for part in text.split(","))
    if not all(secrets):
        raise errors.SettingsError(f"{name}: an empty secret in the comma list")
    return secrets


def _url_or_empty(text: str, name: str) -> str:
    url = text.strip().rstrip("/")
    if url and not url.startswith(("https://", "http://")):
        raise errors.SettingsError(f"{name}: {logs.redact_url(url)!r} is not an http(s):// URL (or empty for none)")
    return url


def _pubkey_id(text: str, name: str) -> str:
    key_id = text.strip()
    if not key_id.startswith("PUB_KEY_ID_"):
        raise errors.SettingsError(f"{name}: must start with PUB_KEY_ID_")
    return key_id


def _port(text: str, name: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise errors.SettingsError(f"{name}: {text!r} is not a port number (0-65535)")
    return port


def _duration(text: str, name: str) -> float:
    return parse_duration(text, name=name)


def _positive_duration(text: str, name: str) -> float:
    seconds = parse_duration(text, name=name)
    if seconds <= 0:
        raise errors.SettingsError(f"{name}: must be longer than 0")
    return seconds


def _payment_ttl(text: str, name: str) -> float:
    seconds = parse_duration(text, name=name)
    if seconds < 60:
        raise errors.SettingsError(f"{name}: must be at least 1m (WeChat's minimum)")
    return seconds


def _schedule(text: str, name: str) -> tuple[float, ...]:
    return parse_schedule(text, name=name)


def _time_of_day(text: str, name: str) -> dt.time | None:
    if text.strip().lower() == "off":
        return None
    try:
        return dt.time.fromisoformat(text.strip())
    except ValueError:
        raise errors.SettingsError(f"{name}: {text!r} is not a time like 10:30 (or off)") from None


def _rate(text: str, name: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not 0 < rate <= 10000:  # also refuses nan
        raise errors.SettingsError(f"{name}: {text!r} is not a rate in calls per second")
    return rate


_BUDGETS_TEXT = ",".join(f"{api}={rate:g}" for api, rate in ratelimit.DEFAULT_BUDGETS.items())


_APPID_KINDS = tuple(TRADE_TYPES)  # the products, as `trade_type` names them
PUBKEY_VARIABLES = ("PAYFLOW_WECHAT_PUBKEY_ID", "PAYFLOW_WECHAT_PUBKEY_FILE")


def _key_mode(text: str, name: str) -> str:
    mode = text.strip()
    if mode not in ("pubkey", "certificates", "both"):
        raise errors.SettingsError(f"{name}: {text!r} is not one of pubkey, certificates, both")
    return mode


def _auto_refund(text: str, name: str) -> frozenset[str]:
    reasons = frozenset(filter(None, (part.strip() for part in text.split(","))))
    unknown = sorted(reasons - set(AUTO_REFUND_REASONS))
    if unknown:
        raise errors.SettingsError(f"{name}: {', '.join(unknown)} is not one of {', '.join(AUTO_REFUND_REASONS)}")
    return reasons


def _appids(text: str, name: str) -> tuple[tuple[str, str], ...]:
    """`miniprogram=wx...,app=wx...`: the appid of each product that does not use PAYFLOW_WECHAT_APPID."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, sep, appid = (part.strip() for part in item.partition("="))
        if not sep or kind not in _APPID_KINDS or not re.fullmatch(r"[0-9A-Za-z_]{1,32}", appid):
            raise errors.SettingsError(
                f"{name}: {item!r} is not product=appid with a product of {', '.join(_APPID_KINDS)}")
        if kind in pairs:
            raise errors.SettingsError(f"{name}: {kind} is given twice")
        pairs[kind] = appid
    return tuple(pairs.items())


def _budgets(text: str, name: str) -> tuple[tuple[str, float], ...]:
    """`jsapi=100,query=300`: calls per second for each WeChat API named (see ratelimit.DEFAULT_BUDGETS)."""
    budgets: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        api, sep, rate = item.partition("=")
        api = api.strip()
        if not sep or not re.fullmatch(r"[a-z0-9_]+", api):
            raise errors.SettingsError(f"{name}: {item!r} is not api=calls-per-second (e.g. jsapi=100)")
        if api in budgets:
            raise errors.SettingsError(f"{name}: {api} is given twice")
        budgets[api] = _rate(rate.strip(), f"{name} ({api})")
    return tuple(budgets.items())


def _forward_concurrency(text: str, name: str) -> int:
    try:
        count = int(text) if text.strip().isdigit() else 0
    except ValueError:  # a digit int() cannot read, like "²"
        count = 0
    if not 1 <= count <= 1000:
        raise errors.SettingsError(f"{name}: {text!r} is not a whole number from 1 to 1000")
    return count


def _on_off(text: str, name: str) -> bool:
    if text.strip().lower() not in ("on", "off"):
        raise errors.SettingsError(f"{name}: {text!r} is not one of on, off")
    return text.strip().lower() == "on"


def _log_level(text: str, name: str) -> str:
    if text.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise errors.SettingsError(f"{name}: {text!r} is not one of DEBUG, INFO, WARNING, ERROR")
    return text.upper()


def _log_format(text: str, name: str) -> str:
    if text not in ("json", "console"):
        raise errors.SettingsError(f"{name}: {text!r} is not one of json, console")
    return text


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable: the `Settings` field it sets, how its text is read, how it is documented."""

    name: str
    field: str
    parse: Parser
    default: str | None  # spelled as in the environment; None: the field stays None unless set
    meaning: str  # Markdown (README); `serve --help` shows it without the backquotes
    required: bool = False  # `serve` (without --dev) will not start while it is unset
    contract: bool = True  # named in DESIGN §6.4; False for payflow's additions, which come last
    shown_default: str | None = None  # for a default the environment cannot spell
    empty: bool = False  # a value set empty is read (it means something), instead of counting as unset


# In contract order: `REQUIRED_FOR_SERVE`, error messages and both renderings follow it.
VARIABLES: tuple[Variable, ...] = (
    Variable("PAYFLOW_DATABASE_URL", "database_url", _database_url, "sqlite:///payflow.db",
             "the store: `sqlite:///relative.db`, `sqlite:////abs/path.db`, or `postgresql://user@host:5432/db` "
             "for replicas (query parameters become server settings, e.g. `?search_path=payflow`, except "
             "`?pool_size=N`: connections per replica, 10 by default)"),
    Variable("PAYFLOW_HOST", "host", _text, "127.0.0.1", "the address payflow listens on (`--host` overrides)"),
    Variable("PAYFLOW_PORT", "port", _port, "8080",
             "the port payflow listens on (`--port` overrides; `0` picks a free one)"),
    Variable("PAYFLOW_WECHAT_BASE_URL", "wechat_base_url", _text, "https://api.mch.weixin.qq.com",
             "WeChat Pay API (or a simulator)"),
    Variable("PAYFLOW_WECHAT_MCHID", "wechat_mchid", _text, None, "merchant id", required=True),
    Variable("PAYFLOW_WECHAT_APPID", "wechat_appid", _text, None, "app id", required=True),
    Variable("PAYFLOW_WECHAT_MCH_SERIAL", "wechat_mch_serial", _text, None, "merchant certificate serial",
             required=True),
    Variable("PAYFLOW_WECHAT_MCH_KEY_FILE", "wechat_mch_key_file", _text, None,
             "merchant private key file (PKCS#8 PEM)", required=True),
    Variable("PAYFLOW_WECHAT_APIV3_KEY", "wechat_apiv3_key", _apiv3_key, None,
             "the 32-character APIv3 key (decrypts notifications)", required=True),
    Variable("PAYFLOW_WECHAT_PUBKEY_ID", "wechat_pubkey_id", _pubkey_id, None,
             "WeChat Pay public key id (`PUB_KEY_ID_...`)", required=True),
    Variable("PAYFLOW_WECHAT_PUBKEY_FILE", "wechat_pubkey_file", _text, None,
             "WeChat Pay public key file (SPKI PEM)", required=True),
    Variable("PAYFLOW_NOTIFY_URL", "notify_url", _text, None, "the public URL of `POST /v1/wechat/notify`",
             required=True),
    Variable("PAYFLOW_BACKEND_URL", "backend_url", _text, None, "where paid events go", required=True),
    Variable("PAYFLOW_BACKEND_SECRET", "backend_secrets", _secrets, None,
             "the HMAC secret that signs paid events; while rotating, a comma list `new,old`: payflow signs with the "
             "first", required=True),
    Variable("PAYFLOW_API_TOKEN", "api_token", _text, None, "bearer token for the API", required=True),
    Variable("PAYFLOW_ADMIN_TOKEN", "admin_token", _text, None, "bearer token for the operator endpoints",
             required=True),
    Variable("PAYFLOW_QUERY_SCHEDULE", "query_schedule", _schedule, DEFAULT_QUERY_SCHEDULE,
             "gaps between queries of a `prepaid` payment (the last repeats; never past the expiry)"),
    Variable("PAYFLOW_FORWARD_SCHEDULE", "forward_schedule", _schedule, DEFAULT_FORWARD_SCHEDULE,
             "retries of the paid event after the immediate first try (WeChat's own 24h4m)"),
    Variable("PAYFLOW_PAYMENT_TTL", "payment_ttl", _payment_ttl, "2h",
             "payment lifetime, sent to WeChat as `time_expire` (at least `1m`)"),
    Variable("PAYFLOW_SWEEP_INTERVAL", "sweep_interval", _duration, "5s", "sweeper cadence; `0` disables the sweeper"),
    Variable("PAYFLOW_LOG_FORMAT", "log_format", _log_format, None, "`json` or `console`",
             shown_default="JSON unless stderr is a TTY"),
    Variable("PAYFLOW_REFUND_QUERY_SCHEDULE", "refund_query_schedule", _schedule, DEFAULT_REFUND_QUERY_SCHEDULE,
             "gaps between queries of a `processing` refund; after the last, every 6h (an `abnormal` refund: every "
             "6h)"),
    Variable("PAYFLOW_AUTO_REFUND", "auto_refund", _auto_refund, "",
             "review reasons refunded without a person: a comma list of `paid_after_close`, `backend_rejected`, "
             "`amount_mismatch`", shown_default="none"),
    Variable("PAYFLOW_LOG_LEVEL", "log_level", _log_level, "INFO",
             "`DEBUG`, `INFO`, `WARNING` or `ERROR`: `DEBUG` adds a line per transition and per WeChat call; "
             "`WARNING` keeps alerts and failures only", contract=False),
    Variable("PAYFLOW_CREATED_GRACE", "created_grace", _positive_duration, "10s",
             "first query of a payment whose placement outcome is unknown", contract=False),
    Variable("PAYFLOW_PLACEMENT_GRACE", "placement_grace", _positive_duration, "60s",
             "unknown at WeChat this long after creation → it was never placed → closed", contract=False),
    Variable("PAYFLOW_LEASE", "lease", _positive_duration, "60s",
             "how long a claimed payment stays with a worker that died", contract=False),
    Variable("PAYFLOW_BACKEND_TIMEOUT", "backend_timeout", _positive_duration, "10s",
             "per-request timeout of a paid event to the backend", contract=False),
    Variable("PAYFLOW_WECHAT_TIMEOUT", "wechat_timeout", _positive_duration, "10s",
             "per-request timeout of a WeChat Pay call", contract=False),
    Variable("PAYFLOW_WECHAT_RATE", "wechat_rate", _rate, "50",
             "WeChat calls per second for an API `PAYFLOW_WECHAT_BUDGETS` gives no budget of its own",
             contract=False),
    Variable("PAYFLOW_WECHAT_KEY_MODE", "wechat_key_mode", _key_mode, "pubkey",
             "how WeChat's signatures are verified: `pubkey` (the WeChat Pay public key), `certificates` (platform "
             "certificates from `/v3/certificates`; the public key's two variables are then not needed) or `both` "
             "(the migration between them)", contract=False),
    Variable("PAYFLOW_WECHAT_CERTIFICATES_FILE", "wechat_certificates_file", _text, "wechat-certificates.json",
             "where the last good set of platform certificates is kept (certificates and both modes)",
             contract=False),
    Variable("PAYFLOW_WECHAT_APPIDS", "wechat_appids", _appids, "",
             "the appids of the merchant's other apps by product, e.g. `miniprogram=wx...,app=wx...`; a product "
             "left out uses `PAYFLOW_WECHAT_APPID`", contract=False, shown_default="none"),
    Variable("PAYFLOW_WECHAT_BUDGETS", "wechat_budgets", _budgets, _BUDGETS_TEXT,
             "calls per second for each WeChat API, each served payers first; an API left out keeps its default "
             "(README \"WeChat's budgets\")", contract=False),
    Variable("PAYFLOW_WECHAT_BACKUP_URL", "wechat_backup_url", _url_or_empty, None,
             "where a WeChat call goes when the base URL cannot be reached (connection failure or timeout); set "
             "empty, nowhere", contract=False, empty=True,
             shown_default="api2.mch.weixin.qq.com when the base URL is the default, else none"),
    Variable("PAYFLOW_WECHAT_APIV3_KEY_PREVIOUS", "wechat_apiv3_key_previous", _apiv3_key, None,
             "the APIv3 key before the current one: what the current key cannot decrypt is tried with it (keep it "
             "25 h after a key change)", contract=False, shown_default="none"),
    Variable("PAYFLOW_QUERY_ON_READ", "read_query_interval", _duration, "2s",
             "a status poll of a `prepaid` payment asks WeChat at most this often; `0` disables", contract=False),
    Variable("PAYFLOW_RECONCILE_AT", "reconcile_at", _time_of_day, "10:30",
             "daily reconciliation time (Asia/Shanghai) for the previous day; `off` disables", contract=False),
    Variable("PAYFLOW_FORWARD_CONCURRENCY", "forward_concurrency", _forward_concurrency, "16",
             "first forwards one process keeps in flight to the backend (1 while WeChat notifications are in "
             "flight)", contract=False),
    Variable("PAYFLOW_METRICS_TOKEN", "metrics_token", _text, None,
             "bearer token `GET /metrics` requires (the admin token works too); unset, scrapes are open",
             contract=False, shown_default="unset: open"),
    Variable("PAYFLOW_CONSOLE", "console", _on_off, "on",
             "the operator console under `/console/` (sign-in with the admin token); `off` removes its routes",
             contract=False),
)

# What `serve` cannot run without (WeChat and backend wiring, tokens).
REQUIRED_FOR_SERVE = tuple(v.name for v in VARIABLES if v.required)


def markdown_table() -> str:
    """README's configuration table, the text between its `settings-table` markers."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for v in VARIABLES:
        default = v.shown_default or (f"`{v.default}`" if v.default is not None else "—")
        meaning = v.meaning.replace("|", "\\|")
        lines.append(f"| `{v.name}` | {default} | {meaning} |")
    additions = [v.name for v in VARIABLES if not v.contract]
    if additions:
        lines += ["", f"The variables from `{additions[0]}` down are additions to the design's configuration contract."]
    return "\n".join(lines)


def help_text(width: int = 79) -> str:
    """The list of variables for `serve --help`: each with its meaning and its default, or `(required)`."""
    indent = " " * (max(len(v.name) for v in VARIABLES) + 4)
    lines = ["environment (durations like 200ms, 15s, 2h; schedules are comma lists of them;",
             "without --dev, serve needs every variable marked required):"]
    for v in VARIABLES:
        default = v.shown_default or v.default
        note = " (required)" if v.required else f" (default: {default})" if default is not None else ""
        lines.append(textwrap.fill((v.meaning + note).replace("`", ""), width,
                                   initial_indent=f"  {v.name}".ljust(len(indent)), subsequent_indent=indent,
                                   break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)
