"""Workflows run through worker.py's own registration against the real dev server, and no secret from
the environment ever reaches a workflow's history."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

from temporalio.testing import WorkflowEnvironment

from activities.store import Store
from activities.venues import VenuePool
from models.health import HealthReport, ReadinessRequest
from models.settings import Settings, env_var_for
from tests.loan_helpers import record_if_asked
from worker import build_worker
from workflows.health import HealthCheckWorkflow


def history_text(node) -> str:
    """The history as text with every base64 payload (data and metadata) decoded alongside it."""
    parts = [json.dumps(node)]

    def walk(value) -> None:
        if isinstance(value, dict):
            for v in value.values():
                if isinstance(v, str):
                    try:
                        parts.append(base64.b64decode(v, validate=True).decode("utf-8", "replace"))
                    except (binascii.Error, ValueError):
                        pass
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(node)
    return "\n".join(parts)


KEY = "hgk-3f9c1d0e7a5b44c2"
SECRET = "hgs-9b2e6a17c4d84f03a55e"


async def test_health_check_runs_through_the_production_registration(dev_env: WorkflowEnvironment, settings: Settings,
                                                                   store: Store, task_queue: str):
    async with build_worker(dev_env.client, settings, store, VenuePool(settings), task_queue=task_queue):
        workflow_id = f"health-{uuid.uuid4()}"
        report = await dev_env.client.execute_workflow(
            HealthCheckWorkflow.run, ReadinessRequest(requested_by="test"), id=workflow_id,
            task_queue=task_queue, result_type=HealthReport)
        await record_if_asked(dev_env.client, workflow_id, "HealthCheckWorkflow")
    assert report.readiness.mode == "paper"
    assert report.readiness.store_current and report.readiness.store_revision == Store.head_revision()


async def test_no_secret_from_the_environment_appears_in_history(dev_env: WorkflowEnvironment, store: Store,
                                                                 task_queue: str, tmp_path, monkeypatch):
    monkeypatch.setenv(env_var_for("bybit", "loan-desk", "api_key"), KEY)
    monkeypatch.setenv(env_var_for("bybit", "loan-desk", "api_secret"), SECRET)
    secrets_file = tmp_path / "secrets.toml"
    secrets_file.write_text('[binanceusdm.vault]\napi_key = "bnk-file-key-0001"\napi_secret = "bns-file-secret-0002"\n')
    settings = Settings(database_url=str(store.engine.url), metrics_bind="", secrets_file=secrets_file,
                        accounts="bybit:loan-desk,binanceusdm:vault,hyperliquid:lp-desk")
    workflow_id = f"health-{uuid.uuid4()}"
    async with build_worker(dev_env.client, settings, store, VenuePool(settings), task_queue=task_queue):
        report = await dev_env.client.execute_workflow(
            HealthCheckWorkflow.run, ReadinessRequest(requested_by="secrets test"), id=workflow_id,
            task_queue=task_queue, result_type=HealthReport)
    # the activity really read the keys (from the environment and from the file) ...
    assert {(a.venue, a.account): a.keys_present for a in report.readiness.accounts} == {
        ("binanceusdm", "vault"): True, ("bybit", "loan-desk"): True, ("hyperliquid", "lp-desk"): False}
    # ... and none of them is anywhere in what Temporal stored
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    raw = history_text(history.to_json_dict())
    assert "loan-desk" in raw and "keys_present" in raw  # the scan sees decoded payloads
    for secret in (KEY, SECRET, "bnk-file-key-0001", "bns-file-secret-0002"):
        assert secret not in raw


async def test_worker_registers_missing_search_attributes_in_a_new_namespace(dev_env: WorkflowEnvironment):
    from google.protobuf.duration_pb2 import Duration
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
    from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest

    from activities.temporal_client import ensure_search_attributes
    from models.search_attributes import ALL

    namespace = f"ns-{uuid.uuid4().hex[:8]}"
    await dev_env.client.workflow_service.register_namespace(RegisterNamespaceRequest(
        namespace=namespace, workflow_execution_retention_period=Duration(seconds=86400)))
    added = await ensure_search_attributes(dev_env.client, namespace)
    assert added == sorted(k.name for k in ALL)
    listed = (await dev_env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace))).custom_attributes
    assert {k.name for k in ALL} <= set(listed)
    assert await ensure_search_attributes(dev_env.client, namespace) == []  # idempotent
