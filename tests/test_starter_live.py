"""`starter.py loan enrol` in live mode refuses what README ("Loans") says it refuses: an account that is not a
bybit account of HEDGEGUARD_ACCOUNTS with keys, amounts that are not what Bybit reports, an account with no loan
(live mode never opens one), an LTV already at critical. Each refusal is one line on stderr and exit status 1,
and nothing is started, opened or written.

Live mode talks to Bybit's real hosts. Here ccxt's Bybit host table points at the Bybit emulator, which checks
keys and signatures as Bybit does; hedgeguard's own code runs as it does live."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import dataclass
from decimal import Decimal as D

import ccxt.pro as ccxtpro
import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

import starter
from activities.ccxt_venue import loopback_urls
from models.loan_guard import loan_workflow_id
from models.settings import env_var_for
from sim.chat import SIM_SLACK_TOKEN, SIM_TELEGRAM_TOKEN
from tests.loan_helpers import workflow_exists

# the simulator's BTCUSDT is 60000 (tests/conftest.py): 1 BTC against 24000 USDT is LTV 40 %


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Desk:
    """The live accounts of one test: `loan` has keys and a 1 BTC / 24,000 USDT loan at Bybit (the emulator),
    `empty` has keys and no loan, `vault` is a Binance USD-M account with keys, `keyless` is listed without keys."""

    loan: str
    empty: str
    vault: str
    keyless: str


def keys(account: str) -> tuple[str, str]:
    return f"live-key-{account}", f"live-secret-{account}"


@pytest.fixture
def desk(sim) -> Desk:
    tag = uuid.uuid4().hex[:6]
    d = Desk(loan=f"desk-{tag}", empty=f"spare-{tag}", vault=f"vault-{tag}", keyless=f"nokeys-{tag}")
    engine = sim.engines["bybit"]
    for name in (d.loan, d.empty):
        key, secret = keys(name)
        engine.create_account(name, key, secret, {"USDT": D("100000")})
    sim.loans.open(engine.account_by_name(d.loan), collateral_btc=D("1"), debt_usdt=D("24000"))
    return d


@pytest.fixture
def bybit_is_the_emulator(monkeypatch, sim) -> None:
    """ccxt's Bybit, as hedgeguard builds it for live mode, reaches the emulator instead of api.bybit.com."""
    original = ccxtpro.bybit.describe

    def describe(self):
        description = original(self)
        description["urls"] = {**description["urls"], "api": loopback_urls(description["urls"], sim.urls["bybit"])["api"]}
        return description

    monkeypatch.setattr(ccxtpro.bybit, "describe", describe)


@pytest.fixture
def live(monkeypatch, capsys, dev_env: WorkflowEnvironment, paper_settings, task_queue: str, desk: Desk,
         bybit_is_the_emulator):
    """starter.main in this process (in a thread), in live mode: the desk's accounts listed with their keys, alerts
    able to reach people (live mode refuses to start otherwise), this test's dev server, store and task queue."""
    for name in [k for k in os.environ if k.startswith("HEDGEGUARD_") or k == "DATABASE_URL"]:
        monkeypatch.delenv(name)
    env = {"HEDGEGUARD_MODE": "live", "DATABASE_URL": paper_settings.database_url, "HEDGEGUARD_TASK_QUEUE": task_queue,
           "HEDGEGUARD_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "HEDGEGUARD_METRICS_BIND": "", "HEDGEGUARD_STATE_DIR": str(paper_settings.state_dir),
           "HEDGEGUARD_VENUE_TIMEOUT_MS": "2000",
           "HEDGEGUARD_ACCOUNTS": f"bybit:{desk.loan},bybit:{desk.empty},binanceusdm:{desk.vault}",
           "HEDGEGUARD_SLACK_BOT_TOKEN": SIM_SLACK_TOKEN, "HEDGEGUARD_TELEGRAM_BOT_TOKEN": SIM_TELEGRAM_TOKEN,
           "HEDGEGUARD_TELEGRAM_CHAT_IDS": "111111", "HEDGEGUARD_EMAIL_TO": "ops@hedgeguard.test"}
    for venue, account in (("bybit", desk.loan), ("bybit", desk.empty), ("binanceusdm", desk.vault)):
        key, secret = keys(account)
        env[env_var_for(venue, account, "api_key")], env[env_var_for(venue, account, "api_secret")] = key, secret
    for name, value in env.items():
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
    loans: list[str] = []
    yield loans
    for loan in loans:
        try:
            await dev_env.client.get_workflow_handle(loan_workflow_id(loan)).terminate("test finished")
        except RPCError:
            pass  # never started


