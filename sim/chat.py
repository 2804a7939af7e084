"""Loopback emulators of the chat services hedgeguard alerts through, for the real client libraries to talk to:
the Slack Web API (slack_sdk), the Telegram Bot API (python-telegram-bot) and an SMTP submission server
(smtplib, in sim.smtp). Each accepts only the simulated credentials below, answers errors the way the real
service does (so a client's error handling is exercised, not bypassed), and records what it was sent.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from sim.common import json_response, same
from sim.faults import Fault, Faults
from sim.smtp import SmtpEmulator

# The only credentials the emulators accept: made up, published on purpose, worth nothing anywhere else.
SIM_SLACK_TOKEN = "xoxb-sim-hedgeguard-0001"  # noqa: S105
SIM_TELEGRAM_TOKEN = "7000000001:SIMhedgeguardBotToken0000000000000"  # noqa: S105
SIM_SMTP_USER = "alerts@hedgeguard.test"
SIM_SMTP_PASSWORD = "sim-smtp-password-0001"  # noqa: S105
SIM_SLACK_CHANNELS = ("#hedgeguard-alerts", "#hedgeguard-ops")
SIM_TELEGRAM_CHATS = (111111, 222222)  # private chats that have started the bot

SERVICES = ("slack", "telegram", "email")  # as the record names them; faults name the last one "smtp"
SLACK_CHANNEL_IDS = {name: f"C0SIM{n:05d}" for n, name in enumerate(SIM_SLACK_CHANNELS, 1)}
SLACK_IDENTITY = {"url": "https://hedgeguard-sim.slack.com/", "team": "hedgeguard sim", "user": "hedgeguard",
                  "team_id": "T0SIM00001", "user_id": "U0SIM00001", "bot_id": "B0SIM00001"}
TELEGRAM_BOT_USER = {"id": 7000000001, "is_bot": True, "first_name": "hedgeguard sim", "username": "hedgeguard_sim_bot"}
TELEGRAM_TEXT_LIMIT = 4096
RECORD_LIMIT = 10_000


class ChatHub:
    """The three emulators and the record of everything they were sent, oldest first."""

    def __init__(self, faults: Faults) -> None:
        self._messages: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)
        self._next_id = 1
        self._attempts: Counter[str] = Counter()
        self.slack = SlackEmulator(self, faults)
        self.telegram = TelegramEmulator(self, faults)
        self.smtp = SmtpEmulator(self, faults, user=SIM_SMTP_USER, password=SIM_SMTP_PASSWORD)

    @property
    def smtp_cert_pem(self) -> str | None:
        """The SMTP server's certificate (PEM), for a client to trust; made when the simulator starts."""
        return self.smtp.cert_pem

    def record(self, service: str, *, to: str, text: str, subject: str | None = None, sender: str | None = None,
               recipients: list[str] | None = None) -> dict[str, Any]:
        entry = {"id": self._next_id, "service": service, "at": datetime.now(UTC).isoformat(), "to": to,
                 "subject": subject, "text": text, "from": sender, "recipients": recipients or [to]}
        self._next_id += 1
        self._messages.append(entry)
        return entry

    def messages(self, service: str | None = None) -> list[dict[str, Any]]:
        if service is not None and service not in SERVICES:
            raise ValueError(f"service must be one of {', '.join(SERVICES)}")
        return [dict(m) for m in self._messages if service is None or m["service"] == service]

    def clear(self) -> None:
        """Forget the messages and the attempt counts (ids keep counting up)."""
        self._messages.clear()
        self._attempts.clear()

    def count_attempt(self, service: str) -> None:
        self._attempts[service] += 1

    def attempts(self, service: str) -> int:
        """Send attempts (chat.postMessage, sendMessage, SMTP MAIL), faulted and refused ones included."""
        return self._attempts["email" if service == "smtp" else service]

    async def close(self) -> None:
        self.telegram.close()
        await self.smtp.close()


async def request_params(request: web.Request) -> dict[str, Any] | None:
    """What a client sent, as both APIs take it: a JSON object, a form (url-encoded or multipart) or the query
    string. None when the body claims to be JSON and is not."""
    params: dict[str, Any] = dict(request.query)
    if not request.can_read_body:
        return params
    if request.content_type == "application/json":
        try:
            body = await request.json()
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        params.update(body)
    else:
        params.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    return params


