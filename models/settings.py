"""hedgeguard's settings, from HEDGEGUARD_* environment variables (and DATABASE_URL).

Venue keys are never settings fields: workflows carry account names only, and `credentials()` reads the
key pair from the environment or the secrets file at the moment an activity needs it. Instantiating
Settings reads the environment, so only worker.py, starter.py and activities do it, never workflows.
"""

from __future__ import annotations

import os
import re
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "HEDGEGUARD_"
VENUES = ("bybit", "binanceusdm", "hyperliquid", "polymarket")
_ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOSTPORT_RE = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the variable and what is wrong."""


class MissingCredentials(LookupError):
    pass


class Credentials(BaseModel):
    api_key: SecretStr
    api_secret: SecretStr

    def __repr__(self) -> str:  # never show key material, even in a debugger
        return "Credentials(api_key=***, api_secret=***)"


def _parse_accounts(value: object) -> dict[str, list[str]]:
    """`bybit:loan-desk,binanceusdm:vault` -> {"bybit": ["loan-desk"], "binanceusdm": ["vault"]}."""
    if isinstance(value, dict):
        return {str(k): list(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError("expected VENUE:ACCOUNT[,VENUE:ACCOUNT...]")
    accounts: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        venue, sep, name = item.partition(":")
        if not sep or not venue or not name:
            raise ValueError(f"{item!r} is not VENUE:ACCOUNT (e.g. bybit:loan-desk)")
        accounts.setdefault(venue.strip(), []).append(name.strip())
    return accounts


def env_var_for(venue: str, account: str, part: str) -> str:
    """HEDGEGUARD_BYBIT_LOAN_DESK_API_KEY for ("bybit", "loan-desk", "api_key")."""
    return f"{ENV_PREFIX}{venue}_{re.sub(r'[^A-Za-z0-9]', '_', account)}_{part}".upper()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    mode: Literal["paper", "live"] = Field(
        "paper", description="paper trades against the loopback emulators in sim/; live sends real orders")
    temporal_address: str = Field("127.0.0.1:7233", description="host:port of the Temporal frontend")
    temporal_namespace: str = Field("default", min_length=1)
    task_queue: str = Field("hedgeguard", min_length=1)
    database_url: str = Field(
        "sqlite:///.state/hedgeguard.db",
        validation_alias=AliasChoices("DATABASE_URL", "HEDGEGUARD_DATABASE_URL"),
        description="SQLAlchemy URL: a SQLite file by default, postgresql://... in production")
    accounts: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict, description="VENUE:ACCOUNT list, e.g. bybit:loan-desk,binanceusdm:vault")
    secrets_file: Path | None = Field(None, description="TOML file with [venue.account] api_key/api_secret")
    metrics_bind: str = Field("127.0.0.1:9464", description="host:port for Prometheus metrics; empty: off")
    state_dir: Path = Field(Path(".state"), description="where make run keeps the dev server's files")
    # paper mode: the loopback emulators of `python -m sim` (its default ports)
    paper_control_url: str = Field("http://127.0.0.1:18080", description="the simulator's control API")
    paper_bybit_url: str = Field("http://127.0.0.1:18081", description="the Bybit emulator")
    paper_binanceusdm_url: str = Field("http://127.0.0.1:18082", description="the Binance USD-M emulator")
    paper_balance_usdt: Decimal = Field(Decimal("100000"), gt=0, description="USDT a new paper account starts with")
    venue_timeout_ms: int = Field(10_000, ge=1000, le=120_000, description="how long a venue request may take")

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts(cls, value: object) -> dict[str, list[str]]:
        accounts = _parse_accounts(value)
        for venue, names in accounts.items():
            if venue not in VENUES:
                raise ValueError(f"unknown venue {venue!r}; known: {', '.join(VENUES)}")
            for name in names:
                if not _ACCOUNT_RE.match(name):
                    raise ValueError(f"account name {name!r} must be lower-case letters, digits, - or _")
            if len(set(names)) != len(names):
                raise ValueError(f"{venue} lists an account twice")
        return accounts

    @field_validator("temporal_address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _HOSTPORT_RE.match(value):
            raise ValueError(f"{value!r} is not host:port")
        return value

    @field_validator("metrics_bind")
    @classmethod
    def _metrics(cls, value: str) -> str:
        if value and not _HOSTPORT_RE.match(value):
            raise ValueError(f"{value!r} is not host:port (or empty to switch metrics off)")
        return value

    @field_validator("paper_control_url", "paper_bybit_url", "paper_binanceusdm_url")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if not re.match(r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\]):\d+/?$", value):
            raise ValueError(f"{value!r}: paper venues are loopback emulators (http://127.0.0.1:PORT)")
        return value.rstrip("/")

    def paper_url(self, venue: str) -> str:
        return {"bybit": self.paper_bybit_url, "binanceusdm": self.paper_binanceusdm_url}[venue]

    @field_validator("database_url")
    @classmethod
    def _database(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError(f"{value.split('@')[-1]!r}: use sqlite:///PATH or postgresql://USER:PASS@HOST/DB")
        return value

    @field_validator("secrets_file")
    @classmethod
    def _secrets_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"{value} does not exist or is not a file")
            try:
                _read_secrets(value)
            except (tomllib.TOMLDecodeError, OSError) as exc:
                raise ValueError(f"{value} is not readable TOML: {exc}") from None
        return value

    @model_validator(mode="after")
    def _live_needs_keys(self) -> Settings:
        if self.mode == "live":
            if not self.accounts:
                raise ValueError("HEDGEGUARD_MODE=live needs HEDGEGUARD_ACCOUNTS (the venue accounts to trade)")
            missing = [f"{v}:{a} (set {env_var_for(v, a, 'api_key')} and {env_var_for(v, a, 'api_secret')}"
                       f" or [{v}.{a}] in the secrets file)"
                       for v, names in self.accounts.items() for a in names if not self.has_credentials(v, a)]
            if missing:
                raise ValueError("HEDGEGUARD_MODE=live but no API key/secret for " + "; ".join(missing))
        return self

    def credentials(self, venue: str, account: str) -> Credentials:
        """The key pair of a venue account: environment first, then the secrets file."""
        key = os.environ.get(env_var_for(venue, account, "api_key"))
        secret = os.environ.get(env_var_for(venue, account, "api_secret"))
        if not (key and secret) and self.secrets_file is not None:
            entry = _read_secrets(self.secrets_file).get(venue, {}).get(account, {})
            key, secret = key or entry.get("api_key"), secret or entry.get("api_secret")
        if not (key and secret):
            raise MissingCredentials(
                f"no API key/secret for {venue}:{account}: set {env_var_for(venue, account, 'api_key')} and "
                f"{env_var_for(venue, account, 'api_secret')}, or [{venue}.{account}] in the secrets file")
        return Credentials(api_key=SecretStr(key), api_secret=SecretStr(secret))

    def has_credentials(self, venue: str, account: str) -> bool:
        try:
            self.credentials(venue, account)
        except MissingCredentials:
            return False
        return True

    def public_view(self) -> dict[str, object]:
        """Settings a person may see: no keys, and the database password masked."""
        url = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.database_url)
        return {
            "mode": self.mode, "temporal_address": self.temporal_address,
            "temporal_namespace": self.temporal_namespace, "task_queue": self.task_queue,
            "database_url": url, "accounts": self.accounts,
            "secrets_file": str(self.secrets_file) if self.secrets_file else None,
            "metrics_bind": self.metrics_bind or None, "state_dir": str(self.state_dir),
            **({"paper_control_url": self.paper_control_url, "paper_bybit_url": self.paper_bybit_url,
                "paper_binanceusdm_url": self.paper_binanceusdm_url} if self.mode == "paper" else {}),
        }


def _read_secrets(path: Path) -> dict[str, dict[str, dict[str, str]]]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _variable(loc: tuple[object, ...]) -> str:
    field = str(loc[0])
    if field == "database_url":
        return "DATABASE_URL"
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, or a SettingsError naming each bad variable and what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            shown = f" (got {given!r})" if isinstance(given, str) and err["type"] == "literal_error" else ""
            problems.append(f"{_variable(err['loc'])}: {msg}{shown}" if err["loc"] else msg)
        raise SettingsError("; ".join(problems)) from None
