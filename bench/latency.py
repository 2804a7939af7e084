"""Reaction latency: from the emulator publishing a band-crossing tick to the emulator receiving each loan's
hedge order, through the real feed, loan guard and hedge workflows on a real dev server and worker.

    .venv/bin/python -m bench.latency                  # N = 1 and N = 1,000
    .venv/bin/python -m bench.latency --loans 1 100 --json latency.json

For each N a fresh stack (bench/stack.py): dev server (SQLite, WAL), worker subprocess, simulator in this
process. N paper accounts each get a 1 BTC / 24,000 USDT loan (40 % LTV at 60,000, a round price set here,
not market history) and a loan guard with production timings. Once every guard has a feed price, the price
is set to 52,700 (LTV 45.5 %: CAUTION for all). The tick goes out to the websocket subscribers in that call;
its time is taken just before it. Per loan, latency = the emulator's arrival stamp of the first
/v5/order/create from that loan's account minus that time (both this process's wall clock, ms).

One crossing of one loan is one sample, too few for a p99: below 100 loans a run makes `--crossings` crossings
(default 10). Between two, the price goes up to 64,000 (LTV 37.5 %, SAFE: under 38 % the hedge comes off), and
the next crossing waits until each account is flat (no position, no open order, no order sent for 2 s). The
percentiles pool every crossing's samples; `all_hedged_s` is the slowest crossing's last order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path

import aiohttp

from bench.stack import BenchStack, CallTail, FeedRoster, FirstOrders, cache_for
from models.loan_guard import LoanGuardInput
from models.settings import Settings

START_PRICE = Decimal("60000")
CAUTION_PRICE = Decimal("52700")
SAFE_PRICE = Decimal("64000")  # LTV 37.5 %: under risk.loan's safe_below (38 %), where the hedge comes off
DEBT = "24000"
DEFAULT_CROSSINGS = 10  # for N < 100: one crossing of one loan is one sample; each takes ~30 s (the hedge off)
QUIET_S = 2.0  # an account is flat once it has no position, no open order and sent no order for this long


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def progress(text: str) -> None:
    print(f"\r  {text}\033[K", end="", file=sys.stderr, flush=True)


async def bounded(n: int, limit: int, make) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(i: int):
        async with sem:
            return await make(i)
    return await asyncio.gather(*(one(i) for i in range(n)))


async def open_loans(stack: BenchStack, n: int) -> list[str]:
    from activities.venues import ensure_paper_account

    assert stack.sim is not None
    settings = Settings(paper_control_url=stack.sim.urls["control"], metrics_bind="")
    accounts = [f"lat-{i:05d}" for i in range(n)]
    done = 0

    async def make(i: int) -> None:
        nonlocal done
        await ensure_paper_account(settings, "bybit", accounts[i])
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{stack.sim.urls['control']}/control/loans", json={
                    "account": accounts[i], "collateral_btc": "1", "debt_usdt": DEBT}) as resp:
                assert resp.status == 200, await resp.text()
        done += 1
        if done % 50 == 0 or done == n:
            progress(f"loans opened {done}/{n}")
    await bounded(n, 20, make)
    return accounts


async def enrol(stack: BenchStack, accounts: list[str]) -> list:
    assert stack.client is not None
    started = time.monotonic()

    async def make(i: int):
        inp = LoanGuardInput(loan_id=f"LAT-{i:05d}", account=accounts[i])
        handle = await stack.client.start_workflow("LoanGuardWorkflow", inp, id=inp.workflow_id, task_queue="bench")
        if (i + 1) % 50 == 0 or i + 1 == len(accounts):
            progress(f"enrolled {i + 1}/{len(accounts)} ({(i + 1) / (time.monotonic() - started):.0f}/s)")
        return handle
    return await bounded(len(accounts), 50, make)


async def wait_all_watching(stack: BenchStack, loan_ids: set[str], within_s: float) -> None:
    """Every guard is subscribed to its feed shard: the crossing tick will wake them all. (The shards are asked,
    not each guard: a thousand queries a second would load the worker being measured.)"""
    assert stack.client is not None
    deadline = time.monotonic() + within_s
    roster = FeedRoster(stack.client)
    while True:
        missing = loan_ids - await roster.loans()
        progress(f"guards watching the feed {len(loan_ids) - len(missing)}/{len(loan_ids)}")
        if not missing:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} loan guards not subscribed to the feed after {within_s:.0f} s")
        await asyncio.sleep(1.0)


def hedged_accounts(stack: BenchStack, accounts: list[str], since_ms: float) -> list[str]:
    """Accounts still hedged: a position, an open order, or an order sent in the last QUIET_S seconds."""
    assert stack.sim is not None
    engine = stack.sim.engines["bybit"]
    recent = {e.get("account") for e in stack.sim.calls.query(venue="bybit", path="/v5/order/create")
              if e["ts_ms"] >= max(since_ms, time.time() * 1000 - QUIET_S * 1000)}
    busy = []
    for name in accounts:
        account = engine.account_by_name(name)
        if account is None or account.position("BTCUSDT").size != 0 or account.open_orders() or name in recent:
            busy.append(name)
    return busy


async def back_to_safe(stack: BenchStack, accounts: list[str], *, within_s: float) -> None:
    """Price up to SAFE_PRICE (out of CAUTION): every guard takes its hedge off; the next crossing starts flat."""
    assert stack.sim is not None
    since = time.time() * 1000
    stack.sim.market.set_price("BTCUSDT", SAFE_PRICE)
    deadline = time.monotonic() + within_s
    await asyncio.sleep(QUIET_S)
    while busy := hedged_accounts(stack, accounts, since):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(busy)} accounts still hedged {within_s:.0f} s after the price went up to "
                               f"{SAFE_PRICE} (first: {busy[0]})")
        progress(f"back to SAFE: {len(accounts) - len(busy)}/{len(accounts)} hedges off")
        await asyncio.sleep(0.5)


async def crossing(stack: BenchStack, accounts: list[str], *, timeout_s: float, label: str) -> dict[str, float]:
    """One band-crossing tick; per account, ms from the tick to the emulator receiving its first order."""
    assert stack.sim is not None
    tail = CallTail(stack)
    t0 = time.time() * 1000
    stack.sim.market.set_price("BTCUSDT", CAUTION_PRICE)
    orders = FirstOrders(tail, set(accounts), t0)
    while not orders.complete() and time.time() * 1000 - t0 < timeout_s * 1000:
        progress(f"{label}hedge orders received {len(orders.read())}/{len(accounts)}, "
                 f"{(time.time() * 1000 - t0) / 1000:.1f} s after the tick")
        await asyncio.sleep(0.05)
    return orders.first


def crossings_for(n: int, given: int | None) -> int:
    return given if given is not None else (DEFAULT_CROSSINGS if n < 100 else 1)


async def measure(n: int, *, timeout_s: float, crossings: int) -> dict:
    print(f"N = {n}: starting a fresh stack ({crossings} crossing{'s' if crossings > 1 else ''})",
          file=sys.stderr, flush=True)
    async with BenchStack(price=START_PRICE, worker_env={"HEDGEGUARD_MAX_CACHED_WORKFLOWS": str(cache_for(n))}) as stack:
        assert stack.sim is not None
        accounts = await open_loans(stack, n)
        handles = await enrol(stack, accounts)
        await wait_all_watching(stack, {h.id.removeprefix("loan-") for h in handles}, within_s=max(60.0, n * 0.2))
        await asyncio.sleep(2.0)  # let the feed's first round of keep-alives pass
        rss_rest = stack.rss("worker")
        lat: list[float] = []
        per_crossing: list[float] = []  # each crossing's slowest order, in order: the first one opens the hedges
        slowest = 0.0  # the slowest complete crossing's last order
        done, hedged = 0, n
        for k in range(crossings):
            if k:
                await back_to_safe(stack, accounts, within_s=max(120.0, timeout_s))
            label = f"crossing {k + 1}/{crossings}: " if crossings > 1 else ""
            first = await crossing(stack, accounts, timeout_s=timeout_s, label=label)
            lat += first.values()
            done += 1
            if len(first) < n:
                hedged = len(first)
                print(f"\n  {n - len(first)} loans got no hedge order within {timeout_s:.0f} s; no more crossings",
                      file=sys.stderr)
                break
            slowest = max(slowest, max(first.values()))
            per_crossing.append(round(max(first.values()), 1))
        print(file=sys.stderr)
        rss_busy = stack.rss("worker")
        if not lat:
            raise RuntimeError(f"no hedge order within {timeout_s:.0f} s of the tick")
        return {"loans": n, "hedged": hedged, "crossings": done, "samples": len(lat),
                "p50_ms": round(percentile(lat, 50), 1), "p95_ms": round(percentile(lat, 95), 1),
                "p99_ms": round(percentile(lat, 99), 1), "max_ms": round(max(lat), 1),
                "all_hedged_s": round(slowest / 1000, 3) if hedged == n else None,
                "worker_rss_mib": round(max(rss_rest, rss_busy), 1), "worker_rss_at_rest_mib": round(rss_rest, 1),
                "slowest_ms_per_crossing": per_crossing}


def table(runs: list[dict]) -> str:
    head = f"{'loans':>6} {'crossings':>9} {'samples':>7} {'hedged':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} " \
           f"{'max ms':>8} {'all hedged s':>13} {'worker RSS MiB':>15}"
    rows = [f"{r['loans']:>6} {r['crossings']:>9} {r['samples']:>7} {r['hedged']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8} "
            f"{r['p99_ms']:>8} {r['max_ms']:>8} {r['all_hedged_s'] if r['all_hedged_s'] is not None else '-':>13} "
            f"{r['worker_rss_mib']:>15}" for r in runs]
    return "\n".join([head, *rows])


async def main_async(args: argparse.Namespace) -> int:
    # SIGTERM tears the stack down as Ctrl-C does (the dev server and the worker run in their own sessions)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    runs = []
    for n in args.loans:
        runs.append(await measure(n, timeout_s=args.timeout, crossings=crossings_for(n, args.crossings)))
        print(table(runs[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print("tick → hedge order latency (emulator publish → emulator receives the order)")
    print(table(runs))
    for r in runs:
        if r["crossings"] > 1:
            print(f"N = {r['loans']}, each crossing's slowest order (ms): "
                  + ", ".join(str(ms) for ms in r["slowest_ms_per_crossing"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loans", type=int, nargs="+", default=[1, 1000], help="N for each run (default 1 1000)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every hedge order")
    parser.add_argument("--crossings", type=int, metavar="K",
                        help=f"band crossings per run (default {DEFAULT_CROSSINGS} below 100 loans, else 1)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.crossings is not None and args.crossings < 1:
        parser.error("--crossings must be at least 1")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError) as exc:
        print("\ninterrupted; the stack was torn down", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
