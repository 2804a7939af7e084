"""Scale: N loans, each on its own simulated Bybit account, guarded by one worker on one dev server; how fast
they enrol, what the worker and the server hold at rest, and how long until every loan has sent its hedge
order after one band-crossing tick.

    .venv/bin/python -m bench.scale                          # 10,000 loans (the issue's figure)
    .venv/bin/python -m bench.scale --loans 2000 --json scale.json
    .venv/bin/python -m bench.scale --loans 500 --max-cached 1000   # the worker's default cache, not 2 per loan

One fresh stack (bench/stack.py): the dev server (SQLite, WAL) and the worker as subprocesses, the simulator in
this process. The phases, each with its progress on stderr (done / total, elapsed, rate):

1. accounts: N paper accounts are created through the simulator's control API (POST /control/accounts, what
   the worker's VenuePool does on first use); each gets a 1 BTC / 24,000 USDT loan (40 % LTV at a round
   60,000 set here, not market history), opened on the in-process loan book directly: POST /control/loans
   answers with a snapshot of every loan, so opening N loans through it costs O(N^2) (see bench/README.md).
2. enrolment: a LoanGuardWorkflow per loan with production timings (50 start RPCs in flight, and at most
   `--window` guards started and not yet enrolled, as an operator enrols a book in batches: ten thousand guards
   started at once all crawl through their start-up together); a loan is enrolled once its feed shard (a
   PriceFeedWorkflow) lists it among its subscriptions (the feed wakes exactly its subscribers). `enrol_s` runs
   from the first start RPC to the last subscription, `enrol_per_s` = enrolled / enrol_s; `start_per_s` is
   loans / the time until the last start RPC (paced by the window). When no loan has subscribed for `--stall` seconds, or
   `--enrol-within` seconds have passed, enrolment is given up: no more guards are started (`started` < N), and the
   bench goes on with `enrolled` < N (a guard started without feed ticks polls the price itself).
3. rest: `--rest` seconds (default 15) with nothing happening but the odd keep-alive (every 10 min a
   loan); worker and server RSS are read at its end, CPU over the whole window.
4. the tick: the price is set to 52,700 (LTV 45.5 %: CAUTION for every loan); the ticker goes out to the
   websocket subscribers inside that call, its time taken just before. Per loan, latency = the emulator's
   arrival stamp of that account's first /v5/order/create minus that time (one wall clock, ms). The call log
   is a bounded deque (50,000 entries), so it is read while waiting, only what arrived since the last read.
   `all_hedged_s` = the last loan's latency, once every loan has one (none when `--timeout` ran out first). Only the
   guards started are waited for.

CPU figures are % of one core over each phase (/proc/PID/stat), with in brackets the time the process was
runnable but waited for a core (/proc/PID/task/*/schedstat; high when other work shares the machine), and the
1-minute load average at the phase's end; `bench` is this process: the simulator that answers every venue call,
plus the bench's own client. Ctrl-C tears the stack down and exits with 130 (SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp

from activities.venues import paper_credentials
from bench.latency import CAUTION_PRICE, DEBT, START_PRICE, percentile
from bench.stack import BenchStack, CallTail, FeedRoster, FirstOrders, cache_for, rss_mib
from models.loan_guard import LoanGuardInput

TASK_QUEUE = "bench"
STARTS_IN_FLIGHT = 50
ENROL_WINDOW = 500  # guards started and not yet subscribed, at most
ACCOUNTS_IN_FLIGHT = 20
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- progress ------------------------------------------------------------------------------------------------
class Progress:
    """One stderr line per phase, rewritten in place: done / total, elapsed, rate."""

    def __init__(self, label: str, total: int, *, since: float | None = None, unit: str = "/s") -> None:
        self.label, self.total, self.unit = label, total, unit  # unit "": no rate shown
        self.started = since if since is not None else time.monotonic()
        self.shown = 0.0

    def show(self, done: int, extra: str = "", *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < 0.2 and done < self.total:
            return
        self.shown = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        shown_rate = f", {rate:.1f}{self.unit}" if self.unit else ""
        print(f"\r  {self.label} {done}/{self.total}, {elapsed:.1f} s{shown_rate}{extra}\033[K",
              end="", file=sys.stderr, flush=True)

    def end(self, done: int, extra: str = "") -> None:
        self.show(done, extra, force=True)
        print(file=sys.stderr, flush=True)


# -- processes: RSS and CPU ----------------------------------------------------------------------------------
def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runnable_wait_s(pid: int) -> dict[int, float]:
    """Seconds each live thread of the process spent runnable but waiting for a core (schedstat): CPU starvation.
    Per thread, because a thread that ends takes its count with it: a process-wide sum could fall over a phase."""
    waits: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            waits[int(task.name)] = int((task / "schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
    return waits


def waited_s(before: dict[int, float], after: dict[int, float]) -> float:
    """Run-queue wait over a phase by the threads alive at its end (a thread that ended inside it is not counted;
    a thread id the kernel reused for a new thread counts from that thread's start)."""
    return sum(wait - before.get(tid, 0.0) if wait >= before.get(tid, 0.0) else wait for tid, wait in after.items())


class Usage:
    """RSS peaks sampled twice a second, and CPU per phase, for the worker, the dev server and this process."""

    def __init__(self, stack: BenchStack) -> None:
        self.pids = {"worker": stack.procs["worker"].pid, "server": stack.procs["temporal"].pid, "bench": os.getpid()}
        self.peak = dict.fromkeys(self.pids, 0.0)
        self.start = {name: self.rss(name) for name in self.pids}  # before the first loan
        self.phases: dict[str, dict[str, float]] = {}
        self._mark: tuple[str, float, dict[str, float]] | None = None
        self._task: asyncio.Task | None = None

    def rss(self, name: str) -> float:
        value = rss_mib(self.pids[name])
        self.peak[name] = max(self.peak[name], value)
        return value

    def _cpu(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, pid in self.pids.items():
            try:
                out[f"{name}_cpu"], out[f"{name}_wait"] = cpu_s(pid), runnable_wait_s(pid)
            except OSError:
                out[f"{name}_cpu"], out[f"{name}_wait"] = float("nan"), None
        return out

    @staticmethod
    def _spent(key: str, before: dict[str, Any], after: dict[str, Any]) -> float:
        if key.endswith("_wait"):
            if before[key] is None or after[key] is None:
                return float("nan")
            return waited_s(before[key], after[key])
        return after[key] - before[key]

    def phase(self, name: str | None) -> None:
        """Close the running phase (CPU and run-queue wait, % of one core over it; the load average at its end)
        and open `name`."""
        now, cpu = time.monotonic(), self._cpu()
        if self._mark is not None:
            label, began, before = self._mark
            wall = max(now - began, 1e-6)
            self.phases[label] = {"wall_s": round(wall, 1),
                                  **{f"{k}_pct": round(100 * self._spent(k, before, cpu) / wall, 1) for k in cpu},
                                  "load_avg_1m": float(Path("/proc/loadavg").read_text().split()[0])}
        self._mark = (name, now, cpu) if name is not None else None

    async def _sample(self) -> None:
        while True:
            for name in self.pids:
                try:
                    self.rss(name)
                except (OSError, RuntimeError):
                    pass
            await asyncio.sleep(0.5)

    def __enter__(self) -> Usage:
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()


class ScaleStack(BenchStack):
    """BenchStack with the worker's workflow cache sized for the run (HEDGEGUARD_MAX_CACHED_WORKFLOWS)."""

    def __init__(self, *, max_cached: int, **kwargs: Any) -> None:
        super().__init__(worker_env={"HEDGEGUARD_MAX_CACHED_WORKFLOWS": str(max_cached)}, **kwargs)

    async def __aexit__(self, exc_type, *exc) -> None:
        print("\n  stopping the worker, the dev server and the simulator (up to ~30 s)", file=sys.stderr, flush=True)
        await super().__aexit__(exc_type, *exc)


def worker_alive(stack: BenchStack) -> None:
    proc = stack.procs["worker"]
    if proc.poll() is not None:
        log = (stack.dir / "worker.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"the worker exited ({proc.returncode}): {log}")


# -- the phases ----------------------------------------------------------------------------------------------
async def open_accounts(stack: BenchStack, n: int) -> list[str]:
    """N paper accounts through the control API, each with a loan opened on the in-process loan book."""
    assert stack.sim is not None
    sim, accounts = stack.sim, [f"scale-{i:05d}" for i in range(n)]
    engine = sim.engines["bybit"]
    progress, done = Progress("accounts with a loan", n), 0
    sem = asyncio.Semaphore(ACCOUNTS_IN_FLIGHT)
    async with aiohttp.ClientSession() as http:
        async def one(name: str) -> None:
            nonlocal done
            creds = paper_credentials("bybit", name)
            async with sem, http.post(f"{sim.urls['control']}/control/accounts", json={
                    "venue": "bybit", "name": name, "api_key": creds.api_key.get_secret_value(),
                    "secret": creds.api_secret.get_secret_value(), "balances": {"USDT": "100000"}}) as resp:
                assert resp.status < 300, await resp.text()
            account = engine.accounts[creds.api_key.get_secret_value()]
            sim.loans.open(account, collateral_btc=Decimal(1), debt_usdt=Decimal(DEBT))
            done += 1
            progress.show(done)
        await asyncio.gather(*(one(a) for a in accounts))
    progress.end(done)
    return accounts


class Enrolled:
    """How many loans the feed lists so far (wait_subscribed counts, start_guards paces on it), how many guards were
    started, and whether enrolment was given up (no more guards are started then)."""

    def __init__(self) -> None:
        self.count = 0
        self.started: set[str] = set()  # accounts whose guard was started
        self.given_up = False


async def start_guards(stack: BenchStack, accounts: list[str], *, window: int = 0, enrolled: Enrolled | None = None) -> float:
    """Start one loan guard per account, at most `window` of them started and not yet subscribed to the feed (0:
    no limit), as an operator enrols a book in batches; returns the seconds the starts took."""
    assert stack.client is not None
    client, n = stack.client, len(accounts)
    progress, done, started = Progress("loan guards started", n), 0, 0
    sem = asyncio.Semaphore(STARTS_IN_FLIGHT)

    async def one(i: int) -> None:
        nonlocal done, started
        inp = LoanGuardInput(loan_id=f"SC-{i:05d}", account=accounts[i])
        async with sem:
            while window and enrolled is not None and started - enrolled.count >= window and not enrolled.given_up:
                await asyncio.sleep(0.2)
            if enrolled is not None and enrolled.given_up:
                return
            started += 1
            if enrolled is not None:
                enrolled.started.add(accounts[i])
            await client.start_workflow("LoanGuardWorkflow", inp, id=inp.workflow_id, task_queue=TASK_QUEUE)
        done += 1
        if not window:  # paced, the subscription count's line is the progress
            progress.show(done)
    await asyncio.gather(*(one(i) for i in range(n)))
    if not window:
        progress.end(done)
    return time.monotonic() - progress.started


async def wait_subscribed(stack: BenchStack, loan_ids: set[str], *, since: float, within_s: float,
                          stall_s: float, enrolled: Enrolled | None = None) -> tuple[int, float]:
    """Until the feed shards list every loan as a subscriber (one query round a second), `within_s` has passed, or
    the count has not grown for `stall_s`. Returns the count and the seconds from `since` to its last growth."""
    assert stack.client is not None
    progress = Progress("loans subscribed to the feed", len(loan_ids), since=since)
    count, error, grew = 0, "", time.monotonic()
    roster = FeedRoster(stack.client)
    while True:
        worker_alive(stack)
        try:
            seen = len(await roster.loans() & loan_ids)
            if seen > count:
                count, grew = seen, time.monotonic()
                if enrolled is not None:
                    enrolled.count = count
            error = ""
        except Exception as exc:  # not started yet, or the query failed: show why, keep trying
            error = f" (feed query: {type(exc).__name__}: {str(exc)[:100]})"
        progress.show(count, error, force=True)
        now = time.monotonic()
        if count == len(loan_ids):
            progress.end(count)
            return count, grew - since
        if now - since > within_s or now - grew > stall_s:
            progress.end(count, error)
            why = f"after {within_s:.0f} s" if now - since > within_s else f"no new subscription for {stall_s:.0f} s"
            started = f" ({len(enrolled.started)} guards started; no more are)" if enrolled is not None else ""
            print(f"  warning: enrolment given up: {len(loan_ids) - count} loans not subscribed to the feed ({why})"
                  f"{started}; the tick goes out anyway to the guards started (one without feed ticks polls the "
                  "price itself)", file=sys.stderr, flush=True)
            if enrolled is not None:
                enrolled.given_up = True
            return count, grew - since
        await asyncio.sleep(1.0)


async def wait_hedged(stack: BenchStack, tail: CallTail, accounts: set[str], t0_ms: float, *,
                      timeout_s: float) -> dict[str, float]:
    """Per account, ms from the tick to the emulator receiving its first order, until all have one."""
    orders = FirstOrders(tail, accounts, t0_ms)
    progress = Progress("loans hedged (first order received)", len(accounts))
    while not orders.complete() and time.monotonic() - progress.started < timeout_s:
        worker_alive(stack)
        progress.show(len(orders.read()))
        await asyncio.sleep(0.1)
    progress.end(len(orders.first))
    if tail.lost:
        print("  warning: the call log evicted entries before they were read; some orders may be missed",
              file=sys.stderr)
    return orders.first


async def measure(n: int, *, timeout_s: float, rest_s: float = 15.0, stall_s: float = 120.0, max_cached: int | None = None,
                  keep: bool = False, window: int = ENROL_WINDOW, enrol_within_s: float | None = None) -> dict[str, Any]:
    max_cached = max_cached or cache_for(n)
    print(f"{n} loans: starting a fresh stack (dev server, worker with max_cached_workflows={max_cached}, simulator)",
          file=sys.stderr, flush=True)
    stack = ScaleStack(price=START_PRICE, max_cached=max_cached, keep=keep)
    async with stack:
        assert stack.sim is not None
        with Usage(stack) as usage:
            usage.phase("accounts")
            t = time.monotonic()
            accounts = await open_accounts(stack, n)
            accounts_s = time.monotonic() - t
            usage.phase("enrol")
            enrol_started = time.monotonic()
            enrolled = Enrolled()
            watch = asyncio.create_task(wait_subscribed(
                stack, {f"SC-{i:05d}" for i in range(n)}, since=enrol_started,
                within_s=enrol_within_s if enrol_within_s is not None else max(timeout_s, n * 0.5),
                stall_s=stall_s, enrolled=enrolled))
            try:
                start_s = await start_guards(stack, accounts, window=window, enrolled=enrolled)
                subscribed, enrol_s = await watch
            finally:  # interrupted: no progress lines over the teardown's
                watch.cancel()
            usage.phase("rest")
            rest = Progress("at rest (s)", int(rest_s), unit="")
            while (waited := time.monotonic() - rest.started) < rest_s:
                rest.show(int(waited))
                await asyncio.sleep(0.5)
            rest.end(int(rest_s))
            worker_rest, server_rest = usage.rss("worker"), usage.rss("server")
            usage.phase("hedge")
            tail = CallTail(stack)
            t0_ms = time.time() * 1000
            stack.sim.market.set_price("BTCUSDT", CAUTION_PRICE)
            # a guard never started sends no order: wait for those started
            first = await wait_hedged(stack, tail, set(enrolled.started), t0_ms, timeout_s=timeout_s)
            usage.rss("worker")
            usage.phase(None)
        db = sum(f.stat().st_size for f in stack.dir.glob("t.db*"))
        figures = figures_of(n, first, started=len(enrolled.started), subscribed=subscribed, enrol_s=enrol_s, start_s=start_s,
                             accounts_s=accounts_s,
                             worker_rest=worker_rest, server_rest=server_rest, usage=usage, db_bytes=db,
                             calls_lost=tail.lost, max_cached=max_cached)
    return figures


def figures_of(n: int, first: dict[str, float], *, started: int, subscribed: int, enrol_s: float, start_s: float,
               accounts_s: float,
               worker_rest: float, server_rest: float, usage: Usage, db_bytes: int, calls_lost: bool,
               max_cached: int) -> dict[str, Any]:
    lat = list(first.values())

    def pct(p: float) -> float | None:
        return round(percentile(lat, p), 1) if lat else None
    return {
        "loans": n, "hedged": len(first), "started": started,
        "enrolled": subscribed, "enrol_per_s": round(subscribed / max(enrol_s, 1e-3), 1), "enrol_s": round(enrol_s, 1),
        "start_per_s": round(started / start_s, 1), "accounts_s": round(accounts_s, 1),
        "worker_rss_at_rest_mib": round(worker_rest, 1), "server_rss_at_rest_mib": round(server_rest, 1),
        "worker_rss_start_mib": round(usage.start["worker"], 1), "server_rss_start_mib": round(usage.start["server"], 1),
        "worker_rss_per_loan_kib": round((worker_rest - usage.start["worker"]) * 1024 / max(started, 1), 1),
        "all_hedged_s": round(max(lat) / 1000, 3) if lat and len(first) == n else None,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "max_ms": round(max(lat), 1) if lat else None,
        "worker_rss_peak_mib": round(usage.peak["worker"], 1), "server_rss_peak_mib": round(usage.peak["server"], 1),
        "server_db_mib": round(db_bytes / 2**20, 1), "phases": usage.phases, "calls_lost": calls_lost,
        "worker_max_cached_workflows": max_cached,
    }


def table(f: dict[str, Any]) -> str:
    def val(key: str, unit: str = "") -> str:
        return "-" if f.get(key) is None else f"{f[key]}{unit}"
    rows = [
        ("loans hedged", f"{f['hedged']} of {f['loans']}"
                         + (f" ({f['started']} guards started)" if f.get("started", f["loans"]) < f["loans"] else "")),
        ("enrolment", f"{val('enrol_per_s', ' loans/s')} ({f['enrolled']} subscribed to the feed in {val('enrol_s', ' s')}; "
                      f"start RPCs {val('start_per_s', '/s')})"),
        ("worker RSS at rest", f"{val('worker_rss_at_rest_mib', ' MiB')} (at start {val('worker_rss_start_mib', ' MiB')}, "
                               f"+{val('worker_rss_per_loan_kib', ' KiB')} a guard started)"),
        ("server RSS at rest", val("server_rss_at_rest_mib", " MiB") + f" (SQLite {val('server_db_mib', ' MiB')} at the end)"),
        ("all hedged after the tick", val("all_hedged_s", " s")),
        ("tick → order p50/p95/p99/max", f"{val('p50_ms')} / {val('p95_ms')} / {val('p99_ms')} / {val('max_ms')} ms"),
        ("worker RSS peak", val("worker_rss_peak_mib", " MiB") + f" (server {val('server_rss_peak_mib', ' MiB')})"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines.append(f"{'CPU (waiting for a core), %':<{width}}  {'wall s':>7} {'worker':>13} {'server':>13} {'bench':>13} "
                 f"{'load 1m':>7}")
    for phase, p in f["phases"].items():
        cells = " ".join(f"{p[f'{k}_cpu_pct']:>6} ({p[f'{k}_wait_pct']:>4})" for k in ("worker", "server", "bench"))
        lines.append(f"{'  ' + phase:<{width}}  {p['wall_s']:>7} {cells} {p['load_avg_1m']:>7}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    # SIGTERM tears the stack down like Ctrl-C does (the dev server and the worker run in their own sessions)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    figures = await measure(args.loans, timeout_s=args.timeout, rest_s=args.rest, stall_s=args.stall,
                            max_cached=args.max_cached, keep=args.keep, window=args.window,
                            enrol_within_s=args.enrol_within)
    goal = "goal: worker RSS < 2 GiB and every loan hedged within 60 s"
    print(f"scale: {args.loans} loans, one worker, one dev server (SQLite WAL), one band-crossing tick; {goal}")
    print(table(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if figures["hedged"] < figures["loans"]:
        if figures["started"] < figures["loans"]:
            print(f"{figures['loans'] - figures['started']} loan guards were never started (enrolment given up)",
                  file=sys.stderr)
        print(f"{figures['started'] - figures['hedged']} loans started sent no hedge order within {args.timeout:.0f} s",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, default=10_000, help="loans, one paper account each (default 10000)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds to wait for every hedge order after the tick (default 900)")
    parser.add_argument("--enrol-within", type=float, metavar="S",
                        help="give enrolment up after S seconds (default max(--timeout, 0.5 s a loan)); no more guards "
                             "are started then, and the tick goes out to those started")
    parser.add_argument("--rest", type=float, default=15.0, help="seconds at rest before the tick (default 15)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--max-cached", type=int, metavar="N",
                        help="the worker's workflow cache (default 2 per loan + 100; the setting's default is 1000)")
    parser.add_argument("--stall", type=float, default=120.0,
                        help="stop waiting for enrolment when no loan subscribed for this many seconds (default 120)")
    parser.add_argument("--window", type=int, default=ENROL_WINDOW,
                        help=f"loan guards started and not yet subscribed to the feed, at most (default {ENROL_WINDOW}; "
                             "0: start them all at once)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs, SQLite files)")
    args = parser.parse_args(argv)
    if args.loans < 1:
        parser.error("--loans must be at least 1")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        print("\ninterrupted; the stack was torn down", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
