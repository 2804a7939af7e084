"""The hedge lifecycle on the time-skipping server against the simulated venues: placing, the 30 s
cancel/replace with escalation, partial fills, target changes, expiry, pause and force-close."""

from __future__ import annotations

from decimal import Decimal as D

from tests.hedge_helpers import scheduled_at, signalled_at, start_hedge, state, until, venue_orders


async def test_filled_at_first_try(ts_env, hedge_worker, sim):
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    view = await until(ts_env, handle, lambda v: v.open_order is not None)
    order = view.open_order
    # 10 bps above mid (60000) on the passive side, post-only
    assert (order.side, order.qty, order.price, order.time_in_force) == ("sell", D("0.01"), D("60060"), "POST_ONLY")
    assert order.client_order_id == "loan-L-1-1"
    sim.market.set_price("BTCUSDT", D("60070"))
    view = await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None)
    assert view.status == "OPEN" and view.last_fill.price == D("60060") and view.orders_placed == 1
    assert [o.client_id for o in venue_orders(sim)] == ["loan-L-1-1"]


async def test_unfilled_order_is_cancelled_and_replaced_after_30s_one_rung_further(ts_env, hedge_worker, sim):
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    first = (await until(ts_env, handle, lambda v: v.open_order is not None)).open_order
    second = (await until(ts_env, handle, lambda v: v.orders_placed == 2 and v.open_order is not None)).open_order
    # cancelled 30 s after it was placed and replaced straight away, in workflow time (the test server's clock runs
    # while an activity or workflow task is in flight: 30.08-30.15 s with both cores busy)
    cancelled = await scheduled_at(handle, "hedge_cancel", after=first.placed_at)
    assert 30 <= (cancelled - first.placed_at).total_seconds() <= (second.placed_at - first.placed_at).total_seconds() <= 31
    # rung 2: post-only at the touch (best ask 60003 for a sell), for what is still missing
    assert (second.step, second.price, second.time_in_force, second.qty) == (1, D("60003"), "POST_ONLY", D("0.01"))
    assert [(o.client_id, o.status.value) for o in venue_orders(sim)] == [("loan-L-1-1", "cancelled"),
                                                                          ("loan-L-1-2", "new")]


async def test_an_order_cancelled_unfilled_is_replaced_without_reading_fills(ts_env, hedge_worker, sim):
    """The cancel's answer says nothing filled: the ledger has nothing to bring in. At a band crossing every hedge
    of a book replaces its passive orders together, and each read is work the other loans wait behind."""
    def fill_reads() -> int:
        return len([c for c in sim.calls.query("bybit", "/v5/execution/list") if c.get("account") == "desk"])

    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: v.open_order is not None)
    before = fill_reads()
    assert before >= 1  # the start-up reconciliation read them
    await until(ts_env, handle, lambda v: v.orders_placed == 2 and v.open_order is not None)
    assert fill_reads() == before
    sim.market.set_price("BTCUSDT", D("60070"))  # trades through the touch order: it fills, and that is read
    view = await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None)
    assert fill_reads() > before and view.last_fill is not None and view.last_fill.client_order_id == "loan-L-1-2"


async def test_escalation_reaches_ioc_and_the_hedge_converges(ts_env, hedge_worker, sim):
    engine = sim.engines["bybit"]
    engine.config.depth_levels, engine.config.level_qty = 1, D("0.002")  # a thin book: crossing cannot fill it all
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: any(o.tif == "IOC" for o in venue_orders(sim)), step_s=5)
    kinds = [(o.tif, o.type) for o in venue_orders(sim)]
    assert kinds[:4] == [("PostOnly", "limit"), ("PostOnly", "limit"), ("GTC", "limit"), ("IOC", "limit")]
    engine.config.level_qty = D("5")  # liquidity returns
    view = await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None, step_s=5)
    assert view.orders_placed >= 4
    assert len({o.client_id for o in venue_orders(sim)}) == len(venue_orders(sim))


async def test_partial_fill_shrinks_the_replacement(ts_env, hedge_worker, sim):
    sim.engines["bybit"].config.maker_fill_qty = D("0.004")
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: v.open_order is not None)
    sim.market.set_price("BTCUSDT", D("60070"))  # trades through: 0.004 of 0.01 fills
    view = await until(ts_env, handle, lambda v: v.current == D("-0.004"))
    assert view.open_order.filled == D("0.004")
    second = (await until(ts_env, handle, lambda v: v.orders_placed == 2 and v.open_order is not None)).open_order
    assert second.qty == D("0.006")


