"""A treasury move the venue refuses (README, "How the loan guard works": "A move the venue refuses (the account
cannot fund it) raises a WARNING; the amount is kept as reserve and the treasury waits a minute"). Dev server, the
worker as production builds it, the Bybit and chat emulators; the venue answers the repay with its own
insufficient-balance code, as Bybit does when the account cannot fund it.

Slow by nature: the minute is the production constant (workflows/loan_guard.py, treasury_backoff), so the test
waits it out on the dev server."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D

import pytest

from activities.store import LoanIntents
from models.loan import IntentStatus
from tests.alert_helpers import sent, wait_sent
from tests.loan_helpers import FAST, enrol, loan_state, open_loan, wait_loan
from tests.test_loan_guard import TAKER_HEDGE, settled

REPAY = "/v5/crypto-loan-flexible/repay"  # POST; the repayment history (GET) shares the prefix

pytestmark = pytest.mark.slow


def repays(sim) -> list[dict]:
    return [c for c in sim.calls.query("bybit", REPAY) if c["method"] == "POST" and c["path"] == REPAY]


async def test_a_refused_repay_is_kept_as_reserve_alerted_and_tried_again_a_minute_later(dev_env, workers, sim,
                                                                                        chat_settings, store):
    await open_loan(sim, chat_settings, "refused", "1", "24000")  # 40 % at 60000
    handle = await enrol(dev_env.client, workers, "REFUSED-1", "refused", hedge_policy=TAKER_HEDGE, always_repay=True)
    await wait_loan(handle, lambda v: v.ltv_pct is not None and v.price_source == "feed")
    sim.market.set_price("BTCUSDT", D("52700"))  # CAUTION: short the whole collateral
    await wait_loan(handle, settled("CAUTION"), within_s=60)

    sim.faults.add("bybit", "reject", 1, path=REPAY, method="POST", code=110007, message="ab not enough for new order")
    sim.market.set_price("BTCUSDT", D("49500"))  # DANGER: the short's profit is realised and sent to the loan
    view = await wait_loan(handle, lambda v: v.last_treasury is not None and v.last_treasury.kind == "repay"
                           and v.realising is None, within_s=60)
    [refused_call] = repays(sim)
    assert refused_call["ret_code"] == 110007
    record = view.last_treasury
    assert record.usdt == 0 and "ab not enough" in record.note, record
    intent = LoanIntents(store).get(record.key)
    assert intent is not None and intent.status == IntentStatus.FAILED and intent.amount > 1000
    # kept, not lost: the refused amount sits in the reserve, and the profit counts as allocated
    assert view.reserve_usdt >= intent.amount and view.allocated_pnl_usdt == view.hedge_realised_pnl
    loan = sim.loans.loans["refused"]
    assert loan.principal == 24000 and loan.repayments == []
    [warning] = await wait_sent(sim, "slack", "loan REFUSED-1: repay refused by the venue")
    assert "ab not enough" in warning["text"]
    assert sent(sim, "telegram", "refused by the venue") == []  # a WARNING: Slack only

    # something to move at once: CRITICAL (the reserve repays) with more profit to realise; the treasury waits
    sim.market.set_price("BTCUSDT", D("47500"))
    await wait_loan(handle, lambda v: v.band == "CRITICAL", within_s=10)
    deadline = time.monotonic() + 75
    while len(repays(sim)) < 2:
        assert time.monotonic() < deadline, "the treasury never tried again"
        await asyncio.sleep(0.1)
    retry = repays(sim)[1]
    waited = (retry["ts_ms"] - refused_call["ts_ms"]) / 1000
    print(f"\nthe treasury tried again {waited:.2f} s after the venue refused the repay")
    # a minute, and no longer than the guard's next look at its hedge (every hedge_check_s) and the move's own reads
    assert 60 <= waited <= 60 + FAST.hedge_check_s + 1, f"tried again {waited:.1f} s after the refusal"
    view = await wait_loan(handle, lambda v: v.last_treasury.usdt > 0, within_s=30)
    assert view.last_treasury.kind in ("repay", "deploy_reserve") and view.last_treasury.note == "done"
    assert loan.principal < 24000 and len(loan.repayments) >= 1
    assert (await loan_state(handle)).treasury_actions > 1
    print(f"then: {view.last_treasury.kind} {view.last_treasury.usdt} USDT; reserve {view.reserve_usdt} USDT")
