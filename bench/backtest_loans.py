"""Loan protection policies side by side over every daily window of the real BTC hourly series (issue 7).

    .venv/bin/python -m bench.backtest_loans [--days 30|90|365] [--start DATE] [--limit N] [--json FILE] [--plot DIR]

For every day of ``btcusdt_binance_spot_1h_2019-01-01_2026-06-30.csv.gz`` whose window fits in the file, a loan
of 1 BTC collateral at 40 % LTV is enrolled at that day's 00:00 UTC open and held ``--days`` days (default 90),
walked through sim.replay's price points (open, nearer extreme, other extreme, close of every hourly bar).
Four policies run on the same path:

- ``unhedged``: the loan alone.
- ``auto_deleverage``: once the LTV reaches caution (45 %), sell collateral on spot to repay back to the
  target (40 %), paying the spot fee and slippage on what is sold.
- ``hedgeguard_default``: the loan guard with models.loan_guard.BandSettings' defaults (bands 40/45/48/50,
  multipliers 1.0/1.2/1.5) and the default treasury (realised profit buys collateral above caution).
- ``hedgeguard_always_repay``: the same bands; realised profit always repays.

The guard's decisions are bench.loan_backtest's Guard, i.e. risk.loan's band_for, hedge_target_btc,
realisation_due, allocate and margin_needs_topup, the functions LoanGuardWorkflow calls. Execution, fees,
funding and interest are bench.loan_backtest's (see its docstring); on top of that:

- Slippage: every perp and spot trade loses SLIPPAGE (5 bps) of its notional, counted as cost.
- Hedge margin: the short is opened at HEDGE_LEVERAGE (LoanGuardInput.hedge_leverage, 2) on isolated USDT
  margin: each sale posts qty x price / leverage, a reduction releases its share. Liquidation price
  = (margin + short x entry) / (short x (1 + HEDGE_MMR)). When a point's price reaches it, the short is
  closed at that price and the maintenance margin (HEDGE_MMR of the notional) is forfeited; the guard's
  next decision re-opens it. Like the workflow, the guard tops the margin up from its treasury reserve when
  margin_needs_topup says the mark is within 15 % of the liquidation price.
- Reaction delay: ``--delay`` points (default 1, a third of a bar) for the guard and for auto_deleverage.
- Loan liquidation at ``--liquidation-ltv`` (default risk.loan.Bands.liquidation, 91 %).

Speed: the path is precomputed once (prices, interest growth, funding, block minima and maxima). Where a
policy can do nothing until the LTV or the price leaves a known box (no band change, no realisation, no
margin call, nothing in flight), the walk jumps to the first point that leaves it (float checks with a safety
margin), applying interest and funding for the skipped points in Decimal; every other point is walked in
full. Windows run on ``--workers`` processes (default 2).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import json
import math
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from pathlib import Path
from typing import TextIO

from bench.loan_backtest import (
    CRASH_FILES,
    HOURLY_FILE,
    INTEREST_PER_HOUR,
    SPOT_FEE,
    SYMBOL,
    Decision,
    Guard,
    Loan,
    settlements_between,
)
from models.loan_guard import BandSettings, LoanGuardInput, LoanTiming
from risk.loan import HUNDRED, ZERO, Band, Bands, _release, margin_needs_topup
from sim.replay import DATA_DIR, FUNDING_FILE, Bar, FundingHistory, _open_text, load_bars, parse_ts, path_points

SLIPPAGE = Decimal("0.0005")  # 5 bps of notional lost on every hedge and spot trade, on top of the fees
HEDGE_LEVERAGE: Decimal = LoanGuardInput.model_fields["hedge_leverage"].default  # 2, as the workflow sets it
HEDGE_MMR = Decimal("0.005")  # Bybit BTCUSDT maintenance margin rate, lowest risk-limit tier
MARGIN_DISTANCE: Decimal = LoanTiming().margin_distance_pct  # top up when the mark is this close (%)
START_LTV = Decimal(40)
COLLATERAL = Decimal(1)
SPOT_STEP = Decimal("0.000001")  # Bybit spot BTC quantity step
CENT = Decimal("0.01")
POLICIES = ("unhedged", "auto_deleverage", "hedgeguard_default", "hedgeguard_always_repay")
BLOCK = 64  # points per block of the precomputed minima and maxima
EPS = 1e-9  # relative safety margin of the float skip checks
INF = math.inf


# -- the price path, precomputed once ------------------------------------------------------------------------
@dataclass
class Series:
    """A replay path with everything a walk needs per point, so windows and policies share one computation.

    growth[k] is the product of (1 + interest x hours) up to k, so a debt left alone grows by growth[j] /
    growth[i]; h[k] = growth[k] / price[k], so with nothing done LTV_k = 100 x debt_i / (collateral x growth_i)
    x h[k]. fund[k] sums price x funding rate over the settlements crossed up to k (what 1 BTC short received);
    missing[k] counts crossed settlements with no rate in the file."""

    ts: list[datetime]
    price: list[Decimal]
    pf: list[float]
    hours: list[Decimal]
    rate: list[Decimal | None]
    growth: list[Decimal]
    h: list[float]
    fund: list[Decimal]
    missing: list[int]
    hmin: list[float] = field(default_factory=list)
    hmax: list[float] = field(default_factory=list)
    pmin: list[float] = field(default_factory=list)
    pmax: list[float] = field(default_factory=list)

    def scan(self, i: int, end: int, box: tuple[float, float, float, float]) -> tuple[int, float]:
        """The first point after i (before end) whose h or price leaves box = [hlo, hhi) x [plo, phi), or end;
        and the largest h before it (-inf if none), which gives the skipped stretch's max LTV."""
        hlo, hhi, plo, phi = box
        h, p = self.h, self.pf
        top = -INF
        k = i + 1
        while k < end:
            if k % BLOCK == 0 and k + BLOCK <= end:
                b = k // BLOCK
                if self.hmin[b] >= hlo and self.hmax[b] < hhi and self.pmin[b] >= plo and self.pmax[b] < phi:
                    top = max(top, self.hmax[b])
                    k += BLOCK
                    continue
            if not (hlo <= h[k] < hhi and plo <= p[k] < phi):
                return k, top
            top = max(top, h[k])
            k += 1
        return end, top


