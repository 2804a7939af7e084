"""The loan guard's rules at every band edge, the treasury split, realisation and hedge margin health."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk.loan import (
    Band,
    Bands,
    TreasuryKind,
    allocate,
    band_for,
    collateral_to_reach,
    hedge_target_btc,
    ltv_pct,
    margin_needs_topup,
    net_delta_btc,
    realisation_due,
    repay_to_reach,
    urgency_for,
)

BANDS = Bands()


def test_ltv_uses_the_lower_of_last_and_index():
    assert ltv_pct(D("24000"), D("1"), D("60000"), D("60000")) == D("40")
    assert ltv_pct(D("24000"), D("1"), D("60000"), D("48000")) == D("50")
    assert ltv_pct(D("24000"), D("1"), D("48000"), D("60000")) == D("50")
    with pytest.raises(ValueError):
        ltv_pct(D("1"), D("0"), D("1"), D("1"))


@pytest.mark.parametrize("ltv,band", [
    ("44.99", Band.SAFE), ("45.0", Band.CAUTION), ("47.99", Band.CAUTION), ("48.0", Band.DANGER),
    ("49.99", Band.DANGER), ("50.0", Band.CRITICAL), ("90", Band.CRITICAL)])
def test_bands_going_up_start_exactly_at_their_threshold(ltv, band):
    assert band_for(D(ltv), Band.SAFE, BANDS) == band


@pytest.mark.parametrize("previous,ltv,band", [
    (Band.CAUTION, "44.5", Band.CAUTION), (Band.CAUTION, "44.0", Band.CAUTION), (Band.CAUTION, "43.99", Band.CAUTION),
    (Band.CAUTION, "38.0", Band.CAUTION), (Band.CAUTION, "37.99", Band.SAFE),  # the hedge stays on until under target
    (Band.DANGER, "47.2", Band.DANGER), (Band.DANGER, "46.99", Band.CAUTION), (Band.DANGER, "43.5", Band.CAUTION),
    (Band.DANGER, "37.5", Band.SAFE),
    (Band.CRITICAL, "49.5", Band.CRITICAL), (Band.CRITICAL, "48.99", Band.DANGER),
    (Band.CRITICAL, "46.5", Band.CAUTION), (Band.CRITICAL, "30", Band.SAFE)])
def test_bands_going_down_need_a_full_point_of_hysteresis(previous, ltv, band):
    assert band_for(D(ltv), previous, BANDS) == band


def test_a_smaller_safe_below_is_honoured_and_a_misplaced_one_refused():
    assert band_for(D("43.99"), Band.CAUTION, Bands(safe_below=D("44"))) == Band.SAFE
    assert Bands(safe_below=D("44.5")).problems() == [
        "safe_below (44.5) must be above 0 and at most caution minus hysteresis (44)"]
    assert "safe_below (0)" in Bands(safe_below=D("0")).problems()[0]


@given(st.lists(st.integers(4400, 4600), min_size=1, max_size=60))
def test_a_price_jiggling_around_45_never_flaps_back_to_safe(ltvs):
    band = band_for(D("45"), Band.SAFE, BANDS)
    for raw in ltvs:
        band = band_for(D(raw) / 100, band, BANDS)
        assert band == Band.CAUTION


@given(st.integers(0, 10000), st.sampled_from(list(Band)))
def test_the_band_never_reports_less_risk_than_the_ltv_shows(raw, previous):
    ltv = D(raw) / 100
    fresh = band_for(ltv, Band.SAFE, BANDS)
    assert band_for(ltv, previous, BANDS) >= fresh


def test_hedge_target_and_urgency_follow_the_band():
    assert [hedge_target_btc(D("2"), b, BANDS) for b in Band] == [D("0"), D("1.0"), D("1.6"), D("2.0")]
    assert [urgency_for(b) for b in Band] == ["normal", "normal", "urgent", "critical"]
    assert net_delta_btc(D("2"), D("1.6")) == D("0.4")


@pytest.mark.parametrize("ltv,kind,usdt,kept", [
    ("46", TreasuryKind.ADD_COLLATERAL, "950.00", "50.00"),  # above caution: buy collateral, keep 5 %
    ("34.9", TreasuryKind.REPAY, "950.00", "50.00"),  # below 35: repay principal
    ("40", TreasuryKind.RESERVE, "0", "1000"),  # in between: all of it stays in reserve
    ("45", TreasuryKind.RESERVE, "0", "1000"),  # exactly at caution is not above it
    ("35", TreasuryKind.RESERVE, "0", "1000"),
])
def test_treasury_split_keeps_a_5_percent_fee_buffer(ltv, kind, usdt, kept):
    action = allocate(D("1000"), D(ltv), BANDS)
    assert (action.kind, action.usdt, action.kept) == (kind, D(usdt), D(kept))


def test_always_repay_and_nothing_to_allocate():
    assert allocate(D("1000"), D("46"), BANDS, always_repay=True).kind == TreasuryKind.REPAY
    assert allocate(D("0"), D("46"), BANDS).kind == TreasuryKind.NONE
    assert allocate(D("-5"), D("30"), BANDS).kind == TreasuryKind.NONE


def test_amounts_that_bring_the_ltv_back_to_target():
    # 1 BTC at 50,000 against 24,000 of debt is 48 %; 40 % needs 4,000 repaid or 0.2 BTC more collateral
    assert repay_to_reach(D("24000"), D("1"), D("50000"), D("40")) == D("4000")
    assert collateral_to_reach(D("24000"), D("1"), D("50000"), D("40")) == D("0.2")
    assert repay_to_reach(D("20000"), D("1"), D("60000"), D("40")) == 0


def test_realisation_takes_what_brings_the_loan_back_to_target_and_no_more():
    need = D("0.2") * D("50000") / D("0.95")
    assert realisation_due(D("50000"), D("48"), D("24000"), D("1"), D("50000"), BANDS) == need
    assert realisation_due(D("3000"), D("48"), D("24000"), D("1"), D("50000"), BANDS) == D("3000")  # all there is
    assert realisation_due(D("3000"), D("44"), D("22000"), D("1"), D("50000"), BANDS) == 0  # below caution
    assert realisation_due(D("5"), D("48"), D("24000"), D("1"), D("50000"), BANDS) == 0  # not worth the fees
    # exactly at caution the treasury would only park the profit as reserve: nothing is realised there
    assert realisation_due(D("3000"), D("45"), D("22500"), D("1"), D("50000"), BANDS) == 0
    # repaying needs less than buying collateral for the same LTV (1 / 0.40 times less)
    repay_need = realisation_due(D("50000"), D("48"), D("24000"), D("1"), D("50000"), BANDS, always_repay=True)
    assert repay_need == (D("24000") - D("0.40") * D("50000")) / D("0.95")


def test_hedge_margin_health():
    assert margin_needs_topup(D("60000"), D("66000"), short=True) is True  # 10 % away, under 15 %
    assert margin_needs_topup(D("60000"), D("70000"), short=True) is False
    assert margin_needs_topup(D("60000"), None, short=True) is False


@pytest.mark.parametrize("changes,message", [
    ({"caution": D("39")}, "target (40) must be below caution (39)"),
    ({"critical": D("95")}, "critical (95) must be below venue liquidation LTV (91)"),
    ({"target": D("0")}, "target must be above 0"),
    ({"hysteresis": D("3.5")}, "hysteresis (3.5) must be at least 0 and smaller than the gap between bands"),
    ({"multipliers": {Band.SAFE: D("0"), Band.CAUTION: D("0.5"), Band.DANGER: D("1.6"), Band.CRITICAL: D("1")}},
     "DANGER multiplier must be in [0, 1.5] (got 1.6)"),
    ({"multipliers": {Band.SAFE: D("0"), Band.CAUTION: D("0.9"), Band.DANGER: D("0.8"), Band.CRITICAL: D("1")}},
     "multipliers must not fall as the band rises"),
])
def test_bad_bands_are_described(changes, message):
    from dataclasses import replace

    assert any(message in problem for problem in replace(BANDS, **changes).problems())


def test_default_bands_are_valid():
    assert BANDS.problems() == []


@pytest.mark.parametrize("collateral,debt,last,index,message", [
    ("0", "24000", "60000", "60000", "collateral must be more than 0 BTC (got 0)"),
    ("1", "-5", "60000", "60000", "the loan must be more than 0 USDT (got -5)"),
    ("1", "30000", "60000", "60000", "LTV 50.00 % is already at or above critical (50 %): repay or add collateral "
                                     "before enrolling"),
    ("1", "30000", "60000", "32000", "LTV 93.75 % is at or above the venue's liquidation LTV 91 %"),
])
def test_enrolment_refusals_say_why(collateral, debt, last, index, message):
    from risk.loan import enrolment_problems

    problems = enrolment_problems(collateral_btc=D(collateral), debt_usdt=D(debt), last=D(last), index=D(index),
                                  bands=BANDS)
    assert problems == [message]


def test_a_healthy_loan_enrols():
    from risk.loan import enrolment_problems

    assert enrolment_problems(collateral_btc=D("1"), debt_usdt=D("24000"), last=D("60000"), index=D("60000"),
                              bands=BANDS) == []
