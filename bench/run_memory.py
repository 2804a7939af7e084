"""What a workflow run costs the worker's memory on this SDK, apart from anything hedgeguard does: N runs of a
probe workflow that takes P patches (`workflow.patched`), runs K no-op activities (a workflow task each) and then
waits for a signal or completes, on a worker in its own process with its workflow cache at C; worker RSS before and
after, per run.

    .venv/bin/python -m bench.run_memory                      # 300 runs; 0 and 60 tasks; waiting, then completed
    .venv/bin/python -m bench.run_memory --runs 300 --tasks 60 --end complete
    .venv/bin/python -m bench.run_memory --runs 600 --tasks 0 --end wait --patches 0 1 8

Why it exists: a loan guard at rest costs the worker ~125 KiB while cached and its Python objects only ~30 KiB
of that (bench/README.md, "Scale"). This shows where the rest comes from: the SDK keeps, per cached run, state
that grows with the workflow tasks the run has processed, and gives it back when the run ends (completes or
continues as new); and each patch a run took costs ~8 KiB more (its marker and the TemporalChangeVersion
search-attribute upsert sdk-core adds to it; workflows/common.py takes them as one set). The runs start in batches
of 25 (an operator's enrolment pace), so memory a finished run frees can be reused by the next batch. One fresh dev
server per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from bench.stack import ROOT, connect_when_up, dev_server_argv, free_port, rss_mib

QUEUE = "run-memory"
BATCH = 25


@activity.defn(name="run_memory_noop")
async def noop() -> None:
    """A task for the probe: its completion wakes the run for one more workflow task."""


@workflow.defn(name="RunMemoryProbe")
class RunMemoryProbe:
    def __init__(self) -> None:
        self.released = False

    @workflow.run
    async def run(self, tasks: int, complete: bool, patches: int = 0) -> None:
        for i in range(patches):
            workflow.patched(f"probe-patch-{i}")
        for _ in range(tasks):
            await workflow.execute_activity(noop, start_to_close_timeout=timedelta(seconds=30))
        if complete:
            return
        workflow.upsert_search_attributes({"HedgeStatus": ["waiting"]})  # the bench counts the runs at rest
        await workflow.wait_condition(lambda: self.released)

    @workflow.signal
    def release(self) -> None:
        self.released = True


async def serve(address: str, cache: int) -> None:
    client = await Client.connect(address)
    worker = Worker(client, task_queue=QUEUE, workflows=[RunMemoryProbe], activities=[noop],
                    workflow_runner=UnsandboxedWorkflowRunner(), max_cached_workflows=cache)
    print("ready", flush=True)
    await worker.run()


async def measure(runs: int, tasks: int, complete: bool, cache: int, patches: int = 0) -> dict:
    port = free_port()
    address = f"127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="hedgeguard-run-memory-") as tmp:
        server = subprocess.Popen(dev_server_argv(Path(tmp) / "t.db", port), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        worker = None
        try:
            client = await connect_when_up(address)
            worker = subprocess.Popen([sys.executable, "-m", "bench.run_memory", "--serve", address, "--cache", str(cache)],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert worker.stdout is not None
            await asyncio.to_thread(worker.stdout.readline)
            await asyncio.sleep(2)
            before = rss_mib(worker.pid)
            started = time.monotonic()
            for first in range(0, runs, BATCH):
                await asyncio.gather(*(client.start_workflow(RunMemoryProbe.run, args=[tasks, complete, patches], id=f"probe-{i}",
                                                             task_queue=QUEUE) for i in range(first, min(runs, first + BATCH))))
                await _settled(client, first + BATCH if first + BATCH < runs else runs, complete)
                print(f"  runs {min(runs, first + BATCH)}/{runs}, {time.monotonic() - started:.1f} s", end="\r",
                      file=sys.stderr, flush=True)
            print(file=sys.stderr)
            await asyncio.sleep(3)
            after = rss_mib(worker.pid)
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=15)
    return {"runs": runs, "tasks": tasks, "patches": patches, "end": "complete" if complete else "wait", "cache": cache,
            "rss_before_mib": round(before, 1), "rss_after_mib": round(after, 1),
            "kib_per_run": round((after - before) * 1024 / runs, 1)}


async def _settled(client: Client, done: int, complete: bool) -> None:
    """Until `done` runs have taken all their tasks (completed, or waiting at rest)."""
    query = ('WorkflowType="RunMemoryProbe" AND ExecutionStatus="Completed"' if complete
             else 'WorkflowType="RunMemoryProbe" AND HedgeStatus="waiting"')
    deadline = time.monotonic() + 300
    while (await client.count_workflows(query)).count < done:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {done} probe runs settled within 300 s")
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--tasks", type=int, nargs="+", default=[0, 60], help="activities (workflow tasks) per run")
    parser.add_argument("--end", nargs="+", choices=["wait", "complete"], default=["wait", "complete"])
    parser.add_argument("--cache", type=int, nargs="+", default=[5000], help="the worker's max_cached_workflows")
    parser.add_argument("--patches", type=int, nargs="+", default=[0], help="patches each run takes")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.cache[0]))
        return
    print(f"{'tasks/run':>9} {'patches':>7} {'end':>9} {'cache':>6} {'worker RSS MiB':>20} {'KiB a run':>10}")
    for cache in args.cache:
        for end in args.end:
            for tasks in args.tasks:
                for patches in args.patches:
                    r = asyncio.run(measure(args.runs, tasks, end == "complete", cache, patches))
                    print(f"{tasks:>9} {patches:>7} {end:>9} {cache:>6} {r['rss_before_mib']:>9} -> "
                          f"{r['rss_after_mib']:>7} {r['kib_per_run']:>10}", flush=True)


if __name__ == "__main__":
    main()
