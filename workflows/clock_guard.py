"""A workflow run never acts on a clock that is behind its events.

sdk-core (temporalio 1.35) can hand a cached run new events (a timer fired, an activity done) taken from a query
task's history before their workflow task has started: it happens when the run's tasks have gone to the normal
queue (its sticky queue was lost: a dev server restart, a worker slow to poll) and a query arrives then. That
activation carries the previous task's time, so `workflow.now()` is behind the events it delivers. A loan guard
whose hedge check was due saw it as not yet due and started a timer where every replay reads the hedge
(tests/histories/known-bad, from a chaos run): the live run went on with a command no replay makes, and the next
worker to load the run failed on it at every attempt, leaving the loan unguarded.

The sign, seen from the worker: a live activation with work in it whose history is longer than the previous
activation's while its time has not moved. A new workflow task always starts at a new time; activations within
one task share both. Such an activation is refused: the task fails, the run leaves the worker's cache, and the
next task replays it from the history with every event's own time (tests/test_clock_guard.py).

The same guard refuses a live activation that hands the run a local activity's result in a later task than the
one that asked for it. sdk-core splits a task that way when it answers a query while a local activity runs or its
result waits: it completes the task and forces a new one, which delivers the result at the new task's time. Where
the result's marker went decides what a replay does: recorded by the first task (the result was waiting), a replay
delivers it inside that task, at its time; recorded by the second, in the second. Code after the read that looks
at the clock (is the hedge check due?) or at a signal delivered with the result then decided live what no replay
will: a loan guard was stuck on it in a chaos run (tests/histories/known-bad, LocalActivity(37)). The worker cannot
see which case it is in, so it refuses the activation: the run is reloaded, its replay hands a recorded result to
the task that recorded it, and a result never recorded is read again, which can be split again and refused again
(tests/test_local_read_split.py). A local activity that outlived its task (sdk-core's task heartbeat, after 8 s)
looks the same; so that one that always does cannot loop, a result is refused at most three times.
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


def local_results(act: WorkflowActivation) -> list[int]:
    """The sequence numbers of the local activities whose results this activation delivers."""
    return [job.resolve_activity.seq for job in act.jobs
            if job.WhichOneof("variant") == "resolve_activity" and job.resolve_activity.is_local]


class ClockGuardedRunner(WorkflowRunner):
    """Wraps a runner (sandboxed or not) so that each instance it creates checks its activations' clock."""

    def __init__(self, inner: WorkflowRunner) -> None:
        self.inner = inner
        self.refused_local: dict[tuple[str, int], int] = {}  # (run id, local activity seq): times refused

    def prepare_workflow(self, defn: Any) -> None:
        self.inner.prepare_workflow(defn)

    def create_instance(self, det: WorkflowInstanceDetails) -> WorkflowInstance:
        return ClockGuardedInstance(self.inner.create_instance(det), self.refused_local)

    def set_worker_level_failure_exception_types(self, types: Sequence[type[BaseException]]) -> None:
        self.inner.set_worker_level_failure_exception_types(types)


REFUSALS_KEPT = 10_000  # (run, local activity) refusal counts remembered, the oldest dropped first
REFUSALS_PER_RESULT = 3  # a read run again after a refusal can be split again: refused again, up to this


class ClockGuardedInstance(WorkflowInstance):
    def __init__(self, inner: WorkflowInstance, refused_local: dict[tuple[str, int], int] | None = None) -> None:
        self.inner = inner
        self.refused_local = {} if refused_local is None else refused_local
        self.last: tuple[int, int] | None = None  # (time ns, history length) of the last activation with work
        self.refused = 0

    def activate(self, act: WorkflowActivation) -> WorkflowActivationCompletion:
        if has_work(act):
            now, length = act.timestamp.ToNanoseconds(), act.history_length
            why = None if act.is_replaying or self.last is None or length <= self.last[1] else self._refusal(act, now)
            if why is not None:
                self.refused += 1
                log.warning("workflow %s (run %s): refused an activation: %s; the run is reloaded from its history",
                            self.inner.get_info().workflow_id, act.run_id, why)
                completion = WorkflowActivationCompletion(run_id=act.run_id)
                completion.failed.failure.message = f"activation refused: {why} (hedgeguard workflows/clock_guard.py)"
                return completion
            self.last = (now, length)
        return self.inner.activate(act)

    def _refusal(self, act: WorkflowActivation, now: int) -> str | None:
        """Why a live activation in a later task than the last one is refused (None: it is not)."""
        assert self.last is not None
        if now == self.last[0]:
            return (f"its clock has not moved since history event {self.last[1]} although the history grew to "
                    f"{act.history_length} events")
        seqs = local_results(act)
        if not seqs or all(self.refused_local.get((act.run_id, seq), 0) >= REFUSALS_PER_RESULT for seq in seqs):
            return None  # no local result; or refused enough: one that outlives its task every time goes through
        for seq in seqs:
            key = (act.run_id, seq)
            self.refused_local[key] = self.refused_local.pop(key, 0) + 1
        while len(self.refused_local) > REFUSALS_KEPT:
            del self.refused_local[next(iter(self.refused_local))]
        return (f"a local activity's result came in a later task than its request (history {self.last[1]} -> "
                f"{act.history_length}): sdk-core split the task, and only a replay knows which task it belongs to")

    def get_serialization_context(self, command_info: Any) -> Any:
        return self.inner.get_serialization_context(command_info)

    def get_external_store_context(self, command_info: Any) -> Any:
        return self.inner.get_external_store_context(command_info)

    def get_info(self) -> Any:
        return self.inner.get_info()

    def get_thread_id(self) -> int | None:
        return self.inner.get_thread_id()
