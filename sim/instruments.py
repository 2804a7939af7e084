"""The contracts each emulated venue lists, with the venue's own filters (tick, lot, minimum notional)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, Decimal

D = Decimal


@dataclass(frozen=True)
class Instrument:
    symbol: str
    base: str
    quote: str
    tick: Decimal
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    max_leverage: Decimal
    maintenance_margin_rate: Decimal = D("0.005")
    market_qty_share: Decimal = D("0.1")  # market orders are capped at this share of max_qty

    @property
    def max_market_qty(self) -> Decimal:
        return self.max_qty * self.market_qty_share

    def round_qty(self, qty: Decimal) -> Decimal:
        return (qty / self.qty_step).to_integral_value(rounding=ROUND_DOWN) * self.qty_step

    def on_tick(self, price: Decimal) -> bool:
        return price % self.tick == 0

    def on_step(self, qty: Decimal) -> bool:
        return qty % self.qty_step == 0


INSTRUMENTS: dict[str, dict[str, Instrument]] = {
    "bybit": {
        "BTCUSDT": Instrument("BTCUSDT", "BTC", "USDT", D("0.10"), D("0.001"), D("0.001"), D("1190"), D("5"), D("100")),
        "ETHUSDT": Instrument("ETHUSDT", "ETH", "USDT", D("0.01"), D("0.01"), D("0.01"), D("7240"), D("5"), D("100")),
    },
    "binanceusdm": {
        "BTCUSDT": Instrument("BTCUSDT", "BTC", "USDT", D("0.10"), D("0.001"), D("0.001"), D("1000"), D("100"),
                              D("125"), D("0.004"), D("0.125")),
        "ETHUSDT": Instrument("ETHUSDT", "ETH", "USDT", D("0.01"), D("0.001"), D("0.001"), D("10000"), D("20"),
                              D("100"), D("0.005"), D("0.125")),
    },
}