def build_series(bars: list[Bar], seconds: float, funding: FundingHistory) -> Series:
    """Precompute the path of these bars (sim.replay.path_points) with interest growth, funding and block extremes."""
    points = path_points(bars, seconds)
    ts = [p.ts for p in points]
    price = [p.price for p in points]
    hours = [ZERO] + [Decimal((b - a).total_seconds()) / 3600 for a, b in zip(ts, ts[1:], strict=False)]
    rate: list[Decimal | None] = [None]
    missing = [0]
    fund = [ZERO]
    for k in range(1, len(points)):
        rates = [funding.rate(SYMBOL, s) for s in settlements_between(ts[k - 1], ts[k])]
        known = [r for r in rates if r is not None]
        rate.append(sum(known, ZERO) if known else None)
        missing.append(missing[-1] + len(rates) - len(known))
        fund.append(fund[-1] + (price[k] * rate[k] if known else ZERO))
    growth = [Decimal(1)]
    for k in range(1, len(points)):
        growth.append(growth[-1] * (1 + INTEREST_PER_HOUR * hours[k]))
    pf = [float(p) for p in price]
    h = [float(g) / p for g, p in zip(growth, pf, strict=True)]
    series = Series(ts, price, pf, hours, rate, growth, h, fund, missing)
    for start in range(0, len(points), BLOCK):
        series.hmin.append(min(h[start:start + BLOCK]))
        series.hmax.append(max(h[start:start + BLOCK]))
        series.pmin.append(min(pf[start:start + BLOCK]))
        series.pmax.append(max(pf[start:start + BLOCK]))
    return series


def load_hourly(first: datetime | None = None, until: datetime | None = None, data_dir: Path = DATA_DIR) -> list[Bar]:
    """The hourly file's bars with first <= ts < until; rows outside are skipped unparsed (tests load a month fast)."""
    lo = f"{first:%Y-%m-%dT%H:%M:%SZ}" if first else ""
    hi = f"{until:%Y-%m-%dT%H:%M:%SZ}" if until else "~"
    with _open_text(data_dir / HOURLY_FILE) as fh:
        return [Bar(parse_ts(r["ts"]), Decimal(r["open"]), Decimal(r["high"]), Decimal(r["low"]), Decimal(r["close"]))
                for r in csv.DictReader(fh) if lo <= r["ts"] < hi]


# -- policies ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """One policy: which walk, with which bands."""

    name: str
    bands: Bands
    always_repay: bool = False


def plans(liquidation: Decimal = Bands().liquidation) -> list[Plan]:
    """The four policies. The guard's bands are the workflow's defaults (BandSettings), not risk.loan.Bands'
    0.5/0.8/1.0 multipliers."""
    plain = replace(Bands(), liquidation=liquidation)
    guard = replace(BandSettings().bands(), liquidation=liquidation)
    if problems := guard.problems():
        raise ValueError("; ".join(problems))
    return [Plan("unhedged", plain), Plan("auto_deleverage", plain), Plan("hedgeguard_default", guard),
            Plan("hedgeguard_always_repay", guard, always_repay=True)]


