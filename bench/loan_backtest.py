"""Backtest of the loan guard's rules (risk/loan.py) on real BTCUSDT crashes - the rules, not Temporal.

    .venv/bin/python -m bench.loan_backtest [--delay N] [--hourly 2021 2022 ...] [--reserve PCT] [--ltv PCT]

A BTC-collateralised USDT loan is enrolled at 40 % LTV (``--ltv``) at the first price of each file, with
1 BTC of collateral (``--collateral``), and walked through the file's price points (sim.replay.path_points:
open, nearer extreme, other extreme, close of every bar). At every point the guard does what the rules say:
LTV from the price, the band via ``band_for`` (keeping the previous band), the hedge target via
``hedge_target_btc``, profit to realise via ``realisation_due``; the hedge's realised PnL not yet allocated
goes through ``allocate`` (buy BTC spot and add it as collateral, repay, or keep as reserve) once it reaches
LoanTiming's 10 USDT minimum, as in LoanGuardWorkflow; an optional enrolment reserve (``--reserve``, % of the
debt, held in USDT) repays debt down to the target LTV once the band is CRITICAL. ``run(trace=...)`` lists each
point's decisions; tests/test_loan_crash_scenario.py holds them against the real workflows.

How execution is modelled, and what it leaves out (read before trusting a figure):

- Reaction delay: a decision taken at point i (hedge change, realisation, treasury action, reserve repayment)
  takes effect at point i + N (``--delay``, default 1 point = a third of a bar) at that point's price. While
  a decision is in flight no other is taken; the next one is taken at the point where it lands. With no
  delay the guard decides again at the same price after acting, as the workflow reads the loan and its band
  again after a treasury action.
- Fills at the point's price with no spread or slippage (``run(slippage=...)`` moves every fill against the
  taker, in its price); the points are the bars' extremes, so in a crash the real fills would have been
  worse. Orders are rounded to Bybit's 0.001 BTC step.
- Perp taker fee 0.055 % (Bybit linear taker) on every hedge trade. A realisation closes part of the short
  and re-opens it (the re-hedge), so it pays the fee twice; that round trip is counted as "realise" cost,
  the other hedge trades as "fees". Where the target falls in the same step, the re-open is netted away.
- Spot purchase of collateral: 0.1 % fee, taken in BTC; its USDT value at purchase is the "spot" cost.
- Funding from the historical Binance USDT-M 8 h file at each settlement the walk crosses, at the point's
  price: the short receives positive funding and pays negative funding ("funding" cost > 0 means paid).
- Loan interest 0.0000057 per hour on the outstanding debt (principal + accrued), accrued at every point.
- Risk price: the files carry one price series (perp last for the 1 m crash windows, spot for the hourly
  file) and no index, so last = index = that price. In the crashes the perp wicked below spot (3,621.81
  against 3,782.13 in March 2020), so the LTVs here are, if anything, worse than Bybit's.
- Liquidation at 91 % LTV (``Bands.liquidation``): the collateral covers the debt and the rest comes back in
  USDT with no liquidation penalty (flatters whoever is liquidated); the guard then closes the hedge.
- Hedge margin is not modelled: the perp account is assumed to hold enough USDT not to be liquidated.
- The treasury spends what the hedge's ledger shows realised (closes + funding - fees), as the workflow does:
  a hedge closed at a loss (the band back to SAFE after a rebound) has to earn that loss back before later
  profit reaches the loan. At CRITICAL only the enrolment reserve repays; the workflow also spends the
  treasury's reserve (fee buffers, RESERVE allocations) there, which is not modelled.
- Equity (USDT) = collateral x price - debt + perp account (realised + funding - fees - allocated) + the open short
  marked at the last price (no closing fee) + treasury cash (reserve and fee buffer) + enrolment reserve.
  "unhedged" is the same loan with no guard at all, holding the same enrolment reserve idle.

Prints one table per file (policy rows: the multiplier sets x default treasury / always-repay, and the
unhedged loan), then a summary over the crash files that marks the cheapest policy keeping max LTV <= the
critical 50 % on every crash file. Every figure comes from the files in sim.replay.DATA_DIR.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

from models.loan_guard import LoanTiming
from risk.loan import (
    HUNDRED,
    ZERO,
    Band,
    Bands,
    TreasuryKind,
    allocate,
    band_for,
    hedge_target_btc,
    loss_to_write_off,
    realisation_due,
    repay_to_reach,
)
from sim.replay import DATA_DIR, FUNDING_FILE, FundingHistory, PricePoint, bar_seconds, load_bars, path_points

PERP_TAKER_FEE = Decimal("0.00055")  # Bybit linear perpetual taker
SPOT_FEE = Decimal("0.001")  # Bybit spot taker, charged in the asset bought
INTEREST_PER_HOUR = Decimal("0.0000057")
QTY_STEP = Decimal("0.001")  # Bybit BTCUSDT order quantity step
MIN_TREASURY_USDT = LoanTiming().min_treasury_usdt  # the guard's: smaller realisations and allocations wait
SYMBOL = "BTCUSDT"
SETTLEMENT_HOURS = 8

CRASH_FILES = (
    "btcusdt_binance_perp_1m_2020-03-12_crash.csv",
    "btcusdt_binance_perp_1m_2021-05-19_crash.csv",
    "btcusdt_binance_perp_1m_2022-06-18_crash.csv",
    "btcusdt_binance_perp_1m_2022-11-09_crash.csv",
)
HOURLY_FILE = "btcusdt_binance_spot_1h_2019-01-01_2026-06-30.csv.gz"

# (CAUTION, DANGER, CRITICAL); SAFE is always 0
MULTIPLIER_SETS: tuple[tuple[Decimal, Decimal, Decimal], ...] = (
    (Decimal("0.5"), Decimal("0.8"), Decimal("1.0")),  # risk.loan's defaults
    (Decimal("0.5"), Decimal("1.0"), Decimal("1.2")),
    (Decimal("0.8"), Decimal("1.0"), Decimal("1.2")),
    (Decimal("1.0"), Decimal("1.2"), Decimal("1.5")),
)


@dataclass(frozen=True)
class Policy:
    multipliers: tuple[Decimal, Decimal, Decimal] | None  # None: the unhedged loan, no guard
    always_repay: bool = False
    hysteresis: Decimal = Bands().hysteresis

    @property
    def name(self) -> str:
        if self.multipliers is None:
            return "unhedged"
        return "/".join(str(m) for m in self.multipliers) + (" always-repay" if self.always_repay else " default")

    def bands(self) -> Bands:
        caution, danger, critical = self.multipliers or (ZERO, ZERO, ZERO)
        bands = Bands(hysteresis=self.hysteresis,
                      multipliers={Band.SAFE: ZERO, Band.CAUTION: caution, Band.DANGER: danger, Band.CRITICAL: critical})
        if problems := bands.problems():
            raise ValueError(f"invalid bands for {self.name}: {'; '.join(problems)}")
        return bands


def policies(hysteresis: Decimal = Bands().hysteresis) -> list[Policy]:
    return [Policy(m, always, hysteresis) for m in MULTIPLIER_SETS for always in (False, True)]


@dataclass(frozen=True)
class Window:
    name: str
    points: list[PricePoint]


def crash_window(file: str, data_dir: Path = DATA_DIR) -> Window:
    bars = load_bars(data_dir / file)
    return Window(file, path_points(bars, bar_seconds(bars)))


def hourly_windows(years: list[int], data_dir: Path = DATA_DIR) -> list[Window]:
    bars = load_bars(data_dir / HOURLY_FILE)
    seconds = bar_seconds(bars)
    out = []
    for year in years:
        inside = [b for b in bars if b.ts.year == year]
        if len(inside) < 2:
            raise SystemExit(f"{HOURLY_FILE} has no bars in {year}")
        out.append(Window(f"{HOURLY_FILE} [{year}]", path_points(inside, seconds)))
    return out


@dataclass(frozen=True)
class Decision:
    due: int  # index of the point where it takes effect
    target_btc: Decimal | None  # None: leave the hedge alone (unhedged baseline)
    realise_usdt: Decimal
    deploy_reserve: bool


@dataclass(frozen=True)
class Step:
    """What the guard decided at one price point (``run(trace=...)``): the band and hedge target it read there
    and the treasury actions it took there, named as LoanGuardWorkflow's TreasuryRecord.kind."""

    index: int
    bands: tuple[Band, ...]  # the band read at the point's price, then any it moved to after a treasury action
    target_btc: Decimal
    treasury: tuple[tuple[str, Decimal], ...] = ()  # (kind, USDT): repay, add_collateral, reserve, deploy_reserve
    ltv: Decimal | None = None  # once it was done there; None once liquidated


