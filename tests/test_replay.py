"""Every workflow replays its committed histories: a code change that would break running workflows
(non-determinism) fails here instead of wedging production runs. Each workflow must have one.

Each history replays twice: unsandboxed, as the worker runs workflows, and inside Temporal's sandbox, which
refuses what workflow code must not do (read the clock, do I/O, draw random numbers) on every path the
recorded runs took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from worker import SANDBOX
from workflows import ALERT_WORKFLOWS, ALL_WORKFLOWS

HISTORIES = Path(__file__).parent / "histories"


def histories_of(name: str) -> list[Path]:
    return sorted(HISTORIES.glob(f"{name}*.json"))


async def replay_failure(path: Path, runner) -> Exception | None:
    history = WorkflowHistory.from_json(path.stem, json.loads(path.read_text()))
    replayer = Replayer(workflows=ALL_WORKFLOWS + ALERT_WORKFLOWS, data_converter=pydantic_data_converter,
                        workflow_runner=runner)
    return (await replayer.replay_workflow(history, raise_on_replay_failure=False)).replay_failure


@pytest.mark.parametrize("runner", [UnsandboxedWorkflowRunner(), SANDBOX], ids=["unsandboxed", "sandboxed"])
@pytest.mark.parametrize("workflow", ALL_WORKFLOWS + ALERT_WORKFLOWS, ids=lambda w: w.__name__)
async def test_recorded_histories_replay(workflow, runner):
    files = histories_of(workflow.__name__)
    assert files, f"no recorded history for {workflow.__name__} in {HISTORIES}: record one (tests/record_history.py)"
    for path in files:
        failure = await replay_failure(path, runner)
        assert failure is None, f"{path.name}: {failure}"


@pytest.mark.xfail(strict=True, reason=(
    "open bug: a loan guard history from a fresh-clone chaos run (HEDGEGUARD_CHAOS_SEED=348569187) does not "
    "replay: the live run started a 1 s timer at event 410 where the replay schedules loan_hedge_facts (its hedge "
    "check was due, 54.584 >= 54.540). The dev server was SIGKILLed and restarted around then; the cause is not found"))
async def test_the_chaos_run_guard_history_replays():
    path = HISTORIES / "known-bad" / "LoanGuardWorkflow-chaos-event-410.json"
    failure = await replay_failure(path, UnsandboxedWorkflowRunner())
    assert failure is None, f"{path.name}: {failure}"
