"""Messages of the loan guard: its input (bands, timing, reserve), the price feed's ticks and subscriptions,
the activities' requests and answers, and the state an operator sees.

LTVs here are percent (40 = 40 %); LoanSnapshot.ltv (from the venue) is a fraction.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.hedge import OrderPolicy
from risk.loan import Band, Bands

_RULES = Bands()  # one set of band defaults: the rules'; the multipliers below are the tuned ones
LOAN_ID_PATTERN = r"^[A-Za-z0-9_-]{1,40}$"


def loan_workflow_id(loan_id: str) -> str:
    return f"loan-{loan_id}"


FEED_SHARDS = 16  # loans of one symbol are spread over this many feed workflows; fixed, as loans are routed by it


def feed_shard(loan_id: str) -> int:
    """The feed shard a loan subscribes to: a stable hash of its id, so every subscribe of a loan lands on one
    workflow. One feed for thousands of loans jammed: its signal stream outran its continue-as-new."""
    return int.from_bytes(hashlib.sha256(loan_id.encode()).digest()[:4], "big") % FEED_SHARDS


def feed_workflow_id(venue: str, symbol: str, shard: int) -> str:
    return f"feed-{venue}-{symbol}-{shard:02d}"


def feed_workflow_ids(venue: str, symbol: str) -> list[str]:
    """Every shard's feed id for a symbol (the ones with no loan subscribed are not running)."""
    return [feed_workflow_id(venue, symbol, shard) for shard in range(FEED_SHARDS)]


class BandSettings(BaseModel):
    """A loan's bands and hedge multipliers, as the operator sets them (risk.loan.Bands does the maths).

    Multiplier defaults come from the backtest over the real crash files (`python -m bench.loan_backtest`):
    the issue's 0.5 / 0.8 / 1.0 let the LTV pass 50 % in the 2020 and 2021 crashes (50.94, 50.15), because
    a hedge of at most the collateral can only hold the LTV where it is, never bring it down. 1.0 / 1.2 /
    1.5 (net short from DANGER up) kept the worst LTV under 50 % on those files at a one-point reaction delay
    (48.80 % with the default treasury, 46.91 % with always-repay); always-repay at a three-point delay
    reaches 50.70 % in March 2020 (a hedge loss in the rebound is earned back before the treasury spends).
    See the README's loan section and bench/README.md."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Decimal = _RULES.target
    caution: Decimal = _RULES.caution
    danger: Decimal = _RULES.danger
    critical: Decimal = _RULES.critical
    hysteresis: Decimal = _RULES.hysteresis
    liquidation: Decimal = _RULES.liquidation
    repay_below: Decimal = _RULES.repay_below
    safe_below: Decimal = _RULES.safe_below
    multiplier_safe: Decimal = Decimal("0")
    multiplier_caution: Decimal = Decimal("1.0")
    multiplier_danger: Decimal = Decimal("1.2")
    multiplier_critical: Decimal = Decimal("1.5")

    def bands(self) -> Bands:
        return Bands(target=self.target, caution=self.caution, danger=self.danger, critical=self.critical,
                     hysteresis=self.hysteresis, liquidation=self.liquidation, repay_below=self.repay_below,
                     safe_below=self.safe_below,
                     multipliers={Band.SAFE: self.multiplier_safe, Band.CAUTION: self.multiplier_caution,
                                  Band.DANGER: self.multiplier_danger, Band.CRITICAL: self.multiplier_critical})

    def problems(self) -> list[str]:
        return self.bands().problems()

    def with_changes(self, changes: dict[str, Any]) -> BandSettings:
        """These bands with `changes` applied; ValueError naming every problem (nothing is half-applied)."""
        try:
            changed = BandSettings.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
        problems = changed.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return changed


class LoanTiming(BaseModel):
    """How often the guard looks; tests shorten these, production keeps the defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sync_every_s: int = Field(300, ge=1, description="read debt, interest and collateral from the venue")
    # Keep-alives are the guard's idle cost: one signal and one workflow task per loan per interval; short ones
    # keep a worker and dev server busy doing nothing (bench/README.md, "Scale").
    # A feed that loses its stream reconnects after STREAM_SILENT_S and tells its loans (feed_down), which
    # poll at once; stale_after_s is only the backstop for a feed that is not running at all.
    stale_after_s: int = Field(900, ge=1, description="no feed tick this long: alert and poll the price")
    poll_every_s: int = Field(5, ge=1, description="price poll interval while the feed is stale")
    keepalive_s: int = Field(600, ge=1, description="the feed signals at least this often")
    ltv_step_pct: Decimal = Field(Decimal("0.25"), gt=0, description="the feed signals an LTV move this big")
    hedge_check_s: int = Field(15, ge=1, description="read the hedge's position and margin while hedged")
    idle_hedge_check_s: int = Field(1800, ge=1, description="read a flat hedge that wants nothing this often")
    margin_distance_pct: Decimal = Field(Decimal("15"), gt=0, le=100,
                                         description="top up hedge margin when mark is this close to its liquidation")
    min_treasury_usdt: Decimal = Field(Decimal("10"), ge=0, description="smaller realised profit waits")


