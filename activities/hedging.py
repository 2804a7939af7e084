"""The hedge lifecycle's side effects: its store row, venue prices, orders, cancels, and the sync that
pulls fills and funding into the ledger. The workflow decides; these only do.

Venue errors cross into Temporal as ApplicationErrors whose type names the venue error, retryable or not
as the venue's code says; an order the venue refuses is an answer (PlaceOutcome.rejected), not a failure.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from decimal import Decimal
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.alerts import AlertActivities
from activities.store import Store, StoreError
from activities.venue import OrderRejected, VenueError, VenueRateLimited
from activities.venues import VenuePool
from models.hedge import (
    Alert,
    FillSummary,
    HedgeRecord,
    HedgeStatusChange,
    MarketFacts,
    NotSent,
    OpenHedge,
    OrderLookup,
    PlaceHedgeOrder,
    PlaceOutcome,
    SyncRequest,
    SyncResult,
)
from models.ledger import HedgeStatus
from models.venue import OrderRequest, OrderState, OrderType, TimeInForce
from models.venue_events import VenueFill, input_hash
from risk.pricing import Quote, price_order, within_band

SYNC_ATTEMPTS = 4  # an order's fills may show in the venue's trade list a moment after the order does
RECONCILE_RECHECK_S = 0.5  # before a ledger that disagrees with the venue position is compared once more


def as_activity_error(error: VenueError) -> ApplicationError:
    delay = None
    if isinstance(error, VenueRateLimited) and error.retry_after_s:
        delay = timedelta(seconds=error.retry_after_s)
    return ApplicationError(str(error), type=type(error).__name__, non_retryable=not error.retryable,
                            next_retry_delay=delay)


class HedgeActivities:
    def __init__(self, store: Store, venues: VenuePool, alerts: AlertActivities | None = None) -> None:
        self.store = store
        self.venues = venues
        self.alerts = alerts

    async def _fill_summaries(self, hedge_id: str, fills: list[VenueFill]) -> None:
        """One message per order with new fills: side, size, average price, fees, and the position after the
        sync. Only fills this call wrote are told, so a retried sync tells nothing twice."""
        assert self.alerts is not None
        info = activity.info()
        hedge = await asyncio.to_thread(self.store.get_hedge, hedge_id)
        if hedge is None:
            return
        by_order: dict[str, list[VenueFill]] = {}
        for fill in fills:
            by_order.setdefault(fill.client_order_id or fill.order_id or fill.fill_id, []).append(fill)
        for order, group in by_order.items():
            qty = sum((f.qty for f in group), Decimal(0))
            avg = sum((f.qty * f.price for f in group), Decimal(0)) / qty
            fees = ", ".join(f"{sum((f.fee for f in group if f.fee_asset == a), Decimal(0))} {a}"
                             for a in sorted({f.fee_asset for f in group}))
            first = min(group, key=lambda f: f.ts)
            how = "liquidated" if any(f.liquidation for f in group) else "filled"
            key = f"{hedge.id}:fill:{input_hash(first.identity)[:16]}"
            alert = Alert(severity="CRITICAL" if how == "liquidated" else "INFO", category="action", key=key,
                          title=f"hedge {hedge.id}: {first.side.upper()} {qty} {hedge.symbol} {how}",
                          text=(f"{first.side.upper()} {qty} {hedge.symbol} at {avg.quantize(Decimal('0.01'))} average "
                                f"({len(group)} fill{'s' if len(group) > 1 else ''}, order {order}), fees {fees}; "
                                f"position now {hedge.current_size} on {hedge.venue}:{hedge.account}"),
                          book=hedge.book, exposure_id=hedge.exposure_id)
            try:
                await self.alerts.notify(activity.client(), alert, raise_id=key, task_queue=info.task_queue)
            except Exception as exc:  # the ledger has the fills; a lost summary must not fail the sync
                activity.logger.warning("fill summary for %s not raised: %s", key, exc)

    async def _venue(self, venue: str, account: str):
        try:
            return await self.venues.get(venue, account)
        except VenueError as err:
            raise as_activity_error(err) from None

    async def _on_venue(self, ref, call):
        """Run `call(venue_client)`, turning venue errors into Temporal's retryable-or-not failures."""
        venue = await self._venue(ref.venue, ref.account)
        try:
            return await call(venue)
        except VenueError as err:
            raise as_activity_error(err) from None

    @activity.defn(name="hedge_open")
    async def open(self, req: OpenHedge) -> HedgeRecord:
        """Everything a hedge needs before it trades, in one activity: its store row, the market's lot sizes and,
        for a perp with a leverage cap, the cap set at the venue while the hedge holds nothing (a restarted hedge
        with a position keeps the leverage it traded at; a failure to set it is retried, never the hedge's end)."""
        venue = await self._venue(req.ref.venue, req.ref.account)
        try:
            info = (await venue.markets()).get(req.ref.symbol)
        except VenueError as err:
            raise as_activity_error(err) from None
        if info is None:
            raise ApplicationError(f"{req.ref.venue} lists no linear perpetual {req.ref.symbol}", type="UnknownSymbol",
                                   non_retryable=True)
        market = MarketFacts(tick_size=info.tick_size, qty_step=info.qty_step, min_qty=info.min_qty,
                             min_notional=info.min_notional)
        record = await self._ensure(req, market)
        if req.leverage is not None:
            hedge = await asyncio.to_thread(self.store.get_hedge, req.ref.hedge_id)
            if hedge is not None and hedge.current_size == 0:
                try:
                    await venue.set_leverage(req.ref.symbol, req.leverage)
                except VenueError as err:
                    raise ApplicationError(f"cannot set {req.ref.symbol} leverage to {req.leverage}: {err}",
                                           type="LeverageNotSet") from None
        return record

    async def _ensure(self, req: OpenHedge, market: MarketFacts) -> HedgeRecord:
        config: dict[str, Any] = {"book": req.book, "exposure_id": req.exposure_id, "side": req.side.value}
        existed = await asyncio.to_thread(self.store.get_hedge, req.ref.hedge_id) is not None
        try:
            hedge = await asyncio.to_thread(self.store.create_hedge, id=req.ref.hedge_id, book=req.book,
                                            exposure_id=req.exposure_id, venue=req.ref.venue, account=req.ref.account,
                                            symbol=req.ref.symbol, side=req.side.value, config=config)
        except StoreError as err:
            raise ApplicationError(str(err), type="HedgeConflict", non_retryable=True) from None
        return HedgeRecord(created_ms=int(hedge.created_at.timestamp() * 1000), status=HedgeStatus(hedge.status),
                           existed=existed, market=market)

    @activity.defn(name="hedge_set_status")
    async def set_status(self, change: HedgeStatusChange) -> None:
        await asyncio.to_thread(self.store.set_status, change.hedge_id, change.status, target_size=change.target)

    @activity.defn(name="hedge_place")
    async def place(self, req: PlaceHedgeOrder) -> PlaceOutcome:
        """Quote, price by the rule, check, place. An earlier attempt that reached the venue is the order, whatever
        this attempt's quote would price it at (place_order finds it by its client order id and settles it)."""
        venue = await self._venue(req.ref.venue, req.ref.account)
        symbol, rule = req.ref.symbol, req.rule
        try:
            # both at once: the lookup only matters on a retry, the quote on every first attempt
            existing, ticker = await asyncio.gather(venue.order_by_client_id(symbol, req.client_order_id),
                                                    venue.ticker(symbol))
            index = None
            if existing is not None and existing.price is not None:
                price, tif = existing.price, existing.time_in_force or TimeInForce.GTC
            else:
                if ticker.bid is None or ticker.ask is None:
                    raise ApplicationError(f"{req.ref.venue} gave no bid/ask for {symbol}", type="NoQuote")
                index = ticker.index or ticker.last
                priced = price_order(rule.kind, rule.bps, req.side, Quote(bid=ticker.bid, ask=ticker.ask, index=index),
                                     rule.tick_size)
                price, tif = priced.price, TimeInForce(priced.time_in_force)
                if not within_band(price, index, rule.price_band_bps):
                    return PlaceOutcome(order=None, not_sent=NotSent.PRICE_BAND, price=price, index=index,
                                        message=f"{req.side} at {price} is more than {rule.price_band_bps} bps from "
                                                f"the index {index}: not trading")
                if not req.reduce_only and req.qty * price < rule.min_notional:
                    return PlaceOutcome(order=None, not_sent=NotSent.MIN_NOTIONAL, price=price, index=index,
                                        message=f"{req.qty} at {price} is below the venue minimum of {rule.min_notional}")
            request = OrderRequest(symbol=symbol, client_order_id=req.client_order_id, side=req.side, qty=req.qty,
                                   type=OrderType.LIMIT, price=price, time_in_force=tif, reduce_only=req.reduce_only)
            try:
                placed = await venue.place_order(request, looked_up=existing is None)
                return PlaceOutcome(order=placed, price=price, index=index)
            except OrderRejected as rej:
                activity.logger.info("order %s refused: %s", req.client_order_id, rej)
                return PlaceOutcome(order=None, rejected=rej.reason.value, message=rej.detail, price=price, index=index)
        except VenueError as err:
            raise as_activity_error(err) from None

    @activity.defn(name="hedge_order")
    async def order(self, req: OrderLookup) -> OrderState | None:
        return await self._on_venue(req.ref, lambda v: v.order_by_client_id(req.ref.symbol, req.client_order_id))

    @activity.defn(name="hedge_cancel")
    async def cancel(self, req: OrderLookup) -> OrderState | None:
        return await self._on_venue(req.ref, lambda v: v.cancel_order(req.ref.symbol, req.client_order_id))

    @activity.defn(name="hedge_sync")
    async def sync(self, req: SyncRequest) -> SyncResult:
        """Pull the account's fills and funding since the cursor into the ledger; with `reconcile`, also
        compare the ledger with the venue's own position and record the outcome in HedgeSyncState."""
        ref = req.ref
        venue = await self._venue(ref.venue, ref.account)
        new_fills: list[VenueFill] = []
        try:
            return await self._sync(req, venue, new_fills)
        finally:  # told even when this attempt fails after writing: a retry sees those fills as already in
            if new_fills and self.alerts is not None:
                try:
                    await self._fill_summaries(ref.hedge_id, new_fills)
                except Exception as exc:  # never instead of the sync's own outcome
                    activity.logger.warning("fill summaries for %s not raised: %s", ref.hedge_id, exc)

    async def _sync(self, req: SyncRequest, venue, new_fills: list[VenueFill]) -> SyncResult:
        ref = req.ref
        cursor, written, fills = req.cursor, 0, []

        async def pull() -> None:
            """The account's fills and funding since the cursor, into the ledger."""
            nonlocal cursor, written
            page = await venue.events_since(ref.symbol, cursor, since_ms=req.since_ms)
            ingested = await asyncio.to_thread(self.store.record, ref.hedge_id,
                                               sorted([*page.fills, *page.funding], key=lambda e: e.ts))
            written += ingested.written
            new_fills.extend(ingested.fills)
            fills.extend(page.fills)
            cursor = page.cursor

        try:
            for attempt in range(SYNC_ATTEMPTS):
                await pull()
                missing = [cid for cid, filled in req.expect_filled.items()
                           if await asyncio.to_thread(self.store.filled_by_order, ref.hedge_id, cid) < filled]
                if missing and attempt >= 1:  # not in the account's list (yet): ask for the order's own fills
                    for cid in missing:
                        own = await venue.fills_for_order(ref.symbol, cid)
                        ingested = await asyncio.to_thread(self.store.record, ref.hedge_id, own)
                        written += ingested.written
                        new_fills += ingested.fills
                        fills += own
                    missing = [cid for cid, filled in req.expect_filled.items()
                               if await asyncio.to_thread(self.store.filled_by_order, ref.hedge_id, cid) < filled]
                if not missing:
                    break
                if attempt == SYNC_ATTEMPTS - 1:
                    raise ApplicationError(f"venue reports fills for {', '.join(missing)} that its trade list does "
                                           "not show yet", type="FillsNotVisible")
                await asyncio.sleep(0.3 * (attempt + 1))
            venue_size = mismatch = None
            if req.reconcile:
                for look in range(2):
                    position = await venue.position(ref.symbol)
                    venue_size = position.size
                    ledger = await asyncio.to_thread(self.store.get_hedge, ref.hedge_id)
                    if look or ledger is None or ledger.current_size == venue_size:
                        break
                    # a fill that landed between the fill list and the position read (an order
                    # filling) is not a disagreement: list the fills once more, then compare again
                    await asyncio.sleep(RECONCILE_RECHECK_S)
                    await pull()
                if position.mark_price is not None:
                    await asyncio.to_thread(self.store.mark, ref.hedge_id, position.mark_price)
        except VenueError as err:
            raise as_activity_error(err) from None
        hedge = await asyncio.to_thread(self.store.get_hedge, ref.hedge_id)
        assert hedge is not None
        if req.reconcile:
            if venue_size != hedge.current_size:
                mismatch = (f"venue position {venue_size} but the ledger rebuilds {hedge.current_size} after "
                            "ingesting every fill the venue lists")
            await asyncio.to_thread(self.store.record_sync, ref.hedge_id, source=f"{ref.venue} rest",
                                    venue_size=venue_size, fills_cursor=cursor, mismatch=mismatch,
                                    snapshot={"venue_size": str(venue_size), "ledger_size": str(hedge.current_size)})
        last: VenueFill | None = max(fills, key=lambda f: f.ts) if fills else None
        return SyncResult(
            current=hedge.current_size, cursor=cursor, new_events=written,
            last_fill=FillSummary(side=last.side, qty=last.qty, price=last.price, fee=last.fee,
                                  client_order_id=last.client_order_id, at=last.ts) if last else None,
            realised_pnl=hedge.realised_pnl, unrealised_pnl=hedge.unrealised_pnl, venue_size=venue_size,
            mismatch=mismatch, liquidated=any(f.liquidation for f in fills) and written > 0)

