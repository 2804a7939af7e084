"""`python -m sim` as a person runs it: one `NAME URL` line per service, and a replay of the March 2020
crash at 60x that a plain ccxt client watches fall, price by price from the real file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path

import ccxt.async_support as ccxt
import pytest

from activities.ccxt_venue import loopback_urls
from sim.replay import DATA_DIR, load_bars, path_points

ROOT = Path(__file__).resolve().parent.parent
CRASH = DATA_DIR / "btcusdt_binance_perp_1m_2020-03-12_crash.csv"


def start_sim(*args: str) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen([sys.executable, "-m", "sim", "--control-port", "0", "--bybit-port", "0",
                             "--binanceusdm-port", "0", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    urls = {}
    while len(urls) < 3:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        name, url = line.split()
        urls[name] = url
    return proc, urls


@pytest.mark.slow
async def test_replayed_crash_is_seen_falling_by_a_ccxt_client():
    proc, urls = start_sim("--replay", os.path.relpath(CRASH, ROOT), "--speed", "60")
    assert set(urls) == {"control", "bybit", "binanceusdm"} and all(u.startswith("http://127.0.0.1:") for u in urls.values())
    path_prices = {p.price for p in path_points(load_bars(CRASH), 60)}
    client = ccxt.bybit({"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["linear"]}}})
    client.has["fetchCurrencies"] = False
    client.urls = loopback_urls(client.urls, urls["bybit"])
    seen: list[D] = []
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            seen.append(D(str((await client.fetch_ticker("BTC/USDT:USDT"))["last"])))
            if seen[-1] < seen[0] - 100:
                break
            await asyncio.sleep(0.5)
    finally:
        await client.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert seen[0] > D("5800")  # the window opens near 5,887 (2020-03-12 22:21 UTC)
    assert min(seen) < seen[0] - 100, seen
    assert {D(str(p)) for p in seen} <= {D(str(float(p))) for p in path_prices}  # only prices from the file
    assert proc.returncode == 0


def test_bad_arguments_are_one_clear_line():
    result = subprocess.run([sys.executable, "-m", "sim", "--venues", "kraken"], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2 and "unknown venue(s) kraken" in result.stderr
    result = subprocess.run([sys.executable, "-m", "sim", "--replay", "nope.csv", "--control-port", "0",
                             "--bybit-port", "0", "--binanceusdm-port", "0"], cwd=ROOT, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2 and result.stderr.strip() == "python -m sim: no replay file nope.csv " \
        f"(looked in {DATA_DIR} too)"
