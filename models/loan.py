"""Crypto-loan facts and the intent rows that make repayments and collateral moves idempotent.

An intent is written before the venue is asked to move money. A retry finds the intent and asks the
venue's own history whether the move already happened before asking again, so a timeout never pays twice.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel
from sqlalchemy import JSON, Index
from sqlmodel import Field, SQLModel

from models.types import DecimalType, UTCDateTime


class LoanActionKind(StrEnum):
    REPAY = "repay"
    ADD_COLLATERAL = "add_collateral"


class IntentStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class LoanIntent(SQLModel, table=True):
    __tablename__ = "loan_intent"
    __table_args__ = (Index("uq_loan_intent_venue_ref", "venue", "account", "kind", "venue_ref", unique=True),)

    key: str = Field(primary_key=True, max_length=128)
    venue: str = Field(max_length=32)
    account: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=32)
    currency: str = Field(max_length=16)
    amount: Decimal = Field(sa_type=DecimalType, nullable=False)
    status: str = Field(default=IntentStatus.PENDING, max_length=16)
    venue_ref: str | None = Field(default=None, max_length=64)
    before: dict[str, Any] = Field(default_factory=dict, sa_type=JSON, nullable=False)
    error: str | None = Field(default=None, max_length=512)
    created_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime, nullable=False)


class LoanSnapshot(BaseModel):
    """A loan as the venue reports it. LTV is a fraction (0.40 = 40 %)."""

    venue: str
    account: str
    principal: Decimal
    interest: Decimal
    collateral_btc: Decimal
    ltv: Decimal | None
    hourly_rate: Decimal | None = None
    ts: AwareDatetime

    @property
    def debt(self) -> Decimal:
        return self.principal + self.interest


class LoanActionResult(BaseModel):
    key: str
    kind: LoanActionKind
    amount: Decimal
    venue_ref: str
    already_done: bool  # True when a retry found the action had happened: nothing was sent again