def band_interval(bands: Bands, band: Band) -> tuple[Decimal, Decimal]:
    """LTV range [lo, hi) in which band_for keeps `band` (risk.loan's thresholds and release levels), capped by
    the loan's liquidation. Used only to know when nothing can happen; the decisions still go through band_for."""
    lo = Decimal(-1) if band == Band.SAFE else _release(band, bands)
    hi = bands.liquidation if band == Band.CRITICAL else bands.threshold(Band(band + 1))
    return lo, min(hi, bands.liquidation)


@dataclass
class MarginedGuard(Guard):
    """bench.loan_backtest's Guard whose short sits on isolated margin at HEDGE_LEVERAGE, so it can be liquidated."""

    leverage: Decimal = HEDGE_LEVERAGE
    margin: Decimal = ZERO
    hedge_liquidations: int = 0
    forfeited: Decimal = ZERO  # maintenance margin lost to hedge liquidations
    topups: int = 0

    def _sell(self, qty: Decimal, price: Decimal) -> None:
        super()._sell(qty, price)
        self.margin += qty * price / self.leverage

    def _buy(self, qty: Decimal, price: Decimal) -> Decimal:
        before = self.short
        pnl = super()._buy(qty, price)
        self.margin = self.margin * self.short / before
        return pnl

    def liquidation_price(self) -> Decimal | None:
        """Where the short's margin plus its loss leaves only the maintenance margin."""
        if self.short <= 0:
            return None
        return (self.margin + self.short * self.entry) / (self.short * (1 + HEDGE_MMR))

    def check_hedge_liquidation(self, price: Decimal) -> None:
        liquidation = self.liquidation_price()
        if liquidation is None or price < liquidation:
            return
        lost = self.short * liquidation * HEDGE_MMR
        self.perp_cash += self._buy(self.short, liquidation) - lost
        self.forfeited += lost
        self.hedge_liquidations += 1

    def top_up_margin(self, price: Decimal) -> None:
        """LoanGuardWorkflow._watch_margin_and_top_up: push the liquidation price out to twice the alert distance,
        paid from the reserve (here the treasury cash; nothing if it is empty)."""
        liquidation = self.liquidation_price()
        if liquidation is None or not margin_needs_topup(price, liquidation, short=True, min_distance_pct=MARGIN_DISTANCE):
            return
        need = max(ZERO, (price * (1 + 2 * MARGIN_DISTANCE / HUNDRED) - liquidation) * self.short)
        amount = min(need, self.treasury_cash).quantize(CENT, ROUND_DOWN)
        if amount > 0:
            self.treasury_cash -= amount
            self.perp_cash += amount
            self.margin += amount
            self.topups += 1

    @property
    def cost(self) -> Decimal:
        return self.fees + self.funding + self.realisation + self.spot + self.slipped + self.forfeited


# -- walks ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What one policy did in one window."""

    policy: str
    max_ltv: float
    loan_liquidated: bool
    hedge_liquidations: int
    cost: Decimal  # fees + funding + realisation round trips + slippage (+ forfeited hedge margin), USDT
    equity: Decimal  # owner's equity at the window's last price, USDT
    collateral: Decimal
    missing: int  # funding settlements crossed with no rate
    steps: int  # points walked in full (the rest were skipped)
    acted: bool  # the policy traded at least once
    topups: int = 0  # hedge margin top-ups (the price came within 15 % of the hedge's liquidation price)


@dataclass
class TracePoint:
    ts: datetime
    ltv: Decimal | None  # before this point's decision; None once liquidated
    band: Band | None
    short: Decimal
    collateral: Decimal