async def test_a_fill_racing_the_cancel_is_counted_once(ts_env, hedge_worker, sim, store):
    import asyncio

    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: v.open_order is not None)
    sim.faults.add("bybit", "latency", 1, path="/v5/order/cancel", ms=1500)

    async def fill_while_cancel_in_flight():
        while not sim.calls.query("bybit", "/v5/order/cancel"):
            await asyncio.sleep(0.05)
        sim.market.set_price("BTCUSDT", D("60070"))  # the resting order fills before the venue sees the cancel

    racer = asyncio.create_task(fill_while_cancel_in_flight())
    view = await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None, step_s=5)
    await racer
    assert view.orders_placed == 1  # nothing re-sent for a fill already made
    fills = [e for e in store.events("loan-L-1") if e.type in ("OPEN", "INCREASE")]
    assert [(e.client_order_id, e.size_delta) for e in fills] == [("loan-L-1-1", D("-0.01"))]


async def test_target_raised_lowered_and_zeroed_with_every_reduction_reduce_only(ts_env, hedge_worker, sim):
    from models.hedge import OrderPolicy, TargetChange
    from risk.pricing import Urgency
    from workflows.hedge import HedgeWorkflow

    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.01"))
    for seq, (target, expect) in enumerate([("0.02", "-0.02"), ("0.005", "-0.005"), ("0", "0")], start=1):
        await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D(target), urgency=Urgency.CRITICAL, seq=seq))
        view = await until(ts_env, handle, lambda v, e=expect: v.current == D(e) and v.open_order is None)
    assert view.status == "OPEN" and not view.closing  # at target zero the hedge lives on, flat
    orders = venue_orders(sim)
    assert [(o.side, o.qty, o.reduce_only) for o in orders] == [
        ("sell", D("0.01"), False), ("sell", D("0.01"), False), ("buy", D("0.015"), True), ("buy", D("0.005"), True)]
    await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.03"), seq=2))  # an old signal, redelivered
    await ts_env.sleep(10)
    assert (await state(handle)).target == 0


async def test_risk_cleared_closes_after_60s(ts_env, hedge_worker, sim, store):
    from models.hedge import OrderPolicy, RiskChange
    from risk.pricing import Urgency
    from workflows.hedge import HedgeWorkflow

    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.01"))
    await handle.signal(HedgeWorkflow.risk, RiskChange(active=False, seq=1))
    await ts_env.sleep(45)
    assert (await state(handle)).current == D("-0.01")  # still hedged inside the 60 s
    result = await handle.result()
    (cleared,) = await signalled_at(handle, "risk")
    close_placed = await scheduled_at(handle, "hedge_place", after=cleared)
    assert 60 <= (close_placed - cleared).total_seconds() <= 61  # workflow time (60.03-60.06 s with both cores busy)
    assert result.status == "CLOSED" and result.current == 0
    closing = venue_orders(sim)[-1]
    assert (closing.side, closing.reduce_only) == ("buy", True)
    assert store.get_hedge("loan-L-1").status == "CLOSED" and store.verify("loan-L-1") == []


async def test_risk_returning_at_45s_resets_the_expiry(ts_env, hedge_worker, sim):
    from models.hedge import OrderPolicy, RiskChange
    from risk.pricing import Urgency
    from workflows.hedge import HedgeWorkflow

    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.01"))
    await handle.signal(HedgeWorkflow.risk, RiskChange(active=False, seq=1))
    await ts_env.sleep(45)
    await handle.signal(HedgeWorkflow.risk, RiskChange(active=True, seq=2))
    await ts_env.sleep(60)
    view = await state(handle)
    assert view.current == D("-0.01") and not view.closing and view.status == "OPEN"
    await handle.signal(HedgeWorkflow.risk, RiskChange(active=False, seq=3))
    await ts_env.sleep(30)
    assert (await state(handle)).current == D("-0.01")  # a fresh 60 s started at the new clearing
    assert (await handle.result()).status == "CLOSED"
    cleared_again = (await signalled_at(handle, "risk"))[-1]
    close_placed = await scheduled_at(handle, "hedge_place", after=cleared_again)
    assert 60 <= (close_placed - cleared_again).total_seconds() <= 61


async def test_pause_cancels_and_places_nothing_until_resume(ts_env, hedge_worker, sim):
    from workflows.hedge import HedgeWorkflow

    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: v.open_order is not None)
    await handle.signal(HedgeWorkflow.pause)
    view = await until(ts_env, handle, lambda v: v.open_order is None)
    assert view.paused and [o.status.value for o in venue_orders(sim)] == ["cancelled"]
    await ts_env.sleep(180)
    assert (await state(handle)).orders_placed == 1 and len(venue_orders(sim)) == 1
    await handle.signal(HedgeWorkflow.resume)
    view = await until(ts_env, handle, lambda v: v.open_order is not None)
    assert not view.paused and view.orders_placed == 2


async def test_force_close_works_while_paused(ts_env, hedge_worker, sim, store):
    from models.hedge import OrderPolicy
    from risk.pricing import Urgency
    from workflows.hedge import HedgeWorkflow

    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.01"))
    await handle.signal(HedgeWorkflow.pause)
    await handle.signal(HedgeWorkflow.force_close, "operator test")
    result = await handle.result()
    assert result.status == "CLOSED" and result.current == 0 and result.paused
    closes = venue_orders(sim)[1:]
    assert all(o.side == "buy" and o.reduce_only for o in closes)
    assert (closes[0].tif, closes[0].price) == ("PostOnly", D("59997"))  # urgent: from the touch (best bid)
    assert store.get_hedge("loan-L-1").status == "CLOSED"