def one_line(result: Run, message: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert result.err.startswith(f"starter.py: {message}"), result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert result.out == ""


def loan_book(sim) -> dict[str, tuple]:
    return {name: (loan.status, loan.collateral, loan.principal, len(loan.repayments), len(loan.adjustments))
            for name, loan in sim.loans.loans.items()}


CASES = {
    "account not listed": (lambda d: ["--account", "stranger"],
                           lambda d: "unknown account 'stranger': live mode guards loans of the bybit accounts in "
                                     f"HEDGEGUARD_ACCOUNTS that have keys ({d.loan}, {d.empty})"),
    "not a bybit account": (lambda d: ["--account", d.vault],
                            lambda d: f"unknown account '{d.vault}': live mode guards loans of the bybit accounts"),
    "collateral not Bybit's": (lambda d: ["--account", d.loan, "--collateral-btc", "2", "--loan-usdt", "24000"],
                               lambda d: f"--collateral-btc 2 but Bybit reports 1 BTC of collateral on account '{d.loan}'"),
    "debt not Bybit's": (lambda d: ["--account", d.loan, "--collateral-btc", "1", "--loan-usdt", "20000"],
                         lambda d: "--loan-usdt 20000 but Bybit reports principal 24000 USDT"),
    "no loan to guard": (lambda d: ["--account", d.empty, "--collateral-btc", "1", "--loan-usdt", "24000"],
                         lambda d: f"bybit account '{d.empty}' has no ongoing USDT loan against BTC collateral"),
    "LTV at critical": (lambda d: ["--account", d.loan, "--critical", "40", "--danger", "37", "--caution", "34",
                                   "--target", "30", "--repay-below", "25", "--safe-below", "28"],
                        lambda d: "not enrolled: LTV 40.00 % is already at or above critical (40 %)"),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_live_enrol_refusals_are_one_line_and_start_nothing(dev_env, sim, live, desk, cleanup, store, case):
    args, message = CASES[case]
    loan_id = f"L-{uuid.uuid4().hex[:8]}"
    cleanup.append(loan_id)
    before = loan_book(sim)
    one_line(await live("loan", "enrol", "--loan-id", loan_id, *args(desk)), message(desk))
    assert not await workflow_exists(dev_env.client, loan_workflow_id(loan_id))
    assert loan_book(sim) == before  # no loan opened, repaid or re-collateralised
    assert [a.name for a in sim.engines["bybit"].accounts.values()] == [desk.loan, desk.empty]  # no account created
    assert not [o for a in sim.engines["bybit"].accounts.values() for o in a.orders]
    assert store.list_hedges() == []


async def test_live_mode_refuses_a_listed_account_without_keys(dev_env, sim, live, desk, cleanup, monkeypatch):
    loan_id = f"L-{uuid.uuid4().hex[:8]}"
    cleanup.append(loan_id)
    monkeypatch.setenv("HEDGEGUARD_ACCOUNTS", os.environ["HEDGEGUARD_ACCOUNTS"] + f",bybit:{desk.keyless}")
    one_line(await live("loan", "enrol", "--loan-id", loan_id, "--account", desk.keyless),
             f"HEDGEGUARD_MODE=live but no API key/secret for bybit:{desk.keyless} "
             f"(set {env_var_for('bybit', desk.keyless, 'api_key')}")
    assert not await workflow_exists(dev_env.client, loan_workflow_id(loan_id))


async def test_live_enrol_of_the_loan_bybit_reports_guards_it_without_opening_one(dev_env, sim, live, desk, cleanup):
    """The refusals above are about what they say: the same account and figures, given right, enrol."""
    loan_id = f"L-{uuid.uuid4().hex[:8]}"
    cleanup.append(loan_id)
    before = loan_book(sim)
    enrolled = await live("loan", "enrol", "--loan-id", loan_id, "--account", desk.loan, "--collateral-btc", "1",
                          "--loan-usdt", "24000", "--json")
    assert enrolled.code == 0, enrolled.err
    data = json.loads(enrolled.out)
    assert (data["mode"], data["opened_on_simulator"], data["ltv_pct"], data["band"]) == ("live", False, "40.00", "SAFE")
    assert loan_book(sim) == before
    description = await dev_env.client.get_workflow_handle(loan_workflow_id(loan_id)).describe()
    assert description.status == WorkflowExecutionStatus.RUNNING