class Walk:
    """One loan through one window: interest, funding, max LTV and the skipping every policy shares.
    Subclasses say what the policy does at a point (before / after) and where it can do nothing (box)."""

    def __init__(self, series: Series, i0: int, end: int, plan: Plan, delay: int, trace: list[TracePoint] | None):
        if delay < 0:
            raise ValueError("the reaction delay cannot be negative")
        self.series, self.i0, self.end, self.plan, self.delay, self.trace = series, i0, end, plan, delay, trace
        self.loan = Loan(COLLATERAL, START_LTV / HUNDRED * COLLATERAL * series.price[i0])
        self.max_ltv = 0.0
        self.missing = 0
        self.steps = 0
        self.acted = False  # something was decided at the current point

    def short(self) -> Decimal:
        return ZERO

    def receive_funding(self, per_btc: Decimal) -> None:
        """Funding for a short of short() BTC: per_btc = price x rate summed over settlements."""

    def before(self, k: int, price: Decimal) -> None:
        """At point k, before the LTV is read: decisions landing now."""

    def after(self, k: int, price: Decimal, ltv: Decimal | None) -> None:
        """At point k, after the LTV is read and the loan liquidation checked: new decisions."""

    def box(self, k: int) -> tuple[float, float, float, float] | None:
        """The (h, price) box after point k inside which the policy does nothing; None: walk the next point."""
        return None

    def band(self) -> Band | None:
        return None

    def run(self, *, skip: bool = True) -> Walk:
        k = self.i0
        while k < self.end:
            self.step(k)
            box = self.box(k) if skip and not self.acted else None
            if box is None:
                k += 1
                continue
            j, top = self.series.scan(k, self.end, box)
            self.advance(k, j, top)
            k = j
        return self

    def step(self, k: int) -> None:
        s, price = self.series, self.series.price[k]
        self.acted = False
        if k > self.i0:
            if not self.loan.liquidated:
                self.loan.accrue(s.hours[k])
            self.missing += s.missing[k] - s.missing[k - 1]
            if s.rate[k] is not None and self.short() > 0:
                self.receive_funding(price * s.rate[k])
        self.before(k, price)
        ltv = self.loan.ltv(price)
        if ltv is not None:
            self.max_ltv = max(self.max_ltv, float(ltv))
        self.loan.check_liquidation(price, self.plan.bands)
        self.after(k, price, ltv)
        self.steps += 1
        if self.trace is not None:
            self.trace.append(TracePoint(s.ts[k], ltv, self.band(), self.short(), self.loan.collateral))

    def advance(self, i: int, j: int, top: float) -> None:
        """Points i+1 .. j-1, where nothing is decided: interest, funding and max LTV in one go."""
        s, last = self.series, j - 1
        if last <= i:
            return
        if not self.loan.liquidated:
            scale = 100 * float(self.loan.debt) / (float(self.loan.collateral) * float(s.growth[i]))
            self.max_ltv = max(self.max_ltv, scale * top)
            grown = self.loan.debt * s.growth[last] / s.growth[i]
            self.loan.interest += grown - self.loan.debt
            self.loan.debt = grown
        self.missing += s.missing[last] - s.missing[i]
        if self.short() > 0:
            self.receive_funding(s.fund[last] - s.fund[i])

    def ltv_box(self, k: int, lo: Decimal, hi: Decimal) -> tuple[float, float]:
        """LTV bounds [lo, hi) as h bounds for the loan as it is after point k, narrowed by the safety margin."""
        if self.loan.liquidated:
            return -INF, INF
        scale = 100 * float(self.loan.debt) / (float(self.loan.collateral) * float(self.series.growth[k]))
        return (float(lo) / scale * (1 + EPS) if lo > 0 else -INF), float(hi) / scale * (1 - EPS)

    def equity(self, price: Decimal) -> Decimal:
        return self.loan.equity(price)

    def cost(self) -> Decimal:
        return ZERO

    def hedge_liquidations(self) -> int:
        return 0

    def traded(self) -> bool:
        return False

    def outcome(self) -> Outcome:
        last = self.series.price[self.end - 1]
        return Outcome(self.plan.name, self.max_ltv, self.loan.liquidated, self.hedge_liquidations(), self.cost(),
                       self.equity(last), self.loan.collateral, self.missing, self.steps, self.traded())


class UnhedgedWalk(Walk):
    """The loan alone: only liquidation can happen."""

    def box(self, k: int) -> tuple[float, float, float, float]:
        return *self.ltv_box(k, ZERO, self.plan.bands.liquidation), -INF, INF


