"""The reflex: the first order of a band crossing, sent by the feed on the tick itself.

Through the workflows a crossing is a price signal, a guard task, a retarget signal, a hedge task and an order
activity: about 50 ms for one loan, and at a thousand loans crossing together a queue on one dev server that took
minutes to drain (bench/README.md). So the guard arms its next crossing in its feed subscription
(models.loan_guard.ArmedReflex) and the feed, which values every loan on every tick anyway, sends that order the
moment the tick puts the loan above the armed band: an IOC sell of the new band's hedge target less the short the
hedge was already asked for, priced like the hedge's IOC rung and refused outside its price band. Nothing rests
at the venue. The guard then tells the hedge the reflex's client order id with its retarget, and the hedge brings
the order's fills into its ledger before it plans the rest, so the ledger stays the hedge's alone and nothing is
hedged twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from decimal import Decimal

from activities.venue import VenueError
from activities.venues import VenuePool
from models.loan_guard import FeedSubscription
from models.venue import MarketInfo, OrderRequest, OrderType, TimeInForce
from risk.loan import Band, hedge_target_btc
from risk.pricing import Quote, StepKind, price_order, round_down_to_step, within_band

log = logging.getLogger("hedgeguard.reflex")
REFLEX_TIMEOUT_S = 3.0  # a venue this slow gets no wait: the signals to the loans go out, the hedges follow up
# in flight at once from all feed shards of the worker together, under the venue clients' shared connection pool
# (activities.venues.CONNECTIONS): a reflex waits for its turn before its timeout starts, so the timeout measures the
# venue. Sixteen shards each sending 64 at once queued ~1,000 requests for 100 connections inside the timeout, and at
# 10,000 loans some hundreds of reflexes gave up waiting for a connection and went out late through their hedges.
REFLEXES_IN_FLIGHT = 64


@dataclass(frozen=True)
class ReflexQuote:
    bid: Decimal
    ask: Decimal
    index: Decimal


def crossed(sub: FeedSubscription, band: Band) -> bool:
    """Whether this band lifts the loan out of the one its reflex was armed in."""
    return sub.reflex is not None and band > sub.reflex.from_band


def reflex_order(sub: FeedSubscription, band: Band, quote: ReflexQuote | None, market: MarketInfo) -> OrderRequest | None:
    """The armed order this tick fires, or None (not armed, not above the armed band, nothing worth sending, or a
    price outside the hedge's sanity band)."""
    armed = sub.reflex
    if armed is None or not crossed(sub, band) or quote is None:
        return None
    target = hedge_target_btc(sub.collateral_btc, band, sub.bands.bands())
    qty = round_down_to_step(target - armed.base_btc, market.qty_step)
    if armed.max_qty is not None:
        qty = min(qty, round_down_to_step(armed.max_qty, market.qty_step))
    if qty < market.min_qty:
        return None
    priced = price_order(StepKind.IOC, armed.ioc_bps, "sell", Quote(bid=quote.bid, ask=quote.ask, index=quote.index),
                         market.tick_size)
    if not within_band(priced.price, quote.index, armed.price_band_bps):
        log.warning("reflex for loan %s not sent: sell at %s is more than %s bps from the index %s", sub.loan_id,
                    priced.price, armed.price_band_bps, quote.index)
        return None
    if qty * priced.price < market.min_notional:
        return None
    return OrderRequest(symbol=sub.symbol, client_order_id=armed.client_order_id, side="sell", qty=qty,
                        type=OrderType.LIMIT, price=priced.price, time_in_force=TimeInForce.IOC, reduce_only=False)


async def send_reflex(venues: VenuePool, sub: FeedSubscription, order: OrderRequest, slots: asyncio.Semaphore) -> bool:
    """Send one reflex order once one of the worker's reflex `slots` is free; False when it did not reach the venue
    for sure (refused, failed or slow). Either way the hedge looks the id up before it trades, so a reflex that
    half-happened is found, not repeated."""
    async with slots:
        try:
            venue = await venues.get(sub.venue, sub.account)
            sent = await asyncio.wait_for(venue.submit_order(order), timeout=REFLEX_TIMEOUT_S)
        except (VenueError, TimeoutError) as exc:
            log.warning("reflex %s for loan %s not sent: %s", order.client_order_id, sub.loan_id,
                        str(exc) or f"no answer in {REFLEX_TIMEOUT_S:.0f} s")
            return False
        except Exception:  # a fault here must not cost the feed its stream: the guards still hear of the tick
            log.exception("reflex %s for loan %s failed", order.client_order_id, sub.loan_id)
            return False
        if sent:
            log.info("reflex %s for loan %s: IOC sell %s %s at %s", order.client_order_id, sub.loan_id, order.qty,
                     order.symbol, order.price)
        return sent
