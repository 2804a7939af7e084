"""The chat emulators through the real client libraries hedgeguard sends with: slack_sdk's AsyncWebClient,
python-telegram-bot's Bot and smtplib with STARTTLS and login. Each success is recorded, each refusal arrives
as the library's own exception, and faults are seen the way a real outage or rate limit is."""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import ssl
import time
from datetime import timedelta
from email.message import EmailMessage
from urllib.parse import urlsplit

import aiohttp
import pytest
import telegram
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter

from sim.chat import SIM_SLACK_CHANNELS, SIM_SLACK_TOKEN, SIM_SMTP_PASSWORD, SIM_SMTP_USER, SIM_TELEGRAM_CHATS, SIM_TELEGRAM_TOKEN
from sim.server import DEFAULT_PORTS, resolve_ports

ALERTS, OPS = SIM_SLACK_CHANNELS
OWNER = SIM_TELEGRAM_CHATS[0]


async def control(sim, verb: str, path: str, body=None, *, expect: int = 200):
    async with aiohttp.ClientSession() as http, http.request(verb, f"{sim.urls['control']}{path}", json=body) as r:
        assert r.status == expect, await r.text()
        return await r.json() if r.content_type == "application/json" else await r.text()


def slack(sim, token: str = SIM_SLACK_TOKEN) -> AsyncWebClient:
    return AsyncWebClient(token=token, base_url=f"{sim.urls['slack']}/api/")


def bot(sim, token: str = SIM_TELEGRAM_TOKEN) -> telegram.Bot:
    return telegram.Bot(token, base_url=f"{sim.urls['telegram']}/bot")


def email(subject: str = "LTV 0.78 on loan L-1 — act now", body: str = "Collateral 1 BTC, debt 45 000 USDT.\nÉcart: 3 %"):
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = SIM_SMTP_USER, "owner@hedgeguard.test, ops@hedgeguard.test", subject
    message.set_content(body)
    return message


def smtp_send(sim, message: EmailMessage | None = None, *, password: str = SIM_SMTP_PASSWORD, tls: bool = True) -> None:
    """What the alert activity does; blocking, so the tests run it in a thread beside the simulator's loop."""
    url = urlsplit(sim.urls["smtp"])
    with smtplib.SMTP(url.hostname, url.port, timeout=5) as client:
        if tls:
            client.starttls(context=ssl.create_default_context(cadata=sim.chat.smtp_cert_pem))
        client.login(SIM_SMTP_USER, password)
        client.send_message(message or email())


# -- ports ----------------------------------------------------------------------------------------------
def test_chat_ports_follow_the_control_port():
    assert resolve_ports(None) == DEFAULT_PORTS
    assert resolve_ports({"control": 18080, "bybit": 18081, "binanceusdm": 18082})["smtp"] == 18025
    moved = resolve_ports({"control": 0, "bybit": 0, "binanceusdm": 0})
    assert moved["slack"] == moved["telegram"] == moved["smtp"] == 0
    assert resolve_ports({"control": 28080, "slack": 28083})["slack"] == 28083


async def test_urls(sim):
    assert sim.urls["slack"].startswith("http://127.0.0.1:") and sim.urls["telegram"].startswith("http://127.0.0.1:")
    assert sim.urls["smtp"].startswith("smtp://127.0.0.1:")
    assert await control(sim, "GET", "/control/chat/smtp/cert") == sim.chat.smtp_cert_pem
    assert sim.chat.smtp_cert_pem.startswith("-----BEGIN CERTIFICATE-----")


# -- Slack ----------------------------------------------------------------------------------------------
async def test_slack_post_is_recorded(sim):
    client = slack(sim)
    me = await client.auth_test()
    assert me["ok"] and me["bot_id"] and me["user_id"] and me["team_id"]
    reply = await client.chat_postMessage(channel=ALERTS, text="LTV 0.78 on *L-1*", mrkdwn=True, unfurl_links=False)
    assert reply["ok"] and reply["channel"].startswith("C") and re.fullmatch(r"\d{10}\.\d{6}", reply["ts"])
    assert reply["message"]["text"] == "LTV 0.78 on *L-1*" and reply["message"]["ts"] == reply["ts"]
    again = await client.chat_postMessage(channel=reply["channel"], text="by id")  # a channel id works too
    assert again["ts"] > reply["ts"]
    [first, second] = sim.chat.messages("slack")
    assert (first["to"], first["text"], first["subject"], second["to"]) == (ALERTS, "LTV 0.78 on *L-1*", None, ALERTS)
    listed = await control(sim, "GET", "/control/chat/messages?service=slack")
    assert listed["messages"] == sim.chat.messages("slack") and sim.chat.attempts("slack") == 2


