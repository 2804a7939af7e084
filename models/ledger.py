"""The store's tables: one row per hedge, its append-only ledger, and its last reconciliation.

Amounts are Decimal columns (exact on SQLite and PostgreSQL). The ledger is append-only: the ORM refuses
to update or delete an event. The tables are created by the Alembic migrations in models/migrations.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, event
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import get_history
from sqlmodel import Field, SQLModel

from models.types import DecimalType, UTCDateTime
from risk.accounting import LedgerEventType

HEDGE_STATE_SCHEMA_VERSION = 1


class Book(StrEnum):
    LOAN = "loan"
    VAULT = "vault"
    INSURANCE = "insurance"
    LP = "lp"


class HedgeSide(StrEnum):
    SHORT = "short"
    LONG = "long"


class HedgeStatus(StrEnum):
    PENDING = "PENDING"  # enrolled, no fill yet
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"


def _money(**kw: Any) -> Any:
    return Field(default=Decimal(0), sa_type=DecimalType, nullable=False, **kw)


class Hedge(SQLModel, table=True):
    __tablename__ = "hedge"

    id: str = Field(primary_key=True, max_length=64)
    book: str = Field(index=True, max_length=16)
    exposure_id: str = Field(index=True, max_length=128)
    venue: str = Field(max_length=32)
    account: str = Field(max_length=64)
    symbol: str = Field(max_length=32)
    side: str = Field(max_length=8)
    status: str = Field(default=HedgeStatus.PENDING, index=True, max_length=16)
    # Sizes are signed in base units: negative is short.
    target_size: Decimal = _money()
    current_size: Decimal = _money()
    notional: Decimal = _money()
    cost_basis: Decimal = _money()
    realised_pnl: Decimal = _money()
    unrealised_pnl: Decimal = _money()
    mark_price: Decimal | None = Field(default=None, sa_type=DecimalType, nullable=True)
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    config: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    state: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    schema_version: int = Field(default=HEDGE_STATE_SCHEMA_VERSION, nullable=False)


class HedgeLedgerEvent(SQLModel, table=True):
    __tablename__ = "hedge_ledger_event"

    id: int | None = Field(default=None, primary_key=True)
    hedge_id: str = Field(foreign_key="hedge.id", index=True, max_length=64)
    type: str = Field(max_length=16)
    size_delta: Decimal = _money()
    notional_delta: Decimal = _money()
    cost_basis_delta: Decimal = _money()
    realised_pnl_delta: Decimal = _money()
    margin_delta: Decimal = _money()
    price: Decimal | None = Field(default=None, sa_type=DecimalType, nullable=True)
    quantity: Decimal | None = Field(default=None, sa_type=DecimalType, nullable=True)
    fee: Decimal | None = Field(default=None, sa_type=DecimalType, nullable=True)
    fee_asset: str | None = Field(default=None, max_length=16)
    venue_event_id: str = Field(max_length=128)
    client_order_id: str | None = Field(default=None, max_length=64, index=True)
    venue_ts: datetime = Field(sa_type=UTCDateTime, nullable=False)
    recorded_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    venue_payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    input_hash: str = Field(unique=True, max_length=64)

    @property
    def event_type(self) -> LedgerEventType:
        return LedgerEventType(self.type)


class HedgeSyncState(SQLModel, table=True):
    __tablename__ = "hedge_sync_state"

    hedge_id: str = Field(foreign_key="hedge.id", primary_key=True, max_length=64)
    last_reconciled_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    source: str = Field(max_length=64)
    venue_size: Decimal | None = Field(default=None, sa_type=DecimalType, nullable=True)
    venue_snapshot: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    fills_cursor: str | None = Field(default=None, max_length=128)
    mismatch: str | None = Field(default=None, max_length=512)


class LedgerImmutableError(RuntimeError):
    """Raised when code tries to rewrite history: ledger events and a hedge's config never change."""


@event.listens_for(HedgeLedgerEvent, "before_update")
def _ledger_no_update(mapper: Mapper, connection, target: HedgeLedgerEvent) -> None:
    raise LedgerImmutableError(f"ledger event {target.id} is append-only and cannot be updated")


@event.listens_for(HedgeLedgerEvent, "before_delete")
def _ledger_no_delete(mapper: Mapper, connection, target: HedgeLedgerEvent) -> None:
    raise LedgerImmutableError(f"ledger event {target.id} is append-only and cannot be deleted")


@event.listens_for(Hedge, "before_update")
def _hedge_config_frozen(mapper: Mapper, connection, target: Hedge) -> None:
    if get_history(target, "config").has_changes():
        raise LedgerImmutableError(f"hedge {target.id}: config is immutable once created")
