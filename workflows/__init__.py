"""Temporal workflows: deterministic orchestration only. They import models/ and risk/, nothing else."""

from workflows.health import HealthCheckWorkflow
from workflows.hedge import HedgeWorkflow

ALL_WORKFLOWS = [HealthCheckWorkflow, HedgeWorkflow]