async def test_slack_refuses_bad_token_unknown_channel_and_no_text(sim):
    with pytest.raises(SlackApiError) as bad:
        await slack(sim, "xoxb-wrong").chat_postMessage(channel=ALERTS, text="x")
    assert bad.value.response["error"] == "invalid_auth" and bad.value.response.status_code == 200
    with pytest.raises(SlackApiError) as unknown:
        await slack(sim).chat_postMessage(channel="#general", text="x")
    assert unknown.value.response["error"] == "channel_not_found"
    async with aiohttp.ClientSession() as http:
        url = f"{sim.urls['slack']}/api/chat.postMessage"
        async with http.post(url, data={"channel": OPS, "text": "x"}) as r:
            assert (await r.json()) == {"ok": False, "error": "not_authed"}
        headers = {"Authorization": f"Bearer {SIM_SLACK_TOKEN}"}
        async with http.post(url, data={"channel": OPS}, headers=headers) as r:  # a form body, as curl sends
            assert (await r.json()) == {"ok": False, "error": "no_text"}
        async with http.post(url, data={"channel": OPS, "text": "form"}, headers=headers) as r:
            assert (await r.json())["ok"] is True
    assert [m["text"] for m in sim.chat.messages()] == ["form"] and sim.chat.attempts("slack") == 5


async def test_slack_rate_limit_and_server_errors_reach_the_client(sim):
    sim.faults.add("slack", "rate_limit", retry_after=7)
    sim.faults.add("slack", "http500")
    await slack(sim).auth_test()  # faults hit sends only
    with pytest.raises(SlackApiError) as limited:
        await slack(sim).chat_postMessage(channel=ALERTS, text="x")
    response = limited.value.response
    assert (response.status_code, response.headers["Retry-After"], response["error"]) == (429, "7", "ratelimited")
    with pytest.raises(SlackApiError) as failed:
        await slack(sim).chat_postMessage(channel=ALERTS, text="x")
    assert failed.value.response.status_code == 500
    sim.faults.add("slack", "down", count=1)
    with pytest.raises(SlackApiError) as down:
        await slack(sim).chat_postMessage(channel=ALERTS, text="x")
    assert down.value.response.status_code == 503
    assert (await slack(sim).chat_postMessage(channel=ALERTS, text="through"))["ok"]
    assert [m["text"] for m in sim.chat.messages()] == ["through"] and sim.chat.attempts("slack") == 4


# -- Telegram -------------------------------------------------------------------------------------------
async def test_telegram_bot_sends_and_it_is_recorded(sim):
    async with bot(sim) as b:  # initialize() calls getMe
        assert (b.id, b.username) == (7000000001, "hedgeguard_sim_bot")
        sent = await b.send_message(OWNER, "<b>LTV 0.78</b> on L-1", parse_mode="HTML",
                                    disable_web_page_preview=True)
        assert (sent.chat.id, sent.chat.type, sent.text, sent.from_user.id) == (OWNER, "private", "<b>LTV 0.78</b> on L-1",
                                                                                 7000000001)
        assert sent.message_id > 0 and sent.date.year >= 2026
    [record] = sim.chat.messages("telegram")
    assert (record["to"], record["text"]) == (str(OWNER), "<b>LTV 0.78</b> on L-1")
    assert sim.chat.attempts("telegram") == 1


async def test_telegram_refusals_are_the_libraries_exceptions(sim, monkeypatch):
    monkeypatch.setenv("PTB_TIMEDELTA", "true")  # PTB 22's coming default: RetryAfter.retry_after is a timedelta
    with pytest.raises(InvalidToken):
        await bot(sim, "7000000001:wrong").get_me()
    async with bot(sim) as b:
        with pytest.raises(BadRequest, match="Chat not found"):
            await b.send_message(999999, "x")
        sim.faults.add("telegram", "rate_limit", retry_after=3)
        with pytest.raises(RetryAfter) as limited:
            await b.send_message(OWNER, "x")
        assert limited.value.retry_after == timedelta(seconds=3)
        sim.faults.add("telegram", "http500", status=502)
        with pytest.raises(NetworkError, match="Bad Gateway"):
            await b.send_message(OWNER, "x")
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{sim.urls['telegram']}/bot{SIM_TELEGRAM_TOKEN}/sendSticker") as r:
                assert r.status == 404 and (await r.json())["description"] == "Not Found"
    assert sim.chat.messages() == [] and sim.chat.attempts("telegram") == 3


async def test_incoming_message_reaches_get_updates_and_offset_confirms_it(sim):
    answer = await control(sim, "POST", "/control/chat/telegram/incoming",
                           {"chat_id": 333333, "text": "/pause L-1", "username": "owner"})
    async with bot(sim) as b:
        [update] = await b.get_updates(timeout=0)
        assert update.update_id == answer["update_id"]
        message = update.message
        assert (message.text, message.chat.id, message.from_user.username) == ("/pause L-1", 333333, "owner")
        assert message.entities[0].type == "bot_command" and message.entities[0].length == len("/pause")
        assert await b.get_updates(offset=update.update_id + 1, timeout=0) == ()
        assert (await b.send_message(333333, "paused")).chat.id == 333333  # the chat is known now


