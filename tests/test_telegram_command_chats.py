"""Which Telegram chats may command (README, "Alerts": "Telegram commands from the chats in
HEDGEGUARD_TELEGRAM_COMMAND_CHAT_IDS (default: the alert chats) ... Any other chat gets a refusal, and the attempt
is logged"). Narrowed by that setting, an alert chat that is not a command chat is refused and changes nothing,
and a command chat that gets no alerts is obeyed. Dev server, the worker as production builds it, the Telegram
and Slack emulators."""

from __future__ import annotations

import logging

import pytest
from temporalio.api.enums.v1 import EventType

from activities.notify import ChatChannels
from models.alerts import CommandPoll, alerts_queue
from tests.alert_helpers import sent, telegram_from, wait_sent
from tests.loan_helpers import end_loan_workflows, enrol, loan_state, open_loan, wait_loan
from tests.test_loan_guard import FAST_HEDGE
from worker import build_alert_worker, build_worker

DESK, OWNER, TRUSTED = 111111, 444444, 555555  # alerts and commands; alerts only; commands only


@pytest.fixture
def narrowed_settings(request, monkeypatch):
    monkeypatch.setenv("HEDGEGUARD_TELEGRAM_COMMAND_CHAT_IDS", f"{DESK}, {TRUSTED}")
    settings = request.getfixturevalue("chat_settings")  # reads the environment now
    settings = settings.model_copy(update={"telegram_chat_ids": [DESK, OWNER]})  # the owner's chat gets alerts too
    assert settings.command_chats() == [DESK, TRUSTED]
    return settings


@pytest.fixture
async def workers(dev_env, narrowed_settings, store, task_queue):
    from activities.venues import VenuePool

    venues, channels = VenuePool(narrowed_settings), ChatChannels(narrowed_settings)
    async with build_worker(dev_env.client, narrowed_settings, store, venues, task_queue=task_queue), \
            build_alert_worker(dev_env.client, narrowed_settings, channels, task_queue=task_queue):
        poller = await dev_env.client.start_workflow("TelegramCommandsWorkflow", CommandPoll(poll_s=1),
                                                     id=f"telegram-commands-{task_queue}",
                                                     task_queue=alerts_queue(task_queue))
        yield task_queue
        await poller.terminate("test finished")
        await end_loan_workflows(dev_env.client)
    await channels.close()
    await venues.close()


async def commands_received(handle) -> list[str]:
    """The operator signals in the guard's history (the feed's price signals come and go as they will)."""
    history = await handle.fetch_history()
    names = [e.workflow_execution_signaled_event_attributes.signal_name for e in history.events
             if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED]
    return [n for n in names if n in ("pause", "resume", "force_close", "unenrol")]


async def test_only_the_command_chats_may_command_a_loan(dev_env, workers, sim, narrowed_settings, caplog):
    caplog.set_level(logging.INFO, logger="hedgeguard.telegram")
    await open_loan(sim, narrowed_settings, "cmd-chats", "1", "24000")
    handle = await enrol(dev_env.client, workers, "CHATS-1", "cmd-chats", hedge_policy=FAST_HEDGE)
    await wait_loan(handle, lambda v: v.ltv_pct is not None)
    commands_before = await commands_received(handle)

    # an alert chat left out of the command chats: refused, logged, and the loan is as it was
    await telegram_from(sim, OWNER, "/pause CHATS-1", username="owner")
    refusal = await wait_sent(sim, "telegram", "Refused")
    assert [m["to"] for m in refusal] == [str(OWNER)]
    assert not (await loan_state(handle)).paused
    assert await commands_received(handle) == commands_before  # no pause reached the guard
    assert "telegram: refused '/pause' from chat 444444 (@owner)" in "\n".join(r.getMessage() for r in caplog.records)

    # a command chat that gets no alerts: obeyed, told back, and told to the desk
    await telegram_from(sim, TRUSTED, "/pause CHATS-1", username="trusted")
    await wait_loan(handle, lambda v: v.paused)
    reply = await wait_sent(sim, "telegram", "loan CHATS-1: paused")
    assert [m["to"] for m in reply] == [str(TRUSTED)]
    await wait_sent(sim, "slack", "loan CHATS-1 paused by telegram @trusted (chat 555555)")

    # the owner's chat cannot undo it, nor ask for the status; the desk's chat can
    commands_before = await commands_received(handle)
    await telegram_from(sim, OWNER, "/resume CHATS-1", username="owner")
    await telegram_from(sim, OWNER, "/status", username="owner")
    refusals = await wait_sent(sim, "telegram", "Refused", count=3)
    assert {m["to"] for m in refusals} == {str(OWNER)}
    assert (await loan_state(handle)).paused and await commands_received(handle) == commands_before
    assert not [m for m in sent(sim, "telegram") if m["to"] == str(OWNER) and "LTV" in m["text"]]
    await telegram_from(sim, DESK, "/resume CHATS-1", username="desk")
    await wait_loan(handle, lambda v: not v.paused)
    await wait_sent(sim, "slack", "loan CHATS-1 resumed by telegram @desk (chat 111111)")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "telegram: refused '/resume' from chat 444444 (@owner)" in logged
    assert "telegram: refused '/status' from chat 444444 (@owner)" in logged
