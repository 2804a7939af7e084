"""Temporal workflows: deterministic orchestration only. They import models/ and risk/, nothing else."""

from workflows.feed import PriceFeedWorkflow
from workflows.health import HealthCheckWorkflow
from workflows.hedge import HedgeWorkflow
from workflows.loan_guard import LoanGuardWorkflow

ALL_WORKFLOWS = [HealthCheckWorkflow, HedgeWorkflow, LoanGuardWorkflow, PriceFeedWorkflow]