@dataclass
class Result:
    window: str
    policy: str
    max_ltv: Decimal
    over_critical: bool
    liquidated: bool
    fees: Decimal  # perp taker fees on hedge changes
    funding: Decimal  # paid (>0) or received (<0) by the short
    realisation: Decimal  # taker fees of realise-and-re-hedge round trips
    spot: Decimal  # spot fee on collateral purchases, valued at purchase
    realisations: int
    actions: Counter[TreasuryKind]
    equity: Decimal
    unhedged_equity: Decimal
    perp_traded_usdt: Decimal  # notional of every perp trade
    funding_missing: int  # settlements crossed with no rate in the file
    collateral_btc: Decimal
    debt: Decimal
    reserve_left: Decimal = ZERO
    treasury_cash: Decimal = ZERO
    perp_cash: Decimal = ZERO
    interest: Decimal = ZERO  # loan interest accrued
    price_pnl: Decimal = ZERO  # sum over steps of (collateral - short) x price change: the BTC exposure's result
    start_equity: Decimal = ZERO

    @property
    def cost(self) -> Decimal:
        return self.fees + self.funding + self.realisation + self.spot

    @property
    def versus_unhedged(self) -> Decimal:
        return self.equity - self.unhedged_equity


@dataclass
class Loan:
    collateral: Decimal
    debt: Decimal
    liquidated: bool = False
    liquidation_cash: Decimal = ZERO
    interest: Decimal = ZERO

    def ltv(self, price: Decimal) -> Decimal | None:
        return None if self.liquidated else self.debt / (self.collateral * price) * HUNDRED

    def accrue(self, hours: Decimal) -> None:
        interest = self.debt * INTEREST_PER_HOUR * hours
        self.debt += interest
        self.interest += interest

    def check_liquidation(self, price: Decimal, bands: Bands) -> None:
        if not self.liquidated and self.debt / (self.collateral * price) * HUNDRED >= bands.liquidation:
            self.liquidation_cash = max(ZERO, self.collateral * price - self.debt)
            self.collateral = self.debt = ZERO
            self.liquidated = True

    def equity(self, price: Decimal) -> Decimal:
        return self.collateral * price - self.debt + self.liquidation_cash


