"""The loan guard's side effects: read the loan, poll the price, read the hedge's facts, move money for the
treasury (repay, buy BTC and add it as collateral, top up hedge margin), and subscribe to the price feed.

Every money move takes a key chosen by the workflow; the same key never moves money twice (loan intents in
the store, the spot order's client id at the venue).
"""

from __future__ import annotations

import asyncio
import hashlib
from decimal import ROUND_DOWN, Decimal

from temporalio import activity
from temporalio.client import WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from activities.ccxt_venue import BybitVenue
from activities.hedging import as_activity_error
from activities.loan_ops import LoanOps
from activities.store import Store
from activities.venue import OrderRejected, VenueError
from activities.venues import VenuePool
from models.loan import LoanSnapshot
from models.loan_guard import (
    FeedInput,
    FeedSubscription,
    FeedUnsubscribe,
    HedgeFacts,
    HedgeFactsRequest,
    LoanRef,
    MarginTopUp,
    PriceRequest,
    PriceTick,
    TreasuryAction,
    TreasuryOutcome,
    TreasuryRequest,
    feed_shard,
    feed_workflow_id,
)

ZERO = Decimal(0)


def spot_client_id(key: str) -> str:
    """The spot purchase's client id, within Bybit's 36 characters."""
    cid = f"{key}-buy"
    return cid if len(cid) <= 36 else f"{key[:22]}-{hashlib.sha256(key.encode()).hexdigest()[:8]}-buy"


