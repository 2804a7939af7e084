"""What every long-running hedgeguard workflow does alike: raise an alert once per condition without
waiting for its delivery, continue as new when the history grows long, and take its patches as one set."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, RetryState, TimeoutError

with workflow.unsafe.imports_passed_through():
    from models.hedge import Alert

# how a book names itself when it pauses or closes its own hedge: not an operator command, so not told
BOOK_SENDER = "loan guard"
LOCAL_RETRY_TIMER_FROM = timedelta(milliseconds=100)  # a local read's retry waits this long or more: on a timer
LOCAL_READ_ATTEMPTS = 10  # then the read fails to the workflow: ~65 s of back-off at 1 s doubling to 10 s
ALERT_CALL = dict(start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=timedelta(hours=1))

# sdk-core records every patch a run takes as a marker plus a TemporalChangeVersion search-attribute upsert, and the
# worker holds ~8 KiB for each while the run is cached (`python -m bench.run_memory --patches 0 8`); a loan guard at
# rest took five. A run that records a set's id takes the new path of every patch the set folds with that one marker.
# A new run records the newest set; a patch added later is taken on its own until a next set (a new id) folds it; a
# run from before a set replays its own markers. Never change a set that runs have recorded: they would replay with
# paths they did not take (tests/test_replay.py holds each set to what it folded).
PATCH_SET_2026_11 = frozenset({
    "local-reads", "operator-summaries",
    "sync-before-closed", "idle-reconcile", "escalate-late-post-only-cancel", "sync-only-new-fills", "local-quote",
    "replan-after-closed-order",
    "reflex", "hedge-before-subscribe", "idle-hedge-check", "no-resubscribe-for-band", "hedge-on-demand",
    "facts-at-check-interval", "pause-before-retarget", "rest-continue-as-new",
})
PATCH_SETS: dict[str, frozenset[str]] = {  # newest first
    "patch-set-2026-11b": PATCH_SET_2026_11 | {"treasury-write-off"},
    "patch-set-2026-11": PATCH_SET_2026_11,
}
PATCH_SET = next(iter(PATCH_SETS))  # what a run started now records


def take_patch_set(instance: Any) -> None:
    """Call first in the workflow's `@workflow.init`: the set is decided in the run's first workflow task and nowhere
    else, so a run from before it (replaying that task) never takes it halfway and switches paths. A replay finds the
    marker of the set its run recorded, if any; a new run records the newest."""
    instance._patch_folds = next((folds for set_id, folds in PATCH_SETS.items() if workflow.patched(set_id)), frozenset())


def patched(patch_id: str) -> bool:
    """`workflow.patched`, true without a marker of its own in a run that took a set folding it."""
    if patch_id in getattr(workflow.instance(), "_patch_folds", ()):
        return True
    return workflow.patched(patch_id)


async def read(activity: str, arg: Any, *, result_type: Any = None, **call: Any) -> Any:
    """A venue or store read (or an idempotent write, like a leverage setting) the workflow waits for, run inside
    its workflow task as a local activity: no activity task through the server and no second workflow task. The
    periodic loan and hedge reads were most of the dev server's work at thousands of loans (bench/README.md,
    "Scale"). Orders, cancels and money moves stay activities, each visible in the history. A run started before
    this replays them as activities (the patch). A failed attempt is retried after a durable timer, not a sleep
    inside the task: the workflow takes its signals (a pause) in between, and a test server skips the wait."""
    if patched("local-reads"):
        # a local activity's schedule-to-close runs on the worker's clock, not the workflow's: the attempts bound it
        policy = call.pop("retry_policy", None) or RetryPolicy()
        policy = dataclasses.replace(policy, maximum_attempts=policy.maximum_attempts or LOCAL_READ_ATTEMPTS)
        try:
            return await workflow.execute_local_activity(activity, arg, result_type=result_type, retry_policy=policy,
                                                         local_retry_threshold=LOCAL_RETRY_TIMER_FROM, **call)
        except (ApplicationError, TimeoutError) as exc:
            # a local activity that gave up raises its cause bare; the callers handle an activity's failure (its cause
            # inside an ActivityError), as they do for the activities this replaced
            raise ActivityError(f"{activity} failed", scheduled_event_id=0, started_event_id=0, identity="",
                                activity_type=activity, activity_id="", retry_state=RetryState.MAXIMUM_ATTEMPTS_REACHED) from exc
    return await workflow.execute_activity(activity, arg, result_type=result_type, **call)


def alert_once(raised: dict[str, str], kind: str, alert: Alert) -> None:
    """Raise `alert` unless the same text was last raised for `kind` (a new text is a new condition)."""
    if raised.get(kind) == alert.text:
        return
    raised[kind] = alert.text
    workflow.start_activity("raise_alert", alert, **ALERT_CALL)


def continue_as_new_due(limit: int) -> bool:
    """The server suggests it (4,096 events by default), or the history reached `limit` events."""
    info = workflow.info()
    return info.is_continue_as_new_suggested() or info.get_current_history_length() >= limit


def operator_summary(seq: int, key_prefix: str, title: str, text: str, *, book: str | None,
                     exposure_id: str | None) -> None:
    """An operator command told to people (once per command; the patch keeps older histories replaying)."""
    if not patched("operator-summaries"):
        return
    workflow.start_activity("raise_alert", Alert(severity="INFO", category="action", key=f"{key_prefix}:operator:{seq}",
                                                 title=title, text=text, book=book, exposure_id=exposure_id), **ALERT_CALL)