@dataclass
class Guard:
    """The guarded loan's state while walking a window."""

    bands: Bands
    always_repay: bool
    loan: Loan
    reserve: Decimal
    short: Decimal = ZERO
    entry: Decimal = ZERO
    perp_cash: Decimal = ZERO  # realised PnL not yet allocated + funding - fees (+ margin put in by a subclass)
    treasury_cash: Decimal = ZERO  # RESERVE amounts and the fee buffer
    band: Band = Band.SAFE
    fees: Decimal = ZERO
    funding: Decimal = ZERO
    realisation: Decimal = ZERO
    spot: Decimal = ZERO
    traded: Decimal = ZERO
    realisations: int = 0
    # fraction of the price every perp and spot trade fills worse by (0 here; bench.backtest_loans sets it); a perp
    # fill's slippage is in its price, so in the short's entry and PnL, as the venue's figures the guard reads
    slippage: Decimal = ZERO
    slipped: Decimal = ZERO  # what that slippage cost, USDT
    actions: Counter[TreasuryKind] = field(default_factory=Counter)
    min_treasury: Decimal = MIN_TREASURY_USDT
    closed_pnl: Decimal = ZERO  # trading PnL of every BTC of short closed
    allocated: Decimal = ZERO  # of hedge_realised, what the treasury has taken
    target: Decimal = ZERO  # the hedge target of the last decision
    moves: list[tuple[str, Decimal]] = field(default_factory=list)  # every treasury action, in order

    @property
    def hedge_realised(self) -> Decimal:
        """The hedge ledger's realised PnL, all-in as LoanGuardWorkflow reads it: closes + funding - fees."""
        return self.closed_pnl - self.fees - self.realisation - self.funding

    def unrealised(self, price: Decimal) -> Decimal:
        return self.short * (self.entry - price)

    def _fee(self, qty: Decimal, price: Decimal) -> Decimal:
        self.traded += qty * price
        fee = qty * price * PERP_TAKER_FEE
        self.perp_cash -= fee
        return fee

    def _fill(self, qty: Decimal, price: Decimal, side: str) -> Decimal:
        """The price a perp trade of qty fills at: the point's price, worse by the slippage."""
        slip = price * self.slippage
        self.slipped += qty * slip
        return price + slip if side == "buy" else price - slip

    def _sell(self, qty: Decimal, price: Decimal) -> None:
        self.entry = (self.short * self.entry + qty * price) / (self.short + qty)
        self.short += qty

    def _buy(self, qty: Decimal, price: Decimal) -> Decimal:
        """Close qty of the short; the realised PnL, not yet in any cash balance."""
        pnl = qty * (self.entry - price)
        self.closed_pnl += pnl
        self.short -= qty
        if self.short == 0:
            self.entry = ZERO
        return pnl

    def decide(self, index: int, price: Decimal, delay: int) -> Decision | None:
        if self.loan.liquidated:
            return Decision(index + delay, ZERO, ZERO, False) if self.short > 0 else None
        ltv = self.loan.ltv(price)
        self.band = band_for(ltv, self.band, self.bands)
        target = hedge_target_btc(self.loan.collateral, self.band, self.bands).quantize(QTY_STEP, ROUND_DOWN)
        self.target = target
        realise = realisation_due(self.unrealised(price), ltv, self.loan.debt, self.loan.collateral, price,
                                  self.bands, minimum_usdt=self.min_treasury,
                                  always_repay=self.always_repay)  # as LoanGuardWorkflow._realise
        deploy = self.band == Band.CRITICAL and self.reserve > 0
        if target == self.short and realise == 0 and not deploy:
            return None
        return Decision(index + delay, target, realise, deploy)

    def execute(self, decision: Decision, price: Decimal) -> None:
        reopen_allowance = ZERO
        per_btc = self.entry - price
        if decision.realise_usdt > 0 and self.short > 0 and per_btc > 0:
            qty = min(self.short, decision.realise_usdt / per_btc).quantize(QTY_STEP, ROUND_DOWN)
            if qty > 0:
                self.realisation += self._fee(qty, price)
                self.perp_cash += self._buy(qty, self._fill(qty, price, "buy"))
                reopen_allowance = qty
                self.realisations += 1
                if not self.loan.liquidated:
                    # the workflow allocates what the close realised before the hedge sells the short back, so the
                    # re-opening's fee comes after it: written off, not netted against this profit
                    self._treasury(price)
        target = decision.target_btc if decision.target_btc is not None else self.short
        change = target - self.short
        if change > 0:
            reopen = min(change, reopen_allowance)
            if reopen > 0:
                self.realisation += self._fee(reopen, price)
            if change > reopen:
                self.fees += self._fee(change - reopen, price)
            self._sell(change, self._fill(change, price, "sell"))
        elif change < 0:
            self.fees += self._fee(-change, price)
            self.perp_cash += self._buy(-change, self._fill(-change, price, "buy"))
        if not self.loan.liquidated:
            self._treasury(price)
        if decision.deploy_reserve and not self.loan.liquidated and self.reserve > 0:
            amount = min(self.reserve, repay_to_reach(self.loan.debt, self.loan.collateral, price, self.bands.target))
            self.reserve -= amount
            self.loan.debt -= amount
            self.moves.append(("deploy_reserve", amount))

    def _treasury(self, price: Decimal) -> None:
        """LoanGuardWorkflow._treasury: a loss written off, then the hedge's realised PnL not yet allocated, once it
        reaches the minimum."""
        self.allocated -= loss_to_write_off(self.hedge_realised, self.allocated)
        available = self.hedge_realised - self.allocated
        if available < max(self.min_treasury, Decimal("0.01")):
            return
        self.allocated += available
        self.perp_cash -= available
        action = allocate(available, self.loan.ltv(price), self.bands, always_repay=self.always_repay)
        self.actions[action.kind] += 1
        self.moves.append((action.kind.name.lower(), action.kept if action.kind == TreasuryKind.RESERVE else action.usdt))
        self.treasury_cash += action.kept
        if action.kind == TreasuryKind.ADD_COLLATERAL:
            bought = action.usdt / price
            fee_btc = bought * SPOT_FEE
            slip_btc = bought * self.slippage
            self.spot += fee_btc * price
            self.slipped += slip_btc * price
            self.loan.collateral += bought - fee_btc - slip_btc
        elif action.kind == TreasuryKind.REPAY:
            repaid = min(action.usdt, self.loan.debt)
            self.loan.debt -= repaid
            self.treasury_cash += action.usdt - repaid

    def settle_funding(self, rate: Decimal, price: Decimal) -> None:
        received = self.short * price * rate
        self.funding -= received
        self.perp_cash += received

    def equity(self, price: Decimal) -> Decimal:
        return (self.loan.equity(price) + self.perp_cash + self.unrealised(price) + self.treasury_cash
                + self.reserve)


