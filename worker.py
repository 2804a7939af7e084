"""Runs the hedgeguard worker: every workflow and activity, on the configured task queue.

    python worker.py            # settings from HEDGEGUARD_* / DATABASE_URL
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import build_activities
from activities.store import Store
from activities.temporal_client import (
    SearchAttributesMissing,
    TemporalUnreachable,
    connect,
    ensure_search_attributes,
    metrics_runtime,
)
from activities.venues import VenuePool
from models.settings import Settings, SettingsError, load_settings
from workflows import ALL_WORKFLOWS

log = logging.getLogger("hedgeguard.worker")

# models/ and risk/ are pure (no I/O, no clock), so loading them once outside the sandbox is safe and
# saves re-importing them for every workflow run.
SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("models", "risk"))


def build_worker(client: Client, settings: Settings, store: Store, venues: VenuePool, *,
                 task_queue: str | None = None) -> Worker:
    """The worker exactly as production registers it; tests build theirs with this too."""
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=build_activities(settings, store, venues),
        workflow_runner=SANDBOX,
        max_cached_workflows=1000,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def serve(settings: Settings, *, connect_wait_s: float) -> None:
    store = Store(settings.database_url)
    revision = await asyncio.to_thread(store.migrate)
    runtime = metrics_runtime(settings.metrics_bind) if settings.metrics_bind else None
    client = await connect(settings, runtime=runtime, wait_s=connect_wait_s)
    added = await ensure_search_attributes(client, settings.temporal_namespace)
    if added:
        log.info("registered search attributes %s in namespace %s", ", ".join(added), settings.temporal_namespace)
    venues = VenuePool(settings)
    worker = build_worker(client, settings, store, venues)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker:
        metrics = f"http://{settings.metrics_bind}/metrics" if settings.metrics_bind else "off"
        print(f"hedgeguard worker ready: mode {settings.mode}, task queue {settings.task_queue!r} on "
              f"{settings.temporal_address}/{settings.temporal_namespace}, {len(ALL_WORKFLOWS)} workflows, "
              f"store schema {revision}, metrics {metrics}", flush=True)
        await stop.wait()
        print("hedgeguard worker stopping (finishing running activities, up to 10 s)", flush=True)
    await venues.close()
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connect-wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the Temporal server to come up (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HEDGEGUARD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        asyncio.run(serve(settings, connect_wait_s=args.connect_wait))
    except (SettingsError, TemporalUnreachable, SearchAttributesMissing) as exc:
        print(f"worker.py: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: the SDK's native threads can crash it (sdk-python#300)
