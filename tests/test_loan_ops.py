"""Bybit Crypto Loan through ccxt's implicit endpoints: read, repay, add collateral; a retry after a
timeout, or after a worker died mid-call, reconciles against the loan instead of paying twice."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from activities.loan_ops import LoanOps
from activities.store import LoanIntents, Store
from activities.venue import OrderRejected, VenueUnavailable
from activities.venues import paper_credentials
from models.loan import IntentStatus, LoanActionKind
from models.venue import RejectReason


@pytest.fixture
async def loan(sim, venues, store: Store) -> LoanOps:
    creds = paper_credentials("bybit", "borrower")  # pledged BTC beyond the collateral, to add later
    sim.engines["bybit"].create_account("borrower", creds.api_key.get_secret_value(),
                                        creds.api_secret.get_secret_value(), {"USDT": D("1000"), "BTC": D("0.5")})
    account = sim.engines["bybit"].account_by_name("borrower")
    sim.loans.open(account, collateral_btc=D("1"), debt_usdt=D("24000"))
    account.balances["USDT"] = D("1000")  # the borrowed USDT was spent; 1000 is left for repayments
    return LoanOps(store, await venues.get("bybit", "borrower"))


def repay_calls(sim) -> list:
    return [c for c in sim.calls.query("bybit", "crypto-loan-flexible/repay") if c["method"] == "POST"]


async def test_read_the_loan(loan: LoanOps):
    snap = await loan.read()
    assert (snap.principal, snap.interest, snap.collateral_btc, snap.ltv) == (D("24000"), D(0), D(1), D("0.4"))


async def test_repay_reduces_the_debt_once(sim, loan: LoanOps):
    done = await loan.repay("L-1-repay-1", D("1000"))
    assert done.kind == LoanActionKind.REPAY and not done.already_done and done.venue_ref
    assert (await loan.read()).principal == D("23000")
    again = await loan.repay("L-1-repay-1", D("1000"))
    assert again.already_done and again.venue_ref == done.venue_ref
    assert len(repay_calls(sim)) == 1 and (await loan.read()).principal == D("23000")


async def test_repay_timing_out_after_the_venue_accepted_is_not_paid_twice(sim, loan: LoanOps):
    sim.faults.add("bybit", "timeout_after_accept", 1, path="crypto-loan-flexible/repay", hold_s=3)
    done = await loan.repay("L-1-repay-2", D("500"))
    assert done.venue_ref and len(repay_calls(sim)) == 1
    assert (await loan.read()).principal == D("23500")
    assert (await loan.repay("L-1-repay-2", D("500"))).already_done and len(repay_calls(sim)) == 1


async def test_a_pending_intent_left_by_a_dead_worker_is_reconciled_not_resent(sim, loan: LoanOps, store: Store):
    before = (await loan.read()).model_dump(mode="json")
    LoanIntents(store).create(key="L-1-repay-3", venue="bybit", account="borrower", kind="repay", currency="USDT",
                              amount=D("700"), before=before)
    await loan.venue._call("private_post_v5_crypto_loan_flexible_repay", {"loanCurrency": "USDT", "amount": "700"})
    # ... and the worker died here, before recording the outcome
    done = await loan.repay("L-1-repay-3", D("700"))
    assert done.already_done and len(repay_calls(sim)) == 1 and (await loan.read()).principal == D("23300")


async def test_a_venue_down_through_every_attempt_leaves_the_intent_pending(sim, loan: LoanOps, store: Store):
    sim.faults.add("bybit", "http500", 50, path="/v5/crypto-loan-flexible/repay", method="POST")
    with pytest.raises(VenueUnavailable):
        await loan.repay("L-1-repay-4", D("100"))
    assert LoanIntents(store).get("L-1-repay-4").status == IntentStatus.PENDING
    sim.faults.clear()
    assert not (await loan.repay("L-1-repay-4", D("100"))).already_done
    assert (await loan.read()).principal == D("23900")


async def test_add_collateral_is_idempotent_and_lowers_ltv(sim, loan: LoanOps):
    done = await loan.add_collateral("L-1-collateral-1", D("0.25"))
    snap = await loan.read()
    assert snap.collateral_btc == D("1.25") and snap.ltv == D("0.32")
    assert (await loan.add_collateral("L-1-collateral-1", D("0.25"))).venue_ref == done.venue_ref
    assert (await loan.read()).collateral_btc == D("1.25")


async def test_refusals_fail_the_intent_with_the_reason(sim, loan: LoanOps, store: Store):
    with pytest.raises(OrderRejected) as rej:
        await loan.repay("L-1-repay-5", D("5000"))  # only 1000 USDT in the account
    assert rej.value.reason == RejectReason.INSUFFICIENT_BALANCE
    assert LoanIntents(store).get("L-1-repay-5").status == IntentStatus.FAILED
    with pytest.raises(ValueError, match="is repay 5000.0000, not repay 10.0000"):
        await loan.repay("L-1-repay-5", D("10"))
    with pytest.raises(ValueError, match="must be positive"):
        await loan.add_collateral("L-1-collateral-2", D("0"))


async def test_a_worker_clock_minutes_fast_still_finds_its_own_repayment(sim, loan: LoanOps, monkeypatch):
    from datetime import UTC, datetime, timedelta

    import activities.store as store_module

    monkeypatch.setattr(store_module, "_now", lambda: datetime.now(UTC) + timedelta(minutes=2))
    sim.faults.add("bybit", "timeout_after_accept", 1, path="crypto-loan-flexible/repay", hold_s=3)
    done = await loan.repay("L-1-repay-skew", D("300"))
    assert done.venue_ref and len(repay_calls(sim)) == 1 and (await loan.read()).principal == D("23700")


async def test_two_intents_of_the_same_amount_never_claim_one_repayment(sim, loan: LoanOps, store: Store):
    first = await loan.repay("L-1-repay-a", D("100"))
    second = await loan.repay("L-1-repay-b", D("100"))
    assert first.venue_ref != second.venue_ref and len(repay_calls(sim)) == 2
    from activities.store import StoreError

    with pytest.raises(StoreError, match="already belongs to loan intent L-1-repay-a"):
        LoanIntents(store).finish("L-1-repay-b", status=IntentStatus.DONE, venue_ref=first.venue_ref)


async def test_amounts_are_cut_to_the_venue_precision_before_the_intent(loan: LoanOps, store: Store):
    done = await loan.add_collateral("L-1-collateral-p", D("0.123456789123"))
    assert done.amount == D("0.12345678") and LoanIntents(store).get("L-1-collateral-p").amount == D("0.12345678")
