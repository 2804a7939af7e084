"""Messages of the readiness check that `starter.py status` runs through the worker."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class AccountReadiness(BaseModel):
    venue: str
    account: str
    keys_present: bool  # whether the worker can read a key pair; never the keys themselves


class PaperVenues(BaseModel):
    control_url: str
    reachable: bool
    detail: str  # market time and price source, or why it is unreachable


class ReadinessRequest(BaseModel):
    requested_by: str


class ReadinessReport(BaseModel):
    mode: str
    worker_host: str
    worker_pid: int
    store_backend: str
    store_revision: str | None
    store_head_revision: str
    accounts: list[AccountReadiness]
    paper_venues: PaperVenues | None = None  # paper mode only
    checked_at: datetime

    @property
    def store_current(self) -> bool:
        return self.store_revision == self.store_head_revision


class HealthReport(BaseModel):
    """What the operator sees: the worker's own readiness plus the workflow's view of time."""

    workflow_id: str
    readiness: ReadinessReport
    workflow_time: datetime
