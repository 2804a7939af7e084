"""The hedge's own margin (README, "How the loan guard works": "An enrolment reserve ... and the treasury's reserve
... top up the hedge's margin when its mark comes within 15 % of its liquidation price"; "Alerts": CRITICAL "hedge
margin thin"). Dev server, the worker as production builds it, the Bybit and chat emulators: a rally brings the
short's mark near its liquidation price, people are told on every CRITICAL channel, and the position's margin
at the venue grows by the reserve."""

from __future__ import annotations

import asyncio
from decimal import Decimal as D

from tests.alert_helpers import wait_sent
from tests.loan_helpers import enrol, loan_state, open_loan, wait_loan
from tests.test_loan_guard import TAKER_HEDGE, settled

RESERVE = D("1000")


async def test_a_hedge_near_its_liquidation_price_is_alerted_and_topped_up_from_the_reserve(dev_env, workers, sim,
                                                                                            chat_settings):
    await open_loan(sim, chat_settings, "margin", "1", "24000")  # 40 % at 60000
    # leverage 5 (the default cap is 2): the short's liquidation price is ~19 % above its entry, within reach of a
    # rally that leaves the loan in CAUTION (so the short stays on)
    handle = await enrol(dev_env.client, workers, "MARGIN-1", "margin", hedge_policy=TAKER_HEDGE, hedge_leverage=D(5),
                         reserve_usdt=RESERVE)
    await wait_loan(handle, lambda v: v.ltv_pct is not None and v.price_source == "feed")
    sim.market.set_price("BTCUSDT", D("52700"))  # CAUTION (45.5 %): short the whole collateral
    view = await wait_loan(handle, lambda v: settled("CAUTION")(v) and v.hedge_current_btc == 1
                           and v.hedge_liquidation_price is not None, within_s=60)
    position = sim.engines["bybit"].account_by_name("margin").positions["BTCUSDT"]
    margin_before, liquidation_before = position.margin, view.hedge_liquidation_price
    assert margin_before > 0 and (liquidation_before - 52700) / 52700 > D("0.15")  # healthy: nothing to do
    await asyncio.sleep(1.5)  # a guard that topped up a healthy hedge would have by now (it reads it every second)
    assert position.margin == margin_before and (await loan_state(handle)).enrol_reserve_left_usdt == RESERVE

    rally = D("55500")  # LTV 43.2 %: still CAUTION (SAFE only under 38), the mark within 15 % of liquidation
    assert (liquidation_before - rally) / rally < D("0.15")
    sim.market.set_price("BTCUSDT", rally)
    view = await wait_loan(handle, lambda v: v.last_treasury is not None and v.last_treasury.kind == "margin_topup",
                           within_s=20)
    assert (view.last_treasury.usdt, view.enrol_reserve_left_usdt, view.band) == (RESERVE, 0, "CAUTION")
    assert position.size == -1 and position.margin == margin_before + RESERVE  # the venue's position holds it
    view = await wait_loan(handle, lambda v: v.hedge_liquidation_price > liquidation_before, within_s=10)
    assert (view.hedge_liquidation_price - rally) / rally > D("0.15")  # out of reach again

    for service in ("slack", "telegram", "email"):  # CRITICAL: every channel
        [told] = await wait_sent(sim, service, "loan MARGIN-1: hedge margin thin", within_s=30)
        assert "topping up from the reserve" in told["text"]
    [action] = await wait_sent(sim, "slack", "loan MARGIN-1: treasury margin topup")  # the move, told once
    assert "1000.00 USDT (hedge margin topped up from the reserve)" in action["text"], action["text"]