# -- Slack ------------------------------------------------------------------------------------------
def slack_reply(data: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Slack answers most errors with HTTP 200 and ok false; only rate limits and outages change the status."""
    return json_response(data, status=status, headers=headers)


class SlackEmulator:
    """POST /api/<method>: auth.test and chat.postMessage, with a bearer token as slack_sdk sends it."""

    def __init__(self, hub: ChatHub, faults: Faults) -> None:
        self.hub = hub
        self.faults = faults
        self._last_us = 0

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self.call)
        return app

    async def call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        sending = method == "chat.postMessage"
        if sending:
            self.hub.count_attempt("slack")
        fault = self.faults.take("slack", request.path, method=request.method, order_entry=False, private=sending)
        if fault is not None:
            return self._refusal(fault)
        error = self._auth_error(request)
        if error:
            return slack_reply({"ok": False, "error": error})
        params = await request_params(request)
        if params is None:
            return slack_reply({"ok": False, "error": "invalid_json"})
        if method == "auth.test":
            return slack_reply({"ok": True, **SLACK_IDENTITY, "is_enterprise_install": False})
        if sending:
            return slack_reply(self.post_message(params))
        return slack_reply({"ok": False, "error": "unknown_method", "req_method": method}, status=404)

    @staticmethod
    def _auth_error(request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return "not_authed"
        return None if same(header.removeprefix("Bearer ").strip(), SIM_SLACK_TOKEN) else "invalid_auth"

    @staticmethod
    def _refusal(fault: Fault) -> web.Response:
        if fault.kind == "rate_limit":
            wait = int(float(fault.params.get("retry_after", 1)))
            return slack_reply({"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": str(wait)})
        if fault.kind == "http500":
            return slack_reply({"ok": False, "error": "internal_error"}, status=int(fault.params.get("status", 500)))
        return slack_reply({"ok": False, "error": "service_unavailable"}, status=503)

    def post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        given = str(params.get("channel") or "")
        channel = next((name for name, cid in SLACK_CHANNEL_IDS.items() if given in (name, name[1:], cid)), None)
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        text = str(params.get("text") or "")
        if not text and not params.get("blocks") and not params.get("attachments"):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        self.hub.record("slack", to=channel, text=text, sender=SLACK_IDENTITY["user"])
        return {"ok": True, "channel": SLACK_CHANNEL_IDS[channel], "ts": ts,
                "message": {"type": "message", "text": text, "ts": ts, "user": SLACK_IDENTITY["user_id"],
                            "bot_id": SLACK_IDENTITY["bot_id"]}}

    def _next_ts(self) -> str:
        """Slack's message id: epoch seconds with six decimals, unique within a channel."""
        micros = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


# -- Telegram ---------------------------------------------------------------------------------------
class TelegramBadRequest(Exception):
    pass


def telegram_error(code: int, description: str, **extra: Any) -> web.Response:
    return json_response({"ok": False, "error_code": code, "description": description, **extra}, status=code)


def command_entities(text: str) -> list[dict[str, Any]]:
    """A leading /command is marked as Telegram marks it; python-telegram-bot's CommandHandler looks for that."""
    if not text.startswith("/") or len(text) < 2:
        return []
    return [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]


def _int(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value in (None, ""):
        return default
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise TelegramBadRequest(f"Bad Request: invalid {name}") from None


class TelegramEmulator:
    """POST /bot<token>/<method>: getMe, sendMessage, getUpdates (long polling), deleteWebhook, getWebhookInfo.
    Method names are case-insensitive, as Telegram's are."""

    def __init__(self, hub: ChatHub, faults: Faults) -> None:
        self.hub = hub
        self.faults = faults
        self.chats: dict[int, dict[str, Any]] = {c: self._chat(c, None) for c in SIM_TELEGRAM_CHATS}
        self.updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self._next_update = 1
        self._next_message = 1
        self._arrived = asyncio.Event()
        self._closing = False
        self._methods = {"getme": self.get_me, "sendmessage": self.send_message, "getupdates": self.get_updates,
                         "deletewebhook": self.delete_webhook, "getwebhookinfo": self.webhook_info}

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self.call)
        return app

    async def call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"].lower()
        sending = method == "sendmessage"
        if sending:
            self.hub.count_attempt("telegram")
        fault = self.faults.take("telegram", request.path, method=request.method, order_entry=False, private=sending)
        if fault is not None:
            return self._refusal(fault)
        if not same(request.match_info["token"], SIM_TELEGRAM_TOKEN):
            return telegram_error(401, "Unauthorized")
        handler = self._methods.get(method)
        if handler is None:
            return telegram_error(404, "Not Found")
        params = await request_params(request)
        try:
            if params is None:
                raise TelegramBadRequest("Bad Request: can't parse JSON object")
            return json_response({"ok": True, "result": await handler(params)})
        except TelegramBadRequest as exc:
            return telegram_error(400, str(exc))

    @staticmethod
    def _refusal(fault: Fault) -> web.Response:
        if fault.kind == "rate_limit":
            wait = int(float(fault.params.get("retry_after", 1)))
            return telegram_error(429, f"Too Many Requests: retry after {wait}", parameters={"retry_after": wait})
        if fault.kind == "http500":
            status = int(fault.params.get("status", 500))
            return telegram_error(status, "Bad Gateway" if status == 502 else "Internal Server Error")
        return telegram_error(503, "Service Unavailable")

    @staticmethod
    def _chat(chat_id: int, username: str | None) -> dict[str, Any]:
        chat = {"id": chat_id, "type": "private", "first_name": username or f"sim user {chat_id}"}
        return chat | ({"username": username} if username else {})

    def _message(self, sender: dict[str, Any], chat: dict[str, Any], text: str) -> dict[str, Any]:
        message = {"message_id": self._next_message, "from": sender, "chat": chat, "date": int(time.time()),
                   "text": text}
        self._next_message += 1
        return message

    # -- methods --------------------------------------------------------------------------------
    async def get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**TELEGRAM_BOT_USER, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    async def send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("chat_id") in (None, ""):
            raise TelegramBadRequest("Bad Request: chat_id is empty")
        try:
            chat = self.chats.get(int(str(params["chat_id"])))
        except ValueError:
            chat = None  # an @username: the emulator knows its chats by id only
        if chat is None:
            raise TelegramBadRequest("Bad Request: chat not found")
        text = str(params.get("text") or "")
        if not text.strip():
            raise TelegramBadRequest("Bad Request: message text is empty")
        if len(text) > TELEGRAM_TEXT_LIMIT:
            raise TelegramBadRequest("Bad Request: message is too long")
        self.hub.record("telegram", to=str(chat["id"]), text=text, sender=f"@{TELEGRAM_BOT_USER['username']}")
        return self._message(TELEGRAM_BOT_USER, chat, text)

    async def get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Confirm what lies below `offset`, then answer at once if anything is pending, else hold the request
        up to `timeout` seconds for the next incoming message (long polling)."""
        offset, limit = _int(params, "offset", 0), min(max(_int(params, "limit", 100), 1), 100)
        timeout = max(_int(params, "timeout", 0), 0)
        if offset > 0:
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        elif offset < 0:
            self.updates = self.updates[offset:]
        deadline = time.monotonic() + timeout
        while not self.updates and not self._closing and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        return self.updates[:limit]

    async def delete_webhook(self, params: dict[str, Any]) -> bool:
        if str(params.get("drop_pending_updates", "")).lower() == "true":
            self.updates.clear()
        return True

    async def webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"url": "", "has_custom_certificate": False, "pending_update_count": len(self.updates)}

    # -- what people type ------------------------------------------------------------------------
    def incoming(self, chat_id: int, text: str, username: str | None = None) -> int:
        """A person writes to the bot from a private chat: queue the update; the chat can be answered from now."""
        if not text:
            raise ValueError("text is required")
        chat = self._chat(chat_id, username)
        self.chats[chat_id] = chat
        sender = {"id": chat_id, "is_bot": False, "first_name": chat["first_name"]}
        sender |= {"username": username} if username else {}
        message = self._message(sender, chat, text)
        entities = command_entities(text)
        if entities:
            message["entities"] = entities
        update_id = self._next_update
        self._next_update += 1
        self.updates.append({"update_id": update_id, "message": message})
        self._wake()
        return update_id

    def _wake(self) -> None:
        """Every request held in getUpdates waits on the current event; a fresh one serves the next wait."""
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    def close(self) -> None:
        """Let held getUpdates requests answer now, so the server stops without waiting out their timeouts."""
        self._closing = True
        self._wake()


# -- the page a person watches ----------------------------------------------------------------------
def page(messages: list[dict[str, Any]]) -> str:
    """GET /chat: what the emulators were sent, newest first, reloading every 2 s."""
    rows = "\n".join(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><pre>{}</pre></td></tr>".format(
            m["id"], html.escape(m["at"]), html.escape(m["service"]), html.escape(m["to"]),
            html.escape(m["subject"] or ""), html.escape(m["text"]))
        for m in reversed(messages)) or '<tr><td colspan="6">nothing sent yet</td></tr>'
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>hedgeguard sim: chat</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:2px 8px;border-bottom:1px solid #ddd}}
pre{{margin:0;white-space:pre-wrap}}</style></head>
<body><h1>Sent to Slack, Telegram and email</h1><p>{len(messages)} message(s), newest first</p>
<table><tr><th>#</th><th>at (UTC)</th><th>service</th><th>to</th><th>subject</th><th>text</th></tr>
{rows}
</table></body></html>
"""
