"""The alert channels: Slack (chat.postMessage), Telegram (sendMessage) and email (SMTP with STARTTLS and
login), each an activity that Temporal retries with backoff.

Tokens and the SMTP password are read here, when a message is sent, and never leave this module: every
error is re-raised as an ApplicationError whose text has them blanked out, because an activity's failure is
written into workflow history. A rate-limit answer becomes the retry delay the service asked for. A failed
attempt is a log line and a count in `hedgeguard_alert_delivery_failures`; a permanent failure (bad token,
unknown chat) is not retried, and says which setting to fix.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import warnings
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import telegram
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from telegram.error import BadRequest, ChatMigrated, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.warnings import PTBDeprecationWarning
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.alerts import Delivery
from models.settings import Settings

log = logging.getLogger("hedgeguard.alerts")
# httpx logs every request URL at INFO, python-telegram-bot its base URL at DEBUG, and a Telegram URL carries
# the bot token: neither may log below these levels, whatever the root level is
for _name, _level in (("httpx", logging.WARNING), ("httpcore", logging.WARNING), ("telegram", logging.INFO)):
    logging.getLogger(_name).setLevel(_level)

SLACK_PERMANENT = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "channel_not_found",
                   "not_in_channel", "is_archived", "msg_too_long", "no_text", "invalid_arguments", "missing_scope"}


class Redactor(logging.Filter):
    """Blanks secret values out of log records (installed on the worker's handlers as a second line of defence)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if len(s) >= 4]  # shorter ones would blank ordinary words

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            text = record.getMessage()
            clean = redact(text, self.secrets)
            if clean != text:
                record.msg, record.args = clean, None
            if record.exc_info and not record.exc_text:  # the formatter prints exc_text when it is set
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info), self.secrets)
        return True


