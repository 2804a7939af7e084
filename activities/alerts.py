"""Raising an alert: log it, then hand it to its key's AlertWorkflow (signal-with-start) on the alerts task
queue, where routing, de-duplication and delivery happen. Books start this activity and never wait for it;
it costs one signal, so a channel that is down delays no hedge."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.client import Client

from models.alerts import (
    DIGEST_WORKFLOW_ID,
    AlertStart,
    DigestEntry,
    DigestStart,
    RaisedAlert,
    Target,
    alert_workflow_id,
    alerts_queue,
    recipient_targets,
)
from models.hedge import Alert
from models.settings import Settings

log = logging.getLogger("hedgeguard.alerts")
RPC_TIMEOUT = timedelta(seconds=5)
LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "CRITICAL": logging.CRITICAL}


class AlertActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routing = settings.alert_routing()
        self.ready = settings.chat_services()

    @activity.defn(name="raise_alert")
    async def raise_alert(self, alert: Alert) -> None:
        info = activity.info()
        # stable across retries of this activity, distinct across runs of the raising workflow
        await self.notify(activity.client(), alert, raise_id=f"{info.workflow_id}/{info.workflow_run_id}/{info.activity_id}",
                          task_queue=info.task_queue)

    async def notify(self, client: Client, alert: Alert, *, raise_id: str, task_queue: str) -> None:
        """Log `alert` and pass it on to be delivered; `raise_id` is stable across retries of the caller."""
        label = "ACTION" if alert.category == "action" else alert.severity
        log.log(LEVELS[alert.severity], "[%s] %s: %s (key %s)", label, alert.title, alert.text, alert.key)
        now = datetime.now(UTC)
        if alert.severity == "INFO" and alert.category == "alert" and self.settings.alert_digest:
            targets = self.digest_targets()
            if targets:
                entry = DigestEntry(key=alert.key, title=alert.title, text=alert.text, at=now, targets=targets,
                                    hour_utc=self.settings.alert_digest_hour_utc)
                await client.start_workflow("AlertDigestWorkflow", DigestStart(), id=DIGEST_WORKFLOW_ID,
                                            task_queue=alerts_queue(task_queue), start_signal="add",
                                            start_signal_args=[entry], rpc_timeout=RPC_TIMEOUT)
        targets = self.routing.targets(alert, configured=self.ready)
        if not targets:
            return
        window = 0 if alert.category == "action" else self.settings.alert_window_s
        raised = RaisedAlert(raise_id=raise_id, alert=alert, targets=targets, window_s=window, raised_at=now)
        await client.start_workflow("AlertWorkflow", AlertStart(key=alert.key), id=alert_workflow_id(alert.key),
                                    task_queue=alerts_queue(task_queue), start_signal="raise",
                                    start_signal_args=[raised], rpc_timeout=RPC_TIMEOUT)

    def digest_targets(self) -> list[Target]:
        s = self.settings
        return recipient_targets({s.alert_digest} & self.ready, s.slack_channel, s.telegram_chat_ids, s.email_to)
