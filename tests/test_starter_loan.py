"""`starter.py loan ...` against the real dev server and the simulator: enrolment's refusals start and write
nothing; a paper enrolment is watched, paused, re-banded and unenrolled through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal as D

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

import starter
from activities.venues import ensure_paper_account
from models.loan_guard import LoanView, feed_workflow_ids, loan_workflow_id
from tests.loan_helpers import workflow_exists
from worker import build_worker
from workflows.loan_guard import LoanGuardWorkflow

# the simulator's BTCUSDT is 60000 (tests/conftest.py): 1 BTC against 24000 USDT is LTV 40 %


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def cli(monkeypatch, capsys, dev_env: WorkflowEnvironment, paper_settings, task_queue: str):
    """starter.main in this process (in a thread: it runs its own event loop while the worker runs in this one),
    with the settings of the test's dev server, store, simulator and task queue."""
    for name in [k for k in os.environ if k.startswith("HEDGEGUARD_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(name)
    for name, value in {"DATABASE_URL": paper_settings.database_url, "HEDGEGUARD_TASK_QUEUE": task_queue,
                        "HEDGEGUARD_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
                        "HEDGEGUARD_METRICS_BIND": "", "HEDGEGUARD_STATE_DIR": str(paper_settings.state_dir),
                        "HEDGEGUARD_PAPER_CONTROL_URL": paper_settings.paper_control_url,
                        "HEDGEGUARD_PAPER_BYBIT_URL": paper_settings.paper_bybit_url,
                        "HEDGEGUARD_PAPER_BINANCEUSDM_URL": paper_settings.paper_binanceusdm_url,
                        "HEDGEGUARD_VENUE_TIMEOUT_MS": "2000"}.items():
        monkeypatch.setenv(name, value)

    def main(argv: list[str]) -> int:
        try:
            return starter.main(argv)
        except SystemExit as exc:  # argparse's usage errors
            return int(exc.code or 0)

    async def run(*args: str) -> Run:
        capsys.readouterr()
        code = await asyncio.to_thread(main, list(args))
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
async def cleanup(dev_env: WorkflowEnvironment):
    """Ends whatever the enrolled loans started (guard, hedge, the shared price feed) on the session's server."""
    loans: list[str] = []
    yield loans
    client = dev_env.client
    ids = set(feed_workflow_ids("bybit", "BTCUSDT")) | {loan_workflow_id(loan) for loan in loans}
    for loan in loans:
        async for wf in client.list_workflows(f'ExposureId="{loan}" AND ExecutionStatus="Running"'):
            ids.add(wf.id)
    for wid in ids:
        try:
            await client.get_workflow_handle(wid).terminate("test finished")
        except RPCError:
            pass  # not running


@pytest.fixture
async def loan_worker(dev_env: WorkflowEnvironment, paper_settings, store, venues, task_queue: str):
    async with build_worker(dev_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue


def new_ids() -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"L-{tag}", f"desk-{tag}"


async def assert_nothing_started(env: WorkflowEnvironment, sim, loan_id: str, account: str, *,
                                 account_existed: bool = False) -> None:
    assert not await workflow_exists(env.client, loan_workflow_id(loan_id)), f"workflow {loan_workflow_id(loan_id)} exists"
    if not account_existed:
        assert account not in sim.loans.loans
        assert sim.engines["bybit"].account_by_name(account) is None, "a paper account was created"


def one_line(result: Run, message: str, code: int = 1, prog: str = "starter.py:") -> None:
    assert result.code == code, (result.out, result.err)
    assert result.err.startswith(f"{prog} {message}"), result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert result.out == ""


@pytest.mark.parametrize("args,message", [
    (["--collateral-btc", "0", "--loan-usdt", "24000"], "--collateral-btc must be more than 0 BTC (got 0)"),
    (["--collateral-btc", "1", "--loan-usdt", "-5"], "--loan-usdt must be more than 0 USDT (got -5)"),
    (["--collateral-btc", "1"], "give both --collateral-btc and --loan-usdt"),
    (["--collateral-btc", "1", "--loan-usdt", "24000", "--reserve-usdt", "-1"], "--reserve-usdt must be 0 or more"),
    (["--collateral-btc", "1", "--loan-usdt", "30000"], "not enrolled: LTV 50.00 % is already at or above critical"),
    (["--collateral-btc", "1", "--loan-usdt", "28000", "--critical", "46", "--danger", "44", "--caution", "42"],
     "not enrolled: LTV 46.67 % is already at or above critical (46 %)"),
    (["--collateral-btc", "1", "--loan-usdt", "56000"], "not enrolled: LTV 93.33 % is at or above the venue's liquidation"),
    (["--collateral-btc", "1", "--loan-usdt", "24000", "--caution", "49", "--danger", "48"],
     "bands refused: caution (49) must be below danger (48)"),
    (["--collateral-btc", "1", "--loan-usdt", "24000", "--multiplier-critical", "-1"],
     "bands refused: CRITICAL multiplier must be in [0, "),
    (["--account", "Not An Account!", "--collateral-btc", "1", "--loan-usdt", "24000"], "unknown account 'Not An Account!'"),
    (["--loan-id", "no spaces please", "--collateral-btc", "1", "--loan-usdt", "24000"], "loan id 'no spaces please'"),
    ([], "cannot read bybit account"),  # paper mode, no amounts: the account has no loan (nor exists) on the simulator
])
async def test_enrol_refusals_start_and_write_nothing(dev_env, sim, cli, cleanup, args, message):
    loan_id, account = new_ids()
    cleanup.append(loan_id)
    argv = ["loan", "enrol", "--loan-id", loan_id, "--account", account, *args]
    if "--account" in args:
        account = args[args.index("--account") + 1]
    if "--loan-id" in args:
        loan_id = args[args.index("--loan-id") + 1].replace(" ", "-")
    one_line(await cli(*argv), message)
    await assert_nothing_started(dev_env, sim, loan_id, account)


async def test_enrol_refuses_existing_paper_accounts_it_cannot_guard(dev_env, sim, paper_settings, cli, cleanup):
    loan_id, account = new_ids()
    cleanup.append(loan_id)
    await ensure_paper_account(paper_settings, "bybit", account)
    one_line(await cli("loan", "enrol", "--loan-id", loan_id, "--account", account),
             f"bybit account '{account}' has no ongoing USDT loan")
    await assert_nothing_started(dev_env, sim, loan_id, account, account_existed=True)
    assert account not in sim.loans.loans

    sim.loans.open(sim.engines["bybit"].account_by_name(account), collateral_btc=D("1"), debt_usdt=D("30000"))
    one_line(await cli("loan", "enrol", "--loan-id", loan_id, "--account", account, "--collateral-btc", "1",
                       "--loan-usdt", "20000"), f"bybit account '{account}' already has a loan on the simulator")
    one_line(await cli("loan", "enrol", "--loan-id", loan_id, "--account", account),
             "not enrolled: LTV 50.00 % is already at or above critical (50 %)")
    await assert_nothing_started(dev_env, sim, loan_id, account, account_existed=True)
    assert (sim.loans.loans[account].collateral, sim.loans.loans[account].principal) == (D("1"), D("30000"))


async def test_bad_numbers_and_unknown_loans_are_one_line(dev_env, sim, cli):
    one_line(await cli("loan", "enrol", "--loan-id", "L-x", "--account", "desk", "--collateral-btc", "lots",
                       "--loan-usdt", "1"), "argument --collateral-btc: not a number: 'lots'", code=2,
             prog="starter.py loan enrol:")
    for args in (["status", "L-nobody"], ["pause", "L-nobody"], ["unenrol", "L-nobody"],
                 ["set-bands", "L-nobody", "--caution", "46"]):
        one_line(await cli("loan", *args, "--json"), "no enrolled loan L-nobody")
    one_line(await cli("loan", "set-bands", "L-nobody"), "nothing to change")


async def until_synced(dev_env: WorkflowEnvironment, loan_id: str, within_s: float = 15.0) -> LoanView:
    handle = dev_env.client.get_workflow_handle_for(LoanGuardWorkflow.run, loan_workflow_id(loan_id))
    deadline = time.monotonic() + within_s
    while True:
        view = await handle.query(LoanGuardWorkflow.state)
        if view.ltv_pct is not None and view.hedge_id:
            return view
        assert time.monotonic() < deadline, view.model_dump_json(indent=1)
        await asyncio.sleep(0.2)


async def test_paper_loan_enrol_watch_pause_rebands_unenrol(dev_env, sim, loan_worker, cli, cleanup):
    loan_id, account = new_ids()
    cleanup.append(loan_id)
    enrolled = await cli("loan", "enrol", "--loan-id", loan_id, "--account", account, "--collateral-btc", "1",
                         "--loan-usdt", "24000", "--reserve-usdt", "500", "--json")
    assert enrolled.code == 0, enrolled.err
    data = enrolled.json()
    assert (data["ltv_pct"], data["band"], data["opened_on_simulator"]) == ("40.00", "SAFE", True)
    assert data["ui"].endswith(f"/namespaces/default/workflows/loan-{loan_id}")
    loan = sim.loans.loans[account]
    assert (loan.collateral, loan.principal) == (D("1"), D("24000"))
    description = await dev_env.client.get_workflow_handle(loan_workflow_id(loan_id)).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert await description.static_summary() == f"loan {loan_id} · enrolled at LTV 40.0 % · account {account}"

    await until_synced(dev_env, loan_id)
    status = (await cli("loan", "status", loan_id, "--json")).json()
    assert abs(D(status["ltv_pct"]) - 40) < D("0.01") and status["band"] == "SAFE" and status["paused"] is False
    assert status["account"] == account and status["enrol_reserve_left_usdt"] == "500"
    table = await cli("loan", "status", loan_id)
    assert table.code == 0 and "40.00 % (SAFE)" in table.out
    listed = await cli("loan", "list", "--json")
    assert listed.code == 0, listed.err
    mine = [row for row in listed.json() if row["loan_id"] == loan_id]
    assert len(mine) == 1 and mine[0]["band"] == "SAFE"
    assert {"ltv_pct", "hedge_target_btc", "hedge_current_btc", "paused"} <= set(mine[0])
    assert loan_id in (await cli("loan", "list")).out

    # a second enrolment of the same loan id, or of the same account, is refused and changes nothing
    other_id, other_account = new_ids()
    one_line(await cli("loan", "enrol", "--loan-id", loan_id, "--account", other_account, "--collateral-btc", "1",
                       "--loan-usdt", "24000"), f"loan {loan_id} is already enrolled")
    assert other_account not in sim.loans.loans
    one_line(await cli("loan", "enrol", "--loan-id", other_id, "--account", account),
             f"account '{account}' is already guarded by loan {loan_id}")
    await assert_nothing_started(dev_env, sim, other_id, other_account)

    paused = await cli("loan", "pause", loan_id)
    assert paused.code == 0 and "paused" in paused.out
    assert (await cli("loan", "status", loan_id, "--json")).json()["paused"] is True
    assert (await cli("loan", "resume", loan_id)).code == 0
    assert (await cli("loan", "status", loan_id, "--json")).json()["paused"] is False

    one_line(await cli("loan", "set-bands", loan_id, "--caution", "49", "--danger", "48"),
             "bands refused, nothing changed: caution (49) must be below danger (48)")
    assert (await cli("loan", "status", loan_id, "--json")).json()["bands"]["caution"] == "45"
    changed = await cli("loan", "set-bands", loan_id, "--caution", "46", "--multiplier-caution", "0.6", "--json")
    assert changed.code == 0, changed.err
    assert (changed.json()["caution"], changed.json()["multiplier_caution"]) == ("46", "0.6")
    bands = (await cli("loan", "status", loan_id, "--json")).json()["bands"]
    assert (bands["caution"], bands["danger"], bands["multiplier_caution"]) == ("46", "48", "0.6")

    closing = await cli("loan", "force-close", loan_id, "--reason", "test", "--json")
    assert closing.code == 0 and closing.json() == {"loan_id": loan_id, "sent": "force-close"}
    assert (await cli("loan", "status", loan_id, "--json")).json()["paused"] is True

    gone = await cli("loan", "unenrol", loan_id, "--wait", "--timeout-s", "6", "--json")
    assert gone.code == 0, gone.err
    assert gone.json()["unenrolling"] is True and gone.json()["hedge_closed"] is True
    description = await dev_env.client.get_workflow_handle(loan_workflow_id(loan_id)).describe()
    assert description.status == WorkflowExecutionStatus.COMPLETED
    one_line(await cli("loan", "status", loan_id), f"no enrolled loan {loan_id}: its guard is completed")


async def test_unenrol_says_whether_a_hedge_closes_first(dev_env, sim, loan_worker, cli, cleanup):
    """A loan that never needed a short has no hedge workflow: unenrol ends its guard at once, and says so."""
    loan_id, account = new_ids()
    cleanup.append(loan_id)
    enrolled = await cli("loan", "enrol", "--loan-id", loan_id, "--account", account, "--collateral-btc", "1",
                         "--loan-usdt", "24000", "--json")
    assert enrolled.code == 0, enrolled.err
    await until_synced(dev_env, loan_id)
    unenrolling = await cli("loan", "unenrol", loan_id, "--json")
    assert unenrolling.code == 0, unenrolling.err
    assert unenrolling.json() == {"loan_id": loan_id, "sent": "unenrol", "hedge_open": False}
    plain = await dev_env.client.get_workflow_handle_for(LoanGuardWorkflow.run, loan_workflow_id(loan_id)).result()
    assert plain.unenrolling and not plain.hedge_started and not [o for o in sim.engines["bybit"].account_by_name(
        account).orders if o.client_id]
    one_line(await cli("loan", "status", loan_id), f"no enrolled loan {loan_id}: its guard is completed")
