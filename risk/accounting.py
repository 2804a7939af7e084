"""Average-cost position accounting for hedge ledgers.

Every ledger event carries signed deltas; a position is the sum of its deltas. Keeping the maths here,
apart from the store, lets the ledger, the reconciler and the backtests share one definition.

Conventions: `size` is signed (negative = short); `cost_basis` is the signed entry value of the open
size (average entry = cost_basis / size); `notional` is |cost_basis|; `realised_pnl` is all-in (trading
PnL + funding - fees); `margin` is the cash effect on the margin balance.
"""

from __future__ import annotations

import decimal
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

ZERO = Decimal(0)
# Partial closes release cost in proportion; the released amount is rounded to this quantum. Rounding
# never breaks totals: realised PnL is computed from the same rounded figure (see fill_deltas).
COST_QUANTUM = Decimal("1e-12")
_CTX = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN)


class LedgerEventType(StrEnum):
    OPEN = "OPEN"
    INCREASE = "INCREASE"
    DECREASE = "DECREASE"
    CLOSE = "CLOSE"
    FUNDING = "FUNDING"
    FEE = "FEE"
    LIQUIDATION = "LIQUIDATION"


@dataclass(frozen=True)
class Position:
    size: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realised_pnl: Decimal = ZERO
    notional: Decimal = ZERO
    margin: Decimal = ZERO

    @property
    def average_entry(self) -> Decimal | None:
        return None if self.size == 0 else _CTX.divide(self.cost_basis, self.size)

    def unrealised_pnl(self, mark: Decimal) -> Decimal:
        return _CTX.subtract(_CTX.multiply(mark, self.size), self.cost_basis)


@dataclass(frozen=True)
class Delta:
    type: LedgerEventType
    size: Decimal = ZERO
    notional: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realised_pnl: Decimal = ZERO
    margin: Decimal = ZERO


def apply(position: Position, delta: Delta) -> Position:
    return Position(
        size=position.size + delta.size,
        cost_basis=position.cost_basis + delta.cost_basis,
        realised_pnl=position.realised_pnl + delta.realised_pnl,
        notional=position.notional + delta.notional,
        margin=position.margin + delta.margin,
    )


def rebuild(deltas: list[Delta] | tuple[Delta, ...]) -> Position:
    """A hedge's figures from its ledger events alone, in ledger order."""
    position = Position()
    for delta in deltas:
        position = apply(position, delta)
    return position


def _tidy(x: Decimal) -> Decimal:
    """Drop trailing zeros (48.650000000000 -> 48.65) without switching to exponent form (1E+3)."""
    n = x.normalize(_CTX)
    return n.quantize(Decimal(1)) if n.as_tuple().exponent > 0 else n


def _sign(x: Decimal) -> int:
    return (x > 0) - (x < 0)


def fill_deltas(position: Position, signed_qty: Decimal, price: Decimal, *, liquidation: bool = False) -> list[Delta]:
    """The ledger deltas of one fill (buy > 0, sell < 0) against the position before it.

    A fill that crosses zero is split into a CLOSE of the old side and an OPEN of the new one, so each
    event's type says what happened. A forced liquidation is typed LIQUIDATION whatever it reduced.
    """
    if signed_qty == 0:
        raise ValueError("a fill has a non-zero quantity")
    if price <= 0:
        raise ValueError(f"a fill has a positive price, got {price}")
    deltas: list[Delta] = []
    size, cost = position.size, position.cost_basis
    remaining = signed_qty

    if size != 0 and _sign(remaining) != _sign(size):
        closing = -remaining if abs(remaining) <= abs(size) else size  # quantity of the old side closed
        full = closing == size
        released = cost if full else _tidy(_CTX.quantize(_CTX.divide(_CTX.multiply(cost, closing), size), COST_QUANTUM))
        realised = _CTX.subtract(_CTX.multiply(closing, price), released)
        kind = LedgerEventType.LIQUIDATION if liquidation else (
            LedgerEventType.CLOSE if full else LedgerEventType.DECREASE)
        new_cost = cost - released
        deltas.append(Delta(type=kind, size=-closing, cost_basis=-released, realised_pnl=realised,
                            margin=realised, notional=abs(new_cost) - abs(cost)))
        size, cost = size - closing, new_cost
        remaining = remaining + closing

    if remaining != 0:
        added = _CTX.multiply(remaining, price)
        kind = LedgerEventType.OPEN if size == 0 else LedgerEventType.INCREASE
        if liquidation:
            kind = LedgerEventType.LIQUIDATION
        deltas.append(Delta(type=kind, size=remaining, cost_basis=added, notional=abs(cost + added) - abs(cost)))
    return deltas


def fee_delta(fee: Decimal) -> Delta:
    """A trading fee (positive = paid, negative = rebate received)."""
    return Delta(type=LedgerEventType.FEE, realised_pnl=-fee, margin=-fee)


def funding_delta(amount: Decimal) -> Delta:
    """A funding settlement (positive = received, negative = paid)."""
    return Delta(type=LedgerEventType.FUNDING, realised_pnl=amount, margin=amount)

