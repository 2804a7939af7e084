"""Every side effect hedgeguard has: venues, loan operations, notifications, the store, feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.alerts import raise_alert
from activities.feed import FeedActivities
from activities.health import HealthActivities
from activities.hedging import HedgeActivities
from activities.loan_guard import LoanGuardActivities
from activities.store import Store
from activities.venues import VenuePool
from models.settings import Settings


def build_activities(settings: Settings, store: Store, venues: VenuePool) -> list[Callable[..., Any]]:
    """Every activity the worker registers, bound to this process's settings, store and venue clients."""
    health = HealthActivities(settings, store)
    hedging = HedgeActivities(store, venues)
    loans = LoanGuardActivities(store, venues)
    feed = FeedActivities(venues)
    return [health.check_readiness, hedging.ensure, hedging.set_status, hedging.market, hedging.quote, hedging.place,
            hedging.order, hedging.cancel, hedging.sync, raise_alert, loans.read, loans.price, loans.hedge_facts,
            loans.hedge_leverage, loans.repay, loans.add_collateral, loans.margin_topup, loans.subscribe, loans.unsubscribe,
            feed.watch]
