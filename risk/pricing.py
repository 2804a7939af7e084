"""How a hedge order is priced and sized: the escalation ladder, the price-sanity band, and the step from
the current position to the target. Pure functions, shared by the hedge workflow and the backtests.

Ladder steps, from patient to certain:
  PASSIVE(bps)  post-only, `bps` from mid on the passive side (never better than the touch)
  TOUCH         post-only at the best bid (buys) / best ask (sells)
  CROSS(bps)    limit GTC through the far touch by `bps`: takes liquidity, rests if not all filled
  IOC(bps)      immediate-or-cancel through the far touch by `bps`: takes what is there, nothing rests
The hedge starts at the step its urgency names and moves one step on at each replace, so it cannot sit
passively behind a falling market; once at the last step it stays there.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal
from enum import StrEnum


def round_down_to_step(qty: Decimal, step: Decimal) -> Decimal:
    """Whole lots of `step`, never more than asked for."""
    return (qty / step).to_integral_value(rounding=ROUND_DOWN) * step

BPS = Decimal("0.0001")


class StepKind(StrEnum):
    PASSIVE = "passive"
    TOUCH = "touch"
    CROSS = "cross"
    IOC = "ioc"


class Urgency(StrEnum):
    NORMAL = "normal"
    URGENT = "urgent"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Quote:
    bid: Decimal
    ask: Decimal
    index: Decimal

    @property
    def mid(self) -> Decimal:
        return (self.bid + self.ask) / 2


@dataclass(frozen=True)
class PricedOrder:
    price: Decimal
    time_in_force: str  # POST_ONLY | GTC | IOC (models.venue.TimeInForce values)


def _to_tick(price: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (price / tick).to_integral_value(rounding=rounding) * tick


def start_step(urgency: Urgency, kinds: list[StepKind]) -> int:
    """Where on the ladder an order starts: normal at the first step, urgent at the touch (or the first
    step that takes liquidity), critical at the first IOC (a marketable order at once)."""
    if urgency == Urgency.NORMAL:
        return 0
    wanted = (StepKind.TOUCH, StepKind.CROSS, StepKind.IOC) if urgency == Urgency.URGENT else (StepKind.IOC,)
    for i, kind in enumerate(kinds):
        if kind in wanted:
            return i
    return len(kinds) - 1


def price_order(kind: StepKind, bps: Decimal, side: str, quote: Quote, tick: Decimal) -> PricedOrder:
    buy = side == "buy"
    if kind == StepKind.PASSIVE:
        if buy:
            return PricedOrder(min(quote.bid, _to_tick(quote.mid * (1 - bps * BPS), tick, ROUND_FLOOR)), "POST_ONLY")
        return PricedOrder(max(quote.ask, _to_tick(quote.mid * (1 + bps * BPS), tick, ROUND_CEILING)), "POST_ONLY")
    if kind == StepKind.TOUCH:
        return PricedOrder(quote.bid if buy else quote.ask, "POST_ONLY")
    through = (_to_tick(quote.ask * (1 + bps * BPS), tick, ROUND_CEILING) if buy
               else _to_tick(quote.bid * (1 - bps * BPS), tick, ROUND_FLOOR))
    return PricedOrder(through, "GTC" if kind == StepKind.CROSS else "IOC")


def within_band(price: Decimal, index: Decimal, band_bps: Decimal) -> bool:
    """The price-sanity band: refuse to trade further than `band_bps` from the index."""
    return abs(price - index) <= index * band_bps * BPS


@dataclass(frozen=True)
class OrderStep:
    side: str
    qty: Decimal
    reduce_only: bool


def next_order(*, target: Decimal, current: Decimal, hedge_side: str, qty_step: Decimal, min_qty: Decimal,
               max_order_qty: Decimal | None = None) -> OrderStep | None:
    """The order that moves the position toward the target, or None when it is within one lot.

    `target` is a size in the hedge's direction (>= 0); `current` is the signed position. Any reduction is
    reduce-only; a position on the wrong side is first closed reduce-only, never flipped in one order.
    """
    sign = -1 if hedge_side == "short" else 1
    desired = sign * target
    if current != 0 and abs(current) < min_qty and (desired == 0 or (current > 0) != (desired > 0)):
        current = Decimal(0)  # dust on the wrong side cannot be traded away: hedge as if flat
    wrong_side = current != 0 and desired != 0 and (current > 0) != (desired > 0)
    if wrong_side or (desired == 0 and current != 0):
        side, qty, reduce_only = ("buy" if current < 0 else "sell"), abs(current), True
    else:
        diff = desired - current
        if diff == 0:
            return None
        side = "buy" if diff > 0 else "sell"
        reduce_only = abs(desired) < abs(current)
        qty = abs(diff)
    if max_order_qty is not None:
        qty = min(qty, max_order_qty)
    qty = round_down_to_step(qty, qty_step)
    if qty < min_qty:
        return None
    return OrderStep(side=side, qty=qty, reduce_only=reduce_only)
