"""Bybit Crypto Loan operations: read the loan, repay USDT, add BTC collateral; each one idempotent.

Bybit's repay and adjust-ltv take no client id, so idempotency is ours: an intent row (key chosen by the
caller, e.g. `L-1-repay-3`) is written before the call, and a retry first looks for the action in the
loan's repayment / adjustment history (same amount, after the intent, not claimed by another intent).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from activities.ccxt_venue import BybitVenue
from activities.store import LoanIntents, Store
from activities.venue import OrderRejected, VenueUnavailable
from models.loan import IntentStatus, LoanActionKind, LoanActionResult, LoanIntent, LoanSnapshot

# the venue's precision for what it stores; amounts are cut to it before the intent is written, so a
# retry compares like with like
PRECISION = {"USDT": Decimal("0.0001"), "BTC": Decimal("0.00000001")}


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


class LoanOps:
    def __init__(self, store: Store, venue: BybitVenue) -> None:
        self.intents = LoanIntents(store)
        self.venue = venue

    async def read(self) -> LoanSnapshot:
        coins = await self.venue._call("private_get_v5_crypto_loan_flexible_ongoing_coin", {"loanCurrency": "USDT"})
        position = await self.venue._call("private_get_v5_crypto_loan_common_position", {})
        rows = (coins.get("result") or {}).get("list") or []
        usdt = next((r for r in rows if r.get("loanCurrency") == "USDT"), {})
        result = position.get("result") or {}
        btc = next((c for c in result.get("collateralList") or [] if c.get("currency") == "BTC"), {})
        return LoanSnapshot(venue=self.venue.name, account=self.venue.account, principal=_dec(usdt.get("unpaidAmount")),
                            interest=_dec(usdt.get("unpaidInterest")), collateral_btc=_dec(btc.get("amount")),
                            ltv=_dec(result.get("ltv")) if result.get("ltv") not in (None, "") else None,
                            hourly_rate=_dec(usdt.get("hourlyInterestRate")) if usdt else None, ts=datetime.now(UTC))

    async def repay(self, key: str, amount: Decimal) -> LoanActionResult:
        return await self._act(key, LoanActionKind.REPAY, "USDT", amount)

    async def add_collateral(self, key: str, amount_btc: Decimal) -> LoanActionResult:
        return await self._act(key, LoanActionKind.ADD_COLLATERAL, "BTC", amount_btc)

    async def _act(self, key: str, kind: LoanActionKind, currency: str, amount: Decimal) -> LoanActionResult:
        amount = amount.quantize(PRECISION[currency], rounding=ROUND_DOWN)
        if amount <= 0:
            raise ValueError(f"{kind.value} amount must be positive at the venue's precision, got {amount}")
        intent = await asyncio.to_thread(self.intents.get, key)
        if intent is not None and intent.status == IntentStatus.DONE:
            self._same(intent, kind, amount)
            return self._result(intent, already_done=True)
        if intent is None:
            # the venue's records that exist before this intent: whatever appears later and is unclaimed may be
            # ours (no clock is compared, so a worker whose clock is off cannot miss its own repayment)
            before = {**(await self.read()).model_dump(mode="json"), "seen": sorted(r[0] for r in await self._history(kind))}
            intent = await asyncio.to_thread(
                self.intents.create, key=key, venue=self.venue.name, account=self.venue.account, kind=kind,
                currency=currency, amount=amount, before=before)
        else:
            self._same(intent, kind, amount)
            found = await self._find(intent)
            if found is not None:
                return await self._done(intent, found, already_done=True)
        try:
            ref = await self._send(kind, amount)
        except VenueUnavailable:
            for delay in (0.0, 0.5, 1.5):
                await asyncio.sleep(delay)
                found = await self._find(intent)
                if found is not None:
                    return await self._done(intent, found, already_done=False)
            raise  # still pending: the next attempt reconciles before sending
        except OrderRejected as rej:
            await asyncio.to_thread(self.intents.finish, key, status=IntentStatus.FAILED, error=str(rej)[:500])
            raise
        return await self._done(intent, ref, already_done=False)

    @staticmethod
    def _same(intent: LoanIntent, kind: LoanActionKind, amount: Decimal) -> None:
        if intent.kind != kind or intent.amount != amount:
            raise ValueError(f"loan intent {intent.key} is {intent.kind} {intent.amount}, not {kind.value} {amount}")

    async def _send(self, kind: LoanActionKind, amount: Decimal) -> str:
        if kind == LoanActionKind.REPAY:
            response = await self.venue._call("private_post_v5_crypto_loan_flexible_repay",
                                              {"loanCurrency": "USDT", "amount": str(amount)}, retries_unavailable=0)
            return str(response["result"]["repayId"])
        response = await self.venue._call("private_post_v5_crypto_loan_common_adjust_ltv",
                                          {"currency": "BTC", "amount": str(amount), "direction": "0"},
                                          retries_unavailable=0)
        return str(response["result"]["adjustId"])

    async def _history(self, kind: str) -> list[tuple[str, Decimal]]:
        """(venue ref, amount) of every repayment or collateral addition the venue lists, oldest first."""
        if kind == LoanActionKind.REPAY:
            response = await self.venue._call("private_get_v5_crypto_loan_flexible_repayment_history",
                                              {"loanCurrency": "USDT", "limit": 100})
            rows = [(int(r["repayTime"]), str(r["repayId"]), _dec(r["repayAmount"]))
                    for r in (response.get("result") or {}).get("list") or [] if int(r.get("repayStatus", 1)) != 3]
        else:
            response = await self.venue._call("private_get_v5_crypto_loan_common_adjustment_history",
                                              {"collateralCurrency": "BTC", "limit": 100})
            rows = [(int(r["adjustTime"]), str(r["adjustId"]), _dec(r["amount"]))
                    for r in (response.get("result") or {}).get("list") or [] if str(r.get("direction")) == "0"]
        return [(ref, amount) for _, ref, amount in sorted(rows)]

    async def _find(self, intent: LoanIntent) -> str | None:
        """The venue's record of this intent's action, if it happened: the oldest record of this amount that
        was not there when the intent was written and that no other intent has claimed."""
        claimed = await asyncio.to_thread(self.intents.claimed_refs, intent.venue, intent.account, intent.kind)
        seen = set(intent.before.get("seen", []))
        matches = [ref for ref, amount in await self._history(intent.kind)
                   if amount == intent.amount and ref not in seen and ref not in claimed]
        return matches[0] if matches else None

    async def _done(self, intent: LoanIntent, ref: str, *, already_done: bool) -> LoanActionResult:
        """Claim the venue's record for this intent; the store refuses a record another intent holds."""
        finished = await asyncio.to_thread(self.intents.finish, intent.key, status=IntentStatus.DONE, venue_ref=ref)
        return self._result(finished, already_done=already_done)

    @staticmethod
    def _result(intent: LoanIntent, *, already_done: bool) -> LoanActionResult:
        return LoanActionResult(key=intent.key, kind=LoanActionKind(intent.kind), amount=intent.amount,
                                venue_ref=intent.venue_ref or "", already_done=already_done)