class LoanGuardActivities:
    def __init__(self, store: Store, venues: VenuePool) -> None:
        self.store = store
        self.venues = venues

    async def _bybit(self, venue: str, account: str) -> BybitVenue:
        client = await self.venues.get(venue, account)
        if not isinstance(client, BybitVenue):
            raise ApplicationError(f"crypto loans are only supported on Bybit, not {venue}", type="UnsupportedVenue",
                                   non_retryable=True)
        return client

    @activity.defn(name="loan_read")
    async def read(self, loan: LoanRef) -> LoanSnapshot:
        try:
            snapshot = await LoanOps(self.store, await self._bybit(loan.venue, loan.account)).read()
        except VenueError as err:
            raise as_activity_error(err) from None
        return snapshot

    @activity.defn(name="loan_price")
    async def price(self, req: PriceRequest) -> PriceTick:
        """The price by REST, for when the feed is stale."""
        venue = await self.venues.get(req.venue, req.account)
        try:
            t = await venue.ticker(req.symbol)
        except VenueError as err:
            raise as_activity_error(err) from None
        return PriceTick(last=t.last, index=t.index or t.last, mark=t.mark or t.last, at=t.ts, source="poll")

    @activity.defn(name="loan_hedge_facts")
    async def hedge_facts(self, req: HedgeFactsRequest) -> HedgeFacts:
        venue = await self.venues.get(req.venue, req.account)
        try:
            market = await venue.market(req.symbol)
            position = await venue.position(req.symbol)
        except VenueError as err:
            raise as_activity_error(err) from None
        hedge = await asyncio.to_thread(self.store.get_hedge, req.hedge_id)
        fees, funding = await asyncio.to_thread(self.store.costs, req.hedge_id) if hedge else (ZERO, ZERO)
        return HedgeFacts(status=hedge.status if hedge else None, size=hedge.current_size if hedge else ZERO,
                          realised_pnl=hedge.realised_pnl if hedge else ZERO,
                          unrealised_pnl=position.unrealised_pnl or ZERO, fees=fees, funding=funding,
                          liquidation_price=position.liquidation_price, mark=position.mark_price,
                          qty_step=market.qty_step, min_qty=market.min_qty)

    @activity.defn(name="loan_repay")
    async def repay(self, req: TreasuryRequest) -> TreasuryOutcome:
        ops = LoanOps(self.store, await self._bybit(req.loan.venue, req.loan.account))
        try:
            result = await ops.repay(req.key, req.usdt)
        except OrderRejected as rej:
            return TreasuryOutcome(key=req.key, kind=TreasuryAction.REPAY, usdt=ZERO, refused=str(rej))
        except VenueError as err:
            raise as_activity_error(err) from None
        return TreasuryOutcome(key=req.key, kind=TreasuryAction.REPAY, usdt=result.amount, already_done=result.already_done)

    @activity.defn(name="loan_add_collateral")
    async def add_collateral(self, req: TreasuryRequest) -> TreasuryOutcome:
        """Buy BTC spot for `usdt` (client id = key) and pledge what arrived (after the fee) to the loan."""
        venue = await self._bybit(req.loan.venue, req.loan.account)
        try:
            fill = await venue.buy_spot(spot_client_id(req.key), req.usdt)
        except OrderRejected as rej:
            return TreasuryOutcome(key=req.key, kind=TreasuryAction.ADD_COLLATERAL, usdt=ZERO, refused=str(rej))
        except VenueError as err:
            raise as_activity_error(err) from None
        btc = fill.btc_received.quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
        try:
            result = await LoanOps(self.store, venue).add_collateral(req.key, btc)
        except OrderRejected as rej:
            return TreasuryOutcome(key=req.key, kind=TreasuryAction.ADD_COLLATERAL, usdt=fill.usdt_spent, btc=ZERO,
                                   refused=f"bought {btc} BTC but the loan refused it: {rej}")
        except VenueError as err:
            raise as_activity_error(err) from None
        return TreasuryOutcome(key=req.key, kind=TreasuryAction.ADD_COLLATERAL, usdt=fill.usdt_spent, btc=result.amount,
                               already_done=result.already_done)

    @activity.defn(name="loan_margin_topup")
    async def margin_topup(self, req: MarginTopUp) -> TreasuryOutcome:
        """Move USDT into the hedge position's margin. Bybit's add-margin takes no client id; a retry that
        adds twice only moves more of the account's own USDT into the same position, never out of it."""
        venue = await self._bybit(req.hedge.venue, req.hedge.account)
        try:
            await venue._call("private_post_v5_position_add_margin", {"category": "linear", "symbol": req.hedge.symbol,
                                                                      "margin": str(req.usdt), "positionIdx": 0},
                              retries_unavailable=0)
        except OrderRejected as rej:
            return TreasuryOutcome(key=req.key, kind=TreasuryAction.MARGIN_TOPUP, usdt=ZERO, refused=str(rej))
        except VenueError as err:
            raise as_activity_error(err) from None
        return TreasuryOutcome(key=req.key, kind=TreasuryAction.MARGIN_TOPUP, usdt=req.usdt)

    # -- the price feed's subscriptions ----------------------------------------------------------------
    def _feed(self, venue: str, symbol: str, loan_id: str) -> WorkflowHandle:
        return activity.client().get_workflow_handle(feed_workflow_id(venue, symbol, feed_shard(loan_id)))

    @activity.defn(name="feed_subscribe")
    async def subscribe(self, sub: FeedSubscription) -> None:
        """Start the loan's feed shard if it is not running, and tell it about this loan."""
        shard = feed_shard(sub.loan_id)
        await activity.client().start_workflow(
            "PriceFeedWorkflow", FeedInput(venue=sub.venue, symbol=sub.symbol, shard=shard),
            id=feed_workflow_id(sub.venue, sub.symbol, shard),
            task_queue=activity.info().task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal="subscribe", start_signal_args=[sub],
            static_summary=f"price feed · {sub.symbol} on {sub.venue}, shard {shard} · wakes loans on band changes "
                           "and LTV steps")

    @activity.defn(name="feed_unsubscribe")
    async def unsubscribe(self, req: FeedUnsubscribe) -> None:
        from temporalio.service import RPCError

        try:
            await self._feed(req.venue, req.symbol, req.loan_id).signal("unsubscribe", req)
        except RPCError:
            pass  # no feed running: nothing to leave
