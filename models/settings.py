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

from models.alerts import DEFAULT_ROUTES, DELIVERY_CHANNELS, AlertRouting, Recipients, checked_routes, parse_routes

ENV_PREFIX = "HEDGEGUARD_"
CHAT_SECRETS = {"slack": "bot_token", "telegram": "bot_token", "smtp": "password"}
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
    deployment_name: str = Field("", pattern=r"^[A-Za-z0-9_-]*$", max_length=255,
                                 description="Temporal worker deployment; empty: unversioned workers (README, 'Versioning')")
    build_id: str = Field("", pattern=r"^[A-Za-z0-9_.-]*$", max_length=255, description="this worker's version in the deployment "
                          "(a release tag); required with deployment_name")
    database_url: str = Field(
        "sqlite:///.state/hedgeguard.db",
        validation_alias=AliasChoices("DATABASE_URL", "HEDGEGUARD_DATABASE_URL"),
        description="SQLAlchemy URL: a SQLite file by default, postgresql://... in production")
    accounts: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict, description="VENUE:ACCOUNT list, e.g. bybit:loan-desk,binanceusdm:vault")
    secrets_file: Path | None = Field(None, description="TOML file with [venue.account] api_key/api_secret")
    metrics_bind: str = Field("127.0.0.1:9464", description="host:port for Prometheus metrics; empty: off")
    state_dir: Path = Field(Path(".state"), description="where make run keeps the dev server's files")
    workflow_sandbox: bool = Field(False, description="run workflow code in Temporal's import sandbox (slower, more "
                                   "memory; the replay tests run every recorded history in it either way)")
    max_cached_workflows: int = Field(1000, ge=10, description="workflows the worker keeps in memory (2 per loan: guard"
                                      " and hedge); an evicted one is replayed from its history on its next task")
    # paper mode: the loopback emulators of `python -m sim` (its default ports)
    paper_control_url: str = Field("http://127.0.0.1:18080", description="the simulator's control API")
    paper_bybit_url: str = Field("http://127.0.0.1:18081", description="the Bybit emulator")
    paper_binanceusdm_url: str = Field("http://127.0.0.1:18082", description="the Binance USD-M emulator")
    paper_balance_usdt: Decimal = Field(Decimal("100000"), gt=0, description="USDT a new paper account starts with")
    venue_timeout_ms: int = Field(10_000, ge=1000, le=120_000, description="how long a venue request may take")
    # alerts: routes and recipients here; tokens and the SMTP password only from the environment or the
    # secrets file (chat_secret), never settings fields
    alert_routes: str = Field("", description="SEVERITY=channel,... overrides, e.g. WARNING=slack;CRITICAL=slack,email")
    alerts_file: Path | None = Field(None, description="TOML with per-book and per-exposure alert routes")
    alert_window_s: int = Field(300, ge=0, le=86_400, description="an alert key is sent at most once per window")
    alert_digest: str = Field("slack", description="channel for the daily digest of INFO alerts; empty: off")
    alert_digest_hour_utc: int = Field(8, ge=0, le=23)
    slack_channel: str = Field("#hedgeguard-alerts", description="the desk's Slack channel")
    telegram_chat_ids: Annotated[list[int], NoDecode] = Field(default_factory=list, description="chats alerts go to")
    telegram_command_chat_ids: Annotated[list[int] | None, NoDecode] = Field(
        None, description="chats whose /pause, /resume, /forceclose are obeyed (default: telegram_chat_ids)")
    email_to: Annotated[list[str], NoDecode] = Field(default_factory=list, description="addresses alerts go to")
    email_from: str = Field("hedgeguard@localhost")
    smtp_address: str = Field("127.0.0.1:18025", description="host:port of the SMTP server (STARTTLS)")
    smtp_user: str = Field("", description="SMTP login; the password is HEDGEGUARD_SMTP_PASSWORD")
    smtp_starttls: bool = True
    smtp_ca_file: Path | None = Field(None, description="CA bundle to verify the SMTP server with (default: system)")
    paper_slack_url: str = Field("http://127.0.0.1:18083", description="the Slack emulator")
    paper_telegram_url: str = Field("http://127.0.0.1:18084", description="the Telegram emulator")

    @field_validator("telegram_chat_ids", "telegram_command_chat_ids", mode="before")
    @classmethod
    def _chat_ids(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return [int(v) for v in value.replace(";", ",").split(",") if v.strip()]
            except ValueError:
                raise ValueError(f"{value!r}: chat ids are integers, comma separated") from None
        return value

    @field_validator("email_to", mode="before")
    @classmethod
    def _emails(cls, value: object) -> object:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        for address in value if isinstance(value, list) else []:
            if not re.match(r"^[^@\s]+@[^@\s]+$", str(address)):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @field_validator("alert_routes")
    @classmethod
    def _routes(cls, value: str) -> str:
        parse_routes(value)
        return value

    @field_validator("alert_digest")
    @classmethod
    def _digest(cls, value: str) -> str:
        if value and value not in DELIVERY_CHANNELS:
            raise ValueError(f"{value!r}: the digest goes to slack, telegram or email (or empty: off)")
        return value

    @field_validator("alerts_file")
    @classmethod
    def _alerts_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            _read_routing_file(value)
        return value

    def alert_routing(self) -> AlertRouting:
        """Routes and recipients: the defaults, HEDGEGUARD_ALERT_ROUTES over them, then the alerts file's
        per-book and per-exposure overrides."""
        routing = _read_routing_file(self.alerts_file) if self.alerts_file else AlertRouting()
        routing.routes = {**routing.routes, **parse_routes(self.alert_routes)}
        routing.recipients = Recipients(slack_channel=self.slack_channel or None,
                                        telegram_chat_ids=self.telegram_chat_ids, email_to=self.email_to)
        return routing

    def alert_gaps(self) -> list[str]:
        """Routed channels that cannot deliver (no credentials or no recipient), in words."""
        routing, ready, gaps = self.alert_routing(), self.chat_services(), []
        needs = {"slack": ("HEDGEGUARD_SLACK_BOT_TOKEN", bool(self.slack_channel), "HEDGEGUARD_SLACK_CHANNEL"),
                 "telegram": ("HEDGEGUARD_TELEGRAM_BOT_TOKEN", bool(self.telegram_chat_ids), "HEDGEGUARD_TELEGRAM_CHAT_IDS"),
                 "email": ("HEDGEGUARD_SMTP_PASSWORD", bool(self.email_to), "HEDGEGUARD_EMAIL_TO")}
        for channel, (secret, has_to, to_var) in needs.items():
            used_by = [k for k, chans in routing.routes.items() if channel in chans]
            if not used_by:
                continue
            if channel not in ready:
                gaps.append(f"{channel} (routed for {', '.join(used_by)}) has no credentials: set {secret}")
            elif not has_to:
                gaps.append(f"{channel} (routed for {', '.join(used_by)}) has no recipient: set {to_var}")
        return gaps

    def command_chats(self) -> list[int]:
        return self.telegram_chat_ids if self.telegram_command_chat_ids is None else self.telegram_command_chat_ids

    def chat_secret(self, service: str) -> str | None:
        """The Slack or Telegram bot token, or the SMTP password: environment first, then the secrets file."""
        part = CHAT_SECRETS[service]
        value = os.environ.get(f"{ENV_PREFIX}{service}_{part}".upper())
        if not value and self.secrets_file is not None:
            value = _read_secrets(self.secrets_file).get(service, {}).get(part)
        return value or None

    def chat_services(self) -> frozenset[str]:
        """The channels that can send: those with a token (email: with a password, or no login)."""
        ready = {s for s in ("slack", "telegram") if self.chat_secret(s)}
        if not self.smtp_user or self.chat_secret("smtp"):
            ready.add("email")
        return frozenset(ready)

    def secret_values(self) -> list[str]:
        """Every secret this process could read: what log lines and histories are scanned for."""
        values = [v for s in CHAT_SECRETS if (v := self.chat_secret(s))]
        for venue, names in self.accounts.items():
            for name in names:
                if self.has_credentials(venue, name):
                    creds = self.credentials(venue, name)
                    values += [creds.api_key.get_secret_value(), creds.api_secret.get_secret_value()]
        return values

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

    @field_validator("temporal_address", "smtp_address")
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

    @field_validator("paper_control_url", "paper_bybit_url", "paper_binanceusdm_url", "paper_slack_url",
                     "paper_telegram_url")
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
    def _a_deployment_needs_a_build_id(self) -> Settings:
        if bool(self.deployment_name) != bool(self.build_id):
            raise ValueError("HEDGEGUARD_DEPLOYMENT_NAME and HEDGEGUARD_BUILD_ID go together (Worker Versioning: the "
                             "deployment and this worker's version in it); set both or neither")
        return self

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
            gaps = self.alert_gaps()
            if gaps:
                raise ValueError("HEDGEGUARD_MODE=live but alerts cannot reach people: " + "; ".join(gaps))
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
            "deployment_name": self.deployment_name or None, "build_id": self.build_id or None,
            "database_url": url, "accounts": self.accounts,
            "secrets_file": str(self.secrets_file) if self.secrets_file else None,
            "metrics_bind": self.metrics_bind or None, "state_dir": str(self.state_dir),
            **({"paper_control_url": self.paper_control_url, "paper_bybit_url": self.paper_bybit_url,
                "paper_binanceusdm_url": self.paper_binanceusdm_url} if self.mode == "paper" else {}),
        }


def _read_routing_file(path: Path) -> AlertRouting:
    """[routes] INFO = ["log"] ..., [book.loan], [exposure."L-1"] with routes / slack_channel /
    telegram_chat_ids / email_to."""
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
        given = checked_routes(raw.get("routes", {}))
        return AlertRouting(routes={**DEFAULT_ROUTES, **given}, books=raw.get("book", {}), exposures=raw.get("exposure", {}))
    except (OSError, tomllib.TOMLDecodeError, ValidationError, ValueError, TypeError) as exc:
        raise ValueError(f"alerts file {path}: {exc}") from None


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
