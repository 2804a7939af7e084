"""A run whose two local reads in one step were split across workflow tasks by a query still replays
(workflows/clock_guard.py).

sdk-core answers a query that arrives while a local activity's result waits to reach the workflow by completing
the task with what it has (the read's marker) and forcing a new task, which then delivers the result: the code
after the read runs at the new task's time. A replay delivers that result inside the first task, at its time. A
step that decides on the clock after its first read (is the hedge check due?) then decides differently live and in
replay, and the next worker to load the run cannot replay it: a loan guard was stuck this way in a chaos run
(tests/histories/known-bad/LoanGuardWorkflow-chaos-local-activity-37.json). The workflow below is such a step in
miniature, on a price tick every 20 ms, queried every few milliseconds (the chaos run polls its guard; the Web UI
and `starter.py status` query guards too). Without the guard's rule, two of four 30-s runs of it wrote a history
that no replay accepts ("Missing associated machine for LocalActivity(138)", or a recorded read_hedge where the
replay asks for read_price); with it, none of five, at about 110 refused activations a run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowQueryFailedError
from temporalio.service import RPCError
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from workflows.clock_guard import ClockGuardedInstance, ClockGuardedRunner


@activity.defn
async def read_price() -> int:
    await asyncio.sleep(0.002)
    return 1


@activity.defn
async def read_hedge() -> int:
    return 1


@workflow.defn
class TwoReadsWorkflow:
    """A stale-feed guard's step in miniature: on each tick, read the price, then read the hedge if its check is
    due. The check comes due 20-39 ms after the last (varied, so that some fall inside a split's gap)."""

    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.ticks = self.seen = 0
        self.stop = False

    @workflow.run
    async def run(self) -> list[str]:
        check_due = workflow.now()
        while not self.stop:
            await workflow.wait_condition(lambda: self.stop or self.ticks > self.seen)
            self.seen = self.ticks
            await workflow.execute_local_activity(read_price, start_to_close_timeout=timedelta(seconds=5))
            if workflow.now() >= check_due:
                await workflow.execute_local_activity(read_hedge, start_to_close_timeout=timedelta(seconds=5))
                check_due = workflow.now() + timedelta(milliseconds=20 + len(self.decisions) % 20)
                self.decisions.append("read")
            else:
                self.decisions.append("wait")
        return self.decisions

    @workflow.signal
    def tick(self) -> None:
        self.ticks += 1

    @workflow.signal
    def finish(self) -> None:
        self.stop = True

    @workflow.query
    def steps(self) -> int:
        return len(self.decisions)


class CountingRunner(ClockGuardedRunner):
    def __init__(self) -> None:
        super().__init__(UnsandboxedWorkflowRunner())
        self.instances: list[ClockGuardedInstance] = []

    def create_instance(self, det):
        instance = super().create_instance(det)
        assert isinstance(instance, ClockGuardedInstance)
        self.instances.append(instance)
        return instance


@pytest.mark.timeout(180)
async def test_a_queried_run_whose_local_read_was_split_across_tasks_still_replays(dev_env, task_queue):
    client, runner = dev_env.client, CountingRunner()
    async with Worker(client, task_queue=task_queue, workflows=[TwoReadsWorkflow], activities=[read_price, read_hedge],
                      workflow_runner=runner):
        handle = await client.start_workflow(TwoReadsWorkflow.run, id=f"two-reads-{uuid.uuid4()}", task_queue=task_queue)
        stop, answered, failed = asyncio.Event(), [0], [0]

        async def query_often() -> None:
            while not stop.is_set():
                try:
                    await handle.query(TwoReadsWorkflow.steps)
                    answered[0] += 1
                except (WorkflowQueryFailedError, RPCError):  # a refused task's query, or the server's buffer full
                    failed[0] += 1
                await asyncio.sleep(0.002)

        queries = [asyncio.create_task(query_often()) for _ in range(2)]
        started = time.monotonic()
        try:
            while sum(i.refused for i in runner.instances) < 3 or time.monotonic() - started < 10:
                assert time.monotonic() - started < 90, "no split task in 90 s: if sdk-core no longer splits a task " \
                                                        "to answer a query, the local-result rule of clock_guard can go"
                await handle.signal(TwoReadsWorkflow.tick)  # a price tick: one step
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await asyncio.gather(*queries)
        await handle.signal(TwoReadsWorkflow.finish)
        decisions = await handle.result()

    refused = sum(i.refused for i in runner.instances)
    assert len(runner.instances) > refused  # each refusal took the run out of the cache: it was loaded again
    assert answered[0] > 100 and len(decisions) > 20  # status reads and steps went on (a reload costs a step or so)
    history = await handle.fetch_history()
    replayed = await Replayer(workflows=[TwoReadsWorkflow], workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(
        history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
