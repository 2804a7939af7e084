"""Average-cost accounting: the event types and figures a person reading a ledger expects."""

from decimal import Decimal as D

import pytest

from risk.accounting import LedgerEventType as T
from risk.accounting import Position, apply, fee_delta, fill_deltas, funding_delta, rebuild


def run(*fills: tuple[str, str]) -> tuple[Position, list]:
    pos, deltas = Position(), []
    for qty, price in fills:
        for d in fill_deltas(pos, D(qty), D(price)):
            deltas.append(d)
            pos = apply(pos, d)
    return pos, deltas


def test_short_opened_increased_reduced_and_closed_realises_the_price_move():
    pos, deltas = run(("-1", "60000"), ("-1", "58000"), ("0.5", "55000"), ("1.5", "50000"))
    assert [d.type for d in deltas] == [T.OPEN, T.INCREASE, T.DECREASE, T.CLOSE]
    # average entry 59000; 0.5 bought back at 55000 (+2000), 1.5 at 50000 (+13500)
    assert deltas[2].realised_pnl == D("2000")
    assert deltas[3].realised_pnl == D("13500")
    assert pos == Position(realised_pnl=D("15500"), margin=D("15500"))


def test_fill_through_zero_is_a_close_then_an_open():
    pos, deltas = run(("-1", "100"), ("3", "90"))
    assert [(d.type, d.size) for d in deltas] == [(T.OPEN, D(-1)), (T.CLOSE, D(1)), (T.OPEN, D(2))]
    assert pos.size == D(2) and pos.cost_basis == D(180) and pos.realised_pnl == D(10)
    assert pos.average_entry == D(90)


def test_liquidation_is_typed_as_such():
    pos = apply(Position(), fill_deltas(Position(), D("-2"), D("100"))[0])
    (liq,) = fill_deltas(pos, D("2"), D("150"), liquidation=True)
    assert liq.type == T.LIQUIDATION and liq.realised_pnl == D(-100)


def test_fees_and_funding_move_realised_pnl_and_margin_not_size():
    d = rebuild([fee_delta(D("1.25")), funding_delta(D("-3")), funding_delta(D("0.5"))])
    assert d == Position(realised_pnl=D("-3.75"), margin=D("-3.75"))


def test_unrealised_pnl_of_a_short():
    pos, _ = run(("-2", "50000"))
    assert pos.unrealised_pnl(D("45000")) == D("10000")
    assert pos.notional == D("100000")


@pytest.mark.parametrize("qty,price", [("0", "100"), ("1", "0"), ("1", "-5")])
def test_impossible_fills_are_refused(qty, price):
    with pytest.raises(ValueError):
        fill_deltas(Position(), D(qty), D(price))
