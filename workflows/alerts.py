"""Alert delivery, apart from the books: one AlertWorkflow per alert key, and one daily digest.

An AlertWorkflow holds its key's de-duplication window in workflow state, so a worker restart forgets
nothing: the first raising is sent at once and opens the window (default 5 min); repeats inside it are
counted and the worst figure kept; a higher severity is sent at once; when the window ends with repeats
held back, one summary goes out ("LTV alerts for L-1: 14 more in the last 5 min, worst 49.1 %") and a new
window opens. A window that ends quietly ends the workflow. Actions (window 0) are sent, each once.

Each message is a delivery activity per recipient, retried with backoff for up to a day; messages to one
recipient go in order. Books start this through the raise_alert activity and never wait for it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from models.alerts import (
        RANK,
        AlertCarry,
        AlertStart,
        AlertView,
        CommandPoll,
        Delivery,
        DigestEntry,
        DigestStart,
        RaisedAlert,
        Target,
        delivery_id,
        render,
        repeats_note,
        summary,
    )
    from models.hedge import Alert

from workflows.common import continue_as_new, continue_as_new_due

DELIVERY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0,
                             maximum_interval=timedelta(seconds=60))
DELIVERY_CALL = dict(start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=timedelta(hours=24),
                     retry_policy=DELIVERY_RETRY)
SEEN_KEPT = 200
CONTINUE_AS_NEW_AFTER = 2000


async def deliver(d: Delivery) -> None:
    """Send one message; a delivery that gives up (a day of failures, or a permanent error) is logged by the
    activity and leaves the rest of the workflow going."""
    try:
        await workflow.execute_activity(f"deliver_{d.target.channel}", d, result_type=str,
                                        summary=f"{d.target.channel} → {d.target.to}", **DELIVERY_CALL)
    except ActivityError as err:
        workflow.logger.error("alert %s to %s %s not delivered: %s", d.key, d.target.channel, d.target.to,
                              err.cause or err)


@workflow.defn
class AlertWorkflow:
    def __init__(self) -> None:
        self.queue: list[RaisedAlert] = []
        self.in_flight = 0
        self.locks: dict[str, asyncio.Lock] = {}
        self.c = AlertCarry()
        self.key = ""

    @workflow.signal(name="raise")
    def on_raise(self, raised: RaisedAlert) -> None:
        self.queue.append(raised)

    @workflow.query
    def state(self) -> AlertView:
        return AlertView(key=self.key, sent=self.c.sent, suppressed=self.c.suppressed,
                         window_until=self.c.window_until, in_flight=self.in_flight)

    @workflow.run
    async def run(self, start: AlertStart) -> None:
        self.key = start.key
        if start.carry is not None:
            self.c = start.carry
        while True:
            until = self.c.window_until
            timeout = max(until - workflow.now(), timedelta(milliseconds=1)) if until is not None else None
            try:
                await workflow.wait_condition(lambda: bool(self.queue), timeout=timeout,
                                              timeout_summary="de-duplication window ends")
            except TimeoutError:
                pass
            while self.queue:
                self._take(self.queue.pop(0))
            if self.c.window_until is not None and workflow.now() >= self.c.window_until:
                self._window_ended()
            if self.c.window_until is None and not self.queue:
                await workflow.wait_condition(lambda: self.in_flight == 0 or bool(self.queue))
                if not self.queue:
                    return
            elif self.in_flight == 0 and not self.queue and continue_as_new_due(CONTINUE_AS_NEW_AFTER):
                # only between deliveries: one retrying for hours must not hold up the raises behind it
                continue_as_new(AlertStart(key=self.key, carry=self.c))

    def _take(self, r: RaisedAlert) -> None:
        if r.raise_id in self.c.seen:
            return  # the same raising again (its activity was retried)
        self.c.seen = [*self.c.seen[-(SEEN_KEPT - 1):], r.raise_id]
        now, rank = workflow.now(), RANK[r.alert.severity]
        open_window = self.c.window_until is not None and now < self.c.window_until
        if r.window_s == 0 or not open_window or rank > self.c.sent_rank:
            note = None
            if self.c.suppressed and self.c.last is not None:  # a rise inside a window: say what was held back
                note = "before this: " + repeats_note(self.c.suppressed, self.c.last.window_s, self.c.worst,
                                                      self.c.last.alert.figure_unit)
            self._send(r.alert, r.targets, note)
            self.c.sent_rank = rank
            self.c.window_until = now + timedelta(seconds=r.window_s) if r.window_s else None
            self.c.suppressed, self.c.worst, self.c.worst_severity, self.c.held_targets = 0, None, "INFO", []
        else:
            self.c.suppressed += 1
            self.c.held_targets += [t for t in r.targets if t not in self.c.held_targets]
            if r.alert.figure is not None and (self.c.worst is None or r.alert.figure > self.c.worst):
                self.c.worst = r.alert.figure
            if rank > RANK[self.c.worst_severity]:
                self.c.worst_severity = r.alert.severity
        self.c.last = r

    def _window_ended(self) -> None:
        last = self.c.last
        if self.c.suppressed and last is not None:
            # to everyone a held-back repeat would have reached: a CRITICAL among them reaches its channels
            self._send(summary(last.alert, self.c.suppressed, last.window_s, self.c.worst, self.c.worst_severity),
                       self.c.held_targets or last.targets, None)
            self.c.suppressed, self.c.worst, self.c.worst_severity, self.c.held_targets = 0, None, "INFO", []
            self.c.window_until = workflow.now() + timedelta(seconds=last.window_s)
        else:
            self.c.window_until, self.c.sent_rank = None, -1

    def _send(self, alert: Alert, targets: list[Target], note: str | None) -> None:
        subject, text = render(alert, note)
        self.c.sent += 1
        for target in targets:
            d = Delivery(delivery_id=delivery_id(self.key, self.c.sent, target), target=target, subject=subject,
                         text=text, key=self.key, severity=alert.severity)
            self.in_flight += 1
            asyncio.create_task(self._deliver_in_order(d))

    async def _deliver_in_order(self, d: Delivery) -> None:
        lock = self.locks.setdefault(f"{d.target.channel}:{d.target.to}", asyncio.Lock())
        try:
            async with lock:
                await deliver(d)
        finally:
            self.in_flight -= 1


@workflow.defn
class AlertDigestWorkflow:
    """INFO alerts, counted per key through the day and sent as one message at the digest hour (UTC)."""

    def __init__(self) -> None:
        self.entries: dict[str, DigestEntry] = {}
        self.targets: list[Target] = []
        self.hour = 8

    @workflow.signal
    def add(self, entry: DigestEntry) -> None:
        held = self.entries.get(entry.key)
        self.entries[entry.key] = entry if held is None else entry.model_copy(update={"count": held.count + entry.count})
        self.targets, self.hour = entry.targets, entry.hour_utc

    @workflow.query
    def pending(self) -> list[DigestEntry]:
        return list(self.entries.values())

    @workflow.run
    async def run(self, start: DigestStart) -> None:
        for entry in start.entries:
            self.add(entry)
        while True:
            due = self._next_due(workflow.now())
            try:
                await workflow.wait_condition(lambda: continue_as_new_due(CONTINUE_AS_NEW_AFTER),
                                              timeout=due - workflow.now(), timeout_summary="daily digest")
            except TimeoutError:
                if self.entries:
                    await self._send(due)
                continue
            await workflow.wait_condition(workflow.all_handlers_finished)
            continue_as_new(DigestStart(entries=list(self.entries.values())))

    def _next_due(self, now: datetime) -> datetime:
        due = now.replace(hour=self.hour, minute=0, second=0, microsecond=0)
        return due if due > now else due + timedelta(days=1)

    async def _send(self, due: datetime) -> None:
        entries, self.entries = sorted(self.entries.values(), key=lambda e: (-e.count, e.key)), {}
        total = sum(e.count for e in entries)
        lines = [f"{e.count} × {e.title}: {e.text}" for e in entries[:40]]
        if len(entries) > 40:
            lines.append(f"... and {len(entries) - 40} more kinds")
        subject = f"[DIGEST] {total} INFO alerts in the 24 h to {due:%Y-%m-%d %H:%M} UTC"
        stamp = f"{due:%Y%m%d%H}"
        await asyncio.gather(*(deliver(Delivery(delivery_id=f"digest-{stamp}-{i}", target=t, subject=subject,
                                                text="\n".join(lines), key="digest", severity="INFO"))
                               for i, t in enumerate(self.targets)))


@workflow.defn
class TelegramCommandsWorkflow:
    """Keeps the telegram_commands poller running (one per deployment, `telegram-commands`)."""

    @workflow.run
    async def run(self, poll: CommandPoll) -> None:
        while not continue_as_new_due(CONTINUE_AS_NEW_AFTER):
            try:
                await workflow.execute_activity(
                    "telegram_commands", poll, result_type=str, summary="Telegram getUpdates",
                    start_to_close_timeout=timedelta(seconds=poll.rotate_after_s + 120),
                    heartbeat_timeout=timedelta(seconds=poll.poll_s + 20),
                    retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30),
                                             non_retryable_error_types=["ChannelNotConfigured"]))
            except ActivityError as err:
                workflow.logger.error("telegram command poller stopped: %s", err.cause or err)
                return
        continue_as_new(poll)
