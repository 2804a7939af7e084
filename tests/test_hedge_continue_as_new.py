"""A hedge that continues as new in the middle of something keeps doing it (README, "How a hedge trades": "Long-running
hedges continue as new, carrying their state"): paused with an order resting, the new run is still paused and
the order is cancelled, not placed again; inside its 60 s expiry, the new run closes when the first one would
have, not 60 s after it started. HedgeInput.continue_as_new_after forces the continue-as-new early."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal as D

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from models.hedge import HedgeInput, OrderPolicy, RiskChange, TargetChange
from risk.pricing import Urgency
from tests.hedge_helpers import start_hedge, state, until, venue_orders
from workflows.hedge import HedgeWorkflow

CONTINUE_AS_NEW_AFTER = 100  # events: HedgeInput's smallest threshold


@pytest.fixture
async def dev_worker(dev_env, paper_settings, store, task_queue):
    """The production worker on the dev server; venue requests may take 15 s (the test holds one for seconds)."""
    from activities.venues import VenuePool
    from tests.hedge_helpers import terminate_started
    from worker import build_worker

    patient = paper_settings.model_copy(update={"venue_timeout_ms": 15_000})
    venues = VenuePool(patient)
    async with build_worker(dev_env.client, patient, store, venues, task_queue=task_queue):
        yield task_queue
        await terminate_started()
    await venues.close()


async def wait_for(handle: WorkflowHandle, predicate, within_s: float = 20.0):
    deadline = time.monotonic() + within_s
    while True:
        view = await state(handle)
        if predicate(view):
            return view
        assert time.monotonic() < deadline, view.model_dump_json(indent=1)
        await asyncio.sleep(0.1)


async def runs_of(client, workflow_id: str, first_run: str, within_s: float = 20.0) -> str:
    """The run after `first_run`, once the workflow has continued as new."""
    deadline = time.monotonic() + within_s
    while (latest := (await client.get_workflow_handle(workflow_id).describe()).run_id) == first_run:
        assert time.monotonic() < deadline, "the hedge did not continue as new"
        await asyncio.sleep(0.1)
    return latest


async def carried_input(client, workflow_id: str, run_id: str) -> HedgeInput:
    """What a run handed its successor (the input of its continued-as-new event)."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    last = history.events[-1]
    assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW, last
    [carried] = await pydantic_data_converter.decode(
        last.workflow_execution_continued_as_new_event_attributes.input.payloads, [HedgeInput])
    return carried


async def test_a_hedge_paused_with_an_order_resting_is_still_paused_after_continue_as_new(dev_env, dev_worker, sim):
    hedge_id = f"can-pause-{uuid.uuid4().hex[:6]}"
    # a passive order that rests: no replace and no fill check for minutes, so nothing but a signal wakes the hedge
    policy = OrderPolicy(replace_after_s=600, fill_check_s=60, reconcile_every_s=600)
    handle = await start_hedge(dev_env, dev_worker, hedge_id=hedge_id, target="0.01", policy=policy,
                               workflow_id=f"hedge-{hedge_id}", continue_as_new_after=CONTINUE_AS_NEW_AFTER)
    first_run = (await handle.describe()).run_id
    resting = (await wait_for(handle, lambda v: v.open_order is not None)).open_order
    assert resting.client_order_id == f"{hedge_id}-1"
    # hold the hedge in its fill check (the venue answers it 5 s late), and meanwhile pause it and send it enough target
    # signals (same target, new sequence numbers) to take its history past the threshold: the run continues as new
    # as soon as the check returns, before its loop has acted on the pause
    looked_up = len(sim.calls.query("bybit", "/v5/order/realtime"))  # the placement looked its id up first
    sim.faults.add("bybit", "latency", 1, path="/v5/order/realtime", ms=5000)
    await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), seq=1))
    deadline = time.monotonic() + 10
    while len(calls := sim.calls.query("bybit", "/v5/order/realtime")) == looked_up:
        assert time.monotonic() < deadline, "no fill check"
        await asyncio.sleep(0.02)
    held = calls[looked_up]
    await handle.signal(HedgeWorkflow.pause, "operator test")
    seq = 1
    while (await handle.describe()).history_length < CONTINUE_AS_NEW_AFTER:
        for _ in range(10):
            seq += 1
            await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), seq=seq))
    assert "status" not in held, "the fill check returned before the signals were in: the test proves nothing"
    await runs_of(dev_env.client, handle.id, first_run)
    carried = await carried_input(dev_env.client, handle.id, first_run)
    assert carried.carry is not None and carried.carry.paused
    assert carried.carry.open_order is not None and carried.carry.open_order.client_order_id == f"{hedge_id}-1"

    latest = dev_env.client.get_workflow_handle(handle.id)
    view = await wait_for(latest, lambda v: v.open_order is None)
    assert view.paused and view.orders_placed == 1
    assert [(o.client_id, o.status.value) for o in venue_orders(sim)] == [(f"{hedge_id}-1", "cancelled")]
    await asyncio.sleep(2)  # a new run that forgot the pause would have placed again by now
    view = await state(latest)
    assert view.paused and view.open_order is None and view.orders_placed == 1 and len(venue_orders(sim)) == 1

    await latest.signal(HedgeWorkflow.resume, "operator test")
    view = await wait_for(latest, lambda v: v.open_order is not None)
    assert not view.paused and view.open_order.client_order_id == f"{hedge_id}-2"  # the sequence carried on
    assert [o.client_id for o in venue_orders(sim)] == [f"{hedge_id}-1", f"{hedge_id}-2"]


