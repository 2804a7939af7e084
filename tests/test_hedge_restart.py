"""A hedge restarted under its own workflow id (README, "How a hedge trades": "a hedge restarted under the same id
tags its client ids") picks up its ledger: it starts from the ledger's position instead of trading it again,
its client order ids carry a tag so they cannot meet the old run's, and its ledger still rebuilds to its figures."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from decimal import Decimal as D

import pytest
from temporalio.client import WorkflowExecutionStatus

from models.hedge import OrderPolicy, TargetChange
from risk.pricing import Urgency
from tests.hedge_helpers import start_hedge, state, venue_orders
from workflows.hedge import HedgeWorkflow


@pytest.fixture
async def dev_worker(dev_env, paper_settings, store, venues, task_queue):
    from tests.hedge_helpers import terminate_started
    from worker import build_worker

    async with build_worker(dev_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue
        await terminate_started()


async def wait_for(handle, predicate, within_s: float = 20.0):
    deadline = time.monotonic() + within_s
    while True:
        view = await state(handle)
        if predicate(view):
            return view
        assert time.monotonic() < deadline, view.model_dump_json(indent=1)
        await asyncio.sleep(0.1)


async def test_a_hedge_restarted_under_its_own_workflow_id_carries_on_from_its_ledger(dev_env, dev_worker, sim, store):
    hedge_id = f"restart-{uuid.uuid4().hex[:6]}"
    workflow_id = f"hedge-{hedge_id}"
    critical = OrderPolicy(urgency=Urgency.CRITICAL)  # IOC at once: every order fills on arrival
    first = await start_hedge(dev_env, dev_worker, hedge_id=hedge_id, target="0.01", policy=critical,
                              workflow_id=workflow_id)
    await wait_for(first, lambda v: v.current == D("-0.01") and v.open_order is None)
    assert [o.client_id for o in venue_orders(sim)] == [f"{hedge_id}-1"]
    await first.terminate("test: the workflow is lost; an operator starts it again")

    again = await start_hedge(dev_env, dev_worker, hedge_id=hedge_id, target="0.01", policy=critical,
                              workflow_id=workflow_id)
    assert (await dev_env.client.get_workflow_handle(workflow_id, run_id=first.result_run_id).describe()).status \
        == WorkflowExecutionStatus.TERMINATED
    # its position is the ledger's: at its target already, it places nothing
    view = await wait_for(again, lambda v: v.status == "OPEN" and v.next_timer == "reconcile")
    assert (view.current, view.orders_placed, view.open_order) == (D("-0.01"), 0, None)
    await asyncio.sleep(1)
    assert len(venue_orders(sim)) == 1 and (await state(again)).orders_placed == 0

    # asked for more, it trades only the difference, under a tagged id that cannot meet the first run's
    await again.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.02"), urgency=Urgency.CRITICAL, seq=1))
    view = await wait_for(again, lambda v: v.current == D("-0.02") and v.open_order is None)
    orders = venue_orders(sim)
    assert [o.client_id for o in orders][0] == f"{hedge_id}-1" and len(orders) == 2
    second = orders[1]
    assert re.fullmatch(rf"{hedge_id}-[0-9a-f]{{4}}1", second.client_id), second.client_id
    assert (second.side, second.qty, second.reduce_only) == ("sell", D("0.01"), False)
    assert view.orders_placed == 1 and view.last_fill.client_order_id == second.client_id
    position = sim.engines["bybit"].account_by_name("desk").positions["BTCUSDT"]
    assert position.size == D("-0.02")
    assert store.get_hedge(hedge_id).current_size == D("-0.02") and store.verify(hedge_id) == []
    assert store.sync_state(hedge_id).mismatch is None
