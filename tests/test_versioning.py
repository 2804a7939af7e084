"""Worker Versioning on the dev server, as the README's versioning policy says it works: with a deployment name set,
a running hedge stays on the worker version it started on after a new version becomes current, and moves to the new
version when it continues as new, with its state and without placing its order again."""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal as D

from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.api.workflowservice.v1 import SetWorkerDeploymentCurrentVersionRequest
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from models.hedge import OrderPolicy, TargetChange
from risk.pricing import Urgency
from tests.hedge_helpers import start_hedge, state, terminate_started, venue_orders
from workflows.hedge import HedgeWorkflow


async def make_current(client: Client, deployment: str, build_id: str) -> None:
    """What an operator does with `temporal worker deployment set-current-version`; the server knows a version once
    its worker has polled, so this retries for a few seconds."""
    deadline = time.monotonic() + 20
    while True:
        try:
            await client.workflow_service.set_worker_deployment_current_version(SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace, deployment_name=deployment, build_id=build_id))
            return
        except RPCError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def run_version(handle: WorkflowHandle) -> tuple[str, int]:
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return info.deployment_version.build_id, info.behavior


async def test_a_hedge_stays_on_its_version_and_moves_to_the_current_one_at_continue_as_new(
        dev_env, paper_settings, store, venues, sim, task_queue):
    from worker import build_worker

    client = dev_env.client
    deployment = f"hedgeguard-{uuid.uuid4().hex[:8]}"
    v1 = paper_settings.model_copy(update={"deployment_name": deployment, "build_id": "v1"})
    v2 = paper_settings.model_copy(update={"deployment_name": deployment, "build_id": "v2"})
    async with build_worker(client, v1, store, venues, task_queue=task_queue):
        await make_current(client, deployment, "v1")
        handle = await start_hedge(dev_env, task_queue, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL),
                                   continue_as_new_after=150)
        first_run = (await handle.describe()).run_id
        deadline = time.monotonic() + 30
        while (view := await state(handle)).current != D("-0.01") or view.open_order is not None:
            assert time.monotonic() < deadline, view
            await asyncio.sleep(0.2)
        assert await run_version(handle) == ("v1", VersioningBehavior.VERSIONING_BEHAVIOR_PINNED)

        async with build_worker(client, v2, store, venues, task_queue=task_queue):
            await make_current(client, deployment, "v2")
            await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), urgency=Urgency.CRITICAL, seq=1))
            await asyncio.sleep(0.5)
            assert (await state(handle)).current == D("-0.01")  # the running run is still served, by v1
            assert await run_version(handle) == ("v1", VersioningBehavior.VERSIONING_BEHAVIOR_PINNED)

            for seq in range(2, 80):  # a chatty book: its history grows until the hedge continues as new
                await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), urgency=Urgency.CRITICAL,
                                                                         seq=seq))
            latest = client.get_workflow_handle(handle.id)
            deadline = time.monotonic() + 30
            while (await latest.describe()).run_id == first_run:
                assert time.monotonic() < deadline, "the hedge did not continue as new"
                await asyncio.sleep(0.3)
            deadline = time.monotonic() + 30
            while (version := await run_version(latest))[0] != "v2":
                assert time.monotonic() < deadline, f"the new run did not move to v2: {version}"
                await asyncio.sleep(0.3)
            assert version == ("v2", VersioningBehavior.VERSIONING_BEHAVIOR_PINNED)
            view = await state(latest)
            assert (view.current, view.orders_placed, view.status) == (D("-0.01"), 1, "OPEN")
            assert len(venue_orders(sim)) == 1  # nothing placed again by the new version
            await terminate_started()
