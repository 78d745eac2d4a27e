from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import pathlib
import re

import pytest

from payflow import errors, settings
from payflow.settings import Settings, parse_duration, parse_schedule

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


def test_forward_concurrency_refuses_digits_int_cannot_read() -> None:
    with pytest.raises(errors.SettingsError, match="PAYFLOW_FORWARD_CONCURRENCY"):
        Settings.from_env({"PAYFLOW_FORWARD_CONCURRENCY": "²"})  # str.isdigit() says yes, int() says no


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PAYFLOW_DATABASE_URL", " mysql://x ", "PAYFLOW_DATABASE_URL: 'mysql://x' is not sqlite:///path or postgresql://..."),
        ("PAYFLOW_PORT", "http", "PAYFLOW_PORT: 'http' is not a port number (0-65535)"),
        ("PAYFLOW_WECHAT_APIV3_KEY", "é" * 32, "PAYFLOW_WECHAT_APIV3_KEY: must be exactly 32 ASCII characters"),
        ("PAYFLOW_WECHAT_PUBKEY_ID", "0112345", "PAYFLOW_WECHAT_PUBKEY_ID: must start with PUB_KEY_ID_"),
        ("PAYFLOW_QUERY_SCHEDULE", "30s,,1m",
         "PAYFLOW_QUERY_SCHEDULE: '30s,,1m' is not a comma list of durations like 15s,3m,1h"),
        ("PAYFLOW_FORWARD_SCHEDULE", "15s,soon",
         "PAYFLOW_FORWARD_SCHEDULE: 'soon' is not a duration like 200ms, 15s, 5m, 2h or 1d"),
        ("PAYFLOW_PAYMENT_TTL", "59s", "PAYFLOW_PAYMENT_TTL: must be at least 1m (WeChat's minimum)"),
        ("PAYFLOW_SWEEP_INTERVAL", "often",
         "PAYFLOW_SWEEP_INTERVAL: 'often' is not a duration like 200ms, 15s, 5m, 2h or 1d"),
        ("PAYFLOW_LEASE", "0", "PAYFLOW_LEASE: must be longer than 0"),
        ("PAYFLOW_WECHAT_TIMEOUT", "0s", "PAYFLOW_WECHAT_TIMEOUT: must be longer than 0"),
        ("PAYFLOW_RECONCILE_AT", "25:00", "PAYFLOW_RECONCILE_AT: '25:00' is not a time like 10:30 (or off)"),
        ("PAYFLOW_WECHAT_RATE", "nan", "PAYFLOW_WECHAT_RATE: 'nan' is not a rate in calls per second"),
        ("PAYFLOW_WECHAT_BUDGETS", "jsapi:100",
         "PAYFLOW_WECHAT_BUDGETS: 'jsapi:100' is not api=calls-per-second (e.g. jsapi=100)"),
        ("PAYFLOW_WECHAT_BUDGETS", "jsapi=0",
         "PAYFLOW_WECHAT_BUDGETS (jsapi): '0' is not a rate in calls per second"),
        ("PAYFLOW_WECHAT_BUDGETS", "query=1,query=2", "PAYFLOW_WECHAT_BUDGETS: query is given twice"),
        ("PAYFLOW_WECHAT_APPIDS", "mini=wx1",
         "PAYFLOW_WECHAT_APPIDS: 'mini=wx1' is not product=appid with a product of "
         "jsapi, miniprogram, native, h5, app"),
        ("PAYFLOW_WECHAT_APPIDS", "app=wx1,app=wx2", "PAYFLOW_WECHAT_APPIDS: app is given twice"),
        ("PAYFLOW_FORWARD_CONCURRENCY", "+4", "PAYFLOW_FORWARD_CONCURRENCY: '+4' is not a whole number from 1 to 1000"),
        ("PAYFLOW_LOG_LEVEL", " info ", "PAYFLOW_LOG_LEVEL: ' info ' is not one of DEBUG, INFO, WARNING, ERROR"),
        ("PAYFLOW_LOG_FORMAT", " json", "PAYFLOW_LOG_FORMAT: ' json' is not one of json, console"),
    ],
)
def test_error_messages(name: str, value: str, message: str) -> None:
    with pytest.raises(errors.SettingsError) as info:
        Settings.from_env({name: value})
    assert str(info.value) == message