class LoanGuardInput(BaseModel):
    loan_id: str = Field(pattern=LOAN_ID_PATTERN)
    venue: str = "bybit"
    account: str
    symbol: str = "BTCUSDT"
    bands: BandSettings = BandSettings()
    reserve_usdt: Decimal = Field(Decimal(0), ge=0, description="USDT set aside at enrolment, deployed at CRITICAL")
    always_repay: bool = False
    hedge_leverage: Decimal = Field(Decimal(2), ge=1, le=10,
                                    description="leverage cap for the hedge short, so its own liquidation stays far off")
    timing: LoanTiming = LoanTiming()
    # a resting order is checked every fill_check_s: at the replace interval the cancel-and-replace is the check, and
    # its cancel answers with the fills (more often, many hedged loans' polls queue up the ones still unhedged)
    hedge_policy: OrderPolicy = OrderPolicy(replace_after_s=10, fill_check_s=10, reconcile_every_s=60)
    continue_as_new_after: int | None = Field(None, ge=200)
    # at rest (SAFE, nothing in flight) the guard continues as new from this many events (None: the default, 150): the
    # worker holds memory per workflow task a cached run has processed until the run ends (bench.run_memory), so a
    # guard waking every few minutes would otherwise grow all the way to its full-length run before letting go
    rest_continue_as_new_after: int | None = Field(None, ge=50)
    carry: LoanCarry | None = None

    @property
    def workflow_id(self) -> str:
        return loan_workflow_id(self.loan_id)


class PriceTick(BaseModel):
    """A price the guard values collateral with. `source` is feed or poll."""

    last: Decimal
    index: Decimal
    mark: Decimal
    at: datetime
    source: str = "feed"


class TreasuryAction(StrEnum):
    """What the treasury did with an amount; a money move names the activity that makes it."""

    REPAY = "repay"
    ADD_COLLATERAL = "add_collateral"
    RESERVE = "reserve"
    DEPLOY_RESERVE = "deploy_reserve"  # a repayment out of the reserve
    MARGIN_TOPUP = "margin_topup"

    @property
    def activity(self) -> str:
        return {TreasuryAction.REPAY: "loan_repay", TreasuryAction.DEPLOY_RESERVE: "loan_repay",
                TreasuryAction.ADD_COLLATERAL: "loan_add_collateral",
                TreasuryAction.MARGIN_TOPUP: "loan_margin_topup"}[self]


class TreasuryRecord(BaseModel):
    key: str
    kind: TreasuryAction
    usdt: Decimal
    btc: Decimal = Decimal(0)
    at: datetime
    note: str = ""


class RealiseState(BaseModel):
    """A realise-and-re-hedge round trip in progress: the hedge was asked down to `reduce_to`."""

    qty: Decimal
    reduce_to: Decimal
    started_at: datetime


class PendingMove(BaseModel):
    """A treasury move sent but not yet answered; asked again under the same key until it is."""

    kind: TreasuryAction  # repay (from the reserve: deploy_reserve) or add_collateral
    request: TreasuryRequest


class LoanCarry(BaseModel):
    band: int
    principal: Decimal
    interest: Decimal
    collateral_btc: Decimal
    price: PriceTick | None
    hedge_gen: int
    hedge_started: bool
    target_seq: int
    sent_target: Decimal | None
    sent_urgency: str | None
    treasury_seq: int
    allocated_pnl: Decimal
    reserve_usdt: Decimal
    enrol_reserve_left: Decimal
    last_treasury: TreasuryRecord | None
    paused: bool
    hedge_closed: bool
    unenrolling: bool
    realising: RealiseState | None
    max_ltv: Decimal
    tag: str
    closing_hedge: bool
    realisations: int = 0
    realised_btc: Decimal = Decimal(0)
    realised_notional: Decimal = Decimal(0)
    hedge_paused_sent: bool | None = None
    pending: PendingMove | None = None
    subscribed: FeedSubscription | None = None
    written_off_usdt: Decimal = Decimal(0)
    # the hedge's figures as last read, shown by the next run's view until it reads its own (never acted on)
    shown_facts: HedgeFacts | None = None




