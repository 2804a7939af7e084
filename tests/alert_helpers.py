"""Raising alerts and reading what the chat emulators received, for the alert tests."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import aiohttp
from temporalio.client import Client

from activities.alerts import AlertActivities
from models.hedge import Alert
from models.settings import Settings


async def raise_alert(client: Client, settings: Settings, task_queue: str, alert: Alert, raise_id: str | None = None):
    """What the raise_alert activity does for a book, called directly."""
    await AlertActivities(settings).notify(client, alert, raise_id=raise_id or str(uuid.uuid4()), task_queue=task_queue)


def sent(sim, service: str, containing: str = "") -> list[dict[str, Any]]:
    return [m for m in sim.chat.messages(service) if containing in (m["subject"] or "") + m["text"]]


async def wait_sent(sim, service: str, containing: str, count: int = 1, within_s: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within_s
    while len(found := sent(sim, service, containing)) < count:
        assert time.monotonic() < deadline, (f"{len(found)} of {count} {service} messages with {containing!r}; "
                                             f"received: {sim.chat.messages()}")
        await asyncio.sleep(0.1)
    return found


async def telegram_from(sim, chat_id: int, text: str, username: str = "owner") -> None:
    """A person typing to the bot."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.urls['control']}/control/chat/telegram/incoming",
                             json={"chat_id": chat_id, "text": text, "username": username}) as resp:
            assert resp.status == 200, await resp.text()


def _decoded(node: Any, out: list[str]) -> None:
    """Every string in a history's JSON, with payload data (base64) decoded, so a scan sees what is stored."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "data" and isinstance(value, str):
                try:
                    out.append(base64.b64decode(value).decode(errors="replace"))
                except ValueError:
                    out.append(value)
            else:
                _decoded(value, out)
    elif isinstance(node, list):
        for item in node:
            _decoded(item, out)
    elif isinstance(node, str):
        out.append(node)


async def history_text(client: Client, query: str) -> tuple[int, str]:
    """(runs, text) of every workflow run the visibility query finds, payloads decoded."""
    texts: list[str] = []
    runs = 0
    async for wf in client.list_workflows(query):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        _decoded(json.loads(history.to_json()), texts)
        runs += 1
    return runs, "\n".join(texts)
