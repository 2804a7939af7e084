"""Readiness of this worker: settings, store schema and which venue accounts have keys."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import UTC, datetime

import aiohttp
from temporalio import activity

from activities.store import Store
from models.health import AccountReadiness, PaperVenues, ReadinessReport, ReadinessRequest
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
        paper = await self._paper_venues() if self.settings.mode == "paper" else None
        activity.logger.info("readiness checked for %s", request.requested_by)
        return ReadinessReport(
            mode=self.settings.mode, worker_host=socket.gethostname(), worker_pid=os.getpid(),
            store_backend=self.store.engine.dialect.name, store_revision=revision,
            store_head_revision=Store.head_revision(), accounts=accounts, paper_venues=paper,
            checked_at=datetime.now(UTC))

    async def _paper_venues(self) -> PaperVenues:
        url = self.settings.paper_control_url
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
                async with http.get(f"{url}/control/state") as resp:
                    state = await resp.json()
            btc = state["prices"]["BTCUSDT"]
            return PaperVenues(control_url=url, reachable=True,
                               detail=f"BTCUSDT {btc['last']} ({btc['source']}), market time {state['market_time']}")
        except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
            return PaperVenues(control_url=url, reachable=False,
                               detail=f"{type(exc).__name__}: start it with `python -m sim` (make run does)")