class DeleverageWalk(Walk):
    """At caution, sell collateral to repay back to the target (after the reaction delay, at that point's price)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.due: int | None = None
        self.fees = ZERO
        self.slipped = ZERO
        self.sales = 0
        self.sold_btc = ZERO

    def before(self, k: int, price: Decimal) -> None:
        if self.due is not None and self.due <= k:
            self.sell_to_target(price)

    def after(self, k: int, price: Decimal, ltv: Decimal | None) -> None:
        if self.due is None and ltv is not None and not self.loan.liquidated and ltv >= self.plan.bands.caution:
            self.due, self.acted = k + self.delay, True
            if self.due <= k:
                self.sell_to_target(price)

    def sell_to_target(self, price: Decimal) -> None:
        """Sell x BTC so that (debt - x p (1 - c)) / ((collateral - x) p) = target, c = spot fee + slippage."""
        self.due = None
        loan, target, c = self.loan, self.plan.bands.target / HUNDRED, SPOT_FEE + SLIPPAGE
        if loan.liquidated:
            return
        qty = ((loan.debt - target * loan.collateral * price) / (price * (1 - c - target))).quantize(SPOT_STEP, ROUND_UP)
        if qty <= 0:
            return
        qty = min(qty, loan.collateral)
        self.fees += qty * price * SPOT_FEE
        self.slipped += qty * price * SLIPPAGE
        loan.collateral -= qty
        loan.debt -= min(loan.debt, qty * price * (1 - c))
        self.sales += 1
        self.sold_btc += qty

    def box(self, k: int) -> tuple[float, float, float, float] | None:
        if self.due is not None:
            return None
        return *self.ltv_box(k, ZERO, self.plan.bands.caution), -INF, INF

    def cost(self) -> Decimal:
        return self.fees + self.slipped

    def traded(self) -> bool:
        return self.sales > 0


class GuardWalk(Walk):
    """The loan guard (MarginedGuard), as bench.loan_backtest.run walks it, plus hedge margin and slippage."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = MarginedGuard(self.plan.bands, self.plan.always_repay, self.loan, ZERO, slippage=SLIPPAGE)
        self.pending: Decision | None = None

    def short(self) -> Decimal:
        return self.guard.short

    def band(self) -> Band:
        return self.guard.band

    def receive_funding(self, per_btc: Decimal) -> None:
        received = self.guard.short * per_btc
        self.guard.funding -= received
        self.guard.perp_cash += received

    def before(self, k: int, price: Decimal) -> None:
        self.guard.check_hedge_liquidation(price)
        if self.pending is not None and self.pending.due <= k:
            self.guard.execute(self.pending, price)
            self.pending = None

    def after(self, k: int, price: Decimal, ltv: Decimal | None) -> None:
        if self.pending is None:
            self.pending = self.guard.decide(k, price, self.delay)
            self.acted = self.pending is not None
            if self.pending is not None and self.pending.due <= k:
                self.guard.execute(self.pending, price)
                self.pending = None
        self.guard.top_up_margin(price)

    def box(self, k: int) -> tuple[float, float, float, float] | None:
        g = self.guard
        if self.pending is not None or (g.band == Band.CRITICAL and g.reserve > 0):
            return None
        if self.loan.liquidated:
            return None if g.short > 0 else (-INF, INF, -INF, INF)
        lo, hi = band_interval(self.plan.bands, g.band)
        plo, phi = -INF, INF
        if g.short > 0:
            if self.loan.ltv(self.series.price[k]) <= self.plan.bands.caution:
                hi = min(hi, self.plan.bands.caution)  # no realisation while the LTV stays at or under caution
            else:
                plo = float(g.entry) * (1 + EPS)  # nor while the short shows no profit
            liquidation = g.liquidation_price()
            assert liquidation is not None
            phi = float(liquidation) / (1 + float(MARGIN_DISTANCE) / 100) * (1 - EPS)  # no margin call
        hlo, hhi = self.ltv_box(k, lo, hi)
        return hlo, hhi, plo, phi

    def equity(self, price: Decimal) -> Decimal:
        return self.guard.equity(price)

    def cost(self) -> Decimal:
        return self.guard.cost

    def hedge_liquidations(self) -> int:
        return self.guard.hedge_liquidations

    def traded(self) -> bool:
        return self.guard.traded > 0

    def outcome(self) -> Outcome:
        return replace(super().outcome(), topups=self.guard.topups)


WALKS: dict[str, type[Walk]] = {"unhedged": UnhedgedWalk, "auto_deleverage": DeleverageWalk,
                                "hedgeguard_default": GuardWalk, "hedgeguard_always_repay": GuardWalk}


def walk(series: Series, i0: int, end: int, plan: Plan, *, delay: int = 1, skip: bool = True,
         trace: list[TracePoint] | None = None) -> Walk:
    """Walk points i0 .. end-1 with one policy (no skipping when tracing, so the trace has every point)."""
    return WALKS[plan.name](series, i0, end, plan, delay, trace).run(skip=skip and trace is None)


# -- windows ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    start: datetime
    i0: int  # first point
    end: int  # one past the last point


def daily_windows(series: Series, days: int, start: datetime | None = None, limit: int | None = None) -> list[Window]:
    """Every 00:00 UTC open in the series whose `days` fit before the data ends (a day whose 00:00 bar is
    missing is skipped), from `start` on, at most `limit` of them."""
    span = timedelta(days=days)
    data_end = series.ts[-1] + timedelta(milliseconds=1)  # the last bar's close point
    out: list[Window] = []
    for i0 in range(0, len(series.ts), 4):
        moment = series.ts[i0]
        if moment.hour or moment.minute or (start and moment < start):
            continue
        if moment + span > data_end:
            break
        out.append(Window(moment, i0, bisect.bisect_left(series.ts, moment + span, lo=i0)))
        if limit is not None and len(out) >= limit:
            break
    return out


