"""Temporal workflows: deterministic orchestration only. They import models/ and risk/, nothing else."""

from workflows.health import HealthCheckWorkflow

ALL_WORKFLOWS = [HealthCheckWorkflow]
