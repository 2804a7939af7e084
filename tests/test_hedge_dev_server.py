"""The hedge lifecycle on the real dev server, where what matters needs it: validated updates, a worker
killed mid-order, continue-as-new with state carried, and the Temporal UI's own HTTP API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal as D
from pathlib import Path

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from models import search_attributes
from models.hedge import OrderPolicy, TargetChange
from risk.pricing import Urgency
from tests.conftest import TEMPORAL
from tests.hedge_helpers import start_hedge, state, venue_orders
from tests.loan_helpers import record_if_asked
from workflows.hedge import HedgeWorkflow

ROOT = Path(__file__).resolve().parent.parent


# what a query may answer while no worker holds the workflow (one just killed, the next still starting):
# the server gives up on the dead worker's sticky queue and cancels the query
WORKERLESS = {RPCStatusCode.CANCELLED, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.UNAVAILABLE}


async def wait_for(handle, predicate, within_s: float = 30.0):
    deadline = time.monotonic() + within_s
    while True:
        try:
            view = await state(handle)
        except RPCError as err:
            if err.status not in WORKERLESS or time.monotonic() >= deadline:
                raise
        else:
            if predicate(view):
                return view
            assert time.monotonic() < deadline, view.model_dump_json(indent=1)
        await asyncio.sleep(0.2)


@pytest.fixture
async def dev_worker(dev_env: WorkflowEnvironment, paper_settings, store, venues, task_queue):
    from tests.hedge_helpers import terminate_started
    from worker import build_worker

    async with build_worker(dev_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue
        await terminate_started()


async def test_set_policy_rejects_bad_values_and_changes_nothing(dev_env, dev_worker, sim):
    handle = await start_hedge(dev_env, dev_worker, target="0.01")
    before = (await wait_for(handle, lambda v: v.open_order is not None)).policy
    for changes, complaint in (({"max_order_qty": "-1"}, "max_order_qty: Input should be greater than 0"),
                               ({"urgency": "panic"}, "urgency: Input should be 'normal', 'urgent' or 'critical'"),
                               ({"replace_after_s": 1}, "replace_after_s: Input should be greater than or equal to 5"),
                               ({"colour": "red"}, "colour: Extra inputs are not permitted")):
        with pytest.raises(WorkflowUpdateFailedError) as err:
            await handle.execute_update(HedgeWorkflow.set_policy, changes)
        assert complaint in str(err.value.cause), err.value.cause
        assert (await state(handle)).policy == before
    changed = await handle.execute_update(HedgeWorkflow.set_policy, {"replace_after_s": 10, "max_order_qty": "0.5"})
    assert changed.replace_after_s == 10 and (await state(handle)).policy.max_order_qty == D("0.5")


async def test_long_running_hedge_continues_as_new_carrying_its_state(dev_env, dev_worker, sim):
    handle = await start_hedge(dev_env, dev_worker, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL),
                               continue_as_new_after=150)
    first_run = (await handle.describe()).run_id
    await wait_for(handle, lambda v: v.current == D("-0.01") and v.open_order is None)
    for seq in range(1, 80):  # a chatty book: same target, new sequence numbers
        await handle.signal(HedgeWorkflow.retarget, TargetChange(target=D("0.01"), urgency=Urgency.CRITICAL, seq=seq))
    deadline = time.monotonic() + 30
    while (await dev_env.client.get_workflow_handle(handle.id).describe()).run_id == first_run:
        assert time.monotonic() < deadline, "did not continue as new"
        await asyncio.sleep(0.3)
    latest = dev_env.client.get_workflow_handle(handle.id)
    view = await state(latest)
    assert (view.current, view.orders_placed, view.status) == (D("-0.01"), 1, "OPEN")
    assert len(venue_orders(sim)) == 1  # nothing re-placed by the new run


@pytest.mark.slow
async def test_worker_killed_mid_order_restarts_without_a_second_order(dev_env, sim, store, task_queue, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
    env.update(HEDGEGUARD_TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
               HEDGEGUARD_TASK_QUEUE=task_queue, HEDGEGUARD_METRICS_BIND="", DATABASE_URL=str(store.engine.url),
               HEDGEGUARD_PAPER_CONTROL_URL=sim.urls["control"], HEDGEGUARD_PAPER_BYBIT_URL=sim.urls["bybit"],
               HEDGEGUARD_PAPER_BINANCEUSDM_URL=sim.urls["binanceusdm"], HEDGEGUARD_VENUE_TIMEOUT_MS="20000")

    def start_worker() -> subprocess.Popen:
        log = (tmp_path / "worker.log").open("a")
        return subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=log, stderr=log)

    # the order is accepted, and the answer held long enough to kill the worker waiting for it
    sim.faults.add("bybit", "timeout_after_accept", 1, path="/v5/order/create", hold_s=8)
    worker = start_worker()
    try:
        handle = await start_hedge(dev_env, task_queue, target="0.01", policy=OrderPolicy(urgency=Urgency.URGENT))
        deadline = time.monotonic() + 30
        while not venue_orders(sim):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            await asyncio.sleep(0.1)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        sim.market.set_price("BTCUSDT", D("60010"))  # the accepted order fills while no worker runs
        worker = start_worker()
        view = await wait_for(handle, lambda v: v.current == D("-0.01") and v.open_order is None, within_s=90)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    ids = [o.client_id for o in venue_orders(sim)]
    assert ids == ["loan-L-1-1"] and view.orders_placed == 1
    assert store.verify("loan-L-1") == [] and store.get_hedge("loan-L-1").current_size == D("-0.01")


def listed(url: str) -> list[str]:
    """Workflow ids the UI's HTTP API returns for a list URL (empty while it answers 503 at start-up)."""
    try:
        body = urllib.request.urlopen(url, timeout=5).read()  # noqa: S310 (loopback)
    except urllib.error.HTTPError as err:
        if err.code == 503:
            return []
        raise
    return [w["execution"]["workflowId"] for w in json.loads(body).get("executions", [])]


