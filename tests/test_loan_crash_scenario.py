"""The 12-13 March 2020 BTC crash (real 1-minute Binance perp bars from ../shared/data), replayed through the
Bybit emulator against the real loan guard, feed and hedge workflows on the dev server.

A loan enrolled at 40 % LTV must come through it with its LTV never above 50 %, neither the loan nor the hedge
liquidated, the hedge's ledger rebuilding to the venue's position, and no client order id used twice.

The market runs at the guard's pace, not faster: each 15-second price point (four per 1-minute bar) is held
until the guard has nothing in flight (no realisation, hedge at target, realised profit allocated), for at
most the 15 s it lasted in March 2020. Points where the guard is idle pass in a blink, so the 287 minutes
take about two. Replaying faster than real time in wall-clock terms would instead make a guard that takes
a second per action look 100 times slower than it is.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from decimal import Decimal as D

import pytest

from models.hedge import LadderStep, OrderPolicy
from models.loan_guard import LoanTiming
from risk.loan import realisation_due
from risk.pricing import StepKind
from tests.loan_helpers import end_loan_workflows, enrol, loan_state, open_loan, wait_loan

pytestmark = pytest.mark.slow

CRASH = "btcusdt_binance_perp_1m_2020-03-12_crash.csv"
COLLATERAL = D("10")
POINT_S = 15.0  # a price point's share of its 1-minute bar
# a crash is no time for resting orders: take liquidity from the first rung
CRASH_HEDGE = OrderPolicy(ladder=(LadderStep(kind=StepKind.CROSS, bps=D(5)), LadderStep(kind=StepKind.IOC, bps=D(20))),
                          replace_after_s=5, fill_check_s=1, reconcile_every_s=30)


def busy(v, venue_ltv: D, timing: LoanTiming) -> bool:
    """Whether the guard still has something to do about the current price."""
    if v.ltv_pct is None or abs(venue_ltv - v.ltv_pct) >= timing.ltv_step_pct:
        return True  # the feed's signal for this price is still on its way
    if v.realising is not None or v.hedge_current_btc != v.hedge_target_btc:
        return True
    if not v.paused and v.hedge_realised_pnl - v.allocated_pnl_usdt >= max(timing.min_treasury_usdt, D("0.01")):
        return True
    due = realisation_due(v.hedge_unrealised_pnl, v.ltv_pct, v.debt_usdt, v.collateral_btc, v.price, v.bands.bands(),
                          minimum_usdt=timing.min_treasury_usdt, always_repay=v.always_repay)
    return due > 0 and v.hedge_current_btc > 0


async def settle(handle, sim, timing: LoanTiming) -> None:
    """Hold the market still while the guard has work in flight (at most one point's real duration)."""
    deadline = time.monotonic() + POINT_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.03)
        loan = next(x for x in sim.loans.snapshot() if x["account"] == "crash")
        if not busy(await loan_state(handle), D(loan["ltv"]) * 100, timing):
            return


@pytest.fixture
async def loan_worker(dev_env, paper_settings, store, venues, task_queue):
    from worker import build_worker

    async with build_worker(dev_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue
        await end_loan_workflows(dev_env.client)


async def test_march_2020_crash_keeps_the_loan_under_critical(dev_env, loan_worker, sim, paper_settings, store):
    replay = sim.load_replay(CRASH, speed=0)
    sim.step_replay(1)
    first = sim.market.quote("BTCUSDT").last
    debt = (COLLATERAL * first * D("0.40")).quantize(D("0.01"))
    await open_loan(sim, paper_settings, "crash", str(COLLATERAL), str(debt))
    timing = LoanTiming(sync_every_s=30, stale_after_s=10, poll_every_s=2, keepalive_s=5, hedge_check_s=1)
    handle = await enrol(dev_env.client, loan_worker, "CRASH-1", "crash", timing=timing, hedge_policy=CRASH_HEDGE)
    await wait_loan(handle, lambda v: v.price_source == "feed" and v.band == "SAFE")
    started = time.monotonic()
    while not replay.done:
        assert time.monotonic() - started < 420, replay.status()
        sim.step_replay(1)
        await settle(handle, sim, timing)
    view = await wait_loan(handle, lambda v: v.realising is None, within_s=30)
    print(f"crash replayed in {time.monotonic() - started:.0f} s")
    loan = next(x for x in sim.loans.snapshot() if x["account"] == "crash")
    hedge = store.get_hedge(view.hedge_id)
    assert hedge is not None
    account = sim.engines["bybit"].account_by_name("crash")
    venue_size = account.positions["BTCUSDT"].size if "BTCUSDT" in account.positions else D(0)
    ids = [o.client_id for o in account.orders if o.client_id]
    spot = sim.bybit.spot_orders.get("crash", [])
    spot_fee_usdt = sum((o.fee * o.price if o.fee_coin == "BTC" else o.fee for o in spot), D(0)).quantize(D("0.01"))
    taker = sim.engines["bybit"].config.taker_fee
    report = {"max_ltv_pct": (D(loan["max_ltv_seen"]) * 100).quantize(D("0.01")),
              "perp_fees_usdt": view.hedge_fees_usdt.quantize(D("0.01")),
              "of_which_realisation_round_trips_usdt": (2 * view.realised_notional_usdt * taker).quantize(D("0.01")),
              "funding_usdt": view.hedge_funding_usdt.quantize(D("0.01")), "spot_fees_usdt": spot_fee_usdt,
              "realisations": view.realisations, "treasury_actions": view.treasury_actions,
              "collateral_btc": loan["collateral_btc"], "debt_usdt": D(loan["debt"]).quantize(D("0.01")),
              "hedge_realised_pnl_usdt": hedge.realised_pnl.quantize(D("0.01")), "hedge_size": hedge.current_size}
    print("crash scenario:", report)
    assert loan["status"] == "active", loan["liquidation"]
    assert D(loan["max_ltv_seen"]) <= D("0.50"), report
    assert not [liq for liq in sim.engines["bybit"].liquidations if liq["account"] == "crash"]
    assert store.verify(view.hedge_id) == []
    assert hedge.current_size == venue_size
    assert [cid for cid, n in Counter(ids + [o.client_id for o in spot]).items() if n > 1] == []
    ledger_ids = [e.client_order_id for e in store.events(view.hedge_id) if e.type != "FEE" and e.client_order_id]
    assert set(ledger_ids) <= set(ids)  # every fill in the ledger is one of the hedge's own orders
    assert view.treasury_actions > 0 and D(loan["collateral_btc"]) > COLLATERAL
