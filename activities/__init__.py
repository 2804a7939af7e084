"""Every side effect hedgeguard has: venues, loan operations, notifications, the store, feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.alerts import raise_alert
from activities.health import HealthActivities
from activities.hedging import HedgeActivities
from activities.store import Store
from activities.venues import VenuePool
from models.settings import Settings


def build_activities(settings: Settings, store: Store, venues: VenuePool) -> list[Callable[..., Any]]:
    """Every activity the worker registers, bound to this process's settings, store and venue clients."""
    health = HealthActivities(settings, store)
    hedging = HedgeActivities(store, venues)
    return [health.check_readiness, hedging.ensure, hedging.set_status, hedging.market, hedging.quote, hedging.place,
            hedging.order, hedging.cancel, hedging.sync, raise_alert]