@dataclass(frozen=True)
class WindowResult:
    """One window's figures per policy, as fractions of the starting collateral value."""

    start: str
    max_ltv: dict[str, float]
    breached: dict[str, bool]
    loan_liquidated: dict[str, bool]
    hedge_liquidations: dict[str, int]
    cost_pct_per_year: dict[str, float]
    equity_vs_unhedged_pct: dict[str, float]
    collateral: dict[str, float]
    acted: dict[str, bool]
    topups: dict[str, int]
    missing_funding: int
    steps: int


def run_window(series: Series, window: Window, policies: list[Plan], days: int, delay: int = 1) -> WindowResult:
    """All policies through one window; costs in % of the starting collateral value per year, equity in
    percentage points of that value relative to the unhedged loan."""
    outcomes = {p.name: walk(series, window.i0, window.end, p, delay=delay).outcome() for p in policies}
    critical = {p.name: float(p.bands.critical) for p in policies}
    value = COLLATERAL * series.price[window.i0]
    base = outcomes["unhedged"].equity
    return WindowResult(
        start=f"{window.start:%Y-%m-%d}",
        max_ltv={n: o.max_ltv for n, o in outcomes.items()},
        breached={n: o.loan_liquidated or o.max_ltv > critical[n] for n, o in outcomes.items()},
        loan_liquidated={n: o.loan_liquidated for n, o in outcomes.items()},
        hedge_liquidations={n: o.hedge_liquidations for n, o in outcomes.items()},
        cost_pct_per_year={n: float(o.cost / value * HUNDRED * 365 / days) for n, o in outcomes.items()},
        equity_vs_unhedged_pct={n: float((o.equity - base) / value * HUNDRED) for n, o in outcomes.items()},
        collateral={n: float(o.collateral) for n, o in outcomes.items()},
        acted={n: o.acted for n, o in outcomes.items()},
        topups={n: o.topups for n, o in outcomes.items()},
        missing_funding=max(o.missing for o in outcomes.values()),
        steps=sum(o.steps for o in outcomes.values()))


# -- summary ----------------------------------------------------------------------------------------------
def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarise(results: list[WindowResult], names: Iterable[str] = POLICIES) -> dict[str, dict[str, float | int | None]]:
    """Per policy: the figures the table and the JSON report."""
    out: dict[str, dict[str, float | int | None]] = {}
    n = len(results)
    for name in names:
        costs = [r.cost_pct_per_year[name] for r in results]
        equity = [r.equity_vs_unhedged_pct[name] for r in results]
        acted = [r.equity_vs_unhedged_pct[name] for r in results if r.acted[name]]
        out[name] = {
            "breach_50_share": sum(r.breached[name] for r in results) / n if n else math.nan,
            "acted_share": len(acted) / n if n else math.nan,
            "max_ltv_pct": round(max((r.max_ltv[name] for r in results), default=math.nan), 2),
            "loan_liquidations": sum(r.loan_liquidated[name] for r in results),
            "hedge_liquidations": sum(r.hedge_liquidations[name] > 0 for r in results),
            "hedge_liquidation_events": sum(r.hedge_liquidations[name] for r in results),
            "hedge_margin_topup_windows": sum(r.topups[name] > 0 for r in results),
            "cost_pct_per_year_median": round(quantile(costs, 0.5), 4),
            "cost_pct_per_year_p95": round(quantile(costs, 0.95), 4),
            "equity_vs_unhedged_median": round(quantile(equity, 0.5), 4),
            "equity_vs_unhedged_median_acted": round(quantile(acted, 0.5), 4) if acted else None,
            "equity_vs_unhedged_mean": round(sum(equity) / n, 4) if n else math.nan,
            "equity_vs_unhedged_p05": round(quantile(equity, 0.05), 4),
            "equity_vs_unhedged_p95": round(quantile(equity, 0.95), 4),
            "collateral_btc_median": round(quantile([r.collateral[name] for r in results], 0.5), 6),
        }
    return out


HEADER = ("policy", ">50 %", "max LTV", "loan liq", "hedge liq", "acted", "cost %/y med", "cost p95", "eq vs unh med",
          "med acted", "mean", "p5", "p95", "coll BTC")


def format_table(summary: dict[str, dict[str, float | int | None]]) -> list[str]:
    widths = (24, 7, 7, 8, 9, 7, 12, 8, 13, 9, 7, 7, 7, 8)
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(HEADER, widths, strict=True)))]
    for name, s in summary.items():
        cells = [name, f"{100 * s['breach_50_share']:.1f} %", f"{s['max_ltv_pct']:.2f}", str(s["loan_liquidations"]),
                 str(s["hedge_liquidations"]), f"{100 * s['acted_share']:.1f} %", f"{s['cost_pct_per_year_median']:.3f}",
                 f"{s['cost_pct_per_year_p95']:.3f}", f"{s['equity_vs_unhedged_median']:+.2f}",
                 "-" if s["equity_vs_unhedged_median_acted"] is None else f"{s['equity_vs_unhedged_median_acted']:+.2f}",
                 f"{s['equity_vs_unhedged_mean']:+.2f}",
                 f"{s['equity_vs_unhedged_p05']:+.2f}",
                 f"{s['equity_vs_unhedged_p95']:+.2f}", f"{s['collateral_btc_median']:.4f}"]
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    return lines


