"""Alerts raised by workflows. Until the alert channels exist (Slack, Telegram, email), they go to the
log at their severity, with the key that groups repeats; the activity never fails a workflow."""

from __future__ import annotations

import logging

from temporalio import activity

from models.hedge import Alert

log = logging.getLogger("hedgeguard.alerts")
LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "CRITICAL": logging.CRITICAL}


@activity.defn(name="raise_alert")
async def raise_alert(alert: Alert) -> None:
    log.log(LEVELS[alert.severity], "[%s] %s: %s (key %s)", alert.severity, alert.title, alert.text, alert.key)
