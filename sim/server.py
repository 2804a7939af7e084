"""The simulator: one market, one engine per venue, the Bybit loan book, faults, and the apps serving
them on loopback. A background loop moves the replay along and settles what the market clock crosses:
loan interest every hour, funding every 8 h (historical rates while replaying, the set rate otherwise).
"""

from __future__ import annotations

import asyncio
import gzip
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from sim.binance import BinanceApp
from sim.bybit import BybitApp
from sim.chat import ChatHub
from sim.common import VenueContext
from sim.engine import Engine, EngineConfig
from sim.faults import CallLog, Faults
from sim.instruments import INSTRUMENTS
from sim.loans import LoanBook
from sim.market import Market
from sim.replay import DATA_DIR, FUNDING_FILE, FundingHistory, Replay

VENUES = ("bybit", "binanceusdm")
CHAT_SERVICES = ("slack", "telegram", "smtp")
DEFAULT_PORTS = {"control": 18080, "bybit": 18081, "binanceusdm": 18082, "slack": 18083, "telegram": 18084,
                 "smtp": 18025}
HOUR = timedelta(hours=1)


def last_close(path: Path) -> tuple[Decimal, str]:
    """The last close in a real hourly file, and its time: the static price when nothing is replayed."""
    if not path.is_file():
        raise FileNotFoundError(f"market data {path} not found: ../shared/data must sit beside the repository, "
                                "or set HEDGEGUARD_DATA_DIR")
    with gzip.open(path, "rt") as fh:
        last = fh.read().rstrip().rsplit("\n", 1)[-1].split(",")
    return Decimal(last[4]), last[0]


def resolve_ports(given: dict[str, int] | None) -> dict[str, int]:
    """The caller's ports over the defaults. A chat service left out follows the control port: its fixed port
    beside a control API on 18080 (`make run`), any free port (0) beside one elsewhere, so tests and second
    stacks that move the simulator never collide with a running stack on 18083, 18084, 18025."""
    given = {name: port for name, port in (given or {}).items() if port is not None}
    moved = given.get("control", DEFAULT_PORTS["control"]) != DEFAULT_PORTS["control"]
    return {name: given.get(name, 0 if moved and name in CHAT_SERVICES else port)
            for name, port in DEFAULT_PORTS.items()}


def default_prices(data_dir: Path = DATA_DIR) -> tuple[dict[str, Decimal], dict[str, str]]:
    prices, sources = {}, {}
    for symbol, name in (("BTCUSDT", "btcusdt"), ("ETHUSDT", "ethusdt")):
        path = data_dir / f"{name}_binance_spot_1h_2019-01-01_2026-06-30.csv.gz"
        price, ts = last_close(path)
        prices[symbol], sources[symbol] = price, f"last close of {path.name} ({ts})"
    return prices, sources