def settlements_between(after: datetime, until: datetime) -> list[datetime]:
    """Funding settlements (00:00, 08:00, 16:00 UTC) in (after, until]."""
    first = after.replace(minute=0, second=0, microsecond=0)
    first = first.replace(hour=first.hour - first.hour % SETTLEMENT_HOURS)
    out = []
    moment = first
    while moment <= until:
        if moment > after:
            out.append(moment)
        moment += timedelta(hours=SETTLEMENT_HOURS)
    return out


def run(window: Window, policy: Policy, funding: FundingHistory, *, delay: int = 1, collateral: Decimal = Decimal(1),
        start_ltv: Decimal = Decimal(40), reserve_pct: Decimal = ZERO, min_treasury: Decimal = MIN_TREASURY_USDT,
        slippage: Decimal = ZERO, trace: list[Step] | None = None) -> Result:
    """Walk one window with one policy; the unhedged loan is walked alongside for comparison. `trace`, if given,
    gets a Step for every point of a hedged policy."""
    if delay < 0:
        raise ValueError("the reaction delay cannot be negative")
    points = window.points
    debt = start_ltv / HUNDRED * collateral * points[0].price
    bands = policy.bands()
    reserve = debt * reserve_pct / HUNDRED
    hedged = policy.multipliers is not None
    guard = Guard(bands, policy.always_repay, Loan(collateral, debt), reserve if hedged else ZERO,
                  min_treasury=min_treasury, slippage=slippage)
    bare = Loan(collateral, debt)
    max_ltv = bare_max = ZERO
    missing = 0
    pending: Decision | None = None
    previous = points[0].ts
    start_equity = guard.equity(points[0].price) if hedged else bare.equity(points[0].price) + reserve
    price_pnl = ZERO
    for index, point in enumerate(points):
        price = point.price
        moved = len(guard.moves)
        if index:
            step = price - points[index - 1].price
            price_pnl += (guard.loan.collateral - guard.short) * step if hedged else bare.collateral * step
        hours = Decimal((point.ts - previous).total_seconds()) / 3600
        for loan in (guard.loan, bare):
            if not loan.liquidated:
                loan.accrue(hours)
        for settlement in settlements_between(previous, point.ts) if index else []:
            rate = funding.rate(SYMBOL, settlement)
            if rate is None:
                missing += 1
            elif guard.short > 0:
                guard.settle_funding(rate, price)
        previous = point.ts
        if pending is not None and pending.due <= index:
            guard.execute(pending, price)
            pending = None
        if not guard.loan.liquidated:
            max_ltv = max(max_ltv, guard.loan.ltv(price))
        if not bare.liquidated:
            bare_max = max(bare_max, bare.ltv(price))
        bare.check_liquidation(price, bands)
        guard.loan.check_liquidation(price, bands)
        read = [guard.band]
        if hedged and pending is None:
            # a decision that lands at once is followed by the next one at the same price, as the workflow
            # re-reads the loan and its band after every treasury action
            for _ in range(8):
                pending = guard.decide(index, price, delay)
                if read[-1] != guard.band:
                    read.append(guard.band)
                if pending is None or pending.due > index:
                    break
                guard.execute(pending, price)
                pending = None
            else:
                raise RuntimeError(f"{window.name} point {index}: the guard keeps deciding at one price")
        if trace is not None and hedged:
            ltv = None if guard.loan.liquidated else guard.loan.ltv(price)
            trace.append(Step(index, tuple(read[1:] or read), guard.target, tuple(guard.moves[moved:]), ltv))
    last = points[-1].price
    if not hedged:
        max_ltv, liquidated = bare_max, bare.liquidated
    else:
        liquidated = guard.loan.liquidated
    return Result(
        window=window.name, policy=policy.name, max_ltv=max_ltv, over_critical=liquidated or max_ltv > bands.critical,
        liquidated=liquidated, fees=guard.fees, funding=guard.funding, realisation=guard.realisation, spot=guard.spot,
        realisations=guard.realisations, actions=guard.actions,
        equity=guard.equity(last) if hedged else bare.equity(last) + reserve,
        unhedged_equity=bare.equity(last) + reserve, perp_traded_usdt=guard.traded, funding_missing=missing,
        collateral_btc=guard.loan.collateral, debt=guard.loan.debt, reserve_left=guard.reserve,
        treasury_cash=guard.treasury_cash, perp_cash=guard.perp_cash,
        interest=guard.loan.interest if hedged else bare.interest, price_pnl=price_pnl, start_equity=start_equity)


