"""Every side effect hedgeguard has: venues, loan operations, notifications, the store, feeds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.health import HealthActivities
from activities.store import Store
from models.settings import Settings


def build_activities(settings: Settings, store: Store) -> list[Callable[..., Any]]:
    """Every activity the worker registers, bound to this process's settings and store."""
    health = HealthActivities(settings, store)
    return [health.check_readiness]
