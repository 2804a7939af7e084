"""Alert routing and the messages of alert delivery.

Routing says which channels an alert goes to: by severity (or ACTION for action summaries), overridden per
book and per exposure (a loan owner's own Telegram chat). Every alert is also logged by the worker, so
"log" is implied. Recipients (channel names, chat ids, addresses) are not secrets and may sit in workflow
history; tokens and passwords never do: the delivery activities read them when they send.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from models.hedge import Alert

DELIVERY_CHANNELS = ("slack", "telegram", "email")
CHANNELS = ("log", *DELIVERY_CHANNELS)
ROUTE_KEYS = ("INFO", "WARNING", "CRITICAL", "ACTION")
RANK = {"INFO": 0, "WARNING": 1, "CRITICAL": 2}
DEFAULT_ROUTES = {"INFO": ["log"], "WARNING": ["log", "slack"], "CRITICAL": ["log", "slack", "telegram", "email"],
                  "ACTION": ["log", "slack"]}
Channel = Literal["slack", "telegram", "email"]


def parse_routes(text: str) -> dict[str, list[str]]:
    """`INFO=log;WARNING=slack;CRITICAL=slack,telegram,email` -> {"INFO": ["log"], ...}: only the keys given."""
    routes: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not SEVERITY=channel[,channel] with SEVERITY one of {', '.join(ROUTE_KEYS)}")
        routes[key] = value.split(",")
    return checked_routes(routes)


def checked_routes(routes: dict[str, list[str] | str]) -> dict[str, list[str]]:
    """Routes as written in the environment or the alerts file, keys upper-cased, channels known."""
    out: dict[str, list[str]] = {}
    for raw_key, raw_channels in routes.items():
        key = raw_key.strip().upper()
        if key not in ROUTE_KEYS:
            raise ValueError(f"{raw_key!r} is not SEVERITY=channel[,channel] with SEVERITY one of {', '.join(ROUTE_KEYS)}")
        listed = raw_channels.split(",") if isinstance(raw_channels, str) else raw_channels
        channels = [c.strip().lower() for c in listed if c.strip()]
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"{key}: unknown channel {unknown[0]!r}; channels: {', '.join(CHANNELS)}")
        out[key] = channels
    return out


def recipient_targets(channels: set[str] | frozenset[str], slack: str | None, chats: list[int],
                      emails: list[str]) -> list[Target]:
    """One target per recipient of each channel in `channels`."""
    out: list[Target] = []
    if "slack" in channels and slack:
        out.append(Target(channel="slack", to=slack))
    if "telegram" in channels:
        out += [Target(channel="telegram", to=str(c)) for c in chats]
    if "email" in channels:
        out += [Target(channel="email", to=e) for e in emails]
    return out


class Recipients(BaseModel):
    """Where each channel delivers; an empty field means the channel has nowhere to go."""

    slack_channel: str | None = None
    telegram_chat_ids: list[int] = Field(default_factory=list)
    email_to: list[str] = Field(default_factory=list)


class RouteOverride(BaseModel):
    """A book's or an exposure's own routes and recipients. Recipients given here are added to the defaults
    (the owner's chat as well as the desk's); `routes` replaces the routes of the severities it names."""

    routes: dict[str, list[str]] = Field(default_factory=dict)
    slack_channel: str | None = None
    telegram_chat_ids: list[int] = Field(default_factory=list)
    email_to: list[str] = Field(default_factory=list)

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return checked_routes(value)


class Target(BaseModel):
    channel: Channel
    to: str  # a Slack channel, a Telegram chat id, an email address


class AlertRouting(BaseModel):
    routes: dict[str, list[str]] = Field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_ROUTES.items()})
    recipients: Recipients = Field(default_factory=Recipients)
    books: dict[str, RouteOverride] = Field(default_factory=dict)
    exposures: dict[str, RouteOverride] = Field(default_factory=dict)

    def targets(self, alert: Alert, *, configured: frozenset[str] = frozenset(DELIVERY_CHANNELS)) -> list[Target]:
        """Where `alert` goes, beyond the log. Channels without credentials (`configured`) are left out; the
        worker says so at start."""
        key = "ACTION" if alert.category == "action" else alert.severity
        routes = list(self.routes.get(key, []))
        slack, chats, emails = self.recipients.slack_channel, list(self.recipients.telegram_chat_ids), list(
            self.recipients.email_to)
        for override in (self.books.get(alert.book or ""), self.exposures.get(alert.exposure_id or "")):
            if override is None:
                continue
            routes = override.routes.get(key, routes)
            slack = override.slack_channel or slack
            chats += [c for c in override.telegram_chat_ids if c not in chats]
            emails += [e for e in override.email_to if e not in emails]
        return recipient_targets(set(routes) & configured, slack, chats, emails)


# -- what the alert workflow receives, carries and sends ---------------------------------------------------
class RaisedAlert(BaseModel):
    """One raising of an alert. `raise_id` is the same when a raising activity is retried, so a repeat sent
    twice by a retry is recognised and dropped."""

    raise_id: str
    alert: Alert
    targets: list[Target]
    window_s: int = Field(ge=0)
    raised_at: datetime


class AlertCarry(BaseModel):
    """What one run of an alert workflow hands the next (continue-as-new)."""

    sent_rank: int = -1
    window_until: datetime | None = None
    suppressed: int = 0
    worst: Decimal | None = None
    worst_severity: str = "INFO"
    last: RaisedAlert | None = None
    held_targets: list[Target] = Field(default_factory=list)  # every recipient of a repeat held back
    seen: list[str] = Field(default_factory=list)
    sent: int = 0


class AlertStart(BaseModel):
    key: str
    carry: AlertCarry | None = None


class DigestEntry(BaseModel):
    """INFO alerts of one key since the last digest."""

    key: str
    title: str
    text: str
    count: int = 1
    at: datetime
    targets: list[Target]
    hour_utc: int = Field(8, ge=0, le=23)


class DigestStart(BaseModel):
    entries: list[DigestEntry] = Field(default_factory=list)


DIGEST_WORKFLOW_ID = "alert-digest"
TELEGRAM_COMMANDS_ID = "telegram-commands"


class CommandPoll(BaseModel):
    """How the Telegram command poller long-polls: `poll_s` per getUpdates, a fresh activity every
    `rotate_after_s` so its history stays short."""

    poll_s: int = Field(10, ge=1, le=50)
    rotate_after_s: int = Field(3600, ge=10)


class Delivery(BaseModel):
    """One message to one recipient. `delivery_id` names it in logs and as an email's Message-ID."""

    delivery_id: str
    target: Target
    subject: str
    text: str
    key: str
    severity: str