def report(results: list[WindowResult], total: int, days: int, seconds: float) -> list[str]:
    """The printed result: what was run, the table, and how long it took."""
    if not results:
        return [f"no window done (of {total})"]
    first, last = min(r.start for r in results), max(r.start for r in results)
    unfunded = sum(r.missing_funding > 0 for r in results)
    steps = sum(r.steps for r in results)
    return [f"{len(results)} of {total} windows of {days} days, starts {first} .. {last} 00:00 UTC; loan 1 BTC at "
            f"40 % LTV; delay and fees as bench.loan_backtest, slippage {(SLIPPAGE * 10000).normalize()} bps, hedge at "
            f"{HEDGE_LEVERAGE}x isolated margin",
            *format_table(summarise(results)),
            ">50 %: share of windows whose LTV went over 50 % (or was liquidated); max LTV: highest seen in any window; "
            "loan liq / hedge liq: windows with a liquidation; acted: windows where the policy traded; cost: fees + "
            "funding + realisation round trips + slippage (+ forfeited hedge margin) in % of the starting collateral "
            "value per year (median, p95); eq vs unh: owner's equity at the end minus the unhedged loan's, in "
            "percentage points of the starting collateral value (median over all windows, median over the windows "
            "where the policy acted, mean, p5, p95); coll BTC: collateral left (median)",
            f"{unfunded} windows crossed funding settlements with no rate in {FUNDING_FILE} (it starts 2020-01-01); "
            "none paid for those",
            f"runtime {seconds:.1f} s ({len(results) / max(seconds, 1e-9):.1f} windows/s), {steps:,} points walked in "
            "full, the rest skipped"]


# -- running ----------------------------------------------------------------------------------------------
_JOB: tuple[Series, list[Plan], int, int] | None = None  # set before the pool forks


def _window_job(window: Window) -> WindowResult:
    assert _JOB is not None
    series, policies, days, delay = _JOB
    return run_window(series, window, policies, days, delay)


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: no traceback per worker