def test_values_are_read_as_before() -> None:
    s = Settings.from_env({
        "PAYFLOW_HOST": " 0.0.0.0 ", "PAYFLOW_PORT": " 0 ", "PAYFLOW_LOG_LEVEL": "debug",
        "PAYFLOW_RECONCILE_AT": " OFF ", "PAYFLOW_WECHAT_RATE": "0.5", "PAYFLOW_QUERY_ON_READ": "0",
        "PAYFLOW_PLACEMENT_GRACE": "2m",
    })
    assert (s.host, s.port, s.log_level, s.reconcile_at) == ("0.0.0.0", 0, "DEBUG", None)
    assert (s.wechat_rate, s.read_query_interval, s.placement_grace) == (0.5, 0.0, 120.0)
    assert Settings.from_env({"PAYFLOW_RECONCILE_AT": "09:05"}).reconcile_at == dt.time(9, 5)
    several = Settings.from_env({"PAYFLOW_WECHAT_APPID": "wxoa",
                                 "PAYFLOW_WECHAT_APPIDS": "miniprogram=wxmini, app=wxapp"})
    assert [several.appid_for(t) for t in ("jsapi", "miniprogram", "native", "h5", "app")] == [
        "wxoa", "wxmini", "wxoa", "wxoa", "wxapp"]
    assert several.merchant_appids == {"wxoa", "wxmini", "wxapp"}
    budgets = Settings.from_env({"PAYFLOW_WECHAT_BUDGETS": " jsapi = 250 , refund=10 "}).wechat_budgets
    assert budgets == (("jsapi", 250.0), ("refund", 10.0))


def test_the_table_names_each_variable_and_field_once() -> None:
    names = [v.name for v in settings.VARIABLES]
    fields = [v.field for v in settings.VARIABLES]
    assert len(set(names)) == len(names) and len(set(fields)) == len(fields)
    assert all(name.startswith("PAYFLOW_") for name in names)
    assert set(fields) <= {f.name for f in dataclasses.fields(Settings)}


def test_the_table_defaults_are_the_field_defaults() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    for v in settings.VARIABLES:
        expected = defaults[v.field]
        if v.default is None:
            assert expected is None, v.name
        else:
            value = v.parse(v.default, v.name)
            assert value == expected and type(value) is type(expected), v.name
        assert not (v.required and v.default is not None), v.name


def test_required_for_serve_keeps_its_order() -> None:
    assert settings.REQUIRED_FOR_SERVE == (
        "PAYFLOW_WECHAT_MCHID", "PAYFLOW_WECHAT_APPID", "PAYFLOW_WECHAT_MCH_SERIAL", "PAYFLOW_WECHAT_MCH_KEY_FILE",
        "PAYFLOW_WECHAT_APIV3_KEY", "PAYFLOW_WECHAT_PUBKEY_ID", "PAYFLOW_WECHAT_PUBKEY_FILE", "PAYFLOW_NOTIFY_URL",
        "PAYFLOW_BACKEND_URL", "PAYFLOW_BACKEND_SECRET", "PAYFLOW_API_TOKEN", "PAYFLOW_ADMIN_TOKEN",
    )
    assert Settings.from_env({}).missing_for_serve() == list(settings.REQUIRED_FOR_SERVE)


def test_the_contract_variables_come_before_the_additions() -> None:
    # markdown_table() says "the variables from <first addition> down are additions"
    flags = [v.contract for v in settings.VARIABLES]
    assert flags == sorted(flags, reverse=True)


def test_readme_table_is_the_settings_table() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- settings-table:start")
    start = readme.index("-->", start) + len("-->")
    end = readme.index("<!-- settings-table:end -->", start)
    assert readme[start:end].strip() == settings.markdown_table(), (
        "README's configuration table has drifted from payflow/settings.py VARIABLES: "
        "paste settings.markdown_table() between the settings-table markers")


def test_serve_help_lists_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("run_cli", ROOT / "run.py")
    assert spec is not None and spec.loader is not None
    run_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_cli)
    with pytest.raises(SystemExit) as info:
        run_cli.main(["serve", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert settings.help_text() in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  PAYFLOW_")]
    assert listed == [v.name for v in settings.VARIABLES]


def test_help_text_gives_each_default_or_says_required() -> None:
    entries = re.split(r"\n(?=  PAYFLOW_)", settings.help_text())[1:]
    for v, entry in zip(settings.VARIABLES, entries, strict=True):
        words = " ".join(entry.split())
        assert words.startswith(f"{v.name} ") and "`" not in words
        default = v.shown_default or v.default
        assert words.endswith("(required)" if v.required else f"(default: {default})"), v.name


def test_refund_variables() -> None:
    s = settings.Settings.from_env({"PAYFLOW_AUTO_REFUND": " backend_rejected, paid_after_close ",
                                    "PAYFLOW_REFUND_QUERY_SCHEDULE": "10s,1m"})
    assert s.auto_refund == {"backend_rejected", "paid_after_close"} and s.refund_query_schedule == (10.0, 60.0)
    assert settings.Settings().auto_refund == frozenset()
    assert settings.Settings().refund_query_schedule == (60.0, 300.0, 1800.0, 3600.0)
    with pytest.raises(errors.SettingsError, match="PAYFLOW_AUTO_REFUND: refund_seen is not one of"):
        settings.Settings.from_env({"PAYFLOW_AUTO_REFUND": "backend_rejected,refund_seen"})
    with pytest.raises(errors.SettingsError, match="PAYFLOW_REFUND_QUERY_SCHEDULE"):
        settings.Settings.from_env({"PAYFLOW_REFUND_QUERY_SCHEDULE": "soon"})