# -- printing ----------------------------------------------------------------------------------------------
COLUMNS = (("policy C/D/CR treasury", 26), ("maxLTV", 7), (">50", 4), ("liq", 4), ("fees", 8), ("funding", 8),
           ("realise", 8), ("spot", 7), ("cost", 8), ("#real", 5), ("add/rep/res", 11), ("equity", 10),
           ("vs unhedged", 11))


def _row(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS,
                                                                                              strict=True)))


def _money(value: Decimal) -> str:
    return f"{value:,.2f}"


def format_result(r: Result) -> str:
    a = r.actions
    hedged = r.policy != "unhedged"
    return _row([
        r.policy, f"{r.max_ltv:.2f}", "yes" if r.over_critical else "no", "yes" if r.liquidated else "no",
        _money(r.fees) if hedged else "-", _money(r.funding) if hedged else "-",
        _money(r.realisation) if hedged else "-", _money(r.spot) if hedged else "-", _money(r.cost) if hedged else "-",
        str(r.realisations) if hedged else "-",
        f"{a[TreasuryKind.ADD_COLLATERAL]}/{a[TreasuryKind.REPAY]}/{a[TreasuryKind.RESERVE]}" if hedged else "-",
        _money(r.equity), _money(r.versus_unhedged) if hedged else "-"])


