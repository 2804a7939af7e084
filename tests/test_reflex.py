"""The reflex (activities/reflex.py): the feed sends the first order of a band crossing on the tick, and the hedge
books it before planning, so the short ends at the band's target and never past it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D

import pytest

from activities.reflex import ReflexQuote, reflex_order
from models.hedge import OrderPolicy
from models.loan_guard import ArmedReflex, BandSettings, FeedSubscription, FeedSubscriptions, feed_shard, feed_workflow_id
from models.venue import MarketInfo, TimeInForce
from risk.loan import Band
from tests.loan_helpers import FAST, end_loan_workflows, enrol, open_loan, record_if_asked, wait_loan
from tests.test_loan_guard import hedge_view, settled

MARKET = MarketInfo(venue="bybit", symbol="BTCUSDT", base="BTC", quote="USDT", tick_size=D("0.1"), qty_step=D("0.001"),
                    min_qty=D("0.001"), min_notional=D("5"))
QUOTE = ReflexQuote(bid=D("52690"), ask=D("52700"), index=D("52695"))


def subscription(*, base: str = "0", from_band: Band = Band.SAFE, collateral: str = "1", band_bps: str = "300"):
    return FeedSubscription(
        loan_id="L1", venue="bybit", account="a1", symbol="BTCUSDT", debt=D("24000"), collateral_btc=D(collateral),
        bands=BandSettings(), band=int(from_band), keepalive_s=600, ltv_step_pct=D("0.25"),
        reflex=ArmedReflex(client_order_id="loan-L1-ab120-x0", hedge_id="loan-L1-ab120", from_band=int(from_band),
                           base_btc=D(base), ioc_bps=D("20"), price_band_bps=D(band_bps)))


def test_a_crossing_out_of_the_armed_band_sends_the_new_bands_target_as_an_ioc_through_the_bid():
    order = reflex_order(subscription(collateral="1.2345"), Band.CAUTION, QUOTE, MARKET)
    assert order is not None and order.client_order_id == "loan-L1-ab120-x0"
    assert order.side == "sell" and order.time_in_force == TimeInForce.IOC and not order.reduce_only
    assert order.qty == D("1.234")  # 1.0 x collateral, in whole lots
    assert order.price == D("52584.6")  # 20 bps through the bid, on the tick grid, rounded away from the book


def test_a_jump_over_bands_sends_the_target_of_the_band_reached_less_what_the_hedge_was_asked_for():
    order = reflex_order(subscription(base="1.0", from_band=Band.CAUTION), Band.CRITICAL, QUOTE, MARKET)
    assert order is not None and order.qty == D("0.5")  # 1.5 - 1.0


@pytest.mark.parametrize("why, sub, band, quote", [
    ("still in its band", subscription(), Band.SAFE, QUOTE),
    ("a fall out of a band", subscription(from_band=Band.DANGER, base="1.2"), Band.CAUTION, QUOTE),
    ("no bid/ask on the stream", subscription(), Band.CAUTION, None),
    ("already short the target", subscription(base="1.0"), Band.CAUTION, QUOTE),
    ("price outside the sanity band", subscription(band_bps="10"), Band.CAUTION, QUOTE),
    ("under the venue's minimum", subscription(collateral="0.00005"), Band.CAUTION, QUOTE),
])
def test_no_reflex(why, sub, band, quote):
    assert reflex_order(sub, band, quote, MARKET) is None, why


def test_an_unarmed_loan_sends_nothing():
    assert reflex_order(subscription().model_copy(update={"reflex": None}), Band.CRITICAL, QUOTE, MARKET) is None


async def feed_holds(client, loan_id: str, reflex_id: str, within_s: float = 10.0) -> None:
    feed = client.get_workflow_handle(feed_workflow_id("bybit", "BTCUSDT", feed_shard(loan_id)))
    deadline = time.monotonic() + within_s
    while True:
        subs = await feed.query("subscriptions", -1, result_type=FeedSubscriptions)
        mine = next((sub for sub in subs.subscriptions if sub.loan_id == loan_id), None)
        if mine is not None and mine.reflex is not None and mine.reflex.client_order_id == reflex_id:
            return
        assert time.monotonic() < deadline, mine
        await asyncio.sleep(0.1)


@pytest.fixture
async def loan_worker(dev_env, paper_settings, store, venues, task_queue):
    from worker import build_worker

    async with build_worker(dev_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue
        await end_loan_workflows(dev_env.client)


async def test_the_feed_sends_the_crossing_order_and_the_hedge_books_it_instead_of_trading_again(
        dev_env, loan_worker, sim, paper_settings, store, caplog):
    await open_loan(sim, paper_settings, "reflex", "1", "24000")  # 40 % at 60000
    # the default ladder: without the reflex the first order would be a post-only one resting 10 bps off the book
    handle = await enrol(dev_env.client, loan_worker, "REFLEX-1", "reflex", hedge_policy=OrderPolicy(fill_check_s=1),
                         timing=FAST.model_copy(update={"min_treasury_usdt": D("1e9")}))
    view = await wait_loan(handle, lambda v: v.reflex_armed is not None and v.price_source == "feed")
    armed = view.reflex_armed
    assert armed.startswith(f"{view.hedge_id}-x")
    # a loan at rest is one workflow: its hedge opens when first needed (here by the reflex itself)
    assert not view.hedge_started and store.get_hedge(view.hedge_id) is None
    sim.market.set_price("BTCUSDT", D("52700"))  # CAUTION: short 1.0
    view = await wait_loan(handle, lambda v: settled("CAUTION")(v) and v.reflex_armed not in (None, armed), within_s=60)
    account = sim.engines["bybit"].account_by_name("reflex")
    first = next(o for o in account.orders if o.client_id)
    assert (first.client_id, first.tif, first.side, first.qty) == (armed, "IOC", "sell", D("1.000"))
    assert view.hedge_target_btc == view.hedge_current_btc == D("1.000")
    # the hedge booked the reflex's fills and traded only what was left: the short never went past the target
    short = D(0)
    for fill in account.fills:
        short += fill.qty if fill.side == "sell" else -fill.qty
        assert short <= D("1.000"), [(f.client_id, f.side, f.qty) for f in account.fills]
    hedge = await hedge_view(dev_env.client, view.hedge_id)
    assert hedge.current == -1 and account.position("BTCUSDT").size == -1
    # the reflex left before the hedge existed: the hedge booked it by its id, and its ledger matches the venue
    assert store.filled_by_order(view.hedge_id, armed) == D("1.000") and store.verify(view.hedge_id) == []
    assert store.sync_state(view.hedge_id).mismatch is None
    assert not [r.getMessage() for r in caplog.records if "ledger and venue disagree" in r.getMessage()]
    ids = [o.client_id for o in account.orders if o.client_id]
    assert len(ids) == len(set(ids))
    # the next crossing is armed under a new id, from the band the loan is in now (the guard names it as it sends
    # it: wait until the feed has it)
    await feed_holds(dev_env.client, "REFLEX-1", view.reflex_armed)
    sim.market.set_price("BTCUSDT", D("49500"))  # DANGER: short 1.2
    view = await wait_loan(handle, settled("DANGER"), within_s=60)
    second = [o for o in account.orders if o.client_id.startswith(f"{view.hedge_id}-x")]
    assert [o.client_id for o in second][-1] != armed and second[-1].qty == D("0.200")
    await record_if_asked(dev_env.client, handle.id, "LoanGuardWorkflow-reflex")
    await record_if_asked(dev_env.client, f"hedge-{view.hedge_id}", "HedgeWorkflow-loan-reflex")


async def test_a_pause_disarms_the_feed_while_the_guard_waits_on_a_failing_venue(dev_env, loan_worker, sim, paper_settings):
    """The guard's loop can be minutes inside a loan read that keeps failing; a pause must still reach the feed
    before the next crossing, or the feed would trade for a paused loan."""
    await open_loan(sim, paper_settings, "reflexpause", "1", "24000")
    handle = await enrol(dev_env.client, loan_worker, "REFLEX-2", "reflexpause", hedge_policy=OrderPolicy(fill_check_s=1))
    await wait_loan(handle, lambda v: v.reflex_armed is not None and v.price_source == "feed")
    failing = sim.faults.add("bybit", "http500", count=100_000, path="/v5/crypto-loan")
    await asyncio.sleep(6)  # the next loan read (every 5 s here) fails, and is retried for up to 2 minutes
    assert failing.count < 100_000, "the guard has not tried to read its loan yet"
    await handle.signal("pause")
    await wait_loan(handle, lambda v: v.paused and v.reflex_armed is None, within_s=10)
    sim.market.set_price("BTCUSDT", D("52700"))  # CAUTION
    await asyncio.sleep(3)
    account = sim.engines["bybit"].account_by_name("reflexpause")
    assert not [o for o in account.orders if o.client_id], "a paused loan's feed traded"
    sim.faults.clear()
