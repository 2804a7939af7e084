"""The loan guard's rules: LTV, bands with hysteresis, the hedge target, urgency, the treasury split and
when to realise hedge profit. Pure functions, used by LoanGuardWorkflow and by the backtests alike.

LTV is in percent: outstanding debt (principal + accrued interest) / (collateral BTC x price) x 100, with
the price Bybit uses for risk: the lower of last and index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum

ZERO = Decimal(0)
HUNDRED = Decimal(100)


class Band(IntEnum):
    """Ordered: a higher band is more dangerous."""

    SAFE = 0
    CAUTION = 1
    DANGER = 2
    CRITICAL = 3


def _default_multipliers() -> dict[Band, Decimal]:
    return {Band.SAFE: Decimal("0"), Band.CAUTION: Decimal("0.5"), Band.DANGER: Decimal("0.8"),
            Band.CRITICAL: Decimal("1.0")}


@dataclass(frozen=True)
class Bands:
    """A loan's bands (LTV %) and what each asks of the hedge. Defaults: target 40, caution 45, danger 48,
    critical 50; the venue liquidates at 91."""

    target: Decimal = Decimal("40")
    caution: Decimal = Decimal("45")
    danger: Decimal = Decimal("48")
    critical: Decimal = Decimal("50")
    hysteresis: Decimal = Decimal("1")
    liquidation: Decimal = Decimal("91")
    repay_below: Decimal = Decimal("35")
    # CAUTION drops to SAFE (and the hedge comes off) only below this: once hedged, the hedge stays until the
    # loan is back under its target. With only a point of hysteresis at caution, a crash's intrabar swings
    # closed and reopened the whole hedge every few minutes at a loss; and the treasury aims at the target,
    # so a release above it switched the hedge off each time a realisation hit its aim (README).
    safe_below: Decimal = Decimal("38")
    multipliers: dict[Band, Decimal] = field(default_factory=_default_multipliers)

    def threshold(self, band: Band) -> Decimal:
        return {Band.CAUTION: self.caution, Band.DANGER: self.danger, Band.CRITICAL: self.critical}[band]

    def problems(self) -> list[str]:
        """What is wrong with these bands, in words an operator can act on (empty: valid)."""
        out = []
        order = [("target", self.target), ("caution", self.caution), ("danger", self.danger),
                 ("critical", self.critical), ("venue liquidation LTV", self.liquidation)]
        if self.target <= 0:
            out.append(f"target must be above 0 (got {self.target})")
        for (lo_name, lo), (hi_name, hi) in zip(order, order[1:], strict=False):
            if not lo < hi:
                out.append(f"{lo_name} ({lo}) must be below {hi_name} ({hi})")
        if not 0 <= self.hysteresis < min(self.caution - self.target, self.danger - self.caution,
                                          self.critical - self.danger, Decimal(5)):
            out.append(f"hysteresis ({self.hysteresis}) must be at least 0 and smaller than the gap between bands")
        if not 0 < self.safe_below <= self.caution - self.hysteresis:
            out.append(f"safe_below ({self.safe_below}) must be above 0 and at most caution minus hysteresis "
                       f"({self.caution - self.hysteresis})")
        if not 0 < self.repay_below < self.caution:
            out.append(f"repay_below ({self.repay_below}) must be above 0 and below caution ({self.caution})")
        for band in Band:
            m = self.multipliers.get(band)
            if m is None or not ZERO <= m <= Decimal("1.5"):
                out.append(f"{band.name} multiplier must be in [0, 1.5] (got {m})")
        if not out and any(self.multipliers[a] > self.multipliers[b] for a, b in zip(Band, list(Band)[1:],
                                                                                    strict=False)):
            out.append("multipliers must not fall as the band rises")
        return out


def risk_price(last: Decimal, index: Decimal) -> Decimal:
    """What Bybit values collateral at: the lower of last and index."""
    return min(last, index)


def ltv_pct(debt: Decimal, collateral_btc: Decimal, last: Decimal, index: Decimal) -> Decimal:
    if collateral_btc <= 0:
        raise ValueError("a loan needs collateral to have an LTV")
    return debt / (collateral_btc * risk_price(last, index)) * HUNDRED


def enrolment_problems(*, collateral_btc: Decimal, debt_usdt: Decimal, last: Decimal, index: Decimal,
                       bands: Bands) -> list[str]:
    """Why a loan cannot be enrolled with these figures (empty: it can). Nothing is started or written for a
    loan that has a problem."""
    problems = bands.problems()
    if collateral_btc <= 0:
        problems.append(f"collateral must be more than 0 BTC (got {collateral_btc})")
    if debt_usdt <= 0:
        problems.append(f"the loan must be more than 0 USDT (got {debt_usdt})")
    if problems:
        return problems
    ltv = ltv_pct(debt_usdt, collateral_btc, last, index)
    if ltv >= bands.liquidation:
        problems.append(f"LTV {ltv:.2f} % is at or above the venue's liquidation LTV {bands.liquidation} %")
    elif ltv >= bands.critical:
        problems.append(f"LTV {ltv:.2f} % is already at or above critical ({bands.critical} %): repay or add "
                        "collateral before enrolling")
    return problems


def band_for(ltv: Decimal, previous: Band, bands: Bands) -> Band:
    """The band for this LTV. Up at once (from exactly 45.0 it is CAUTION); down only once the LTV is a
    full hysteresis below the band's own threshold, so a price jiggling at 45.0 does not flap; and out of
    CAUTION only below `safe_below`."""
    raw = Band.SAFE
    for band in (Band.CAUTION, Band.DANGER, Band.CRITICAL):
        if ltv >= bands.threshold(band):
            raw = band
    if raw >= previous:
        return raw
    band = previous
    while band > raw and ltv < _release(band, bands):
        band = Band(band - 1)
    return band


def _release(band: Band, bands: Bands) -> Decimal:
    """The LTV under which `band` steps down one band."""
    release = bands.threshold(band) - bands.hysteresis
    return min(release, bands.safe_below) if band == Band.CAUTION else release


def hedge_target_btc(collateral_btc: Decimal, band: Band, bands: Bands) -> Decimal:
    """The BTC short the band asks for: collateral x the band's multiplier."""
    return collateral_btc * bands.multipliers[band]


