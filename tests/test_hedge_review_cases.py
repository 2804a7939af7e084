"""Failure modes found in review, pinned: each of these once doubled an order, wedged or killed a hedge,
or spun its history."""

from __future__ import annotations

import asyncio
import re
from decimal import Decimal as D

import pytest
from temporalio.client import WorkflowFailureError

from models.hedge import OrderPolicy
from risk.pricing import Urgency, next_order
from tests.hedge_helpers import start_hedge, state, until, venue_orders
from workflows.hedge import HedgeWorkflow


async def failure_of(env, handle) -> str:
    """Why a workflow failed. Its result is awaited with the clock held: the failure comes from its first task, and
    a clock let run would take the test's other hedge on through its timers meanwhile."""
    with env.auto_time_skipping_disabled(), pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    return failed.value.cause.message


async def test_a_place_that_fails_for_minutes_retries_its_own_client_id_not_a_new_one(ts_env, hedge_worker, sim):
    sim.faults.add("bybit", "timeout_after_accept", 1, path="/v5/order/create", hold_s=3)

    async def lookups_fail_once_the_order_is_in():
        while not sim.calls.query("bybit", "/v5/order/create"):
            await asyncio.sleep(0.02)
        for path in ("/v5/order/realtime", "/v5/order/history"):
            sim.faults.add("bybit", "http500", 150, path=path)

    breaker = asyncio.create_task(lookups_fail_once_the_order_is_in())
    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.URGENT))
    await breaker
    view = await until(ts_env, handle, lambda v: v.blocked is not None, step_s=10)
    assert "venue call failed" in view.blocked
    sim.faults.clear()
    view = await until(ts_env, handle, lambda v: v.open_order is not None, step_s=10)
    assert [o.client_id for o in venue_orders(sim)] == ["loan-L-1-1"] and view.open_order.client_order_id == "loan-L-1-1"


async def test_a_venue_down_at_start_up_delays_the_hedge_instead_of_failing_it(ts_env, hedge_worker, sim):
    sim.faults.add("bybit", "http500", 400, path="/v5/market/instruments-info")
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    view = await until(ts_env, handle, lambda v: v.blocked is not None, step_s=10)
    assert "venue call failed" in view.blocked
    sim.faults.clear()
    view = await until(ts_env, handle, lambda v: v.open_order is not None, step_s=10)
    assert view.blocked is None


async def test_a_blocked_then_paused_hedge_does_not_spin(ts_env, hedge_worker, sim):
    sim.market.set_price("BTCUSDT", D("60000"), index=D("66000"))  # 10 % from index: outside the sanity band
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    first_run = (await handle.describe()).run_id
    await until(ts_env, handle, lambda v: v.blocked is not None)
    await handle.signal(HedgeWorkflow.pause)
    for _ in range(10):  # past the blocked hedge's retry time and on, in steps
        await ts_env.sleep(10)
    latest = await ts_env.client.get_workflow_handle(handle.id).describe()
    assert latest.run_id == first_run, "a spinning loop ran the history up to continue-as-new"
    assert latest.history_length < 150, f"{latest.history_length} events for a paused, blocked hedge"


async def test_a_restarted_hedge_tags_its_client_ids_and_a_closed_one_refuses_to_restart(ts_env, hedge_worker, sim):
    critical = OrderPolicy(urgency=Urgency.CRITICAL)
    first = await start_hedge(ts_env, hedge_worker, target="0.01", policy=critical)
    await until(ts_env, first, lambda v: v.current == D("-0.01"))
    await first.terminate("worker redeploy gone wrong")
    second = await start_hedge(ts_env, hedge_worker, target="0.02", policy=critical, workflow_id="hedge-again")
    view = await until(ts_env, second, lambda v: v.current == D("-0.02"))
    assert re.fullmatch(r"loan-L-1-[0-9a-f]{4}1", view.last_fill.client_order_id)
    await second.signal(HedgeWorkflow.force_close, "done")
    assert (await second.result()).status == "CLOSED"
    third = await start_hedge(ts_env, hedge_worker, target="0.01", policy=critical, workflow_id="hedge-third")
    assert "is closed; a new hedge needs a new id" in await failure_of(ts_env, third)


async def test_a_second_hedge_on_the_same_account_and_symbol_is_refused(ts_env, hedge_worker, sim):
    await until(ts_env, await start_hedge(ts_env, hedge_worker, target="0.01"), lambda v: v.open_order is not None)
    other = await start_hedge(ts_env, hedge_worker, hedge_id="loan-L-2", target="0.01")
    assert "hedge loan-L-1 is already active on bybit:desk BTCUSDT" in await failure_of(ts_env, other)


async def test_cancelling_the_workflow_leaves_no_order_resting(ts_env, hedge_worker, sim):
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    await until(ts_env, handle, lambda v: v.open_order is not None)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert [o.status.value for o in venue_orders(sim)] == ["cancelled"]


def test_wrong_side_dust_does_not_block_the_hedge():
    step = next_order(target=D("1"), current=D("0.005"), hedge_side="short", qty_step=D("0.001"), min_qty=D("0.01"))
    assert (step.side, step.qty, step.reduce_only) == ("sell", D("1"), False)


async def test_state_answers_while_blocked(ts_env, hedge_worker, sim):
    sim.market.set_price("BTCUSDT", D("60000"), index=D("66000"))
    handle = await start_hedge(ts_env, hedge_worker, target="0.01")
    view = await until(ts_env, handle, lambda v: v.blocked is not None)
    assert "bps from the index 66000: not trading" in view.blocked and (await state(handle)).open_order is None
