"""Messages of the hedge lifecycle workflow: its input, its order policy, the signals and updates a book
or an operator sends, the activities' requests and answers, and the state it reports.

Sizes in these messages are in the hedge's own direction (a short hedge's target 0.5 means -0.5 BTC),
except `current`, which is the signed venue position (negative = short).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.ledger import HedgeSide, HedgeStatus
from models.venue import OrderState
from risk.pricing import StepKind, Urgency


class LadderStep(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: StepKind
    bps: Decimal = Field(Decimal(0), ge=0, le=500)


DEFAULT_LADDER = (LadderStep(kind=StepKind.PASSIVE, bps=Decimal(10)), LadderStep(kind=StepKind.TOUCH),
                  LadderStep(kind=StepKind.CROSS, bps=Decimal(5)), LadderStep(kind=StepKind.IOC, bps=Decimal(20)))


class OrderPolicy(BaseModel):
    """How a hedge trades. Every field can be changed on a running hedge with the set_policy update."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ladder: tuple[LadderStep, ...] = DEFAULT_LADDER
    replace_after_s: int = Field(30, ge=5, le=3600, description="cancel and replace an unfilled order after this")
    fill_check_s: int = Field(5, ge=1, le=60, description="how often an open order's fills are checked")
    expiry_s: int = Field(60, ge=0, le=86400, description="how long a hedge stays after its book's risk clears")
    price_band_bps: Decimal = Field(Decimal(300), gt=0, le=5000, description="refuse prices further from index")
    max_order_qty: Decimal | None = Field(None, gt=0, description="split larger moves into orders this big")
    urgency: Urgency = Urgency.NORMAL
    reconcile_every_s: int = Field(60, ge=10, le=3600)
    idle_reconcile_every_s: int = Field(1800, ge=10, le=86400,
                                        description="reconcile interval while flat with no target and no order")

    @field_validator("ladder")
    @classmethod
    def _ladder(cls, ladder: tuple[LadderStep, ...]) -> tuple[LadderStep, ...]:
        if not ladder:
            raise ValueError("the ladder needs at least one step")
        if ladder[-1].kind not in (StepKind.IOC, StepKind.CROSS):
            raise ValueError("the ladder must end in a step that takes liquidity (cross or ioc)")
        return ladder

    def with_changes(self, changes: dict[str, Any]) -> OrderPolicy:
        """This policy with `changes` applied, validated whole (raises ValueError on any bad value)."""
        return OrderPolicy.model_validate({**self.model_dump(), **changes})


class HedgeInput(BaseModel):
    hedge_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    book: str
    exposure_id: str
    venue: str
    account: str
    symbol: str
    side: HedgeSide
    target: Decimal = Field(Decimal(0), ge=0)
    risk_active: bool = True
    policy: OrderPolicy = OrderPolicy()
    continue_as_new_after: int | None = Field(None, ge=100, description="history events; None: server's advice")
    leverage: Decimal | None = Field(None, gt=0, description="a perp position's leverage cap, set before it trades")
    carry: HedgeCarry | None = None  # state handed over by continue-as-new

    def summary(self) -> str:
        """The one line the Temporal UI lists the hedge by; pass it as static_summary when starting it."""
        return (f"hedge {self.hedge_id} · {self.side.value} {self.symbol} on {self.venue}:{self.account} · "
                f"{self.book} {self.exposure_id}")[:200]


class OpenOrder(BaseModel):
    client_order_id: str
    step: int
    side: str
    qty: Decimal
    price: Decimal
    time_in_force: str
    reduce_only: bool
    placed_at: datetime
    replace_at: datetime
    filled: Decimal = Decimal(0)


class FillSummary(BaseModel):
    side: str
    qty: Decimal
    price: Decimal
    fee: Decimal
    client_order_id: str | None
    at: datetime


class HedgeCarry(BaseModel):
    """What one run hands the next when it continues as new."""

    client_tag: str = ""
    risk_seq: int = 0
    forced: bool = False
    status: HedgeStatus
    target: Decimal
    current: Decimal
    seq: int
    step: int
    cursor: str | None
    paused: bool
    risk_active: bool
    risk_cleared_at: datetime | None
    closing: bool
    urgency: Urgency
    target_seq: int
    last_fill: FillSummary | None
    realised_pnl: Decimal
    unrealised_pnl: Decimal
    open_order: OpenOrder | None


HedgeInput.model_rebuild()


class TargetChange(BaseModel):
    """From the book: a new target (in the hedge's direction) and how urgently to reach it. `seq` makes a
    signal delivered twice harmless: a change is applied only if its seq is newer than the last one."""

    target: Decimal = Field(ge=0)
    urgency: Urgency = Urgency.NORMAL
    seq: int = Field(0, ge=0)


