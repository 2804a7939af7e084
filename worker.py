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
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.worker import UnsandboxedWorkflowRunner, Worker, WorkerDeploymentConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities import build_activities, build_alert_activities
from activities.notify import ChatChannels, Redactor
from activities.store import Store
from activities.temporal_client import (
    SearchAttributesMissing,
    TemporalUnreachable,
    connect,
    ensure_search_attributes,
    metrics_runtime,
)
from activities.venues import VenuePool
from models.alerts import TELEGRAM_COMMANDS_ID, CommandPoll, alerts_queue
from models.settings import Settings, SettingsError, load_settings
from workflows import ALERT_WORKFLOWS, ALL_WORKFLOWS
from workflows.clock_guard import ClockGuardedRunner

log = logging.getLogger("hedgeguard.worker")

# models/ and risk/ are pure (no I/O, no clock), so loading them once outside the sandbox is safe and
# saves re-importing them for every workflow run.
SANDBOX = SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules("models", "risk"))


def workflow_runner(settings: Settings) -> WorkflowRunner:
    """Unsandboxed by default: the sandbox re-imports workflows/ for every run and wraps the stdlib, which made
    each loan's guard and hedge cost about twice the CPU and memory (bench.latency, bench.scale). What the
    sandbox would refuse (a clock read, I/O, random) is still caught: the replay tests run every recorded
    history inside it. Either way a run refuses an activation whose clock lags its events (workflows/clock_guard.py)."""
    return ClockGuardedRunner(SANDBOX if settings.workflow_sandbox else UnsandboxedWorkflowRunner())


def deployment(settings: Settings) -> WorkerDeploymentConfig | None:
    """Worker Versioning when a deployment name is set (README, "Versioning"): every run is pinned to the version it
    started on and a long-lived one moves at continue-as-new. Unset (make run, the tests): unversioned workers."""
    if not settings.deployment_name:
        return None
    version = WorkerDeploymentVersion(deployment_name=settings.deployment_name, build_id=settings.build_id)
    return WorkerDeploymentConfig(version=version, use_worker_versioning=True,
                                  default_versioning_behavior=VersioningBehavior.PINNED)


def build_worker(client: Client, settings: Settings, store: Store, venues: VenuePool, *,
                 task_queue: str | None = None) -> Worker:
    """The worker exactly as production registers it; tests build theirs with this too."""
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=ALL_WORKFLOWS,
        activities=build_activities(settings, store, venues),
        workflow_runner=workflow_runner(settings),
        deployment_config=deployment(settings),
        max_cached_workflows=settings.max_cached_workflows,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def build_alert_worker(client: Client, settings: Settings, channels: ChatChannels, *,
                       task_queue: str | None = None) -> Worker:
    """Alert delivery and Telegram commands, on the alerts task queue next to `task_queue`."""
    return Worker(
        client,
        task_queue=alerts_queue(task_queue or settings.task_queue),
        workflows=ALERT_WORKFLOWS,
        activities=build_alert_activities(settings, channels),
        workflow_runner=workflow_runner(settings),
        deployment_config=deployment(settings),
        max_cached_workflows=1000,
        graceful_shutdown_timeout=timedelta(seconds=5),
    )


async def start_telegram_commands(client: Client, settings: Settings, *, task_queue: str | None = None) -> bool:
    """The command poller runs while Telegram has a token and someone may command; one per deployment."""
    if "telegram" not in settings.chat_services() or not settings.command_chats():
        return False
    from temporalio.common import WorkflowIDConflictPolicy

    await client.start_workflow("TelegramCommandsWorkflow", CommandPoll(), id=TELEGRAM_COMMANDS_ID,
                                task_queue=alerts_queue(task_queue or settings.task_queue),
                                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
    return True


def alert_status(settings: Settings) -> str:
    """One line saying where alerts go, and a warning per routed channel that cannot deliver."""
    ready, parts = settings.chat_services(), []
    if "slack" in ready:
        parts.append(f"slack {settings.slack_channel}")
    if "telegram" in ready:
        parts.append(f"telegram {len(settings.telegram_chat_ids)} chat(s)")
    if "email" in ready and settings.email_to:
        parts.append(f"email {len(settings.email_to)} address(es) via {settings.smtp_address}")
    for gap in settings.alert_gaps():
        log.warning("alerts: %s", gap)
    return ", ".join(parts) or "log only"


async def serve(settings: Settings, *, connect_wait_s: float) -> None:
    store = Store(settings.database_url)
    revision = await asyncio.to_thread(store.migrate)
    runtime = metrics_runtime(settings.metrics_bind) if settings.metrics_bind else None
    client = await connect(settings, runtime=runtime, wait_s=connect_wait_s)
    added = await ensure_search_attributes(client, settings.temporal_namespace)
    if added:
        log.info("registered search attributes %s in namespace %s", ", ".join(added), settings.temporal_namespace)
    venues = VenuePool(settings)
    channels = ChatChannels(settings)
    worker = build_worker(client, settings, store, venues)
    alert_worker = build_alert_worker(client, settings, channels)
    commands = await start_telegram_commands(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with worker, alert_worker:
        metrics = f"http://{settings.metrics_bind}/metrics" if settings.metrics_bind else "off"
        print(f"hedgeguard worker ready: mode {settings.mode}, task queue {settings.task_queue!r} on "
              f"{settings.temporal_address}/{settings.temporal_namespace}, {len(ALL_WORKFLOWS)} workflows, "
              f"store schema {revision}, metrics {metrics}", flush=True)
        version = worker.config().get("deployment_config")
        print(f"versioning: deployment {version.version.deployment_name!r}, build {version.version.build_id!r} (runs pinned; "
              f"long-lived ones move at continue-as-new)" if version else "versioning: off (unversioned workers)",
              flush=True)
        print(f"alerts: {alert_status(settings)}; Telegram commands {'on' if commands else 'off'}", flush=True)
        await stop.wait()
        print("hedgeguard worker stopping (finishing running activities, up to 10 s)", flush=True)
    await venues.close()
    await channels.close()
    store.close()


def cache_bytecode() -> None:
    """The sandbox imports workflows/ afresh for every new workflow run; without bytecode each import compiles
    the source again (the worker's largest cost when many loans enrol). So the worker writes
    __pycache__ beside its own modules even under PYTHONDONTWRITEBYTECODE (installed packages have theirs)."""
    sys.dont_write_bytecode = False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connect-wait", type=float, default=60.0, metavar="SECONDS",
                        help="how long to wait for the Temporal server to come up (default 60)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("HEDGEGUARD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings()
        cache_bytecode()
        redactor = Redactor(settings.secret_values())
        for handler in logging.getLogger().handlers:
            handler.addFilter(redactor)
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
