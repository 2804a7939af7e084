"""On the time-skipping server: a channel down for ten minutes keeps being retried with backoff, the other
channels are not held up, and the message arrives exactly once when the channel is back; INFO alerts are
sent once a day, counted per key, as a digest."""

from __future__ import annotations

import uuid
from datetime import timedelta

from activities.notify import ChatChannels
from models.alerts import DIGEST_WORKFLOW_ID, alert_workflow_id
from models.hedge import Alert
from tests.alert_helpers import raise_alert, sent, wait_sent
from tests.loan_helpers import record_if_asked
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


async def test_info_alerts_go_out_once_a_day_as_a_digest(ts_env, sim, chat_settings):
    settings = chat_settings.model_copy(update={"alert_digest": "slack", "alert_digest_hour_utc": 8})
    task_queue, loan = f"tq-{uuid.uuid4()}", f"L-{uuid.uuid4().hex[:6]}"
    channels = ChatChannels(settings)
    async with build_alert_worker(ts_env.client, settings, channels, task_queue=task_queue):
        for text in ("LTV 44.90 %", "LTV 43.70 %", "LTV 44.10 %"):
            await raise_alert(ts_env.client, settings, task_queue, Alert(
                severity="INFO", key=f"loan-{loan}:band", title=f"loan {loan}: CAUTION → SAFE", text=text))
        await raise_alert(ts_env.client, settings, task_queue, Alert(
            severity="INFO", key=f"loan-{loan}:feed", title=f"loan {loan}: price feed back", text="ticks arriving again"))
        await ts_env.sleep(timedelta(days=1))
        (digest,) = await wait_sent(sim, "slack", "[DIGEST]")
        assert "4 INFO alerts in the 24 h to" in digest["text"]
        assert f"3 × loan {loan}: CAUTION → SAFE: LTV 44.10 %" in digest["text"]
        assert f"1 × loan {loan}: price feed back" in digest["text"]
        assert sent(sim, "slack", "[INFO]") == []  # INFO is never sent on its own
        handle = ts_env.client.get_workflow_handle(DIGEST_WORKFLOW_ID)
        await handle.terminate("test finished")
        await record_if_asked(ts_env.client, DIGEST_WORKFLOW_ID, "AlertDigestWorkflow-one-day")
    await channels.close()
