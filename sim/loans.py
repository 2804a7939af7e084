"""Bybit Crypto Loan (flexible) as the emulator keeps it: USDT debt against BTC collateral.

LTV = (principal + accrued interest) / (collateral x min(last, index)), as Bybit values collateral.
Interest accrues hourly on the market clock. When LTV reaches the liquidation LTV (default 91 %) the
venue sells the collateral to clear the debt, as Bybit does; whatever is left returns to the account.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sim.engine import Account, Engine, Reject, RejectReason
from sim.market import Market, Quote, wall_ms

ZERO = Decimal(0)
LIQUIDATION_FEE = Decimal("0.02")  # share of the debt the venue charges when it liquidates


@dataclass
class Loan:
    account: str
    principal: Decimal
    collateral: Decimal
    hourly_rate: Decimal
    interest: Decimal = ZERO
    status: str = "active"  # active | liquidated | repaid
    opened_ms: int = field(default_factory=wall_ms)
    repayments: list[dict[str, Any]] = field(default_factory=list)
    adjustments: list[dict[str, Any]] = field(default_factory=list)
    liquidation: dict[str, Any] | None = None
    max_ltv_seen: Decimal = ZERO

    @property
    def debt(self) -> Decimal:
        return self.principal + self.interest


class LoanBook:
    def __init__(self, market: Market, engine: Engine, *, liquidation_ltv: Decimal = Decimal("0.91"),
                 hourly_rate: Decimal = Decimal("0.0000057"), symbol: str = "BTCUSDT") -> None:
        self.market = market
        self.engine = engine
        self.symbol = symbol
        self.liquidation_ltv = liquidation_ltv
        self.hourly_rate = hourly_rate
        self.loans: dict[str, Loan] = {}
        self._seq = 0
        market.subscribe(self._on_price)

    def _id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{1_700_000 + self._seq}"

    def ltv(self, loan: Loan, quote: Quote | None = None) -> Decimal:
        quote = quote or self.market.quote(self.symbol)
        if loan.collateral <= 0:
            return Decimal("Infinity") if loan.debt > 0 else ZERO
        return loan.debt / (loan.collateral * quote.risk_price)

    def open(self, account: Account, *, collateral_btc: Decimal, debt_usdt: Decimal,
             hourly_rate: Decimal | None = None) -> Loan:
        """Paper enrolment: the borrower pledged BTC and received the USDT (credited to the account)."""
        if collateral_btc <= 0 or debt_usdt <= 0:
            raise ValueError("collateral and debt must be positive")
        current = self.loans.get(account.name)
        if current is not None and current.status == "active":
            raise ValueError(f"account {account.name} already has an active loan")
        loan = Loan(account=account.name, principal=debt_usdt, collateral=collateral_btc,
                    hourly_rate=hourly_rate if hourly_rate is not None else self.hourly_rate)
        if self.ltv(loan) >= self.liquidation_ltv:
            raise ValueError(f"LTV {self.ltv(loan):.2%} is at or above the liquidation LTV {self.liquidation_ltv:.0%}")
        account.balances["USDT"] = account.balances.get("USDT", ZERO) + debt_usdt
        self.loans[account.name] = loan
        loan.max_ltv_seen = self.ltv(loan)
        return loan

    def active(self, account: Account) -> Loan:
        loan = self.loans.get(account.name)
        if loan is None or loan.status != "active":
            raise Reject(RejectReason.NOT_FOUND, "no ongoing loan")
        return loan

    def repay(self, account: Account, amount: Decimal) -> dict[str, Any]:
        loan = self.active(account)
        if amount <= 0:
            raise Reject(RejectReason.BAD_QTY, "amount must be positive")
        if amount > loan.debt:
            raise Reject(RejectReason.BAD_QTY, f"amount {amount} exceeds the debt {loan.debt}")
        if account.balances.get("USDT", ZERO) < amount:
            raise Reject(RejectReason.INSUFFICIENT_BALANCE, "insufficient USDT balance to repay")
        account.balances["USDT"] -= amount
        to_interest = min(amount, loan.interest)
        loan.interest -= to_interest
        loan.principal -= amount - to_interest
        if loan.debt == 0:
            loan.status = "repaid"
        record = {"repayId": self._id(""), "loanCurrency": "USDT", "repayAmount": amount, "repayTime": wall_ms()}
        loan.repayments.append(record)
        return record

    def adjust(self, account: Account, amount: Decimal, direction: str) -> dict[str, Any]:
        loan = self.active(account)
        if amount <= 0:
            raise Reject(RejectReason.BAD_QTY, "amount must be positive")
        pre_ltv = self.ltv(loan)
        if direction == "0":
            if account.balances.get("BTC", ZERO) < amount:
                raise Reject(RejectReason.INSUFFICIENT_BALANCE, "insufficient BTC balance to add as collateral")
            account.balances["BTC"] -= amount
            loan.collateral += amount
        elif direction == "1":
            if amount > loan.collateral:
                raise Reject(RejectReason.BAD_QTY, "amount exceeds the collateral")
            after = Loan(account=loan.account, principal=loan.principal, interest=loan.interest,
                         collateral=loan.collateral - amount, hourly_rate=loan.hourly_rate)
            if self.ltv(after) > Decimal("0.75"):
                raise Reject(RejectReason.BAD_QTY, "collateral reduction would raise LTV above 75%")
            loan.collateral -= amount
            account.balances["BTC"] = account.balances.get("BTC", ZERO) + amount
        else:
            raise Reject(RejectReason.BAD_QTY, "direction must be 0 (add) or 1 (reduce)")
        record = {"adjustId": int(self._id("")), "collateralCurrency": "BTC", "amount": amount, "direction": direction,
                  "adjustTime": wall_ms(), "preLTV": str(pre_ltv.quantize(Decimal("0.000001"))),
                  "afterLTV": str(self.ltv(loan).quantize(Decimal("0.000001")))}
        loan.adjustments.append(record)
        return record

    def accrue_hour(self) -> None:
        for loan in self.loans.values():
            if loan.status == "active":
                loan.interest += loan.debt * loan.hourly_rate

    def _on_price(self, symbol: str, quote: Quote) -> None:
        if symbol != self.symbol:
            return
        for name, loan in self.loans.items():
            if loan.status != "active":
                continue
            ltv = self.ltv(loan, quote)
            loan.max_ltv_seen = max(loan.max_ltv_seen, ltv)
            if ltv >= self.liquidation_ltv:
                self._liquidate(name, loan, quote, ltv)

    def _liquidate(self, name: str, loan: Loan, quote: Quote, ltv: Decimal) -> None:
        price = quote.risk_price
        owed = loan.debt * (1 + LIQUIDATION_FEE)
        sold = min(loan.collateral, owed / price)
        left = loan.collateral - sold
        loan.liquidation = {"ts_ms": wall_ms(), "ltv": str(ltv), "price": str(price), "collateral_sold": str(sold),
                            "debt_cleared": str(loan.debt), "collateral_returned": str(left)}
        loan.principal = loan.interest = ZERO
        loan.collateral = ZERO
        loan.status = "liquidated"
        account = self.engine.account_by_name(name)
        if account is not None and left > 0:
            account.balances["BTC"] = account.balances.get("BTC", ZERO) + left

    def snapshot(self) -> list[dict[str, Any]]:
        out = []
        for loan in self.loans.values():
            out.append({"account": loan.account, "status": loan.status, "principal": str(loan.principal),
                        "interest": str(loan.interest), "debt": str(loan.debt), "collateral_btc": str(loan.collateral),
                        "ltv": str(self.ltv(loan)) if loan.status == "active" else None,
                        "max_ltv_seen": str(loan.max_ltv_seen), "hourly_rate": str(loan.hourly_rate),
                        "liquidation_ltv": str(self.liquidation_ltv), "liquidation": loan.liquidation,
                        "repayments": len(loan.repayments), "adjustments": len(loan.adjustments)})
        return out
