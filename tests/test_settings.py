"""A bad setting fails at start with a message naming the variable and what is wrong."""

from __future__ import annotations

import pytest

from models.settings import MissingCredentials, SettingsError, env_var_for, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("HEDGEGUARD_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def test_defaults_are_paper_and_a_local_sqlite_file():
    s = load_settings()
    assert s.mode == "paper" and s.database_url.startswith("sqlite:///") and s.temporal_address == "127.0.0.1:7233"


@pytest.mark.parametrize("var,value,message", [
    ("HEDGEGUARD_MODE", "lve", "HEDGEGUARD_MODE: Input should be 'paper' or 'live' (got 'lve')"),
    ("HEDGEGUARD_TEMPORAL_ADDRESS", "localhost", "HEDGEGUARD_TEMPORAL_ADDRESS: 'localhost' is not host:port"),
    ("DATABASE_URL", "mysql://u:p@db/x", "DATABASE_URL: 'db/x': use sqlite:///PATH or postgresql://"),
    ("HEDGEGUARD_ACCOUNTS", "kraken:desk", "HEDGEGUARD_ACCOUNTS: unknown venue 'kraken'"),
    ("HEDGEGUARD_ACCOUNTS", "bybit", "HEDGEGUARD_ACCOUNTS: 'bybit' is not VENUE:ACCOUNT"),
    ("HEDGEGUARD_ACCOUNTS", "bybit:Desk One", "HEDGEGUARD_ACCOUNTS: account name 'Desk One' must be lower-case"),
    ("HEDGEGUARD_METRICS_BIND", "9464", "HEDGEGUARD_METRICS_BIND: '9464' is not host:port"),
    ("HEDGEGUARD_SECRETS_FILE", "/nonexistent/s.toml", "HEDGEGUARD_SECRETS_FILE: /nonexistent/s.toml does not exist"),
])
def test_bad_setting_names_the_variable(monkeypatch, var, value, message):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


def test_database_password_is_not_echoed_in_the_error(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "mysql://user:hunter2@db/x")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "hunter2" not in str(err.value)


def test_unreadable_secrets_file(monkeypatch, tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text("[bybit\n")
    monkeypatch.setenv("HEDGEGUARD_SECRETS_FILE", str(bad))
    with pytest.raises(SettingsError, match="HEDGEGUARD_SECRETS_FILE: .* is not readable TOML"):
        load_settings()


def test_live_mode_needs_every_account_keyed(monkeypatch):
    monkeypatch.setenv("HEDGEGUARD_MODE", "live")
    with pytest.raises(SettingsError, match="needs HEDGEGUARD_ACCOUNTS"):
        load_settings()
    monkeypatch.setenv("HEDGEGUARD_ACCOUNTS", "bybit:loan-desk,binanceusdm:vault")
    monkeypatch.setenv(env_var_for("bybit", "loan-desk", "api_key"), "k")
    monkeypatch.setenv(env_var_for("bybit", "loan-desk", "api_secret"), "s")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "binanceusdm:vault (set HEDGEGUARD_BINANCEUSDM_VAULT_API_KEY" in str(err.value)
    assert "bybit:loan-desk" not in str(err.value)


def test_keys_come_from_environment_before_the_file_and_never_show(monkeypatch, tmp_path):
    secrets = tmp_path / "s.toml"
    secrets.write_text('[bybit.desk]\napi_key = "file-key"\napi_secret = "file-secret"\n')
    monkeypatch.setenv("HEDGEGUARD_SECRETS_FILE", str(secrets))
    s = load_settings()
    creds = s.credentials("bybit", "desk")
    assert creds.api_key.get_secret_value() == "file-key"
    assert "file-secret" not in repr(creds) and "file-secret" not in str(creds)
    monkeypatch.setenv(env_var_for("bybit", "desk", "api_key"), "env-key")
    monkeypatch.setenv(env_var_for("bybit", "desk", "api_secret"), "env-secret")
    assert s.credentials("bybit", "desk").api_secret.get_secret_value() == "env-secret"
    with pytest.raises(MissingCredentials, match="HEDGEGUARD_BYBIT_OTHER_API_KEY"):
        s.credentials("bybit", "other")


def test_public_view_masks_the_database_password(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://hg:s3cret@db:5432/hedgeguard")
    view = load_settings().public_view()
    assert view["database_url"] == "postgresql://hg:***@db:5432/hedgeguard"


@pytest.mark.parametrize("var", ["HEDGEGUARD_DEPLOYMENT_NAME", "HEDGEGUARD_BUILD_ID"])
def test_a_worker_deployment_and_its_build_id_go_together(monkeypatch, var):
    monkeypatch.setenv(var, "hedgeguard")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "HEDGEGUARD_DEPLOYMENT_NAME and HEDGEGUARD_BUILD_ID go together" in str(err.value)
    monkeypatch.setenv("HEDGEGUARD_DEPLOYMENT_NAME", "hedgeguard")
    monkeypatch.setenv("HEDGEGUARD_BUILD_ID", "2027.01.1")
    assert (load_settings().deployment_name, load_settings().build_id) == ("hedgeguard", "2027.01.1")
