"""Prices and the simulator's clock.

Two clocks: venue timestamps (server time, signatures, order and fill times) are always the wall clock,
as ccxt signs with its own; the *market* clock is what funding settlements and loan interest follow. It is
the replay's historical time while a file is replayed, otherwise the wall clock plus whatever
`/control/advance` added.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Quote:
    last: Decimal
    index: Decimal
    mark: Decimal
    funding_rate: Decimal = Decimal("0.0001")
    updated_ms: int = field(default_factory=wall_ms)

    @property
    def risk_price(self) -> Decimal:
        """The lower of last and index: what Bybit values loan collateral at."""
        return min(self.last, self.index)


class MarketClock:
    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._fixed: datetime | None = None

    def now(self) -> datetime:
        return self._fixed if self._fixed is not None else datetime.now(UTC) + self._offset

    def pin(self, moment: datetime | None) -> None:
        """Follow a replay's historical time (None: back to wall time plus offset)."""
        self._fixed = moment

    def advance(self, seconds: float) -> None:
        if self._fixed is not None:
            self._fixed += timedelta(seconds=seconds)
        else:
            self._offset += timedelta(seconds=seconds)


PriceListener = Callable[[str, Quote], None]


class Market:
    def __init__(self, prices: dict[str, Decimal]) -> None:
        self.clock = MarketClock()
        self.quotes = {symbol: Quote(last=p, index=p, mark=p) for symbol, p in prices.items()}
        self._listeners: list[PriceListener] = []

    def subscribe(self, listener: PriceListener) -> None:
        self._listeners.append(listener)

    def quote(self, symbol: str) -> Quote:
        return self.quotes[symbol]

    def set_price(self, symbol: str, last: Decimal, *, index: Decimal | None = None, mark: Decimal | None = None,
                  funding_rate: Decimal | None = None) -> Quote:
        if last <= 0 or (index is not None and index <= 0) or (mark is not None and mark <= 0):
            raise ValueError("prices must be positive")
        quote = self.quotes.get(symbol)
        if quote is None:
            raise KeyError(symbol)
        quote.last = last
        quote.index = index if index is not None else last
        quote.mark = mark if mark is not None else last
        if funding_rate is not None:
            quote.funding_rate = funding_rate
        quote.updated_ms = wall_ms()
        for listener in self._listeners:
            listener(symbol, quote)
        return quote