def urgency_for(band: Band) -> str:
    """How urgently the hedge should reach its target (risk.pricing.Urgency values)."""
    return {Band.SAFE: "normal", Band.CAUTION: "normal", Band.DANGER: "urgent", Band.CRITICAL: "critical"}[band]


def net_delta_btc(collateral_btc: Decimal, short_btc: Decimal) -> Decimal:
    """BTC exposure left after the hedge: collateral minus the perp short."""
    return collateral_btc - short_btc


# -- treasury ----------------------------------------------------------------------------------------------
class TreasuryKind(IntEnum):
    NONE = 0
    RESERVE = 1
    REPAY = 2
    ADD_COLLATERAL = 3


@dataclass(frozen=True)
class TreasuryAction:
    kind: TreasuryKind
    usdt: Decimal  # sent to the loan (repay or collateral purchase); what stays is `kept`
    kept: Decimal  # the fee buffer, or the whole amount when held as reserve


FEE_BUFFER = Decimal("0.05")


def allocate(profit_usdt: Decimal, ltv: Decimal, bands: Bands, *, always_repay: bool = False) -> TreasuryAction:
    """Where realised hedge profit goes. 5 % stays as a buffer for fees; above caution the rest buys BTC
    collateral, below `repay_below` it repays principal, in between all of it is kept as reserve.
    `always_repay` repays whatever the LTV."""
    if profit_usdt <= 0:
        return TreasuryAction(TreasuryKind.NONE, ZERO, ZERO)
    usable = profit_usdt * (1 - FEE_BUFFER)
    buffer = profit_usdt - usable
    if always_repay:
        return TreasuryAction(TreasuryKind.REPAY, usable, buffer)
    if ltv > bands.caution:
        return TreasuryAction(TreasuryKind.ADD_COLLATERAL, usable, buffer)
    if ltv < bands.repay_below:
        return TreasuryAction(TreasuryKind.REPAY, usable, buffer)
    return TreasuryAction(TreasuryKind.RESERVE, ZERO, profit_usdt)


def loss_to_write_off(realised_pnl: Decimal, allocated: Decimal) -> Decimal:
    """How far the hedge's realised PnL has fallen below what the treasury already took of it: a loss (a short closed
    in a rebound, fees, funding) that is the protection's cost, paid by the perp account. Written off, so the next
    leg's realised profit reaches the loan at once instead of first earning the loss back; without it the 365-day
    backtest liquidated 93 of 2,374 guarded loans in the crash after a rally (bench/README.md)."""
    return max(ZERO, allocated - realised_pnl)


def repay_to_reach(debt: Decimal, collateral_btc: Decimal, price: Decimal, ltv_target: Decimal) -> Decimal:
    """USDT of repayment that brings the LTV down to `ltv_target` (0 when already there)."""
    return max(ZERO, debt - ltv_target / HUNDRED * collateral_btc * price)


def collateral_to_reach(debt: Decimal, collateral_btc: Decimal, price: Decimal, ltv_target: Decimal) -> Decimal:
    """BTC of added collateral that brings the LTV down to `ltv_target` (0 when already there)."""
    return max(ZERO, debt / (ltv_target / HUNDRED * price) - collateral_btc)


def realisation_due(unrealised_usdt: Decimal, ltv: Decimal, debt: Decimal, collateral_btc: Decimal, price: Decimal,
                    bands: Bands, *, minimum_usdt: Decimal = Decimal("10"), always_repay: bool = False) -> Decimal:
    """Hedge profit to realise now (USDT), so it can work for the loan instead of sitting unrealised.

    From the caution band up, realise as much unrealised profit as it takes to bring the LTV back to the
    target once the treasury uses it (as collateral, or as repayment under `always_repay`; plus the fee
    buffer) - all of it if that is not enough. Below
    caution nothing is realised: the profit keeps protecting the loan as part of the hedge. The hedge
    workflow then re-hedges to the same target, so the position is unchanged; the cost is the fees of
    the round trip.
    """
    if unrealised_usdt <= 0 or ltv <= bands.caution:  # allocate adds collateral only above caution, so neither
        return ZERO                                    # realises profit only to park it at exactly 45.0
    to_target = (repay_to_reach(debt, collateral_btc, price, bands.target) if always_repay
                 else collateral_to_reach(debt, collateral_btc, price, bands.target) * price)
    needed = to_target / (1 - FEE_BUFFER)
    amount = min(unrealised_usdt, needed)
    return amount if amount >= minimum_usdt else ZERO


def margin_needs_topup(mark: Decimal, liquidation_price: Decimal | None, *, short: bool,
                       min_distance_pct: Decimal = Decimal("15")) -> bool:
    """Whether the hedge's own liquidation price is within `min_distance_pct` of the mark."""
    if liquidation_price is None or liquidation_price <= 0:
        return False
    distance = (liquidation_price - mark) / mark if short else (mark - liquidation_price) / mark
    return distance * HUNDRED < min_distance_pct
