"""Readiness of this worker: settings, store schema and which venue accounts have keys."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime

from temporalio import activity

from activities.store import Store
from models.health import AccountReadiness, ReadinessReport, ReadinessRequest
from models.settings import Settings


class HealthActivities:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    @activity.defn(name="check_readiness")
    async def check_readiness(self, request: ReadinessRequest) -> ReadinessReport:
        revision = await asyncio.to_thread(self.store.schema_revision)
        accounts = [AccountReadiness(venue=venue, account=name, keys_present=self.settings.has_credentials(venue, name))
                    for venue, names in sorted(self.settings.accounts.items()) for name in names]
        activity.logger.info("readiness checked for %s", request.requested_by)
        return ReadinessReport(
            mode=self.settings.mode, worker_host=socket.gethostname(), worker_pid=os.getpid(),
            store_backend=self.store.engine.dialect.name, store_revision=revision,
            store_head_revision=Store.head_revision(), accounts=accounts, checked_at=datetime.now(UTC))