class FeedSubscription(BaseModel):
    """What the feed needs to know of a loan to decide when to wake it."""

    loan_id: str
    venue: str
    account: str
    symbol: str
    debt: Decimal
    collateral_btc: Decimal
    bands: BandSettings
    band: int
    keepalive_s: int
    ltv_step_pct: Decimal


class FeedInput(BaseModel):
    venue: str
    symbol: str
    shard: int | None = None  # None: a feed started before shards (one per symbol)
    subscriptions: dict[str, FeedSubscription] = Field(default_factory=dict)
    version: int = 0


class FeedWatch(BaseModel):
    venue: str
    symbol: str
    account: str  # whose connection carries the public stream
    rotate_after_s: int = 3600  # the activity returns after this and the feed starts a fresh one


class FeedSubscriptions(BaseModel):
    """What changed since the version the asker named (`full` False: these subscriptions are new or changed, the
    `removed` loans left), or the whole list (`full` True: the asker named no version, or one from before the
    feed's last continue-as-new). Nothing changed: empty and not full. With ten thousand loans a whole list each
    second per shard was most of the worker's time while loans enrolled."""

    version: int
    subscriptions: list[FeedSubscription]
    full: bool = True
    removed: list[str] = Field(default_factory=list)


class FeedUnsubscribe(BaseModel):
    loan_id: str
    venue: str
    symbol: str


class PriceRequest(BaseModel):
    venue: str
    account: str
    symbol: str


class LoanRef(BaseModel):
    loan_id: str
    venue: str
    account: str
    symbol: str


class HedgeFactsRequest(BaseModel):
    hedge_id: str
    venue: str
    account: str
    symbol: str


class HedgeFacts(BaseModel):
    """The loan's hedge as the ledger and the venue see it (size negative = short)."""

    status: str | None  # the store's HedgeStatus, None before the hedge row exists
    size: Decimal
    realised_pnl: Decimal
    unrealised_pnl: Decimal
    fees: Decimal
    funding: Decimal
    liquidation_price: Decimal | None
    mark: Decimal | None
    qty_step: Decimal
    min_qty: Decimal


class TreasuryRequest(BaseModel):
    key: str  # idempotency key: the same key never moves money twice
    loan: LoanRef
    usdt: Decimal


class TreasuryOutcome(BaseModel):
    key: str
    kind: TreasuryAction
    usdt: Decimal
    btc: Decimal = Decimal(0)
    already_done: bool = False
    refused: str | None = None  # the venue refused (e.g. not enough USDT): an answer, not a failure


class MarginTopUp(BaseModel):
    key: str
    hedge: HedgeFactsRequest
    usdt: Decimal


class LoanView(BaseModel):
    """The `state` query and `loan status --json`."""

    loan_id: str
    venue: str
    account: str
    ltv_pct: Decimal | None
    band: str
    max_ltv_pct: Decimal
    debt_usdt: Decimal
    principal_usdt: Decimal
    interest_usdt: Decimal
    collateral_btc: Decimal
    price: Decimal | None
    price_source: str | None
    price_at: datetime | None
    feed_stale: bool
    hedge_id: str
    hedge_target_btc: Decimal
    hedge_current_btc: Decimal
    hedge_realised_pnl: Decimal
    hedge_unrealised_pnl: Decimal
    hedge_liquidation_price: Decimal | None
    net_delta_btc: Decimal
    hedge_fees_usdt: Decimal = Decimal(0)
    hedge_funding_usdt: Decimal = Decimal(0)
    realisations: int = 0
    realised_btc: Decimal = Decimal(0)  # BTC taken off and put back by realise-and-re-hedge round trips
    realised_notional_usdt: Decimal = Decimal(0)  # the same at the prices they were decided at
    realising: RealiseState | None
    reserve_usdt: Decimal
    enrol_reserve_left_usdt: Decimal
    allocated_pnl_usdt: Decimal
    # hedge losses (a short closed in a rebound, fees, funding) the treasury wrote off as the protection's cost, so
    # that the next leg's profit reaches the loan (risk.loan.loss_to_write_off)
    written_off_usdt: Decimal = Decimal(0)
    last_treasury: TreasuryRecord | None
    treasury_actions: int
    paused: bool
    hedge_closed: bool
    unenrolling: bool
    bands: BandSettings
    always_repay: bool
    next_sync_at: datetime | None
    summary: str
    # False while the loan has needed no short yet: its hedge workflow opens on the first need
    hedge_started: bool = True


for _model in (PendingMove, LoanCarry, LoanGuardInput):  # they name models defined further down
    _model.model_rebuild()
