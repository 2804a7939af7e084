"""What every long-running hedgeguard workflow does alike: raise an alert once per condition without
waiting for its delivery, continue as new when the history grows long, tell people of operator commands."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.hedge import Alert

# how a book names itself when it pauses or closes its own hedge: not an operator command, so not told
BOOK_SENDER = "book:"  # e.g. "book:loan L-1"
ALERT_CALL = dict(start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=timedelta(hours=1))


def alert_once(raised: dict[str, str], kind: str, alert: Alert) -> None:
    """Raise `alert` unless the same text was last raised for `kind` (a new text is a new condition)."""
    if raised.get(kind) == alert.text:
        return
    raised[kind] = alert.text
    workflow.start_activity("raise_alert", alert, **ALERT_CALL)


def continue_as_new(arg: Any) -> NoReturn:
    """A new run of a long-lived workflow starts on the deployment's current worker version (README, "Versioning"):
    each run stays pinned to the version it started on, so a code change reaches guards and hedges here."""
    workflow.continue_as_new(arg, initial_versioning_behavior=workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE)


def continue_as_new_due(limit: int) -> bool:
    """The server suggests it (4,096 events by default), or the history reached `limit` events."""
    info = workflow.info()
    return info.is_continue_as_new_suggested() or info.get_current_history_length() >= limit


def operator_summary(seq: int, key_prefix: str, title: str, text: str, *, book: str | None,
                     exposure_id: str | None) -> None:
    """An operator command told to people, once per command."""
    workflow.start_activity("raise_alert", Alert(severity="INFO", category="action", key=f"{key_prefix}:operator:{seq}",
                                                 title=title, text=text, book=book, exposure_id=exposure_id), **ALERT_CALL)