async def test_get_updates_long_poll_returns_when_a_message_arrives(sim):
    async with bot(sim) as b:
        started = time.monotonic()
        assert await b.get_updates(timeout=1) == ()
        assert time.monotonic() - started >= 0.9
        poll = asyncio.create_task(b.get_updates(timeout=2))
        await asyncio.sleep(0.2)
        assert not poll.done()
        started = time.monotonic()
        await control(sim, "POST", "/control/chat/telegram/incoming", {"chat_id": OWNER, "text": "status"})
        [update] = await poll
        assert update.message.text == "status" and time.monotonic() - started < 0.5


# -- SMTP -----------------------------------------------------------------------------------------------
async def test_email_over_starttls_and_login_is_recorded(sim):
    await asyncio.to_thread(smtp_send, sim)
    [record] = sim.chat.messages("email")
    assert record["subject"] == "LTV 0.78 on loan L-1 — act now"
    assert record["text"] == "Collateral 1 BTC, debt 45 000 USDT.\nÉcart: 3 %"
    assert record["recipients"] == ["owner@hedgeguard.test", "ops@hedgeguard.test"]
    assert record["from"] == SIM_SMTP_USER and sim.chat.attempts("smtp") == 1


def smtp_without_tls(sim) -> tuple[int, int]:
    url = urlsplit(sim.urls["smtp"])
    with smtplib.SMTP(url.hostname, url.port, timeout=5) as client:
        client.ehlo()
        assert not client.has_extn("auth")  # AUTH is offered only after STARTTLS
        plain = base64.b64encode(f"\0{SIM_SMTP_USER}\0{SIM_SMTP_PASSWORD}".encode()).decode()
        auth, _ = client.docmd("AUTH", f"PLAIN {plain}")
        mail, _ = client.docmd("MAIL", f"FROM:<{SIM_SMTP_USER}>")
        return auth, mail


async def test_email_is_refused_without_starttls_or_with_a_wrong_password(sim):
    with pytest.raises(smtplib.SMTPNotSupportedError):
        await asyncio.to_thread(smtp_send, sim, tls=False)
    assert await asyncio.to_thread(smtp_without_tls, sim) == (530, 530)
    with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
        await asyncio.to_thread(smtp_send, sim, password="guess")
    assert wrong.value.smtp_code == 535 and sim.chat.messages() == []


async def test_email_rate_limit_and_down_refuse_then_recover(sim):
    sim.faults.add("smtp", "rate_limit")
    with pytest.raises(smtplib.SMTPSenderRefused) as limited:
        await asyncio.to_thread(smtp_send, sim)
    assert limited.value.smtp_code == 451
    sim.faults.add("smtp", "rate_limit", path="DATA")
    with pytest.raises(smtplib.SMTPDataError) as at_data:
        await asyncio.to_thread(smtp_send, sim)
    assert at_data.value.smtp_code == 451
    await control(sim, "POST", "/control/fault", {"venue": "smtp", "kind": "down", "seconds": 1})
    with pytest.raises(smtplib.SMTPSenderRefused) as down:
        await asyncio.to_thread(smtp_send, sim)
    assert down.value.smtp_code == 421
    await asyncio.sleep(1.05)
    await asyncio.to_thread(smtp_send, sim)
    assert len(sim.chat.messages("email")) == 1 and sim.chat.attempts("smtp") == 4


# -- control API ----------------------------------------------------------------------------------------
async def test_control_api_for_chat(sim):
    fault = await control(sim, "POST", "/control/fault", {"venue": "telegram", "kind": "down", "seconds": 30})
    assert fault["remaining_s"] > 29
    await control(sim, "POST", "/control/fault", {"venue": "slack", "kind": "ws_drop"}, expect=400)
    await control(sim, "POST", "/control/fault", {"venue": "bybit", "kind": "down", "seconds": 1}, expect=400)
    await control(sim, "POST", "/control/chat/telegram/incoming", {"chat_id": "x", "text": "y"}, expect=400)
    await control(sim, "DELETE", "/control/faults")
    assert sim.faults.active() == []
    await slack(sim).chat_postMessage(channel=ALERTS, text="<script>alert(1)</script> & co")
    page = await control(sim, "GET", "/chat")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page and "<script>" not in page
    assert 'http-equiv="refresh" content="2"' in page
    await control(sim, "GET", "/control/chat/messages?service=fax", expect=400)
    await control(sim, "DELETE", "/control/chat/messages")
    assert (await control(sim, "GET", "/control/chat/messages"))["messages"] == [] and sim.chat.attempts("slack") == 0