def format_window(window: Window, results: list[Result]) -> list[str]:
    first, last = window.points[0], window.points[-1]
    lo = min(p.price for p in window.points)
    lines = [f"== {window.name}: {first.ts:%Y-%m-%d %H:%M} .. {last.ts:%Y-%m-%d %H:%M} UTC, {len(window.points)} "
             f"points, first {first.price}, low {lo}, last {last.price}"]
    missing = max(r.funding_missing for r in results)
    if missing:
        lines.append(f"   ({missing} funding settlements crossed have no rate in {FUNDING_FILE}; none paid for them)")
    lines.append(_row([name for name, _ in COLUMNS]))
    lines += [format_result(r) for r in results]
    return lines


def summary(results_by_window: dict[str, list[Result]], critical: Decimal, what: str) -> list[str]:
    by_policy: dict[str, list[Result]] = {}
    for results in results_by_window.values():
        for r in results:
            by_policy.setdefault(r.policy, []).append(r)
    lines = [f"== summary over the {len(results_by_window)} {what}",
             "policy C/D/CR treasury".ljust(26) + "  worst maxLTV  over 50  cost total  vs unhedged total"]
    safe = []
    for name, results in by_policy.items():
        worst = max(r.max_ltv for r in results)
        over = sum(r.over_critical for r in results)
        cost = sum((r.cost for r in results), ZERO)
        gain = sum((r.versus_unhedged for r in results), ZERO)
        lines.append(f"{name.ljust(26)}  {worst:12.2f}  {over:7d}  {_money(cost) if name != 'unhedged' else '-':>10}  "
                     f"{_money(gain) if name != 'unhedged' else '-':>17}")
        if name != "unhedged" and worst <= critical:
            safe.append((cost, -gain, name))
    if safe:
        cost, _, name = min(safe)
        lines.append(f"cheapest policy with max LTV <= {critical} % on all {what}: {name} (cost {_money(cost)} USDT)")
    else:
        lines.append(f"no policy kept max LTV <= {critical} % on all {what}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loan_backtest", description=__doc__.split("\n")[0])
    parser.add_argument("--delay", type=int, default=1, help="reaction delay in price points (default 1)")
    parser.add_argument("--hourly", type=int, nargs="*", default=[], metavar="YEAR",
                        help=f"also walk these calendar years of {HOURLY_FILE} (funding from 2020 on)")
    parser.add_argument("--reserve", type=Decimal, default=ZERO, metavar="PCT",
                        help="enrolment reserve in %% of the debt, repaid at CRITICAL (default 0)")
    parser.add_argument("--ltv", type=Decimal, default=Decimal(40), help="LTV %% at enrolment (default 40)")
    parser.add_argument("--collateral", type=Decimal, default=Decimal(1), help="BTC of collateral (default 1)")
    parser.add_argument("--hysteresis", type=Decimal, default=Bands().hysteresis,
                        help=f"LTV points below a band's threshold before stepping down (default {Bands().hysteresis})")
    args = parser.parse_args(argv)
    funding = FundingHistory(DATA_DIR / FUNDING_FILE)
    everyone = [Policy(None)] + policies(args.hysteresis)
    settings = dict(delay=args.delay, collateral=args.collateral, start_ltv=args.ltv, reserve_pct=args.reserve)
    print(f"loan guard backtest: {args.collateral} BTC collateral at {args.ltv} % LTV, reaction delay {args.delay} "
          f"point(s), perp taker {PERP_TAKER_FEE * 100} %, spot fee {SPOT_FEE * 100} %, interest "
          f"{INTEREST_PER_HOUR}/h, hysteresis {args.hysteresis}, enrolment reserve {args.reserve} % of debt; USDT unless "
          f"stated; data {DATA_DIR}")
    crash: dict[str, list[Result]] = {}
    for file in CRASH_FILES:
        window = crash_window(file)
        crash[file] = [run(window, p, funding, **settings) for p in everyone]
        print()
        print("\n".join(format_window(window, crash[file])))
    hourly: dict[str, list[Result]] = {}
    for window in hourly_windows(args.hourly) if args.hourly else []:
        hourly[window.name] = [run(window, p, funding, **settings) for p in everyone]
        print()
        print("\n".join(format_window(window, hourly[window.name])))
    print()
    print("\n".join(summary(crash, Bands().critical, "crash files")))
    if hourly:
        print()
        print("\n".join(summary(hourly, Bands().critical, "hourly windows")))
    return 0


if __name__ == "__main__":
    sys.exit(main())

