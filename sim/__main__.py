"""`python -m sim`: the paper venues on loopback, printing one `NAME URL` line per service once all listen
(control, bybit, binanceusdm, then the chat emulators slack, telegram, smtp).

    python -m sim                                   static price (last close of the real hourly file)
    python -m sim --replay ../shared/data/btcusdt_binance_perp_1m_2020-03-12_crash.csv --speed 60
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import datetime
from decimal import Decimal

from sim.replay import parse_ts
from sim.server import CHAT_SERVICES, DEFAULT_PORTS, VENUES, Simulator


def _ts(text: str) -> datetime:
    try:
        return parse_ts(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2020-03-12T23:00:00Z") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venues", default=",".join(VENUES), help="comma list (default: all)")
    p.add_argument("--host", default="127.0.0.1")
    for name, port in DEFAULT_PORTS.items():
        if name in CHAT_SERVICES:  # None: follows --control-port (sim.server.resolve_ports)
            p.add_argument(f"--{name}-port", type=int, default=None, dest=f"{name}_port",
                           help=f"default {port} when --control-port is {DEFAULT_PORTS['control']}, else any; 0 = any")
        else:
            p.add_argument(f"--{name}-port", type=int, default=port, dest=f"{name}_port",
                           help=f"default {port}; 0 = any")
    p.add_argument("--replay", metavar="FILE", help="OHLC CSV (1m or 1h, .csv or .csv.gz) from ../shared/data")
    p.add_argument("--speed", type=float, default=60.0, help="replay speed factor (default 60: a minute a second)")
    p.add_argument("--start", type=_ts, help="replay start time (default: the file's first bar)")
    p.add_argument("--symbol", default="BTCUSDT", help="which symbol the replay drives")
    p.add_argument("--seed", type=int, default=0, help="seed for ids (runs are deterministic given it)")
    p.add_argument("--liquidation-ltv", type=Decimal, default=Decimal("0.91"), help="crypto-loan liquidation LTV")
    args = p.parse_args(argv)
    args.venues = tuple(v.strip() for v in args.venues.split(",") if v.strip())
    unknown = set(args.venues) - set(VENUES)
    if unknown:
        p.error(f"unknown venue(s) {', '.join(sorted(unknown))}; known: {', '.join(VENUES)}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the simulator binds to loopback only")
    return args


async def serve(args: argparse.Namespace) -> None:
    sim = Simulator(seed=args.seed, liquidation_ltv=args.liquidation_ltv)
    if args.replay:
        sim.load_replay(args.replay, speed=args.speed, start=args.start, symbol=args.symbol)
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    urls = await sim.start(host=args.host, ports=ports, venues=args.venues)
    for name, url in urls.items():
        print(f"{name} {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (ValueError, OSError) as exc:  # a missing data file says which
        print(f"python -m sim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
