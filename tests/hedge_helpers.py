"""Starting, watching and checking hedges in tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal as D

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from models.hedge import HedgeInput, HedgeView, OrderPolicy
from models.ledger import HedgeSide
from workflows.hedge import HedgeWorkflow


async def start_hedge(env: WorkflowEnvironment, task_queue: str, *, hedge_id: str = "loan-L-1", target: str = "0.01",
                      side: str = "short", venue: str = "bybit", account: str = "desk", policy: OrderPolicy | None = None,
                      workflow_id: str | None = None, **extra) -> WorkflowHandle:
    inp = HedgeInput(hedge_id=hedge_id, book="loan", exposure_id=hedge_id.removeprefix("loan-"), venue=venue,
                     account=account, symbol="BTCUSDT", side=HedgeSide(side), target=D(target),
                     policy=policy or OrderPolicy(), **extra)
    # the session's server outlives each test: the workflow id carries the test's task queue
    handle = await env.client.start_workflow(HedgeWorkflow.run, inp, static_summary=inp.summary(),
                                             id=workflow_id or f"hedge-{hedge_id}-{task_queue}", task_queue=task_queue)
    STARTED.append(handle)
    return handle


STARTED: list[WorkflowHandle] = []


async def terminate_started() -> None:
    """End what a test started, so later tests on the same server do not wait on its timers."""
    from temporalio.service import RPCError

    while STARTED:
        handle = STARTED.pop()
        try:
            await handle.terminate("test finished")
        except RPCError:
            pass  # already closed


async def state(handle: WorkflowHandle) -> HedgeView:
    return await handle.query(HedgeWorkflow.state)


async def until(env: WorkflowEnvironment, handle: WorkflowHandle, predicate: Callable[[HedgeView], bool], *,
                step_s: float = 1.0, within_s: float = 300.0) -> HedgeView:
    """Advance time in steps until the hedge's state satisfies `predicate` (fails after `within_s`)."""
    waited = 0.0
    while True:
        view = await state(handle)
        if predicate(view):
            return view
        if waited >= within_s:
            raise AssertionError(f"not reached within {within_s}s of workflow time: {view.model_dump_json(indent=1)}")
        await env.sleep(step_s)
        waited += step_s


async def scheduled_at(handle: WorkflowHandle, activity_type: str, *, after: datetime) -> datetime:
    """Workflow time at which the hedge first scheduled `activity_type` after `after`, read from its history."""
    async for event in handle.fetch_history_events():
        at = event.event_time.ToDatetime(tzinfo=UTC)
        if (event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED and at >= after
                and event.activity_task_scheduled_event_attributes.activity_type.name == activity_type):
            return at
    raise AssertionError(f"no {activity_type} scheduled after {after.isoformat()}")


async def signalled_at(handle: WorkflowHandle, signal: str) -> list[datetime]:
    """Workflow times at which the hedge received `signal`, in order."""
    return [event.event_time.ToDatetime(tzinfo=UTC) async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
            and event.workflow_execution_signaled_event_attributes.signal_name == signal]


def venue_orders(sim, venue: str = "bybit") -> list:
    return [o for a in sim.engines[venue].accounts.values() for o in a.orders]