async def test_timeouts_after_accept_and_a_5xx_storm_never_duplicate(ts_env, hedge_worker, sim):
    from models.hedge import OrderPolicy
    from risk.pricing import Urgency

    sim.faults.add("bybit", "timeout_after_accept", 1, path="/v5/order/create", hold_s=3)
    sim.faults.add("bybit", "http500", 6)
    handle = await start_hedge(ts_env, hedge_worker, target="0.02", policy=OrderPolicy(urgency=Urgency.URGENT))
    sim.market.set_price("BTCUSDT", D("60000"))
    view = await until(ts_env, handle, lambda v: v.open_order is not None or v.current != 0, step_s=2)
    sim.market.set_price("BTCUSDT", D("60010"))  # trades through the resting sell at the touch
    view = await until(ts_env, handle, lambda v: v.current == D("-0.02") and v.open_order is None, step_s=2)
    ids = [o.client_id for o in venue_orders(sim)]
    assert len(ids) == len(set(ids)) and view.orders_placed == len(ids)
    assert not sim.faults.pending  # every injected fault was met


async def test_reconciliation_flags_a_position_the_ledger_cannot_explain(ts_env, hedge_worker, sim, store, caplog):
    from models.hedge import OrderPolicy
    from risk.pricing import Urgency

    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None)
    account = sim.engines["bybit"].account_by_name("desk")
    account.positions["BTCUSDT"].size = D("-0.03")  # changed at the venue with no fill to show for it
    with caplog.at_level("CRITICAL", logger="hedgeguard.alerts"):
        await ts_env.sleep(65)  # the minute's reconciliation
        await until(ts_env, handle, lambda v: store.sync_state("loan-L-1").mismatch is not None)
    assert "venue position -0.03 but the ledger rebuilds -0.01" in store.sync_state("loan-L-1").mismatch
    assert any("ledger and venue disagree" in r.getMessage() for r in caplog.records)


async def test_funding_and_a_forced_liquidation_reach_the_ledger(ts_env, hedge_worker, sim, store, caplog):
    from models.hedge import OrderPolicy
    from risk.pricing import Urgency

    handle = await start_hedge(ts_env, hedge_worker, target="0.1", policy=OrderPolicy(urgency=Urgency.CRITICAL))
    await until(ts_env, handle, lambda v: v.current == D("-0.1") and v.open_order is None)
    sim.settle_funding(symbol="BTCUSDT", rate=D("0.0001"))
    liq = sim.engines["bybit"].account_by_name("desk").positions["BTCUSDT"].liquidation_price(D("0.005"))
    with caplog.at_level("CRITICAL", logger="hedgeguard.alerts"):
        sim.market.set_price("BTCUSDT", liq + 50)
        await ts_env.sleep(65)
        await until(ts_env, handle, lambda v: any(e.type == "LIQUIDATION" for e in store.events("loan-L-1")))
    types = [e.type for e in store.events("loan-L-1")]
    assert "FUNDING" in types and "LIQUIDATION" in types and store.verify("loan-L-1") == []
    assert any("was liquidated by the venue" in r.getMessage() for r in caplog.records)


async def test_an_idle_hedge_reconciles_rarely_and_a_working_one_every_interval(ts_env, hedge_worker, sim):
    """A loan's hedge exists from enrolment, flat, for months: it must not read the venue every minute."""
    from models.hedge import OrderPolicy, TargetChange
    from workflows.hedge import HedgeWorkflow

    def position_reads() -> int:
        return len([c for c in sim.calls.query("bybit", "/v5/position/list") if c.get("account") == "desk"])

    policy = OrderPolicy(reconcile_every_s=60, idle_reconcile_every_s=1800)
    handle = await start_hedge(ts_env, hedge_worker, target="0", policy=policy)
    view = await until(ts_env, handle, lambda v: v.next_timer == "reconcile")
    # the idle interval from the start-up reconciliation, read just after it (0.08-0.14 s later with both cores busy)
    assert 1799 <= (view.next_timer_at - await ts_env.get_current_time()).total_seconds() <= 1800
    at_start = position_reads()
    assert at_start >= 1  # the start-up reconciliation
    await ts_env.sleep(20 * 60)
    assert position_reads() == at_start  # 20 idle minutes: no reconciliation
    await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), urgency="normal", seq=1))
    await until(ts_env, handle, lambda v: v.open_order is not None)
    working = position_reads()
    await ts_env.sleep(3 * 60)
    assert position_reads() >= working + 2  # working again: every minute
    await ts_env.sleep(30 * 60)
    assert position_reads() >= working + 5
