"""A channel down for ten minutes, on the time-skipping server: delivery keeps retrying with backoff, the other
channels are not held up, and the message arrives exactly once when the channel is back."""

from __future__ import annotations

import uuid

from activities.notify import ChatChannels
from models.alerts import alert_workflow_id
from models.hedge import Alert
from tests.alert_helpers import raise_alert, sent, wait_sent
from worker import build_alert_worker


async def test_slack_down_for_ten_minutes_delivers_once_afterwards(ts_env, sim, chat_settings):
    task_queue, key = f"tq-{uuid.uuid4()}", f"L-{uuid.uuid4().hex[:8]}"
    sim.faults.add("slack", "down", count=100_000)  # every attempt refused (HTTP 503) until cleared
    channels = ChatChannels(chat_settings)
    async with build_alert_worker(ts_env.client, chat_settings, channels, task_queue=task_queue):
        await raise_alert(ts_env.client, chat_settings, task_queue, Alert(
            severity="CRITICAL", key=key, title=f"loan {key}: hedge margin thin", text="mark 2 % from liquidation"))
        await wait_sent(sim, "telegram", key)  # the other channels go at once
        await wait_sent(sim, "email", key)
        await ts_env.sleep(600)
        refused = sim.chat.attempts("slack")
        assert sent(sim, "slack", key) == [] and refused >= 8  # 2, 4, 8, ... 60 s apart: retried all along
        sim.faults.clear()
        await ts_env.client.get_workflow_handle(alert_workflow_id(key)).result()
    await channels.close()
    (message,) = sent(sim, "slack", key)
    assert "hedge margin thin" in message["text"]
    assert len(sent(sim, "telegram", key)) == 1 and len(sent(sim, "email", key)) == 1