class Simulator:
    def __init__(self, *, seed: int = 0, data_dir: Path = DATA_DIR, prices: dict[str, Decimal] | None = None,
                 liquidation_ltv: Decimal = Decimal("0.91"), hold_timeout_s: float = 15.0) -> None:
        self.seed = seed
        self.data_dir = data_dir
        if prices is None:
            prices, self.price_sources = default_prices(data_dir)
        else:
            self.price_sources = {s: "set by caller" for s in prices}
        self.market = Market(prices)
        self.faults = Faults()
        self.calls = CallLog()
        self.engines = {
            "bybit": Engine("bybit", self.market, INSTRUMENTS["bybit"],
                            EngineConfig(maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.00055"),
                                         post_only_style="cancel"), seed=seed),
            "binanceusdm": Engine("binanceusdm", self.market, INSTRUMENTS["binanceusdm"],
                                  EngineConfig(maker_fee=Decimal("0.0002"), taker_fee=Decimal("0.0005"),
                                               post_only_style="reject"), seed=seed, numeric_order_ids=True),
        }
        self.loans = LoanBook(self.market, self.engines["bybit"], liquidation_ltv=liquidation_ltv)
        self.contexts = {v: VenueContext(venue=v, market=self.market, engine=self.engines[v], faults=self.faults,
                                         calls=self.calls, loans=self.loans if v == "bybit" else None,
                                         hold_timeout_s=hold_timeout_s) for v in VENUES}
        self.bybit = BybitApp(self.contexts["bybit"])
        self.binance = BinanceApp(self.contexts["binanceusdm"])
        self.chat = ChatHub(self.faults)
        self.replay: Replay | None = None
        self._funding: FundingHistory | None = None
        self._settled_through = self.market.clock.now()
        self._runners: list[web.AppRunner] = []
        self._loop_task: asyncio.Task | None = None
        self.urls: dict[str, str] = {}
        self.funding_settlements: list[dict[str, Any]] = []

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self, *, host: str = "127.0.0.1", ports: dict[str, int] | None = None,
                    venues: tuple[str, ...] = VENUES, chat: bool = True) -> dict[str, str]:
        """Serve the control API, the venues and (chat=True) Slack, Telegram and SMTP; see resolve_ports."""
        from sim.control import ControlApp

        ports = resolve_ports(ports)
        apps = {"control": ControlApp(self).build()}
        if "bybit" in venues:
            apps["bybit"] = self.bybit.build()
        if "binanceusdm" in venues:
            apps["binanceusdm"] = self.binance.build()
        if chat:
            apps["slack"] = self.chat.slack.build()
            apps["telegram"] = self.chat.telegram.build()
        for name, app in apps.items():
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, host, ports[name], reuse_address=True)
            await site.start()
            port = runner.addresses[0][1]
            self._runners.append(runner)
            self.urls[name] = f"http://{host}:{port}"
        if chat:
            self.urls["smtp"] = f"smtp://{host}:{await self.chat.smtp.start(host, ports['smtp'])}"
        self._loop_task = asyncio.create_task(self._loop())
        return dict(self.urls)

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
        self.bybit.drop_websockets()
        await self.chat.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    async def _loop(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(0.05)

    # -- time -----------------------------------------------------------------------------------
    def tick(self) -> None:
        if self.replay is not None:
            for point in self.replay.due(time.monotonic()):
                self._apply_point(point)
        self.settle_clock()

    def _apply_point(self, point) -> None:
        assert self.replay is not None
        self.market.clock.pin(point.ts)
        self.settle_clock()
        self.market.set_price(self.replay.symbol, point.price)

    def settle_clock(self) -> None:
        """Accrue interest and settle funding for every boundary the market clock crossed."""
        now = self.market.clock.now()
        if now <= self._settled_through:  # replays and stop_replay reset this when the clock jumps back
            return
        hour = self._settled_through.replace(minute=0, second=0, microsecond=0) + HOUR
        while hour <= now:
            self.loans.accrue_hour()
            if hour.hour % 8 == 0:
                self.settle_funding(at=hour)
            hour += HOUR
        self._settled_through = now

    def settle_funding(self, *, at: datetime | None = None, symbol: str | None = None,
                       rate: Decimal | None = None) -> list[dict[str, Any]]:
        at = at or self.market.clock.now()
        done = []
        for sym in ([symbol] if symbol else list(self.market.quotes)):
            use = rate
            if use is None and self.replay is not None:
                use = self.funding_history().rate(sym, at.replace(minute=0, second=0, microsecond=0))
            if use is None:
                use = self.market.quote(sym).funding_rate
            charged = sum(engine.settle_funding(sym, use) for engine in self.engines.values())
            record = {"symbol": sym, "rate": str(use), "market_time": at.isoformat(), "positions_charged": charged}
            self.funding_settlements.append(record)
            done.append(record)
        return done

    def funding_history(self) -> FundingHistory:
        if self._funding is None:
            self._funding = FundingHistory(self.data_dir / FUNDING_FILE)
        return self._funding

    def load_replay(self, file: str, *, speed: float, start: datetime | None = None, symbol: str = "BTCUSDT") -> Replay:
        path = Path(file)
        if not path.is_file():
            candidate = self.data_dir / path.name
            if not candidate.is_file():
                raise ValueError(f"no replay file {file} (looked in {self.data_dir} too)")
            path = candidate
        if symbol not in self.market.quotes:
            raise ValueError(f"unknown symbol {symbol}")
        replay = Replay(path, symbol=symbol, speed=speed, start=start)
        self.replay = replay
        self.price_sources[symbol] = f"replay of {path.name} (real data) at {speed:g}x"
        first = replay.points[replay.index]
        self.market.clock.pin(first.ts)
        self._settled_through = first.ts
        return replay

    def seek_replay(self, moment: datetime) -> dict[str, Any]:
        """Jump the replay: the market clock follows, and only boundaries crossed from there on settle."""
        if self.replay is None:
            raise ValueError("no replay loaded")
        self.replay.seek(moment)
        point = self.replay.points[self.replay.index]
        self.market.clock.pin(point.ts)
        self._settled_through = point.ts
        return self.replay.status()

    def stop_replay(self) -> None:
        self.replay = None
        self.market.clock.pin(None)
        self._settled_through = self.market.clock.now()

    def step_replay(self, points: int) -> list[dict[str, str]]:
        if self.replay is None:
            raise ValueError("no replay loaded")
        taken = self.replay.step(points)
        for point in taken:
            self._apply_point(point)
        return [{"ts": p.ts.isoformat(), "price": str(p.price)} for p in taken]

    def advance(self, seconds: float) -> None:
        self.market.clock.advance(seconds)
        self.settle_clock()

    def market_time(self) -> datetime:
        return self.market.clock.now().astimezone(UTC)