class RiskChange(BaseModel):
    active: bool
    seq: int = Field(0, ge=0)


class HedgeView(BaseModel):
    """The `state` query: what an operator needs to see."""

    hedge_id: str
    status: HedgeStatus
    side: HedgeSide
    symbol: str
    venue: str
    target: Decimal
    current: Decimal
    open_order: OpenOrder | None
    last_fill: FillSummary | None
    realised_pnl: Decimal
    unrealised_pnl: Decimal
    paused: bool
    closing: bool
    risk_active: bool
    urgency: Urgency
    next_timer: str | None
    next_timer_at: datetime | None
    orders_placed: int
    blocked: str | None
    policy: OrderPolicy


# -- activity messages --------------------------------------------------------------------------------
class HedgeRef(BaseModel):
    hedge_id: str
    venue: str
    account: str
    symbol: str


class OpenHedge(BaseModel):
    ref: HedgeRef
    book: str
    exposure_id: str
    side: HedgeSide
    target: Decimal
    leverage: Decimal | None = None


class HedgeRecord(BaseModel):
    """What hedge_open tells a starting workflow: its store row, and the market's lot sizes."""

    created_ms: int  # fills before this belong to no hedge of ours
    status: HedgeStatus
    existed: bool  # the row was there already: a workflow for this hedge ran before
    market: MarketFacts


class HedgeStatusChange(BaseModel):
    hedge_id: str
    status: HedgeStatus
    target: Decimal


class PriceRule(BaseModel):
    """How hedge_place prices an order from the quote it reads itself (risk.pricing: the ladder rung's kind and
    distance), and what it refuses to send: a price further than `price_band_bps` from the index, or an opening order
    below the venue's minimum notional. The order goes out in the same activity as the quote: no workflow task
    between reading the market and trading on it."""

    kind: StepKind
    bps: Decimal
    tick_size: Decimal
    price_band_bps: Decimal
    min_notional: Decimal


class PlaceHedgeOrder(BaseModel):
    ref: HedgeRef
    client_order_id: str
    side: str
    qty: Decimal
    reduce_only: bool
    rule: PriceRule


class NotSent(StrEnum):
    PRICE_BAND = "price-band"
    MIN_NOTIONAL = "min-notional"


class PlaceOutcome(BaseModel):
    """An order the venue holds, why it refused one (a refusal is an answer, not a failure), or why the activity did
    not send it; with the price it asked and the index it checked that price against."""

    order: OrderState | None
    rejected: str | None = None  # models.venue.RejectReason value
    not_sent: NotSent | None = None
    message: str | None = None
    price: Decimal | None = None
    index: Decimal | None = None

    @model_validator(mode="after")
    def _one(self) -> PlaceOutcome:
        if sum(x is not None for x in (self.order, self.rejected, self.not_sent)) != 1:
            raise ValueError("a place outcome is an order, a rejection or a reason it was not sent")
        return self


class OrderLookup(BaseModel):
    ref: HedgeRef
    client_order_id: str


class SyncRequest(BaseModel):
    ref: HedgeRef
    cursor: str | None
    since_ms: int | None = None  # where a first sync starts: fills before the hedge existed are not its own
    expect_filled: dict[str, Decimal] = Field(default_factory=dict, description="client id -> filled at venue")
    reconcile: bool = False  # also compare with the venue's position


class SyncResult(BaseModel):
    current: Decimal  # the ledger's size after ingesting: fills are the truth
    cursor: str | None
    new_events: int
    last_fill: FillSummary | None
    realised_pnl: Decimal
    unrealised_pnl: Decimal
    venue_size: Decimal | None = None
    mismatch: str | None = None
    liquidated: bool = False


class MarketFacts(BaseModel):
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    min_notional: Decimal


class Alert(BaseModel):
    """Something a person should know. `key` groups repeats of the same condition: repeats inside the
    de-duplication window are counted, not sent, unless the severity rises. An "action" (an order filled, a
    treasury move, an operator command) is one message per event and is never folded into another."""

    severity: str = Field(pattern="^(INFO|WARNING|CRITICAL)$")
    key: str
    title: str
    text: str
    book: str | None = None
    exposure_id: str | None = None
    category: str = Field("alert", pattern="^(alert|action)$")
    topic: str | None = None  # how a summary of repeats names them, e.g. "LTV alerts for L-1"
    figure: Decimal | None = None  # the number repeats are compared by (higher is worse), e.g. the LTV
    figure_unit: str = ""


HedgeRecord.model_rebuild()
