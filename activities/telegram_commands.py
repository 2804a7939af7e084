"""Telegram commands for loan owners and operators: /status [ID], /pause ID, /resume ID, /forceclose ID.

A long-running activity polls getUpdates (its offset kept in the heartbeat, so a retry neither loses nor
replays commands) and turns each command from an allowed chat into the same Temporal signal `starter.py loan
pause|resume|force-close` sends. Any other chat is answered with a refusal and logged.
"""

from __future__ import annotations

import asyncio
import logging
import time

import telegram
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from activities.notify import ChatChannels, retry_after_s
from models.alerts import CommandPoll
from models.loan_guard import LoanView, loan_workflow_id
from models.settings import Settings

log = logging.getLogger("hedgeguard.telegram")
HELP = ("hedgeguard commands:\n/status [LOAN] - LTV, band and hedge of every guarded loan (or one)\n"
        "/pause LOAN - trade nothing and move no money (keeps watching and alerting)\n"
        "/resume LOAN - trade and move money again\n/forceclose LOAN - close the loan's hedge now, and pause")
SIGNALS = {"/pause": ("pause", "paused: watching and alerting, trading nothing and moving no money"),
           "/resume": ("resume", "resumed"),
           "/forceclose": ("force_close", "closing its hedge now (and paused; /resume opens a new hedge)")}
STATUS_LIMIT = 20


def loan_line(view: LoanView) -> str:
    ltv = f"{view.ltv_pct:.2f} %" if view.ltv_pct is not None else "n/a"
    return (f"{view.loan_id}: LTV {ltv} {view.band} · debt {view.debt_usdt:.2f} USDT · collateral "
            f"{view.collateral_btc} BTC · short {view.hedge_current_btc} BTC (target {view.hedge_target_btc})"
            + (" · PAUSED" if view.paused else "") + (" · feed stale" if view.feed_stale else ""))


class TelegramCommands:
    def __init__(self, settings: Settings, channels: ChatChannels) -> None:
        self.settings = settings
        self.channels = channels

    @activity.defn(name="telegram_commands")
    async def poll(self, req: CommandPoll) -> str:
        bot = await self.channels.telegram_bot()
        client = activity.client()
        details = activity.info().heartbeat_details
        offset: int | None = int(details[0]) if details and details[0] is not None else None
        started, handled = time.monotonic(), 0
        while time.monotonic() - started < req.rotate_after_s:
            activity.heartbeat(offset)
            try:
                updates = await bot.get_updates(offset=offset, timeout=req.poll_s, read_timeout=req.poll_s + 5,
                                                allowed_updates=["message"])
            except telegram.error.RetryAfter as exc:
                wait = retry_after_s(exc)
                log.warning("telegram: getUpdates rate-limited, waiting %s s", wait)
                await asyncio.sleep(min(float(wait), 20))
                continue
            except telegram.error.TimedOut:
                continue
            for update in updates:
                offset = update.update_id + 1
                message = update.message
                if message is not None and message.text:
                    await self.handle(client, bot, message)
                    handled += 1
                activity.heartbeat(offset)
        if offset is not None:  # confirm what was handled, so the next poller does not run it again
            await bot.get_updates(offset=offset, timeout=0)
        return f"{handled} commands handled; polling again"

    async def handle(self, client: Client, bot: telegram.Bot, message: telegram.Message) -> None:
        chat = message.chat.id
        username = message.from_user.username if message.from_user else None
        who = f"@{username}" if username else "no username"
        words = message.text.split() if message.text else []
        command = words[0].split("@")[0].lower() if words else ""
        if chat not in self.settings.command_chats():
            log.warning("telegram: refused %r from chat %s (%s): not an allowed command chat", command, chat, who)
            await self._reply(bot, chat, "Refused: this chat may not command hedgeguard. The attempt is logged.")
            return
        if command in SIGNALS and len(words) == 2:
            sender = f"telegram {who} (chat {chat})" if username else f"telegram chat {chat}"
            reply = await self._signal(client, command, words[1], sender)
        elif command == "/status" and len(words) <= 2:
            reply = await self._status(client, words[1] if len(words) == 2 else None)
        elif command in SIGNALS:
            reply = f"usage: {command} LOAN_ID"
        else:
            reply = HELP
        log.info("telegram: %s from chat %s (%s): %s", " ".join(words[:2]), chat, who, reply.splitlines()[0])
        await self._reply(bot, chat, reply)

    async def _signal(self, client: Client, command: str, loan_id: str, by: str) -> str:
        name, done = SIGNALS[command]
        handle = client.get_workflow_handle(loan_workflow_id(loan_id))
        try:
            desc = await handle.describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return f"no loan guard for {loan_id}"
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return f"loan {loan_id}'s guard is not running ({desc.status.name.lower() if desc.status else 'unknown'})"
        await handle.signal(name, by)
        return f"loan {loan_id}: {done}"

    async def _status(self, client: Client, loan_id: str | None) -> str:
        if loan_id is not None:
            ids = [loan_workflow_id(loan_id)]
        else:
            ids = [w.id async for w in client.list_workflows(
                "WorkflowType = 'LoanGuardWorkflow' AND ExecutionStatus = 'Running'", limit=STATUS_LIMIT + 1)]
            if not ids:
                return "no loan is guarded"
        lines = []
        for wf_id in sorted(ids)[:STATUS_LIMIT]:
            try:
                view = await client.get_workflow_handle(wf_id).query("state", result_type=LoanView)
            except RPCError as exc:
                lines.append(f"{wf_id.removeprefix('loan-')}: not found" if exc.status == RPCStatusCode.NOT_FOUND
                             else f"{wf_id}: {exc.message}")
                continue
            except WorkflowQueryFailedError as exc:
                lines.append(f"{wf_id}: {exc}")
                continue
            lines.append(loan_line(view))
        if len(ids) > STATUS_LIMIT:
            lines.append(f"... more than {STATUS_LIMIT} loans: ask /status LOAN_ID")
        return "\n".join(lines)

    async def _reply(self, bot: telegram.Bot, chat: int, text: str) -> None:
        try:
            await bot.send_message(chat_id=chat, text=text)
        except telegram.error.TelegramError as exc:  # the command was carried out; only the answer is lost
            log.warning("telegram: could not answer chat %s: %s", chat, exc)