class AlertView(BaseModel):
    key: str
    sent: int
    suppressed: int
    window_until: datetime | None
    in_flight: int


def alert_workflow_id(key: str) -> str:
    return f"alert-{key}"


def alerts_queue(task_queue: str) -> str:
    """Alert delivery polls its own task queue, so a slow or failing channel never takes a hedging slot."""
    return f"{task_queue}-alerts"


def delivery_id(key: str, seq: int, target: Target) -> str:
    digest = hashlib.sha256(f"{key}|{seq}|{target.channel}|{target.to}".encode()).hexdigest()[:20]
    return f"{seq}-{digest}"


def render(alert: Alert, note: str | None = None) -> tuple[str, str]:
    """(subject, text) of an alert as a person reads it."""
    label = "ACTION" if alert.category == "action" else alert.severity
    subject = f"[{label}] {alert.title}"
    lines = [alert.text]
    if note:
        lines.append(note)
    where = " · ".join(x for x in (alert.book and f"book {alert.book}", alert.exposure_id and f"exposure {alert.exposure_id}")
                       if x)
    lines.append(f"({where + ' · ' if where else ''}key {alert.key})")
    return subject, "\n".join(lines)


def repeats_note(count: int, window_s: int, worst: Decimal | None, unit: str) -> str:
    minutes = f"{window_s // 60} min" if window_s % 60 == 0 and window_s >= 60 else f"{window_s} s"
    text = f"{count} more in the last {minutes}"
    return text + (f", worst {worst}{' ' + unit if unit else ''}" if worst is not None else "")


def summary(last: Alert, count: int, window_s: int, worst: Decimal | None, severity: str) -> Alert:
    """The message that stands for repeats held back in a window: "LTV alerts for L-1: 14 more in the last
    5 min, worst 49.1 %"."""
    topic = last.topic or last.title
    note = repeats_note(count, window_s, worst, last.figure_unit)
    return last.model_copy(update={"severity": severity, "title": f"{topic}: {note}",
                                   "text": f"latest: {last.title}: {last.text}"})
