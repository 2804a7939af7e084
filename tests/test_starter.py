"""starter.py as an operator runs it: tables, --json, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.store import Store
from activities.venues import VenuePool
from models.settings import Settings
from models.venue_events import VenueFill
from worker import build_worker

ROOT = Path(__file__).resolve().parent.parent


def starter(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "starter.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def cli_env(store: Store) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
    env["DATABASE_URL"] = str(store.engine.url)
    env["HEDGEGUARD_TEMPORAL_ADDRESS"] = "127.0.0.1:1"  # nothing listens there
    return env


@pytest.fixture
def ledger(store: Store) -> str:
    store.create_hedge(id="loan-L-7", book="loan", exposure_id="L-7", venue="bybit", account="desk", symbol="BTCUSDT",
                       side="short")
    ts = datetime(2020, 3, 12, 23, 0, tzinfo=UTC)
    store.record("loan-L-7", [
        VenueFill(venue="bybit", account="desk", symbol="BTCUSDT", fill_id="e1", side="sell", qty=D("0.4"),
                  price=D("5000"), fee=D("1.1"), ts=ts),
        VenueFill(venue="bybit", account="desk", symbol="BTCUSDT", fill_id="e2", side="buy", qty=D("0.1"),
                  price=D("4500"), fee=D("0.25"), ts=ts)])
    return "loan-L-7"


def test_hedge_list_table_and_json(cli_env, ledger):
    table = starter("hedge", "list", env=cli_env)
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()
    assert header.split()[:3] == ["id", "book", "exposure_id"] and row.split()[:3] == ["loan-L-7", "loan", "L-7"]
    data = json.loads(starter("hedge", "list", "--json", env=cli_env).stdout)
    assert data[0]["current_size"] == "-0.3" and data[0]["status"] == "OPEN"
    assert data[0]["realised_pnl"] == "48.65"  # 0.1 x (5000 - 4500) - 1.35 fees


def test_hedge_ledger_and_verify(cli_env, ledger):
    events = json.loads(starter("hedge", "ledger", ledger, "--json", env=cli_env).stdout)
    assert [e["type"] for e in events] == ["OPEN", "FEE", "DECREASE", "FEE"]
    verify = starter("hedge", "verify", ledger, env=cli_env)
    assert verify.returncode == 0 and "ledger rebuild matches (size -0.3" in verify.stdout


@pytest.mark.parametrize("args,env_extra,message,code", [
    (["hedge", "ledger", "nope"], {}, "starter.py: no hedge 'nope' (see `starter.py hedge list`)", 1),
    (["hedge", "verify", "nope"], {}, "starter.py: no hedge nope", 1),
    (["frobnicate"], {}, "starter.py: argument command: invalid choice: 'frobnicate'", 2),
    (["hedge", "list"], {"HEDGEGUARD_MODE": "lve"}, "starter.py: HEDGEGUARD_MODE: Input should be", 1),
    (["status"], {}, "starter.py: cannot reach Temporal at 127.0.0.1:1 (HEDGEGUARD_TEMPORAL_ADDRESS): "
                     "connection refused.", 1),
])
def test_user_mistakes_are_one_line_and_non_zero(cli_env, ledger, args, env_extra, message, code):
    result = starter(*args, env={**cli_env, **env_extra})
    assert result.returncode == code
    assert result.stderr.startswith(message), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


async def test_status_reports_worker_store_and_paper_venues(dev_env: WorkflowEnvironment, cli_env, sim,
                                                            paper_settings: Settings, store: Store, task_queue: str):
    env = {**cli_env, "HEDGEGUARD_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
           "HEDGEGUARD_TASK_QUEUE": task_queue}
    no_worker = await _run(env, "status")
    assert no_worker.returncode == 1 and f"no worker polls task queue '{task_queue}'" in no_worker.stderr
    async with build_worker(dev_env.client, paper_settings, store, VenuePool(paper_settings), task_queue=task_queue):
        result = await _run(env, "status", "--json")
        table = await _run(env, "status")
        await sim.stop()
        down = await _run(env, "status")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["workers_polling"] >= 1 and status["store_current"] is True and status["mode"] == "paper"
    assert status["paper_venues"]["reachable"] is True and "BTCUSDT 60000" in status["paper_venues"]["detail"]
    assert "paper venues  up: BTCUSDT 60000" in table.stdout
    assert down.returncode == 1 and "paper venues  DOWN" in down.stdout


async def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    import asyncio

    return await asyncio.to_thread(starter, *args, env=env)


def test_amounts_print_to_the_venues_precision():
    """A debt with interest accrued to 28 digits and a zero carried as 0E-12 print as a person reads them."""
    from starter import btc, usdt

    assert usdt(D("24000.1234567890123456789012345")) == "24000.12"
    assert usdt(D("0E-12")) == "0.00" and btc(D("0E-12")) == "0"
    assert btc(D("1.50000000")) == "1.5" and btc(D("0.123456789")) == "0.12345679" and btc(D("-0.5")) == "-0.5"
    assert usdt(D("1E+3")) == "1000.00"