def event_time(event) -> datetime:
    return event.event_time.ToDatetime()


async def test_a_hedge_continued_as_new_during_its_expiry_closes_60_s_after_risk_cleared(ts_env, hedge_worker, sim):
    handle = await start_hedge(ts_env, hedge_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL),
                               continue_as_new_after=CONTINUE_AS_NEW_AFTER)
    first_run = (await handle.describe()).run_id
    await until(ts_env, handle, lambda v: v.current == D("-0.01") and v.open_order is None)
    await handle.signal(HedgeWorkflow.risk, RiskChange(active=False, seq=1))
    await until(ts_env, handle, lambda v: not v.risk_active)
    await ts_env.sleep(20)  # a third of the expiry: a new run that started it again would close 20 s late
    for seq in range(1, 1 + CONTINUE_AS_NEW_AFTER):  # a chatty book: same target, new sequence numbers
        await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), urgency=Urgency.CRITICAL, seq=seq))
    second_run = await runs_of(ts_env.client, handle.id, first_run)
    carried = await carried_input(ts_env.client, handle.id, first_run)
    assert carried.carry is not None and not carried.carry.risk_active and carried.carry.risk_cleared_at is not None
    expires_at = carried.carry.risk_cleared_at + timedelta(seconds=60)
    view = await wait_for(ts_env.client.get_workflow_handle(handle.id), lambda v: v.next_timer is not None)
    assert (view.next_timer, view.next_timer_at, view.current) == ("expiry", expires_at, D("-0.01"))
    result = await handle.result()  # follows the runs; time skips to the close
    assert result.status == "CLOSED" and result.current == 0

    first = await ts_env.client.get_workflow_handle(handle.id, run_id=first_run).fetch_history()
    [cleared] = [e for e in first.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
                 and e.workflow_execution_signaled_event_attributes.signal_name == "risk"]
    continued = first.events[-1]
    assert continued.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    assert (event_time(continued) - event_time(cleared)).total_seconds() >= 20  # the expiry was under way
    places, run = [], second_run
    while not places:  # the first order after risk cleared, in whichever run placed it (a closing hedge may continue
        # as new again)
        history = await ts_env.client.get_workflow_handle(handle.id, run_id=run).fetch_history()
        places = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
                  and e.activity_task_scheduled_event_attributes.activity_type.name == "hedge_place"]
        last = history.events[-1]
        if not places:
            assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW, "no close was placed"
            run = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    closed_after = (event_time(places[0]) - event_time(cleared)).total_seconds()
    assert 60 <= closed_after <= 61, f"the close began {closed_after:.1f} s after risk cleared"
    orders = venue_orders(sim)
    assert [(o.side, o.reduce_only) for o in orders if o.side == "sell"] == [("sell", False)]  # opened once
    assert all(o.side == "buy" and o.reduce_only for o in orders[1:])
    assert len({o.client_id for o in orders}) == len(orders)
