"""Temporal workflows: deterministic orchestration only. They import models/ and risk/, nothing else."""

from workflows.alerts import AlertDigestWorkflow, AlertWorkflow, TelegramCommandsWorkflow
from workflows.feed import PriceFeedWorkflow
from workflows.health import HealthCheckWorkflow
from workflows.hedge import HedgeWorkflow
from workflows.loan_guard import LoanGuardWorkflow

ALL_WORKFLOWS = [HealthCheckWorkflow, HedgeWorkflow, LoanGuardWorkflow, PriceFeedWorkflow]
# on the alerts task queue (models.alerts.alerts_queue): delivery never takes a hedging slot
ALERT_WORKFLOWS = [AlertWorkflow, AlertDigestWorkflow, TelegramCommandsWorkflow]
