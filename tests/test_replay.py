"""Every workflow replays its committed histories: a code change that would break running workflows
(non-determinism) fails here instead of wedging production runs. Each workflow must have one.

Each history replays twice: unsandboxed, as the worker runs workflows, and inside Temporal's sandbox, which
refuses what workflow code must not do (read the clock, do I/O, draw random numbers) on every path the
recorded runs took."""

from __future__ import annotations

import base64
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


ORDER_ACTIVITIES = {"hedge_place", "hedge_cancel"}  # what talks to a venue's perp order endpoints
LOCAL_READS_ALLOWED: set[str] = set()  # store reads allowed as local activities: none so far


def recorded_events(path: Path) -> list[dict]:
    return json.loads(path.read_text())["events"]


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.stem)
def test_a_recorded_history_has_no_patch_no_local_write_and_orders_only_from_a_hedge(path):
    """Nothing is released, so no run carries a patch marker; venue calls and writes are regular activities, each
    visible in the history; and HedgeWorkflow is the only workflow that places or cancels orders."""
    events = recorded_events(path)
    started = events[0]["workflowExecutionStartedEventAttributes"]
    workflow_type = started["workflowType"]["name"]
    markers = [e["markerRecordedEventAttributes"]["markerName"] for e in events if "markerRecordedEventAttributes" in e]
    assert "core_patch" not in markers, f"{path.name}: a patch marker"
    local = [json.loads(base64.b64decode(e["markerRecordedEventAttributes"]["details"]["data"]["payloads"][0]["data"]))
             for e in events if e.get("markerRecordedEventAttributes", {}).get("markerName") == "core_local_activity"]
    assert {m.get("activity_type") for m in local} <= LOCAL_READS_ALLOWED, f"{path.name}: local activities {local}"
    activities = {e["activityTaskScheduledEventAttributes"]["activityType"]["name"] for e in events
                  if "activityTaskScheduledEventAttributes" in e}
    if workflow_type != "HedgeWorkflow":
        assert not activities & ORDER_ACTIVITIES, f"{path.name}: {workflow_type} called {activities & ORDER_ACTIVITIES}"


def test_the_recorded_histories_cover_the_lifecycles_that_matter():
    """Each workflow type replays at least once (above); these paths are the ones a change is most likely to break."""
    names = {p.stem for p in HISTORIES.glob("*.json")}
    assert {"LoanGuardWorkflow-fall-and-recovery", "LoanGuardWorkflow-write-off", "LoanGuardWorkflow-telegram-pause-resume",
            "HedgeWorkflow-lifecycle", "HedgeWorkflow-loan-fall-and-recovery", "AlertWorkflow-rise-and-summary",
            "AlertDigestWorkflow-one-day"} <= names
    hedge = recorded_events(HISTORIES / "HedgeWorkflow-lifecycle.json")
    activities = [e["activityTaskScheduledEventAttributes"]["activityType"]["name"] for e in hedge
                  if "activityTaskScheduledEventAttributes" in e]
    assert "hedge_place" in activities and "hedge_cancel" in activities  # placed, paused (cancelled), closed
    assert hedge[-1].get("workflowExecutionCompletedEventAttributes") is not None
