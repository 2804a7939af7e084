"""A cached run whose tasks lost their sticky queue, queried while its timers fire, never decides on a clock
behind its events (workflows/clock_guard.py), and its history replays.

Without the guard, sdk-core hands the run a timer's firing from a query task's history with the previous task's
time: the workflow below then sees its due check as not yet due (an "early" decision) and its history no longer
replays. A loan guard did exactly that in a chaos run. The scenario is the chaos run's,
made frequent: stickiness reset every 0.2 s (what a dev server restart or a slow worker causes) and a status
query every few milliseconds (the Web UI, starter status, the feed's own subscription reads).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import ResetStickyTaskQueueRequest
from temporalio.client import WorkflowQueryFailedError
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from workflows.clock_guard import ClockGuardedInstance, ClockGuardedRunner

CHECK_EVERY = timedelta(milliseconds=300)


@activity.defn
async def read_hedge() -> int:
    return 1


@workflow.defn
class DueCheckWorkflow:
    """A guard's hedge check in miniature: read when due, then sleep until the next check is due."""

    def __init__(self) -> None:
        self.decisions: list[str] = []
        self.stop = False

    @workflow.run
    async def run(self) -> list[str]:
        due = None
        while not self.stop:
            now = workflow.now()
            if due is None or now >= due:
                await workflow.execute_activity(read_hedge, start_to_close_timeout=timedelta(seconds=10))
                due = workflow.now() + CHECK_EVERY
                self.decisions.append("read")
            else:  # a timer set to end at `due` has fired, so the clock cannot be before it
                self.decisions.append(f"early: {now.isoformat()} < {due.isoformat()}")
            try:
                await workflow.wait_condition(lambda: self.stop, timeout=max(due - workflow.now(), timedelta(milliseconds=1)))
            except TimeoutError:
                pass
        return self.decisions

    @workflow.signal
    def finish(self) -> None:
        self.stop = True

    @workflow.query
    def checks(self) -> int:
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
async def test_a_queried_run_off_its_sticky_queue_never_decides_on_a_stale_clock(dev_env, task_queue):
    client = dev_env.client
    runner = CountingRunner()
    workflow_id = f"due-check-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[DueCheckWorkflow], activities=[read_hedge],
                      workflow_runner=runner):
        handle = await client.start_workflow(DueCheckWorkflow.run, id=workflow_id, task_queue=task_queue)
        stop_queries, answered, refused_queries = asyncio.Event(), [0], [0]

        async def query_often() -> None:
            while not stop_queries.is_set():
                try:
                    await handle.query(DueCheckWorkflow.checks)
                    answered[0] += 1
                except WorkflowQueryFailedError:  # the query whose task carried the refused activation
                    refused_queries[0] += 1
                await asyncio.sleep(0.003)

        queries = asyncio.create_task(query_often())
        reset = ResetStickyTaskQueueRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id))
        deadline = time.monotonic() + 120
        try:
            while sum(i.refused for i in runner.instances) < 2 or time.monotonic() < deadline - 110:
                assert time.monotonic() < deadline, "no stale activation came in 120 s: if sdk-core no longer " \
                                                    "delivers them, workflows/clock_guard.py can go"
                await asyncio.sleep(0.2)
                await client.workflow_service.reset_sticky_task_queue(reset)
        finally:
            stop_queries.set()
            await queries
        await handle.signal(DueCheckWorkflow.finish)
        decisions = await handle.result()

    assert [d for d in decisions if d != "read"] == []
    refused = sum(i.refused for i in runner.instances)
    assert len(runner.instances) > refused  # each refusal took the run out of the cache: it was loaded again
    assert answered[0] > 100 and refused_queries[0] <= refused  # status reads go on; only a refused one fails
    assert len(decisions) >= 5  # it kept checking (about one a second here: every task comes off the normal queue)
    history = await handle.fetch_history()
    replayed = await Replayer(workflows=[DueCheckWorkflow], workflow_runner=UnsandboxedWorkflowRunner()).replay_workflow(
        history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None
