"""A workflow run never acts on a clock that is behind its events.

sdk-core (temporalio 1.35) can hand a cached run new events (a timer fired, an activity done) taken from a query
task's history before their workflow task has started: it happens when the run's tasks have gone to the normal
queue (its sticky queue was lost: a dev server restart, a worker slow to poll) and a query arrives then. That
activation carries the previous task's time, so `workflow.now()` is behind the events it delivers. A loan guard
whose hedge check was due saw it as not yet due and started a timer where every replay reads the hedge (a chaos
run): the live run went on with a command no replay makes, and the next worker to load the run failed on it at
every attempt, leaving the loan unguarded.

The sign, seen from the worker: a live activation with work in it whose history is longer than the previous
activation's while its time has not moved. A new workflow task always starts at a new time; activations within
one task share both. Such an activation is refused: the task fails, the run leaves the worker's cache, and the
next task replays it from the history with every event's own time (tests/test_clock_guard.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from temporalio.bridge.proto.workflow_activation import WorkflowActivation
from temporalio.bridge.proto.workflow_completion import WorkflowActivationCompletion
from temporalio.worker import WorkflowInstance, WorkflowInstanceDetails, WorkflowRunner

log = logging.getLogger("hedgeguard.worker")

NOT_WORK = {"query_workflow", "remove_from_cache"}


def has_work(act: WorkflowActivation) -> bool:
    """Whether the activation moves the run on (an event or a start), not only asks it something or drops it."""
    return any(job.WhichOneof("variant") not in NOT_WORK for job in act.jobs)


class ClockGuardedRunner(WorkflowRunner):
    """Wraps a runner (sandboxed or not) so that each instance it creates checks its activations' clock."""

    def __init__(self, inner: WorkflowRunner) -> None:
        self.inner = inner

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return ClockGuardedInstance(self.inner.create_instance(det))

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        self.inner.set_worker_level_failure_exception_types(types)


class ClockGuardedInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance) -> None:
        self.inner = inner
        self.last: tuple[int, int] | None = None  # (time ns, history length) of the last activation with work
        self.refused = 0

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        if has_work(act):
            now, length = act.timestamp.ToNanoseconds(), act.history_length
            if (not act.is_replaying and self.last is not None and now == self.last[0] and length > self.last[1]):
                self.refused += 1
                why = (f"its clock has not moved since history event {self.last[1]} although the history grew to "
                       f"{length} events")
                log.warning("workflow %s (run %s): refused an activation: %s; the run is reloaded from its history",
                            self.inner.get_info().workflow_id, act.run_id, why)
                completion = WorkflowActivationCompletion(run_id=act.run_id)
                completion.failed.failure.message = f"activation refused: {why} (hedgeguard workflows/clock_guard.py)"
                return completion
            self.last = (now, length)
        return self.inner.activate(act)

    def get_serialization_context(self, command_info: Any) -> Any:
        return self.inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self.inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()