def retry_after_s(exc: RetryAfter) -> float:
    """Telegram's retry_after in seconds, whichever type this python-telegram-bot version gives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class ChatChannels:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.paper = settings.mode == "paper"
        self._slack: AsyncWebClient | None = None
        self._bot: telegram.Bot | None = None
        self._bot_lock = asyncio.Lock()

    # -- clients (built on first use: a channel without credentials is never touched) -------------------
    def _secret(self, service: str) -> str:
        value = self.settings.chat_secret(service)
        if not value:
            var = f"HEDGEGUARD_{service.upper()}_{'PASSWORD' if service == 'smtp' else 'BOT_TOKEN'}"
            raise ApplicationError(f"{service} has no credentials: set {var} or [{service}] in the secrets file",
                                   type="ChannelNotConfigured", non_retryable=True)
        return value

    def slack_client(self) -> AsyncWebClient:
        if self._slack is None:
            base = f"{self.settings.paper_slack_url}/api/" if self.paper else "https://slack.com/api/"
            self._slack = AsyncWebClient(token=self._secret("slack"), base_url=base, timeout=15)
        return self._slack

    async def telegram_bot(self) -> telegram.Bot:
        async with self._bot_lock:
            if self._bot is None:
                kwargs: dict[str, Any] = {"base_url": f"{self.settings.paper_telegram_url}/bot"} if self.paper else {}
                bot = telegram.Bot(self._secret("telegram"), **kwargs)
                try:
                    await bot.initialize()
                except Exception as exc:
                    raise self._failed("telegram", exc) from None
                self._bot = bot
            return self._bot

    async def close(self) -> None:
        if self._bot is not None:
            await self._bot.shutdown()

    def _failed(self, channel: str, exc: BaseException, *, retry_after: float | None = None,
                permanent: bool = False, what: str | None = None) -> ApplicationError:
        text = redact(what or f"{type(exc).__name__}: {exc}", self.settings.secret_values())
        activity.metric_meter().create_counter(
            "hedgeguard_alert_delivery_failures", "alert delivery attempts that failed").add(
            1, {"channel": channel, "permanent": str(permanent).lower()})
        info = activity.info()
        log.warning("alert delivery to %s failed (attempt %d%s): %s", channel, info.attempt,
                    ", not retried" if permanent else f", retry in {retry_after:g} s" if retry_after else ", will retry",
                    text)
        return ApplicationError(f"{channel}: {text}", type=f"{channel.capitalize()}DeliveryFailed",
                                non_retryable=permanent,
                                next_retry_delay=timedelta(seconds=retry_after) if retry_after else None)

    # -- the channels --------------------------------------------------------------------------------------
    @activity.defn(name="deliver_slack")
    async def slack(self, d: Delivery) -> str:
        client = self.slack_client()
        try:
            reply = await client.chat_postMessage(channel=d.target.to, text=f"*{d.subject}*\n{d.text}", mrkdwn=True,
                                                  unfurl_links=False)
        except SlackApiError as exc:
            response = exc.response
            error = str(response.get("error", "")) if response is not None else ""
            if response is not None and response.status_code == 429:
                wait = float(response.headers.get("Retry-After", response.headers.get("retry-after", 1)))
                raise self._failed("slack", exc, retry_after=wait, what=f"ratelimited, Retry-After {wait:g} s") from None
            permanent = error in SLACK_PERMANENT
            raise self._failed("slack", exc, permanent=permanent, what=f"Slack answered {error or response}"
                               + (" (check HEDGEGUARD_SLACK_BOT_TOKEN / HEDGEGUARD_SLACK_CHANNEL)" if permanent else "")
                               ) from None
        except Exception as exc:
            raise self._failed("slack", exc) from None
        log.info("alert %s sent to Slack %s (%s)", d.key, d.target.to, d.delivery_id)
        return str(reply.get("ts", ""))

    @activity.defn(name="deliver_telegram")
    async def telegram(self, d: Delivery) -> str:
        bot = await self.telegram_bot()
        try:
            message = await bot.send_message(chat_id=int(d.target.to), text=f"{d.subject}\n{d.text}",
                                             disable_web_page_preview=True)
        except RetryAfter as exc:
            wait = retry_after_s(exc)
            raise self._failed("telegram", exc, retry_after=wait, what=f"429, retry after {wait:g} s") from None
        except (BadRequest, Forbidden, InvalidToken, ChatMigrated) as exc:
            raise self._failed("telegram", exc, permanent=True,
                               what=f"{exc.message} (chat {d.target.to}; check HEDGEGUARD_TELEGRAM_CHAT_IDS / token)") from None
        except (TelegramError, Exception) as exc:
            raise self._failed("telegram", exc) from None
        log.info("alert %s sent to Telegram chat %s (%s)", d.key, d.target.to, d.delivery_id)
        return str(message.message_id)

    @activity.defn(name="deliver_email")
    async def email(self, d: Delivery) -> str:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = self.settings.email_from, d.target.to, f"hedgeguard {d.subject}"
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = f"<{d.delivery_id}.{d.key.replace(':', '.')}@hedgeguard>"  # lets a mail system drop a resend
        msg.set_content(d.text)
        password = self._secret("smtp") if self.settings.smtp_user else None
        try:
            await asyncio.to_thread(self._send_mail, msg, password)
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
            detail = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise self._failed("email", exc, permanent=500 <= code < 600,
                               what=f"SMTP {code} {detail}") from None
        except smtplib.SMTPRecipientsRefused as exc:  # 4xx (greylisting, mailbox busy) is worth another try
            codes = [code for code, _ in exc.recipients.values()]
            raise self._failed("email", exc, permanent=all(c >= 500 for c in codes),
                               what=f"recipient refused: {exc.recipients}") from None
        except (smtplib.SMTPNotSupportedError, ssl.SSLCertVerificationError) as exc:
            raise self._failed("email", exc, permanent=True,
                               what=f"{type(exc).__name__}: {exc} (check HEDGEGUARD_SMTP_STARTTLS / HEDGEGUARD_SMTP_CA_FILE)"
                               ) from None
        except Exception as exc:
            raise self._failed("email", exc) from None
        log.info("alert %s emailed to %s (%s)", d.key, d.target.to, d.delivery_id)
        return msg["Message-ID"]

    def _send_mail(self, msg: EmailMessage, password: str | None) -> None:
        host, _, port = self.settings.smtp_address.rpartition(":")
        with smtplib.SMTP(host, int(port), timeout=15) as smtp:
            smtp.ehlo()
            if self.settings.smtp_starttls:
                ca = str(self.settings.smtp_ca_file) if self.settings.smtp_ca_file else None
                smtp.starttls(context=ssl.create_default_context(cafile=ca))
                smtp.ehlo()
            if self.settings.smtp_user:
                smtp.login(self.settings.smtp_user, password or "")
            smtp.send_message(msg)