class Progress:
    """Windows done / total, elapsed and rate on stderr: in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None):
        self.total, self.stream, self.started = total, stream or sys.stderr, time.monotonic()
        self.tty = self.stream.isatty()
        self.shown = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < (0.5 if self.tty else 10):
            return
        self.shown = now
        elapsed = now - self.started
        line = f"{done}/{self.total} windows, {elapsed:.0f} s elapsed, {done / max(elapsed, 1e-9):.1f} windows/s"
        self.stream.write(("\r" + line + ("\n" if final else "")) if self.tty else line + "\n")
        self.stream.flush()


def run_windows(series: Series, windows: list[Window], policies: list[Plan], days: int, *, delay: int = 1,
                workers: int = 2, done: list[WindowResult] | None = None,
                progress: Callable[[int], None] | None = None) -> list[WindowResult]:
    """Every window through every policy, on `workers` processes. Results go into `done` as they arrive, so
    a caller interrupted by Ctrl-C still has them."""
    global _JOB
    done = [] if done is None else done
    if workers <= 1:
        for window in windows:
            done.append(run_window(series, window, policies, days, delay))
            if progress:
                progress(len(done))
        return done
    _JOB = (series, policies, days, delay)
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_quiet_worker)
    try:
        for result in pool.imap_unordered(_window_job, windows, chunksize=4):
            done.append(result)
            if progress:
                progress(len(done))
        pool.close()
    finally:
        pool.terminate()
        pool.join()
        _JOB = None
    return done


def crash_runs(funding: FundingHistory, policies: list[Plan], delay: int = 1,
               data_dir: Path = DATA_DIR) -> dict[str, dict[str, list[TracePoint]]]:
    """The four 1-minute crash files, each policy traced point by point from a loan enrolled at the first price."""
    out: dict[str, dict[str, list[TracePoint]]] = {}
    for file in CRASH_FILES:
        bars = load_bars(data_dir / file)
        series = build_series(bars, 60, funding)
        out[file] = {}
        for plan in policies:
            trace: list[TracePoint] = []
            walk(series, 0, len(series.ts), plan, delay=delay, trace=trace)
            out[file][plan.name] = trace
    return out


def crash_table(runs: dict[str, dict[str, list[TracePoint]]]) -> list[str]:
    """Max LTV per policy in each crash file."""
    lines = ["max LTV (%) in the 1-minute crash files, loan enrolled at 40 % at each file's first price:",
             "file".ljust(46) + "".join(n.rjust(25) for n in POLICIES)]
    for file, by_policy in runs.items():
        cells = [max((float(t.ltv) for t in by_policy[n] if t.ltv is not None), default=math.nan) for n in POLICIES]
        lines.append(file.ljust(46) + "".join(f"{c:25.2f}" for c in cells))
    return lines


def plot(directory: Path, results: list[WindowResult], runs: dict[str, dict[str, list[TracePoint]]],
         critical: float) -> list[Path]:
    """crash_ltv.png (LTV paths of each policy in the four crash files) and cost_distribution.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    for ax, (file, by_policy) in zip(axes.flat, runs.items(), strict=True):
        for name, style in zip(POLICIES, ("-", "--", "-.", ":"), strict=True):  # styles: overlapping paths stay visible
            points = [(t.ts, float(t.ltv)) for t in by_policy[name] if t.ltv is not None]
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=name, linewidth=1)
        ax.axhline(critical, color="red", linestyle="--", linewidth=0.8)
        ax.axhline(45, color="orange", linestyle=":", linewidth=0.8)
        ax.set_title(file.removeprefix("btcusdt_binance_perp_1m_").removesuffix(".csv"))
        ax.set_ylabel("LTV %")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    paths = [directory / "crash_ltv.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(9, 5))
    ax.boxplot([[r.cost_pct_per_year[n] for r in results] for n in POLICIES], whis=(5, 95), showfliers=False)
    ax.set_xticks(range(1, len(POLICIES) + 1), POLICIES, fontsize=8)
    ax.set_ylabel("% of collateral value per year")
    ax.set_title(f"cost of protection over {len(results)} windows (box: quartiles and median, whiskers: p5-p95)")
    fig.tight_layout()
    paths.append(directory / "cost_distribution.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def json_report(results: list[WindowResult], days: int) -> dict[str, object]:
    return {"horizon_days": days, "windows": len(results), "policies": summarise(results)}


def _date(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backtest_loans", description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, choices=(30, 90, 365), default=90, help="holding period (default 90)")
    parser.add_argument("--start", type=_date, help="first window start, YYYY-MM-DD (default: the file's first day)")
    parser.add_argument("--limit", type=int, help="run at most this many windows")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON")
    parser.add_argument("--plot", type=Path, metavar="DIR", help="write PNGs (needs the bench extra: matplotlib)")
    parser.add_argument("--delay", type=int, default=1, help="reaction delay in price points (default 1)")
    parser.add_argument("--liquidation-ltv", type=Decimal, default=Bands().liquidation,
                        help=f"loan liquidation LTV %% (default {Bands().liquidation}, Bybit's)")
    parser.add_argument("--workers", type=int, default=min(2, multiprocessing.cpu_count()), help="processes (default 2)")
    args = parser.parse_args(argv)
    try:
        plans(args.liquidation_ltv)
    except ValueError as exc:
        parser.error(f"--liquidation-ltv: {exc}")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("--plot needs matplotlib: pip install -c requirements.lock -e '.[bench]'", file=sys.stderr)
            return 2
    results: list[WindowResult] = []
    total = 0
    started = time.monotonic()
    try:
        policies = plans(args.liquidation_ltv)
        funding = FundingHistory(DATA_DIR / FUNDING_FILE)
        first = args.start.replace(hour=0) if args.start else None
        until = first + timedelta(days=args.days + (args.limit or 10_000)) if first else None
        series = build_series(load_hourly(first, until), 3600, funding)
        windows = daily_windows(series, args.days, args.start, args.limit)
        total = len(windows)
        print(f"loaded {len(series.ts):,} price points in {time.monotonic() - started:.1f} s; {total} windows",
              file=sys.stderr)
        bar = Progress(total)
        run_windows(series, windows, policies, args.days, delay=args.delay, workers=args.workers, done=results,
                    progress=bar.update)
        bar.update(len(results), final=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(results)} of {total} windows done", file=sys.stderr)
        print("\n".join(report(results, total, args.days, time.monotonic() - started)))
        return 130
    seconds = time.monotonic() - started
    results.sort(key=lambda r: r.start)
    print("\n".join(report(results, total, args.days, seconds)))
    runs = crash_runs(funding, policies, args.delay)
    print()
    print("\n".join(crash_table(runs)))
    if args.json:
        args.json.write_text(json.dumps(json_report(results, args.days), indent=2) + "\n")
    if args.plot:
        for path in plot(args.plot, results, runs, float(policies[0].bands.critical)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
