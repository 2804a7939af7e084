"""Market replay from the real OHLC files in ../shared/data.

Each bar becomes four price points, open -> the extreme nearer the open -> the other extreme -> close, at
0, 1/3, 2/3 and the end of the bar, so a strategy sees the intrabar low and high it would have met.
Funding rates come from the Binance funding file at each 8 h settlement the replay crosses.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from bisect import bisect_right
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

# ../shared/data beside the repository, or wherever HEDGEGUARD_DATA_DIR says
DATA_DIR = Path(os.environ.get("HEDGEGUARD_DATA_DIR") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")
FUNDING_FILE = "funding_binance_usdm_8h_btcusdt_ethusdt_2020-01-01_2026-06-30.csv"


def parse_ts(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


@dataclass(frozen=True)
class Bar:
    ts: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


@dataclass(frozen=True)
class PricePoint:
    ts: datetime
    price: Decimal


def load_bars(path: Path) -> list[Bar]:
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = {"ts", "open", "high", "low", "close"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path.name} lacks columns {sorted(missing)}; expected ts,open,high,low,close")
        bars = [Bar(parse_ts(r["ts"]), Decimal(r["open"]), Decimal(r["high"]), Decimal(r["low"]),
                    Decimal(r["close"])) for r in reader]
    if len(bars) < 2:
        raise ValueError(f"{path.name} has fewer than two bars")
    return bars


def bar_seconds(bars: list[Bar]) -> float:
    """The file's resolution: the most common gap between bars (files have maintenance gaps)."""
    gaps = [(b.ts - a.ts).total_seconds() for a, b in zip(bars, bars[1:], strict=False)]
    return min(set(gaps), key=lambda g: (-gaps.count(g), g))


def path_points(bars: list[Bar], seconds: float) -> list[PricePoint]:
    points: list[PricePoint] = []
    step = timedelta(seconds=seconds / 3)
    for bar in bars:
        near, far = (bar.low, bar.high) if bar.open - bar.low <= bar.high - bar.open else (bar.high, bar.low)
        points += [PricePoint(bar.ts, bar.open), PricePoint(bar.ts + step, near), PricePoint(bar.ts + 2 * step, far),
                   PricePoint(bar.ts + timedelta(seconds=seconds) - timedelta(milliseconds=1), bar.close)]
    return points


class FundingHistory:
    """Historical 8 h funding rates by symbol (fraction per period)."""

    def __init__(self, path: Path) -> None:
        self.rates: dict[str, dict[datetime, Decimal]] = {}
        with _open_text(path) as fh:
            for row in csv.DictReader(fh):
                self.rates.setdefault(row["symbol"], {})[parse_ts(row["ts"])] = Decimal(row["funding_rate"])

    def rate(self, symbol: str, settlement: datetime) -> Decimal | None:
        return self.rates.get(symbol, {}).get(settlement)


class Replay:
    """Walks a price path; `due(now_wall)` says which points a real-time replay has reached."""

    def __init__(self, path: Path, *, symbol: str = "BTCUSDT", speed: float = 60.0, start: datetime | None = None):
        self.file = path
        self.symbol = symbol
        self.bars = load_bars(path)
        self.bar_s = bar_seconds(self.bars)
        self.points = path_points(self.bars, self.bar_s)
        self.speed = speed
        self.index = 0
        if start is not None:
            self.seek(start)
        self._anchor_wall: float | None = None
        self._anchor_ts: datetime | None = None

    @property
    def done(self) -> bool:
        return self.index >= len(self.points)

    @property
    def current(self) -> PricePoint | None:
        return self.points[self.index - 1] if self.index > 0 else None

    def seek(self, moment: datetime) -> None:
        times = [p.ts for p in self.points]
        if not times[0] <= moment <= times[-1]:
            raise ValueError(f"{moment.isoformat()} is outside {self.file.name} "
                             f"({times[0].isoformat()} .. {times[-1].isoformat()})")
        self.index = max(0, bisect_right(times, moment) - 1)
        self._anchor_wall = None

    def step(self, points: int = 1) -> list[PricePoint]:
        taken = self.points[self.index:self.index + points]
        self.index += len(taken)
        self._anchor_wall = None
        return taken

    def due(self, wall_s: float) -> list[PricePoint]:
        """Points whose historical time, scaled by speed from the moment playing resumed, has come."""
        if self.done or self.speed <= 0:
            return []
        if self._anchor_wall is None:
            self._anchor_wall, self._anchor_ts = wall_s, self.points[self.index].ts
        reached = self._anchor_ts + timedelta(seconds=(wall_s - self._anchor_wall) * self.speed)
        out = []
        while not self.done and self.points[self.index].ts <= reached:
            out.append(self.points[self.index])
            self.index += 1
        return out

    def status(self) -> dict[str, object]:
        current = self.current
        return {"file": self.file.name, "symbol": self.symbol, "speed": self.speed,
                "bar_seconds": self.bar_s, "points_done": self.index, "points_total": len(self.points),
                "replay_time": current.ts.isoformat() if current else None, "done": self.done,
                "first": self.points[0].ts.isoformat(), "last": self.points[-1].ts.isoformat()}