@pytest.mark.slow
async def test_temporal_ui_http_api_lists_a_running_hedge_by_its_search_attributes(paper_settings, store, venues,
                                                                                   sim, task_queue):
    from tests.hedge_helpers import terminate_started
    from worker import build_worker

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        ui_port = s.getsockname()[1]
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=str(TEMPORAL), ui=True, ui_port=ui_port,
                                                data_converter=pydantic_data_converter,
                                                search_attributes=list(search_attributes.ALL),
                                                dev_server_log_level="error")
    try:
        async with build_worker(env.client, paper_settings, store, venues, task_queue=task_queue):
            handle = await start_hedge(env, task_queue, target="0.01", policy=OrderPolicy(urgency=Urgency.CRITICAL))
            await wait_for(handle, lambda v: v.status == "OPEN")
            query = 'HedgeStatus="OPEN" AND Venue="bybit"'
            url = (f"http://127.0.0.1:{ui_port}/api/v1/namespaces/default/workflows?"
                   + urllib.parse.urlencode({"query": query}))
            found: list[str] = []
            deadline = time.monotonic() + 30
            while handle.id not in found:  # the UI may still be starting; visibility is eventually consistent
                assert time.monotonic() < deadline, found
                found = await asyncio.to_thread(listed, url)
                await asyncio.sleep(0.3)
            assert handle.id not in await asyncio.to_thread(listed, url.replace("bybit", "binanceusdm"))
            described = await handle.describe()
            assert await described.static_summary() == "hedge loan-L-1 · short BTCUSDT on bybit:desk · loan L-1"
            from temporalio.api.sdk.v1 import WorkflowMetadata

            metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
            assert "**OPEN** short BTCUSDT on bybit:desk" in metadata.current_details  # what the UI shows
            await terminate_started()
    finally:
        await env.shutdown()


async def test_operator_commands_on_a_running_hedge(dev_env, dev_worker, sim, store):
    import uuid

    hedge_id = f"ops-{uuid.uuid4().hex[:8]}"
    # the first order rests until the test replaces it: each CLI run below takes seconds, more on a busy machine, and
    # the default 30 s replacement on the dev server's wall clock took the order away between two of them
    handle = await start_hedge(dev_env, dev_worker, hedge_id=hedge_id, target="0.01", workflow_id=f"hedge-{hedge_id}",
                               policy=OrderPolicy(replace_after_s=3600))
    await wait_for(handle, lambda v: v.open_order is not None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
    env.update(HEDGEGUARD_TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
               DATABASE_URL=str(store.engine.url))

    async def starter(*args: str) -> subprocess.CompletedProcess:
        # off the event loop: the worker answering the CLI's queries runs on it
        return await asyncio.to_thread(subprocess.run, [sys.executable, "starter.py", *args], cwd=ROOT, env=env,
                                       capture_output=True, text=True, timeout=60)

    raw = await starter("hedge", "state", hedge_id, "--json")
    assert raw.returncode == 0, raw.stderr
    shown = json.loads(raw.stdout)
    assert shown["status"] == "PENDING" and shown["open_order"]["client_order_id"] == f"{hedge_id}-1"
    assert "open order  sell 0.01 @ 60060" in (await starter("hedge", "state", hedge_id)).stdout
    assert (await starter("hedge", "pause", hedge_id)).stdout.strip() == f"hedge {hedge_id}: paused"
    view = await wait_for(handle, lambda v: v.paused and v.open_order is None)
    refused = await starter("hedge", "set-policy", hedge_id, "--urgency", "panic")
    assert refused.returncode == 1 and "urgency: Input should be 'normal', 'urgent' or 'critical'" in refused.stderr
    ok = await starter("hedge", "set-policy", hedge_id, "--replace-after-s", "12", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["replace_after_s"] == 12
    assert (await starter("hedge", "resume", hedge_id)).returncode == 0
    await wait_for(handle, lambda v: not v.paused and v.open_order is not None)
    assert (await starter("hedge", "force-close", hedge_id, "--reason", "test")).returncode == 0
    assert (await handle.result()).status == "CLOSED"
    gone = await starter("hedge", "pause", hedge_id)
    assert gone.returncode == 1 and gone.stderr.strip() == f"starter.py: hedge {hedge_id} is not running (completed)"
    missing = await starter("hedge", "state", "nope")
    assert missing.stderr.strip() == "starter.py: no hedge workflow 'hedge-nope' (see `starter.py hedge list`)"
    assert view.orders_placed == 1
    await record_if_asked(dev_env.client, handle.id, "HedgeWorkflow-lifecycle")
