"""Enrolling loans on the emulator and watching their guards, for the loan guard's tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal as D

import aiohttp
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from activities.venues import ensure_paper_account
from models.loan_guard import BandSettings, LoanGuardInput, LoanTiming, LoanView, feed_workflow_ids
from workflows.loan_guard import LoanGuardWorkflow

FAST = LoanTiming(sync_every_s=5, stale_after_s=4, poll_every_s=1, keepalive_s=2, hedge_check_s=1)


async def open_loan(sim, settings, account: str, collateral_btc: str, debt_usdt: str) -> None:
    await ensure_paper_account(settings, "bybit", account)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.urls['control']}/control/loans", json={
                "account": account, "collateral_btc": collateral_btc, "debt_usdt": debt_usdt}) as resp:
            assert resp.status == 200, await resp.text()


async def enrol(client: Client, task_queue: str, loan_id: str, account: str, *, timing: LoanTiming = FAST,
                bands: BandSettings | None = None, **extra) -> WorkflowHandle:
    inp = LoanGuardInput(loan_id=loan_id, account=account, timing=timing, bands=bands or BandSettings(), **extra)
    return await client.start_workflow(LoanGuardWorkflow.run, inp, id=inp.workflow_id, task_queue=task_queue,
                                       static_summary=f"loan {loan_id} (test)")


async def workflow_exists(client: Client, workflow_id: str) -> bool:
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def loan_state(handle: WorkflowHandle) -> LoanView:
    return await handle.query(LoanGuardWorkflow.state)


async def wait_loan(handle: WorkflowHandle, predicate: Callable[[LoanView], bool], within_s: float = 30.0) -> LoanView:
    deadline = time.monotonic() + within_s
    while True:
        try:
            view = await loan_state(handle)
        except RPCError:
            view = None
        if view is not None and predicate(view):
            return view
        assert time.monotonic() < deadline, view.model_dump_json(indent=1) if view else "no state"
        await asyncio.sleep(0.2)


async def end_loan_workflows(client: Client) -> None:
    """Terminate every loan guard, feed and hedge still running: the dev server outlives each test."""
    query = ('ExecutionStatus="Running" AND (WorkflowType="LoanGuardWorkflow" OR WorkflowType="PriceFeedWorkflow" '
             'OR WorkflowType="HedgeWorkflow")')
    async for wf in client.list_workflows(query):
        try:
            await client.get_workflow_handle(wf.id, run_id=wf.run_id).terminate("test finished")
        except RPCError:
            pass
    for feed in feed_workflow_ids("bybit", "BTCUSDT"):  # the list above can lag a just-started feed
        try:
            await client.get_workflow_handle(feed).terminate("test finished")
        except RPCError:
            pass


def btc(value: str | int | float) -> D:
    return D(str(value))


async def record_if_asked(client: Client, workflow_id: str, name: str, run_id: str | None = None) -> None:
    """With HEDGEGUARD_RECORD_HISTORIES=1, save a workflow's history (its latest run, or `run_id`) for the replay
    tests."""
    import os
    from pathlib import Path

    if os.environ.get("HEDGEGUARD_RECORD_HISTORIES"):
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        (Path(__file__).parent / "histories" / f"{name}.json").write_text(history.to_json())
