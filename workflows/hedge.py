"""HedgeWorkflow: drives one venue position to the target its book asks for. The only code that places,
amends or cancels exchange orders: a book steers it (target, urgency, risk, pause, close) and nothing else
talks to a venue's order endpoints.

One loop, woken by a signal, an update or a timer:
  - an open order is checked every `fill_check_s`; after `replace_after_s` it is cancelled and the rest
    placed one step further along the ladder (risk/pricing.py), so a hedge cannot chase a market forever;
  - fills are the truth: after every place, cancel or fill check the ledger is synced from the venue's own
    fills (activities/hedging.py), and the position is the ledger's;
  - when the book says its risk cleared, the hedge waits `expiry_s` (reset if risk returns), then closes
    reduce-only and the workflow ends CLOSED; force_close does the same at once, at urgent pricing;
  - pause cancels the open order and places nothing until resume (force_close still works);
  - the venue is reconciled at start (a new hedge right after its first order) and every `reconcile_every_s`; a
    hedge flat, wanting nothing and with no order resting has nothing to drift, and is reconciled every
    `idle_reconcile_every_s` instead.
Client order ids are the hedge id plus a sequence number kept here, so no retry or replay sends twice.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.common import BOOK_SENDER, alert_once, continue_as_new, continue_as_new_due, operator_summary

with workflow.unsafe.imports_passed_through():
    from models import search_attributes as sa
    from models.hedge import (
        Alert,
        FillSummary,
        HedgeCarry,
        HedgeInput,
        HedgeRecord,
        HedgeRef,
        HedgeStatusChange,
        HedgeView,
        MarketFacts,
        NotSent,
        OpenHedge,
        OpenOrder,
        OrderLookup,
        OrderPolicy,
        PlaceHedgeOrder,
        PlaceOutcome,
        PriceRule,
        RiskChange,
        SyncRequest,
        SyncResult,
        TargetChange,
    )
    from models.ledger import HedgeStatus
    from models.venue import OrderState, RejectReason
    from risk.pricing import StepKind, Urgency, next_order, start_step

ZERO = Decimal(0)
CONTINUE_AS_NEW_AFTER = 8000  # events; the server suggests it earlier (4,096 by default) and we follow that
VENUE_CALL = dict(start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=timedelta(minutes=3),
                  retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2,
                                           maximum_interval=timedelta(seconds=10)))
STORE_CALL = dict(start_to_close_timeout=timedelta(seconds=15),
                  retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=10)))


def client_order_id(hedge_id: str, seq: int, tag: str = "") -> str:
    """hedge id + sequence, within the venues' 36 characters (long ids are shortened with a hash). A
    workflow restarted for a hedge that traded before adds a tag, so its sequence cannot meet old ids."""
    suffix = f"-{tag}{seq}"
    if len(hedge_id) + len(suffix) <= 36:
        return hedge_id + suffix
    digest = hashlib.sha256(hedge_id.encode()).hexdigest()[:8]
    return f"{hedge_id[:36 - len(suffix) - 9]}-{digest}{suffix}"


@workflow.defn
class HedgeWorkflow:
    @workflow.init
    def __init__(self, inp: HedgeInput) -> None:
        self.inp = inp
        self.ref = HedgeRef(hedge_id=inp.hedge_id, venue=inp.venue, account=inp.account, symbol=inp.symbol)
        self.policy: OrderPolicy = inp.policy
        c = inp.carry
        self.status = c.status if c else HedgeStatus.PENDING
        self.target = c.target if c else inp.target
        self.current = c.current if c else ZERO
        self.seq = c.seq if c else 0
        self.urgency = c.urgency if c else inp.policy.urgency
        self.step = c.step if c else start_step(self.urgency, self._kinds())
        self.cursor = c.cursor if c else None
        self.paused = c.paused if c else False
        self.risk_active = c.risk_active if c else inp.risk_active
        self.risk_cleared_at: datetime | None = c.risk_cleared_at if c else None
        self.closing = c.closing if c else False
        self.target_seq = c.target_seq if c else 0
        self.risk_seq = c.risk_seq if c else 0
        self.client_tag = c.client_tag if c else ""
        self.forced = c.forced if c else False
        self.since_ms: int | None = None
        self.last_fill: FillSummary | None = c.last_fill if c else None
        self.realised = c.realised_pnl if c else ZERO
        self.unrealised = c.unrealised_pnl if c else ZERO
        self.open_order: OpenOrder | None = c.open_order if c else None
        self.market: MarketFacts | None = None
        self.blocked: str | None = None
        self.retry_at: datetime | None = None
        self.next_timer: tuple[str, datetime] | None = None
        self.reconciled_at = workflow.now()
        self.next_reconcile = self.reconciled_at
        self.wake = False
        self.reconcile_owed = False
        self._alerted: dict[str, str] = {}
        self.operator_seq = 0
        self._shown: tuple[str, bool] | None = None

    # -- signals, updates, queries --------------------------------------------------------------
    @workflow.signal
    def retarget(self, change: TargetChange) -> None:
        self._apply_target(change)

    @workflow.update
    def set_target(self, change: TargetChange) -> HedgeView:
        self._apply_target(change)
        return self.state()

    @set_target.validator
    def _validate_target(self, change: TargetChange) -> None:
        if self.closing:
            raise ApplicationError("the hedge is closing; it takes no new target")

    def _apply_target(self, change: TargetChange) -> None:
        if self.closing or (change.seq and change.seq <= self.target_seq):
            return  # closing hedges take no new target; a repeated or older signal changes nothing
        self.target_seq = max(self.target_seq, change.seq)
        if change.target != self.target or change.urgency != self.urgency:
            self.target, self.urgency = change.target, change.urgency
            self.step = start_step(self.urgency, self._kinds())
            self.blocked, self.retry_at = None, None
        self.wake = True

    @workflow.signal
    def risk(self, change: RiskChange) -> None:
        if change.seq and change.seq <= self.risk_seq:
            return
        self.risk_seq = max(self.risk_seq, change.seq)
        if change.active:
            self.risk_active, self.risk_cleared_at = True, None
        elif self.risk_active:
            self.risk_active, self.risk_cleared_at = False, workflow.now()
        self.wake = True

    @workflow.signal
    def pause(self, by: str = "operator") -> None:
        self._operator("paused", by)
        self.paused = True
        self.wake = True

    @workflow.signal
    def resume(self, by: str = "operator") -> None:
        self._operator("resumed", by)
        self.paused = False
        self.blocked, self.retry_at = None, None
        self.wake = True

    @workflow.signal
    def force_close(self, reason: str = "operator") -> None:
        self._operator("force-closed", reason)
        if not self.forced:  # also lifts an expiry close already under way to urgent pricing
            workflow.logger.info("force close of %s: %s", self.ref.hedge_id, reason)
            self.forced = True
            self._close(Urgency.URGENT)

    @workflow.update
    def set_policy(self, changes: dict[str, Any]) -> OrderPolicy:
        self.policy = self.policy.with_changes(changes)
        self.step = min(self.step, len(self.policy.ladder) - 1)
        self.wake = True
        return self.policy

    @set_policy.validator
    def _validate_policy(self, changes: dict[str, Any]) -> None:
        try:
            self.policy.with_changes(changes)
        except ValueError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in getattr(exc, "errors", list)())
            raise ApplicationError(f"policy refused, nothing changed: {problems or exc}") from None

    @workflow.query
    def state(self) -> HedgeView:
        timer = self.next_timer
        return HedgeView(
            hedge_id=self.ref.hedge_id, status=self.status, side=self.inp.side, symbol=self.ref.symbol,
            venue=self.ref.venue, target=self.target, current=self.current, open_order=self.open_order,
            last_fill=self.last_fill, realised_pnl=self.realised, unrealised_pnl=self.unrealised, paused=self.paused,
            closing=self.closing, risk_active=self.risk_active, urgency=self.urgency,
            next_timer=timer[0] if timer else None, next_timer_at=timer[1] if timer else None,
            orders_placed=self.seq, blocked=self.blocked, policy=self.policy)

    # -- the loop -------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: HedgeInput) -> HedgeView:
        await self._start_up(inp)
        self.reconciled_at = workflow.now()
        self.next_reconcile = self.reconciled_at + timedelta(seconds=self.policy.reconcile_every_s)
        self._show()
        try:
            while True:
                if self._should_continue_as_new():
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    continue_as_new(inp.model_copy(update={"policy": self.policy, "carry": self._carry()}))
                now = workflow.now()
                try:
                    if (not self.risk_active and self.risk_cleared_at is not None and not self.closing
                            and now >= self.risk_cleared_at + timedelta(seconds=self.policy.expiry_s)):
                        workflow.logger.info("risk cleared %ss ago: closing %s", self.policy.expiry_s,
                                             self.ref.hedge_id)
                        self._close(Urgency.NORMAL)
                    if self.open_order is not None:
                        await self._tend_order(now)
                    if self.reconcile_owed and self._may_place() and self.retry_at is None:
                        await self._place_next()  # a new hedge's ledger is empty by construction: trade first
                    if now >= self.next_reconcile or self.reconcile_owed:
                        await self._sync(reconcile=True)
                        self.reconcile_owed = False
                        self.reconciled_at = workflow.now()
                        self.next_reconcile = self.reconciled_at + timedelta(seconds=self.policy.reconcile_every_s)
                    if self.retry_at is not None and workflow.now() >= self.retry_at:
                        self.retry_at = None
                    if self._may_place() and self.retry_at is None:
                        await self._place_next()
                except ActivityError as err:
                    self._venue_failed(err)
                self._show()
                if self.closing and self.open_order is None and self._flat() and await self._flat_at_venue():
                    return await self._finish()
                await self._sleep()
        except asyncio.CancelledError:
            if self.open_order is not None:  # a cancelled hedge leaves nothing resting at the venue
                await workflow.execute_activity("hedge_cancel", OrderLookup(
                    ref=self.ref, client_order_id=self.open_order.client_order_id), **VENUE_CALL)
            raise

    async def _flat_at_venue(self) -> bool:
        """A hedge is CLOSED only if its ledger is still flat after one more sync: a fill that landed after the
        last sync (the close's own order filling late) is in the venue's list by now."""
        try:
            await self._sync()
        except ActivityError as err:
            self._venue_failed(err)
            return False
        if self._flat():
            return True
        self.wake = True  # not flat after all: close what came in
        return False

    async def _start_up(self, inp: HedgeInput) -> None:
        """The store row, the market's lot sizes and, for a hedge that ran before, a first reconciliation; a venue
        that is down delays this (with alerts) instead of failing the hedge."""
        while True:
            try:
                record: HedgeRecord = await workflow.execute_activity("hedge_open", OpenHedge(
                    ref=self.ref, book=inp.book, exposure_id=inp.exposure_id, side=inp.side, target=self.target,
                    leverage=inp.leverage if inp.carry is None else None), result_type=HedgeRecord, **VENUE_CALL)
                if inp.carry is None:
                    if record.status == HedgeStatus.CLOSED:
                        raise ApplicationError(f"hedge {self.ref.hedge_id} is closed; a new hedge needs a new id",
                                               type="HedgeClosed", non_retryable=True)
                    if record.existed:
                        self.client_tag = workflow.uuid4().hex[:4]
                self.since_ms = record.created_ms
                self.market = record.market
                if record.existed or inp.carry is not None:
                    await self._sync(reconcile=True)  # it may have traded: know its position before planning
                else:
                    self.reconcile_owed = True  # right after its first order, on the loop's first turn
                self.blocked = None
                return
            except ActivityError as err:
                cause = err.cause
                if isinstance(cause, ApplicationError) and cause.non_retryable:
                    raise ApplicationError(f"hedge {self.ref.hedge_id} cannot start: {cause.message}",
                                           type=cause.type or "HedgeStartFailed", non_retryable=True) from None
                self._venue_failed(err)
                self._show()
                await workflow.sleep(timedelta(seconds=self.policy.replace_after_s), summary="retry start-up")

    def _venue_failed(self, err: ActivityError) -> None:
        cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err.cause or err)
        self._block(f"venue call failed: {cause}")
        self._alert("CRITICAL", "venue", f"hedge {self.ref.hedge_id}: venue call failing", cause)

    def _block(self, reason: str) -> None:
        """Place nothing for a replace interval, and say why (the state query and the UI show it)."""
        self.blocked = reason
        self.retry_at = workflow.now() + timedelta(seconds=self.policy.replace_after_s)

    def _escalate(self) -> None:
        self.step = min(self.step + 1, len(self.policy.ladder) - 1)  # the last rung is as far as it goes

    def _may_place(self) -> bool:
        return self.open_order is None and (not self.paused or self.forced)

    def _idle(self) -> bool:
        return (self.target == 0 and self.open_order is None and not self.closing and self.market is not None
                and self.current == 0)

    async def _sleep(self) -> None:
        now = workflow.now()
        if self._idle():
            idle_due = self.reconciled_at + timedelta(seconds=self.policy.idle_reconcile_every_s)
            self.next_reconcile = max(self.next_reconcile, idle_due)
        timers = [("reconcile", self.next_reconcile)]
        if self.open_order is not None:
            check = now + timedelta(seconds=self.policy.fill_check_s)
            timers.append(("replace", self.open_order.replace_at) if self.open_order.replace_at <= check
                          else ("fill check", check))
        if self.retry_at is not None and self.retry_at > now and self._may_place():
            timers.append(("retry", self.retry_at))
        if not self.risk_active and self.risk_cleared_at is not None and not self.closing:
            timers.append(("expiry", self.risk_cleared_at + timedelta(seconds=self.policy.expiry_s)))
        label, at = min(timers, key=lambda t: t[1])
        self.next_timer = (label, at)
        if self.wake:
            self.wake = False
            return
        try:
            await workflow.wait_condition(lambda: self.wake, timeout=max(at - now, timedelta(milliseconds=1)),
                                          timeout_summary=label)
        except TimeoutError:
            pass  # the timer fired: the loop looks at what is due
        self.wake = False

    async def _tend_order(self, now: datetime) -> None:
        order = self.open_order
        assert order is not None
        if self.paused and not self.forced:
            await self._cancel_open(escalate=False)
            return
        if self._order_obsolete(order):
            await self._cancel_open(escalate=False)
            return
        if now >= order.replace_at:
            await self._cancel_open(escalate=True)
            return
        state: OrderState | None = await workflow.execute_activity(
            "hedge_order", OrderLookup(ref=self.ref, client_order_id=order.client_order_id),
            result_type=OrderState | None, **VENUE_CALL)
        if state is None or not state.status.is_open:
            await self._order_done(state)
        elif state.filled > order.filled:
            await self._sync(expect={order.client_order_id: state.filled})
            order.filled = state.filled

    def _order_obsolete(self, order: OpenOrder) -> bool:
        """Whether the target moved so that the resting order now points the wrong way or too far."""
        wanted = self._next_step()
        if wanted is None:
            return True
        return wanted.side != order.side or wanted.reduce_only != order.reduce_only or (
            order.qty - order.filled) > wanted.qty

    async def _cancel_open(self, *, escalate: bool) -> None:
        order = self.open_order
        assert order is not None
        final: OrderState | None = await workflow.execute_activity(
            "hedge_cancel", OrderLookup(ref=self.ref, client_order_id=order.client_order_id),
            result_type=OrderState | None, **VENUE_CALL)
        if final is not None and final.status.is_open:  # the cancel did not take: keep watching, try again soon
            order.replace_at = workflow.now() + timedelta(seconds=self.policy.fill_check_s)
            return
        await self._sync_fills_of(order, final)
        self.open_order = None
        if escalate:
            self._escalate()

    async def _order_done(self, state: OrderState | None) -> None:
        order = self.open_order
        assert order is not None
        filled = state.filled if state is not None else order.filled
        await self._sync_fills_of(order, state)
        self.open_order = None
        if state is not None and filled >= order.qty:
            self.step = start_step(self.urgency, self._kinds())  # a full fill: the next order starts afresh
        elif state is not None and state.reject_reason == RejectReason.POST_ONLY_WOULD_CROSS:
            self._escalate()  # cancelled for crossing: move on a rung
            self.wake = True
        elif self.policy.ladder[min(order.step, len(self.policy.ladder) - 1)].kind == StepKind.IOC:
            self.retry_at = workflow.now() + timedelta(seconds=self.policy.fill_check_s)  # let liquidity refill

    async def _sync_fills_of(self, order: OpenOrder, final: OrderState | None) -> None:
        """Bring in the fills of an order that left the book. One the venue shows with no fill since the last sync
        has nothing to bring in: at a band crossing every hedge of a book replaces its passive orders every
        `replace_after_s`, and a sync after each unfilled cancel was an activity and a workflow task for nothing,
        on a server the other loans wait for. Funding and liquidations come in with the reconcile."""
        if final is not None and final.filled == order.filled:
            return
        filled = final.filled if final is not None else order.filled
        await self._sync(expect={order.client_order_id: filled} if filled > 0 else {})

    def _next_step(self):
        assert self.market is not None
        target = ZERO if self.closing else self.target
        return next_order(target=target, current=self.current, hedge_side=self.inp.side.value,
                          qty_step=self.market.qty_step, min_qty=self.market.min_qty,
                          max_order_qty=self.policy.max_order_qty)

    async def _place_next(self) -> None:
        assert self.market is not None
        step = self._next_step()
        if step is None:
            self.blocked = None
            return
        rung = self.policy.ladder[min(self.step, len(self.policy.ladder) - 1)]
        rule = PriceRule(kind=rung.kind, bps=rung.bps, tick_size=self.market.tick_size,
                         price_band_bps=self.policy.price_band_bps, min_notional=self.market.min_notional)
        # the sequence moves on only once the venue has answered: a failed attempt's id is tried again, and
        # the venue's lookup-before-place returns the order if the failed attempt did reach it
        cid = client_order_id(self.ref.hedge_id, self.seq + 1, self.client_tag)
        outcome: PlaceOutcome = await workflow.execute_activity("hedge_place", PlaceHedgeOrder(
            ref=self.ref, client_order_id=cid, side=step.side, qty=step.qty, reduce_only=step.reduce_only, rule=rule),
            result_type=PlaceOutcome, **VENUE_CALL)
        if outcome.not_sent is not None:  # nothing reached the venue under this id
            self._block(outcome.message or outcome.not_sent.value)
            if outcome.not_sent == NotSent.PRICE_BAND:
                self._alert("CRITICAL", "price-band", f"hedge {self.ref.hedge_id}: price outside the sanity band",
                            self.blocked)
            return
        self.seq += 1
        # back from idle: the usual reconciliation cadence (a no-op for a hedge that was never idle)
        self.next_reconcile = min(self.next_reconcile, workflow.now() + timedelta(seconds=self.policy.reconcile_every_s))
        self.blocked, self.retry_at = None, None
        if outcome.rejected is not None:
            await self._refused(outcome, cid)
            return
        held = outcome.order
        assert held is not None
        placed_at = workflow.now()
        # what the venue holds is the order, even if an earlier attempt under this id asked for something else
        self.open_order = OpenOrder(client_order_id=cid, step=min(self.step, len(self.policy.ladder) - 1),
                                    side=held.side, qty=held.qty, price=held.price or outcome.price,
                                    time_in_force=held.time_in_force.value if held.time_in_force else "GTC",
                                    reduce_only=held.reduce_only, placed_at=placed_at,
                                    replace_at=placed_at + timedelta(seconds=self.policy.replace_after_s))
        if not outcome.order.status.is_open:
            await self._order_done(outcome.order)
            self.wake = True  # closed on arrival: look at what is left now, not at the next timer
        elif outcome.order.filled > 0:
            await self._sync(expect={cid: outcome.order.filled})
            self.open_order.filled = outcome.order.filled

    async def _refused(self, outcome: PlaceOutcome, cid: str) -> None:
        if outcome.rejected == RejectReason.POST_ONLY_WOULD_CROSS:
            self._escalate()  # the market moved through us
            self.wake = True
            return
        if outcome.rejected == RejectReason.REDUCE_ONLY:
            await self._sync(reconcile=True)  # the position is not what we thought: look again
            return
        self._block(f"order {cid} refused ({outcome.rejected}): {outcome.message}")
        self._alert("CRITICAL", "refused", f"hedge {self.ref.hedge_id}: order refused", self.blocked)

    async def _sync(self, *, expect: dict[str, Decimal] | None = None, reconcile: bool = False) -> None:
        result: SyncResult = await workflow.execute_activity(
            "hedge_sync", SyncRequest(ref=self.ref, cursor=self.cursor, since_ms=self.since_ms, expect_filled=expect or {},
                                      reconcile=reconcile),
            result_type=SyncResult, **VENUE_CALL)
        self.cursor, self.current = result.cursor, result.current
        self.realised, self.unrealised = result.realised_pnl, result.unrealised_pnl
        if result.last_fill is not None:
            self.last_fill = result.last_fill
        if self.status == HedgeStatus.PENDING and self.current != 0:
            self.status = HedgeStatus.OPEN
        if result.liquidated:
            self._alert("CRITICAL", "liquidated", f"hedge {self.ref.hedge_id} was liquidated by the venue",
                        f"position now {self.current}; the book decides whether to re-hedge")
        if reconcile:
            if result.mismatch:
                self._alert("CRITICAL", "mismatch", f"hedge {self.ref.hedge_id}: ledger and venue disagree",
                            result.mismatch)
            else:
                self._alerted.pop("mismatch", None)

    def _close(self, urgency: Urgency) -> None:
        self.closing = True
        self.target, self.urgency = ZERO, urgency
        self.step = start_step(urgency, self._kinds())
        self.blocked, self.retry_at = None, None
        self.status = HedgeStatus.CLOSING
        self.wake = True

    def _flat(self) -> bool:
        assert self.market is not None
        return abs(self.current) < self.market.min_qty

    async def _finish(self) -> HedgeView:
        self.status = HedgeStatus.CLOSED
        self.next_timer = None
        await workflow.execute_activity("hedge_set_status", HedgeStatusChange(
            hedge_id=self.ref.hedge_id, status=HedgeStatus.CLOSED, target=ZERO), **STORE_CALL)
        self._show()
        return self.state()

    # -- helpers --------------------------------------------------------------------------------
    def _kinds(self):
        return [s.kind for s in self.policy.ladder]

    def _should_continue_as_new(self) -> bool:
        return continue_as_new_due(self.inp.continue_as_new_after or CONTINUE_AS_NEW_AFTER)

    def _carry(self) -> HedgeCarry:
        return HedgeCarry(client_tag=self.client_tag, risk_seq=self.risk_seq, forced=self.forced,
                          status=self.status, target=self.target, current=self.current, seq=self.seq, step=self.step,
                          cursor=self.cursor, paused=self.paused, risk_active=self.risk_active,
                          risk_cleared_at=self.risk_cleared_at, closing=self.closing, urgency=self.urgency,
                          target_seq=self.target_seq, last_fill=self.last_fill, realised_pnl=self.realised,
                          unrealised_pnl=self.unrealised, open_order=self.open_order)

    def _operator(self, what: str, by: str) -> None:
        if by.startswith(BOOK_SENDER):  # the hedge's own book steering it, not a person
            return
        self.operator_seq += 1
        operator_summary(self.operator_seq, self.ref.hedge_id, f"hedge {self.ref.hedge_id} {what} by {by}",
                         f"position {self.current} {self.ref.symbol} (target {self.target}); realised "
                         f"{self.realised} USDT", book=self.inp.book, exposure_id=self.inp.exposure_id)

    def _alert(self, severity: str, kind: str, title: str, text: str) -> None:
        alert_once(self._alerted, kind, Alert(severity=severity, key=f"{self.ref.hedge_id}:{kind}", title=title, text=text,
                                              book=self.inp.book, exposure_id=self.inp.exposure_id))

    def _show(self) -> None:
        """Keep the Temporal UI current: search attributes when they change, details always."""
        shown = (self.status.value, self.paused)
        if shown != self._shown:
            updates = [sa.HEDGE_STATUS.value_set(self.status.value), sa.PAUSED.value_set(self.paused)]
            if self._shown is None:  # however the hedge was started, it is findable by what it hedges
                updates += [sa.BOOK.value_set(self.inp.book), sa.EXPOSURE_ID.value_set(self.inp.exposure_id),
                            sa.VENUE.value_set(self.ref.venue), sa.SYMBOL.value_set(self.ref.symbol)]
            workflow.upsert_search_attributes(updates)
            self._shown = shown
        order = self.open_order
        order_line = (f"{order.side} {order.qty} @ {order.price} ({order.time_in_force}, rung {order.step + 1}, "
                      f"filled {order.filled}, replace at {order.replace_at:%H:%M:%S})" if order else "none")
        fill = self.last_fill
        workflow.set_current_details("\n".join([
            f"**{self.status.value}** {self.inp.side.value} {self.ref.symbol} on {self.ref.venue}:{self.ref.account}",
            f"- target {self.target} · current {self.current} · urgency {self.urgency.value}"
            + (" · **PAUSED**" if self.paused else "") + (" · closing" if self.closing else ""),
            f"- open order: {order_line}",
            f"- last fill: {fill.side} {fill.qty} @ {fill.price}" if fill else "- last fill: none",
            f"- PnL realised {self.realised} · unrealised {self.unrealised}",
            f"- risk {'active' if self.risk_active else 'cleared'}" + (f" · blocked: {self.blocked}" if self.blocked
                                                                      else ""),
        ]))
