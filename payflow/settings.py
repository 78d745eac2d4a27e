"""Frozen `Settings` read once from the environment (DESIGN §6.4); bad values fail at start-up by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Mapping

from payflow import errors

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DEFAULT_QUERY_SCHEDULE = "30s,1m,2m,5m,10m"
# WeChat's own notification schedule (24h4m in all); the first forward happens at once.
DEFAULT_FORWARD_SCHEDULE = "15s,15s,30s,3m,10m,20m,30m,30m,30m,60m,3h,3h,3h,6h,6h"

# What `serve` cannot run without (WeChat and backend wiring, tokens).
REQUIRED_FOR_SERVE = (
    "PAYFLOW_WECHAT_MCHID",
    "PAYFLOW_WECHAT_APPID",
    "PAYFLOW_WECHAT_MCH_SERIAL",
    "PAYFLOW_WECHAT_MCH_KEY_FILE",
    "PAYFLOW_WECHAT_APIV3_KEY",
    "PAYFLOW_WECHAT_PUBKEY_ID",
    "PAYFLOW_WECHAT_PUBKEY_FILE",
    "PAYFLOW_NOTIFY_URL",
    "PAYFLOW_BACKEND_URL",
    "PAYFLOW_BACKEND_SECRET",
    "PAYFLOW_API_TOKEN",
    "PAYFLOW_ADMIN_TOKEN",
)


EXTRA_DURATIONS = {
    "PAYFLOW_CREATED_GRACE": "created_grace",
    "PAYFLOW_PLACEMENT_GRACE": "placement_grace",
    "PAYFLOW_LEASE": "lease",
    "PAYFLOW_BACKEND_TIMEOUT": "backend_timeout",
    "PAYFLOW_WECHAT_TIMEOUT": "wechat_timeout",
}


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
    parts = [p for p in text.split(",")]
    if not text.strip() or any(not p.strip() for p in parts):
        raise errors.SettingsError(f"{name}: {text!r} is not a comma list of durations like 15s,3m,1h")
    return tuple(parse_duration(p, name=name) for p in parts)


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///payflow.db"
    host: str = "127.0.0.1"
    port: int = 8080
    wechat_base_url: str = "https://api.mch.weixin.qq.com"
    wechat_mchid: str | None = None
    wechat_appid: str | None = None
    wechat_mch_serial: str | None = None
    wechat_mch_key_file: str | None = None
    wechat_apiv3_key: str | None = dataclasses.field(default=None, repr=False)
    wechat_pubkey_id: str | None = None
    wechat_pubkey_file: str | None = None
    notify_url: str | None = None
    backend_url: str | None = None
    backend_secret: str | None = dataclasses.field(default=None, repr=False)
    api_token: str | None = dataclasses.field(default=None, repr=False)
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    query_schedule: tuple[float, ...] = parse_schedule(DEFAULT_QUERY_SCHEDULE)
    forward_schedule: tuple[float, ...] = parse_schedule(DEFAULT_FORWARD_SCHEDULE)
    payment_ttl: float = 2 * 3600.0
    sweep_interval: float = 5.0
    log_format: str | None = None  # None: JSON when stderr is not a TTY
    log_level: str = "INFO"
    # Beyond the contract of DESIGN §6.4 (documented in README); chaos runs compress them.
    created_grace: float = 10.0  # first query of a payment whose placement outcome is unknown
    placement_grace: float = 60.0  # absent at WeChat this long after creation → never placed → close
    lease: float = 60.0  # how long a claimed payment stays with its worker if that worker dies
    backend_timeout: float = 10.0
    wechat_timeout: float = 10.0
    wechat_rate: float = 50.0  # WeChat calls per second, all endpoints together
    jitter: float = 0.1  # ± fraction applied to every backoff step
    reconcile_at: dt.time | None = dt.time(10, 30)  # Asia/Shanghai; yesterday's bill; None: no daily run
    read_query_interval: float = 2.0  # query on read: at most once per payment per this long; 0 disables
    # Not in the environment; tests and benchmarks override them directly.
    max_body_bytes: int = 64 * 1024
    sweep_batch: int = 100
    sweep_concurrency: int = 8
    # Forwards started by this process (after `pay`) in flight at once; 1 while notifications are in flight.
    forward_concurrency: int = 16
    forward_backlog: int = 50_000  # queued first forwards kept in memory; beyond it, the lease and sweeper

    @property
    def payment_ttl_delta(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.payment_ttl)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        def get(name: str) -> str | None:
            value = environ.get(name)
            return value if value is not None and value.strip() != "" else None

        values: dict[str, object] = {}
        text_fields = {
            "PAYFLOW_DATABASE_URL": "database_url",
            "PAYFLOW_HOST": "host",
            "PAYFLOW_WECHAT_BASE_URL": "wechat_base_url",
            "PAYFLOW_WECHAT_MCHID": "wechat_mchid",
            "PAYFLOW_WECHAT_APPID": "wechat_appid",
            "PAYFLOW_WECHAT_MCH_SERIAL": "wechat_mch_serial",
            "PAYFLOW_WECHAT_MCH_KEY_FILE": "wechat_mch_key_file",
            "PAYFLOW_WECHAT_APIV3_KEY": "wechat_apiv3_key",
            "PAYFLOW_WECHAT_PUBKEY_ID": "wechat_pubkey_id",
            "PAYFLOW_WECHAT_PUBKEY_FILE": "wechat_pubkey_file",
            "PAYFLOW_NOTIFY_URL": "notify_url",
            "PAYFLOW_BACKEND_URL": "backend_url",
            "PAYFLOW_BACKEND_SECRET": "backend_secret",
            "PAYFLOW_API_TOKEN": "api_token",
            "PAYFLOW_ADMIN_TOKEN": "admin_token",
        }
        for env_name, field in text_fields.items():
            value = get(env_name)
            if value is not None:
                values[field] = value.strip()

        if (port := get("PAYFLOW_PORT")) is not None:
            values["port"] = _parse_port(port)
        for env_name, field in (("PAYFLOW_QUERY_SCHEDULE", "query_schedule"),
                                ("PAYFLOW_FORWARD_SCHEDULE", "forward_schedule")):
            if (text := get(env_name)) is not None:
                values[field] = parse_schedule(text, name=env_name)
        if (ttl := get("PAYFLOW_PAYMENT_TTL")) is not None:
            seconds = parse_duration(ttl, name="PAYFLOW_PAYMENT_TTL")
            if seconds < 60:
                raise errors.SettingsError("PAYFLOW_PAYMENT_TTL: must be at least 1m (WeChat's minimum)")
            values["payment_ttl"] = seconds
        if (interval := get("PAYFLOW_SWEEP_INTERVAL")) is not None:
            values["sweep_interval"] = parse_duration(interval, name="PAYFLOW_SWEEP_INTERVAL")
        if (read := get("PAYFLOW_QUERY_ON_READ")) is not None:
            values["read_query_interval"] = parse_duration(read, name="PAYFLOW_QUERY_ON_READ")
        for env_name, field in EXTRA_DURATIONS.items():
            if (text := get(env_name)) is not None:
                seconds = parse_duration(text, name=env_name)
                if seconds <= 0:
                    raise errors.SettingsError(f"{env_name}: must be longer than 0")
                values[field] = seconds
        if (at := get("PAYFLOW_RECONCILE_AT")) is not None:
            values["reconcile_at"] = _parse_time_of_day(at)
        if (rate := get("PAYFLOW_WECHAT_RATE")) is not None:
            try:
                values["wechat_rate"] = float(rate)
            except ValueError:
                values["wechat_rate"] = -1.0
            if not 0 < float(values["wechat_rate"]) <= 10000:  # type: ignore[arg-type]
                raise errors.SettingsError(f"PAYFLOW_WECHAT_RATE: {rate!r} is not a rate in calls per second")
        if (concurrency := get("PAYFLOW_FORWARD_CONCURRENCY")) is not None:
            if not concurrency.strip().isdigit() or not 1 <= int(concurrency) <= 1000:
                raise errors.SettingsError(
                    f"PAYFLOW_FORWARD_CONCURRENCY: {concurrency!r} is not a whole number from 1 to 1000")
            values["forward_concurrency"] = int(concurrency)
        if (level := get("PAYFLOW_LOG_LEVEL")) is not None:
            if level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
                raise errors.SettingsError(f"PAYFLOW_LOG_LEVEL: {level!r} is not one of DEBUG, INFO, WARNING, ERROR")
            values["log_level"] = level.upper()
        if (fmt := get("PAYFLOW_LOG_FORMAT")) is not None:
            if fmt not in ("json", "console"):
                raise errors.SettingsError(f"PAYFLOW_LOG_FORMAT: {fmt!r} is not one of json, console")
            values["log_format"] = fmt

        url = str(values.get("database_url", cls.database_url))
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise errors.SettingsError(
                f"PAYFLOW_DATABASE_URL: {url!r} is not sqlite:///path or postgresql://...")
        key = values.get("wechat_apiv3_key")
        if key is not None and (len(str(key)) != 32 or not str(key).isascii()):
            raise errors.SettingsError("PAYFLOW_WECHAT_APIV3_KEY: must be exactly 32 ASCII characters")
        pubkey_id = values.get("wechat_pubkey_id")
        if pubkey_id is not None and not str(pubkey_id).startswith("PUB_KEY_ID_"):
            raise errors.SettingsError("PAYFLOW_WECHAT_PUBKEY_ID: must start with PUB_KEY_ID_")
        return cls(**values)  # type: ignore[arg-type]

    def missing_for_serve(self) -> list[str]:
        """Every variable `serve` needs that is unset, in contract order."""
        fields = {f"PAYFLOW_{f.name.upper()}": f.name for f in dataclasses.fields(self)}
        return [name for name in REQUIRED_FOR_SERVE if getattr(self, fields[name]) is None]


def _parse_time_of_day(text: str) -> dt.time | None:
    if text.strip().lower() == "off":
        return None
    try:
        return dt.time.fromisoformat(text.strip())
    except ValueError:
        raise errors.SettingsError(f"PAYFLOW_RECONCILE_AT: {text!r} is not a time like 10:30 (or off)") from None


def _parse_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise errors.SettingsError(f"PAYFLOW_PORT: {text!r} is not a port number (0-65535)")
    return port
