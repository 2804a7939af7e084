"""Which channels an alert goes to: by severity, actions on their own route, per-book and per-exposure
overrides, channels without credentials left out; settings that cannot work are refused with the variable."""

from __future__ import annotations

from decimal import Decimal

import pytest

from models.alerts import AlertRouting, RouteOverride, parse_routes, summary
from models.hedge import Alert
from models.settings import SettingsError, load_settings

ALL = frozenset({"slack", "telegram", "email"})


def alert(severity: str = "WARNING", **extra) -> Alert:
    return Alert(severity=severity, key="loan-L-1:band", title="loan L-1: SAFE → CAUTION", text="LTV 45.2 %",
                 book="loan", exposure_id="L-1", **extra)


def routing(**extra) -> AlertRouting:
    r = AlertRouting(**extra)
    r.recipients.slack_channel, r.recipients.telegram_chat_ids, r.recipients.email_to = "#desk", [111], ["ops@x.test"]
    return r


def where(targets) -> list[str]:
    return [f"{t.channel}:{t.to}" for t in targets]


def test_severity_picks_the_channels():
    r = routing()
    assert where(r.targets(alert("INFO"), configured=ALL)) == []  # log (and the digest) only
    assert where(r.targets(alert("WARNING"), configured=ALL)) == ["slack:#desk"]
    assert where(r.targets(alert("CRITICAL"), configured=ALL)) == ["slack:#desk", "telegram:111", "email:ops@x.test"]
    assert where(r.targets(alert("INFO", category="action"), configured=ALL)) == ["slack:#desk"]


def test_a_channel_without_credentials_is_left_out():
    assert where(routing().targets(alert("CRITICAL"), configured=frozenset({"email"}))) == ["email:ops@x.test"]


def test_an_exposure_adds_its_owners_chat_and_a_book_can_reroute():
    r = routing(exposures={"L-1": RouteOverride(telegram_chat_ids=[555], routes={"WARNING": ["slack", "telegram"]})},
                books={"vault": RouteOverride(routes={"CRITICAL": ["email"]})})
    assert where(r.targets(alert("WARNING"), configured=ALL)) == ["slack:#desk", "telegram:111", "telegram:555"]
    other = alert("WARNING").model_copy(update={"exposure_id": "L-2"})
    assert where(r.targets(other, configured=ALL)) == ["slack:#desk"]
    vault = alert("CRITICAL").model_copy(update={"book": "vault", "exposure_id": "V-1"})
    assert where(r.targets(vault, configured=ALL)) == ["email:ops@x.test"]


def test_routes_text_is_checked():
    assert parse_routes("warning=slack,email; CRITICAL=telegram") == {"WARNING": ["slack", "email"],
                                                                       "CRITICAL": ["telegram"]}
    with pytest.raises(ValueError, match="unknown channel 'pager'"):
        parse_routes("CRITICAL=pager")
    with pytest.raises(ValueError, match="SEVERITY=channel"):
        parse_routes("LOUD=slack")


def test_bad_alert_settings_name_the_variable(monkeypatch):
    monkeypatch.setenv("HEDGEGUARD_ALERT_ROUTES", "CRITICAL=pager")
    with pytest.raises(SettingsError, match="HEDGEGUARD_ALERT_ROUTES: CRITICAL: unknown channel 'pager'"):
        load_settings()
    monkeypatch.delenv("HEDGEGUARD_ALERT_ROUTES")
    monkeypatch.setenv("HEDGEGUARD_TELEGRAM_CHAT_IDS", "111,owner")
    with pytest.raises(SettingsError, match="HEDGEGUARD_TELEGRAM_CHAT_IDS"):
        load_settings()
    monkeypatch.setenv("HEDGEGUARD_TELEGRAM_CHAT_IDS", "111, 222")
    assert load_settings().telegram_chat_ids == [111, 222]


def test_live_mode_refuses_alerts_that_reach_nobody(monkeypatch, tmp_path):
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('[bybit.desk]\napi_key = "k1234567"\napi_secret = "s1234567"\n')
    monkeypatch.setenv("HEDGEGUARD_MODE", "live")
    monkeypatch.setenv("HEDGEGUARD_ACCOUNTS", "bybit:desk")
    monkeypatch.setenv("HEDGEGUARD_SECRETS_FILE", str(secrets))
    with pytest.raises(SettingsError, match="alerts cannot reach people: slack .* set HEDGEGUARD_SLACK_BOT_TOKEN"):
        load_settings()
    secrets.write_text(secrets.read_text() + '[slack]\nbot_token = "xoxb-1"\n[telegram]\nbot_token = "1:a"\n'
                       '[smtp]\npassword = "pw"\n')
    monkeypatch.setenv("HEDGEGUARD_TELEGRAM_CHAT_IDS", "111")
    monkeypatch.setenv("HEDGEGUARD_EMAIL_TO", "ops@x.test")
    monkeypatch.setenv("HEDGEGUARD_SMTP_USER", "alerts")
    settings = load_settings()
    assert settings.alert_gaps() == [] and settings.chat_services() == ALL
    assert {"xoxb-1", "1:a", "pw", "k1234567", "s1234567"} <= set(settings.secret_values())


def test_the_summary_of_repeats_names_the_topic_and_the_worst_figure():
    last = alert(topic="LTV alerts for L-1", figure=Decimal("47.5"), figure_unit="%")
    told = summary(last, 14, 300, Decimal("49.1"), "WARNING")
    assert told.title == "LTV alerts for L-1: 14 more in the last 5 min, worst 49.1 %"
    assert told.severity == "WARNING" and "LTV 45.2 %" in told.text
