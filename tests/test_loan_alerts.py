"""The loan guard's alerts and commands end to end (dev server, emulators, the worker as production builds it):
with every channel down the guard hedges as fast as ever and the alerts arrive once the channels are back;
fills, treasury moves and operator commands are told; Telegram commands from an allowed chat pause and resume
the guard, from any other chat they are refused; no secret reaches workflow history or the log."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal as D

from models.alerts import CommandPoll, alerts_queue
from sim.chat import SIM_SLACK_TOKEN, SIM_SMTP_PASSWORD, SIM_TELEGRAM_TOKEN
from tests.alert_helpers import history_text, sent, telegram_from, wait_sent
from tests.loan_helpers import enrol, open_loan, record_if_asked, wait_loan
from tests.test_loan_guard import FAST_HEDGE, settled

OUTAGE_S = 12


def hedge_orders(sim, account: str) -> list:
    return [o for a in sim.engines["bybit"].accounts.values() if a.name == account for o in a.orders]


async def test_channels_down_delay_no_hedge_and_deliver_afterwards(dev_env, workers, sim, chat_settings):
    await open_loan(sim, chat_settings, "alerts-down", "1", "24000")
    handle = await enrol(dev_env.client, workers, "DOWN-1", "alerts-down", hedge_policy=FAST_HEDGE)
    await wait_loan(handle, lambda v: v.ltv_pct is not None and v.price_source == "feed")
    for service in ("slack", "telegram", "smtp"):
        sim.faults.add(service, "down", seconds=OUTAGE_S)
    started = time.monotonic()
    sim.market.set_price("BTCUSDT", D("52700"))  # CAUTION: a WARNING alert, then a 1-BTC short
    while not hedge_orders(sim, "alerts-down"):
        assert time.monotonic() - started < OUTAGE_S, "no hedge order while the channels were down"
        await asyncio.sleep(0.05)
    ordered_s = time.monotonic() - started
    print(f"\nfirst hedge order {ordered_s:.2f} s after the band crossing, Slack, Telegram and SMTP all down")
    assert ordered_s < 5 and sent(sim, "slack", "DOWN-1") == []  # the hedge went out while Slack refused
    # the alert is tried and refused while the channels are down (its path has more hops than the order's,
    # so its first attempt can come after the order)
    while sim.chat.attempts("slack") < 1:
        assert time.monotonic() - started < OUTAGE_S, "the alert was not tried while Slack was down"
        await asyncio.sleep(0.05)
    assert sent(sim, "slack", "DOWN-1") == []
    view = await wait_loan(handle, settled("CAUTION"), within_s=60)
    assert view.hedge_current_btc == 1
    band = await wait_sent(sim, "slack", "loan DOWN-1: SAFE → CAUTION", within_s=40)
    fill = await wait_sent(sim, "slack", "SELL 1 BTCUSDT filled", within_s=40)
    assert "LTV 45." in band[0]["text"] and "position now -1 on bybit:alerts-down" in fill[0]["text"]
    assert len(sent(sim, "slack", "loan DOWN-1: SAFE → CAUTION")) == 1


async def test_telegram_commands_pause_and_resume_a_loan_and_other_chats_are_refused(
        dev_env, workers, sim, chat_settings, caplog):
    caplog.set_level(logging.DEBUG)
    poller = await dev_env.client.start_workflow("TelegramCommandsWorkflow", CommandPoll(poll_s=1),
                                                 id=f"telegram-commands-{workers}", task_queue=alerts_queue(workers))
    await open_loan(sim, chat_settings, "alerts-tg", "1", "24000")
    handle = await enrol(dev_env.client, workers, "TG-1", "alerts-tg", hedge_policy=FAST_HEDGE)
    await wait_loan(handle, lambda v: v.ltv_pct is not None)

    await telegram_from(sim, 333333, "/pause TG-1", username="stranger")
    refusal = await wait_sent(sim, "telegram", "Refused")
    assert refusal[0]["to"] == "333333"
    await telegram_from(sim, 111111, "/pause TG-1")
    await wait_loan(handle, lambda v: v.paused)
    await wait_sent(sim, "telegram", "loan TG-1: paused")
    told = await wait_sent(sim, "slack", "loan TG-1 paused by telegram @owner (chat 111111)")
    assert "LTV 40.00 % (SAFE)" in told[0]["text"]
    await telegram_from(sim, 111111, "/status")
    status = await wait_sent(sim, "telegram", "TG-1: LTV 40.00 % SAFE")
    assert "PAUSED" in status[0]["text"]
    await telegram_from(sim, 333333, "/resume TG-1", username="stranger")
    await wait_sent(sim, "telegram", "Refused", count=2)
    await telegram_from(sim, 111111, "/resume TG-1")
    await wait_loan(handle, lambda v: not v.paused)
    await wait_sent(sim, "slack", "loan TG-1 resumed by telegram @owner")
    await telegram_from(sim, 111111, "/pause NO-SUCH-LOAN")
    await wait_sent(sim, "telegram", "no loan guard for NO-SUCH-LOAN")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "telegram: refused '/pause' from chat 333333 (@stranger)" in logged
    assert "telegram: refused '/resume' from chat 333333 (@stranger)" in logged
    await record_if_asked(dev_env.client, handle.id, "LoanGuardWorkflow-telegram-pause-resume")
    await poller.terminate("test finished")
    await record_if_asked(dev_env.client, poller.id, "TelegramCommandsWorkflow-commands")

    runs, history = await history_text(dev_env.client, f'WorkflowId = "{poller.id}" OR WorkflowId = "{handle.id}" OR '
                                                       'WorkflowId STARTS_WITH "alert-loan-TG-1"')
    assert runs >= 3 and "by telegram @owner" in history
    for secret in (SIM_SLACK_TOKEN, SIM_TELEGRAM_TOKEN, SIM_SMTP_PASSWORD, SIM_TELEGRAM_TOKEN.split(":")[1]):
        assert secret not in history and secret not in logged
