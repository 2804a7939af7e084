"""HealthCheckWorkflow: proves a worker is polling, can run an activity, and sees a migrated store."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.health import HealthReport, ReadinessReport, ReadinessRequest


@workflow.defn
class HealthCheckWorkflow:
    @workflow.run
    async def run(self, request: ReadinessRequest) -> HealthReport:
        readiness: ReadinessReport = await workflow.execute_activity(
            "check_readiness", request, result_type=ReadinessReport,
            start_to_close_timeout=timedelta(seconds=10),
            schedule_to_close_timeout=timedelta(seconds=30))
        return HealthReport(workflow_id=workflow.info().workflow_id, readiness=readiness,
                            workflow_time=workflow.now())
