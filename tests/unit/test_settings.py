from __future__ import annotations

import pytest

from payflow import errors
from payflow.settings import Settings, parse_duration, parse_schedule


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("15s", 15.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0), ("1.5s", 1.5), ("0", 0.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "15", "15x", "-1s", "s", "1 hour", "1e3s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(errors.SettingsError):
        parse_duration(text)


def test_schedules() -> None:
    assert parse_schedule("15s,3m,1h") == (15.0, 180.0, 3600.0)
    assert parse_schedule(" 200ms , 1s ") == (0.2, 1.0)
    for bad in ("", "15s,,1m", "15s,", "abc"):
        with pytest.raises(errors.SettingsError):
            parse_schedule(bad)


def test_defaults_follow_the_design() -> None:
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///payflow.db"
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.wechat_base_url == "https://api.mch.weixin.qq.com"
    assert s.query_schedule == (30, 60, 120, 300, 600)
    # at once, then WeChat's own 15 retries: 24h4m in all
    assert len(s.forward_schedule) == 15 and sum(s.forward_schedule) == 24 * 3600 + 4 * 60
    assert s.payment_ttl == 7200


def test_every_contract_variable_is_read() -> None:
    env = {
        "PAYFLOW_DATABASE_URL": "sqlite:////tmp/x.db",
        "PAYFLOW_HOST": "0.0.0.0",
        "PAYFLOW_PORT": "9000",
        "PAYFLOW_WECHAT_BASE_URL": "http://127.0.0.1:9001",
        "PAYFLOW_WECHAT_MCHID": "1900000001",
        "PAYFLOW_WECHAT_APPID": "wxd678efh567hg6787",
        "PAYFLOW_WECHAT_MCH_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        "PAYFLOW_WECHAT_MCH_KEY_FILE": "/k/apiclient_key.pem",
        "PAYFLOW_WECHAT_APIV3_KEY": "a" * 32,
        "PAYFLOW_WECHAT_PUBKEY_ID": "PUB_KEY_ID_0112345",
        "PAYFLOW_WECHAT_PUBKEY_FILE": "/k/pub_key.pem",
        "PAYFLOW_NOTIFY_URL": "https://pay.example.com/v1/wechat/notify",
        "PAYFLOW_BACKEND_URL": "http://127.0.0.1:9002/paid",
        "PAYFLOW_BACKEND_SECRET": "s3cret",
        "PAYFLOW_API_TOKEN": "api-token",
        "PAYFLOW_ADMIN_TOKEN": "admin-token",
        "PAYFLOW_QUERY_SCHEDULE": "1s,2s",
        "PAYFLOW_FORWARD_SCHEDULE": "200ms,1s",
        "PAYFLOW_PAYMENT_TTL": "10m",
        "PAYFLOW_SWEEP_INTERVAL": "0",
        "PAYFLOW_LOG_FORMAT": "console",
    }
    s = Settings.from_env(env)
    assert s.missing_for_serve() == []
    assert s.port == 9000 and s.host == "0.0.0.0"
    assert s.query_schedule == (1.0, 2.0) and s.forward_schedule == (0.2, 1.0)
    assert s.payment_ttl == 600 and s.sweep_interval == 0 and s.log_format == "console"
    assert s.wechat_pubkey_id == "PUB_KEY_ID_0112345"
    # secrets never show up in a repr (and so never in a log line that prints settings)
    assert "s3cret" not in repr(s) and "api-token" not in repr(s) and "a" * 32 not in repr(s)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PAYFLOW_PORT", "http"),
        ("PAYFLOW_PORT", "70000"),
        ("PAYFLOW_QUERY_SCHEDULE", "30s,soon"),
        ("PAYFLOW_FORWARD_SCHEDULE", "15"),
        ("PAYFLOW_PAYMENT_TTL", "10s"),
        ("PAYFLOW_SWEEP_INTERVAL", "often"),
        ("PAYFLOW_LOG_FORMAT", "xml"),
        ("PAYFLOW_DATABASE_URL", "mysql://x"),
        ("PAYFLOW_WECHAT_APIV3_KEY", "too-short"),
        ("PAYFLOW_WECHAT_PUBKEY_ID", "0112345"),
        ("PAYFLOW_FORWARD_CONCURRENCY", "0"),
        ("PAYFLOW_FORWARD_CONCURRENCY", "lots"),
        ("PAYFLOW_FORWARD_CONCURRENCY", "1001"),
    ],
)
def test_bad_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(errors.SettingsError) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


def test_missing_for_serve_names_each_variable() -> None:
    s = Settings.from_env({"PAYFLOW_WECHAT_MCHID": "1900000001", "PAYFLOW_API_TOKEN": " "})
    missing = s.missing_for_serve()
    assert "PAYFLOW_WECHAT_MCHID" not in missing
    assert "PAYFLOW_API_TOKEN" in missing  # blank counts as unset
    assert len(missing) == 11


def test_forward_concurrency() -> None:
    assert Settings.from_env({}).forward_concurrency == 16
    assert Settings.from_env({"PAYFLOW_FORWARD_CONCURRENCY": " 4 "}).forward_concurrency == 4
