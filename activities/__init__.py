"""Every side effect hedgeguard has: venues, loan operations, notifications, the store, feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.alerts import AlertActivities
from activities.feed import FeedActivities
from activities.health import HealthActivities
from activities.hedging import HedgeActivities
from activities.loan_guard import LoanGuardActivities
from activities.notify import ChatChannels
from activities.store import Store
from activities.telegram_commands import TelegramCommands
from activities.venues import VenuePool
from models.settings import Settings


def build_activities(settings: Settings, store: Store, venues: VenuePool) -> list[Callable[..., Any]]:
    """Every activity the worker registers, bound to this process's settings, store and venue clients."""
    health = HealthActivities(settings, store)
    alerts = AlertActivities(settings)
    hedging = HedgeActivities(store, venues, alerts)
    loans = LoanGuardActivities(store, venues)
    feed = FeedActivities(venues)
    return [health.check_readiness, hedging.open, hedging.set_status, hedging.place,
            hedging.order, hedging.cancel, hedging.sync, alerts.raise_alert, loans.read, loans.price, loans.hedge_facts,
            loans.repay, loans.add_collateral, loans.margin_topup, loans.subscribe, loans.unsubscribe,
            feed.watch]


def build_alert_activities(settings: Settings, channels: ChatChannels) -> list[Callable[..., Any]]:
    """The alert channels and the Telegram command poller, for the alerts task queue."""
    commands = TelegramCommands(settings, channels)
    return [channels.slack, channels.telegram, channels.email, commands.poll]
