"""LoanGuardWorkflow: one per enrolled loan (`loan-<id>`), for as long as it is enrolled.

Keeps a Bybit BTC-collateralised USDT loan near its target LTV and under critical:
  - prices come from the symbol's feed (PriceFeedWorkflow signals `price`); no feed tick for
    `stale_after_s` and the guard alerts and polls the price itself until the feed is back;
  - the loan (debt, interest, collateral) is read every `sync_every_s` and after every treasury action;
  - the band (risk/loan.py) sets the child HedgeWorkflow's short target and urgency; that workflow is started when
    the loan first needs a short, so a loan at rest is this one workflow;
  - from CAUTION up, unrealised hedge profit is realised (the hedge is asked down by the realised part
    and back up at once: realise-and-re-hedge) and the treasury turns realised profit into collateral
    (LTV above caution), repayment (below repay_below) or reserve; at CRITICAL the reserve repays;
  - the hedge's own liquidation price is watched: alert, and top up its margin from the reserve.
`pause` keeps watching and alerting but trades nothing and moves no money; `force_close` closes the hedge
now (and pauses); `unenrol` closes the hedge and ends the workflow once it is flat.
Money moves carry keys derived from the loan id and a sequence kept here: a retry never moves money twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, WorkflowAlreadyStartedError

from workflows.common import ALERT_CALL, BOOK_SENDER, alert_once, continue_as_new, continue_as_new_due, operator_summary

with workflow.unsafe.imports_passed_through():
    from models import search_attributes as sa
    from models.hedge import Alert, HedgeInput, TargetChange
    from models.ledger import Book, HedgeSide, HedgeStatus
    from models.loan import LoanSnapshot
    from models.loan_guard import (
        BandSettings,
        FeedSubscription,
        FeedUnsubscribe,
        HedgeFacts,
        HedgeFactsRequest,
        LoanCarry,
        LoanGuardInput,
        LoanRef,
        LoanView,
        MarginTopUp,
        PendingMove,
        PriceRequest,
        PriceTick,
        RealiseState,
        TreasuryAction,
        TreasuryOutcome,
        TreasuryRecord,
        TreasuryRequest,
    )
    from risk.loan import (
        Band,
        TreasuryKind,
        allocate,
        band_for,
        hedge_target_btc,
        loss_to_write_off,
        ltv_pct,
        margin_needs_topup,
        net_delta_btc,
        realisation_due,
        repay_to_reach,
        risk_price,
        urgency_for,
    )
    from risk.pricing import Urgency, round_down_to_step

ZERO = Decimal(0)
QTY_STEP = Decimal("0.001")  # until the hedge's market facts are read
CONTINUE_AS_NEW_AFTER = 6000
REST_CONTINUE_AS_NEW_AFTER = 150  # ~25 wakes at rest (a loan read every 5 min): a run about every 2 hours
REALISE_GIVE_UP = timedelta(minutes=5)
VENUE_CALL = dict(start_to_close_timeout=timedelta(seconds=30), schedule_to_close_timeout=timedelta(minutes=2),
                  retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=10)))
MONEY_CALL = dict(start_to_close_timeout=timedelta(seconds=60), schedule_to_close_timeout=timedelta(minutes=10),
                  retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=15)))
# add-margin has no client id: one attempt, and the next facts read decides whether more is needed
TOPUP_CALL = dict(start_to_close_timeout=timedelta(seconds=30), retry_policy=RetryPolicy(maximum_attempts=1))


def summary_line(loan_id: str, ltv: Decimal | None, band: Band, short_btc: Decimal) -> str:
    ltv_text = f"{ltv:.1f} %" if ltv is not None else "unknown"
    return f"loan {loan_id} · LTV {ltv_text} · {band.name} · short {short_btc:.2f} BTC"


@workflow.defn
class LoanGuardWorkflow:
    @workflow.init
    def __init__(self, inp: LoanGuardInput) -> None:
        self.inp = inp
        self.ref = LoanRef(loan_id=inp.loan_id, venue=inp.venue, account=inp.account, symbol=inp.symbol)
        self.cfg: BandSettings = inp.bands
        c = inp.carry
        self.band = Band(c.band) if c else Band.SAFE
        self.principal = c.principal if c else ZERO
        self.interest = c.interest if c else ZERO
        self.collateral = c.collateral_btc if c else ZERO
        self.tick: PriceTick | None = c.price if c else None
        self.hedge_gen = c.hedge_gen if c else 0
        self.hedge_started = c.hedge_started if c else False
        self.target_seq = c.target_seq if c else 0
        self.sent_target: Decimal | None = c.sent_target if c else None
        self.sent_urgency: str | None = c.sent_urgency if c else None
        self.treasury_seq = c.treasury_seq if c else 0
        self.allocated = c.allocated_pnl if c else ZERO
        self.written_off = c.written_off_usdt if c else ZERO
        self.reserve = c.reserve_usdt if c else ZERO
        self.enrol_reserve = c.enrol_reserve_left if c else inp.reserve_usdt
        self.last_treasury: TreasuryRecord | None = c.last_treasury if c else None
        self.paused = c.paused if c else False
        self.hedge_closed = c.hedge_closed if c else False
        self.unenrolling = c.unenrolling if c else False
        self.realising: RealiseState | None = c.realising if c else None
        self.max_ltv = c.max_ltv if c else ZERO
        self.tag = c.tag if c else ""
        self.closing_hedge = c.closing_hedge if c else False
        self.realisations = c.realisations if c else 0
        self.realised_btc = c.realised_btc if c else ZERO
        self.realised_notional = c.realised_notional if c else ZERO
        self.ltv: Decimal | None = None
        self.feed_at: datetime | None = None
        self.stale = False
        self.feed_lost: str | None = None
        self.next_poll: datetime | None = None
        self.next_sync: datetime | None = None
        self.facts: HedgeFacts | None = None
        self.shown_facts: HedgeFacts | None = c.shown_facts if c else None  # the last run's, for the view only
        self.next_facts: datetime | None = None
        self.hedge_paused_sent = c.hedge_paused_sent if c and c.hedge_paused_sent is not None else self.paused
        self.pending: PendingMove | None = c.pending if c else None
        self.subscribed: FeedSubscription | None = c.subscribed if c else None
        self.treasury_backoff: datetime | None = None
        self.retry_at: datetime | None = None
        self.wake = False
        self._alerted: dict[str, str] = {}
        self.operator_seq = 0
        self._shown: tuple[str, bool, str] | None = None
        self._started_at: datetime | None = None

    # -- signals, updates, queries --------------------------------------------------------------
    @workflow.signal(name="price")
    def on_price(self, tick: PriceTick) -> None:
        # the stream delivers in order; ticks are not ordered against REST polls by their stamps, which come
        # from different clocks (a replaying emulator stamps market time)
        if tick.source == "feed":
            self.feed_at = workflow.now()
            self.feed_lost = None
        self.tick = tick
        self.wake = True

    @workflow.signal
    def feed_down(self, why: str) -> None:
        """The feed lost its stream: poll the price now rather than after `stale_after_s` of silence."""
        self.feed_lost = why
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
        self.retry_at = None
        self.wake = True

    @workflow.signal
    def force_close(self, reason: str = "operator") -> None:
        """Close the hedge now; the guard then watches unhedged (paused) until resume opens a new hedge."""
        if reason != "unenrol":
            self._operator("force-closed", reason)
        if not self.hedge_closed:  # also a hedge whose start is under way: it is closed once it exists
            workflow.logger.info("force close of loan %s's hedge: %s", self.inp.loan_id, reason)
            self.closing_hedge = True
        self.paused = True
        self.wake = True

    def _operator(self, what: str, by: str) -> None:
        """Every operator command is told to people, with where the loan stood when it came."""
        self.operator_seq += 1
        facts = self.facts
        ltv = f"LTV {self.ltv:.2f} % ({self.band.name})" if self.ltv is not None else "LTV not known yet"
        short = f"short {-facts.size} BTC" if facts is not None else "no hedge yet"
        operator_summary(self.operator_seq, f"loan-{self.inp.loan_id}", f"loan {self.inp.loan_id} {what} by {by}",
                         f"{ltv}; {short}; debt {(self.principal + self.interest):.2f} USDT, collateral "
                         f"{self.collateral} BTC", book=Book.LOAN.value, exposure_id=self.inp.loan_id)

    @workflow.signal
    def unenrol(self) -> None:
        self.unenrolling = True
        self.force_close("unenrol")

    @workflow.update
    def set_bands(self, changes: dict[str, Any]) -> BandSettings:
        self.cfg = self.cfg.with_changes(changes)
        self.band = band_for(self.ltv, self.band, self.cfg.bands()) if self.ltv is not None else self.band
        self.wake = True
        return self.cfg

    @set_bands.validator
    def _validate_bands(self, changes: dict[str, Any]) -> None:
        if not changes:
            raise ApplicationError("no band changes given")
        try:
            self.cfg.with_changes(changes)
        except ValueError as exc:
            raise ApplicationError(f"bands refused, nothing changed: {exc}") from None

    def _last_facts(self) -> HedgeFacts | None:
        """This run's hedge figures, or the last run's until this one has read them (for the view, never acted on)."""
        return self.facts or self.shown_facts

    def _shown_ltv(self) -> Decimal | None:
        """The LTV evaluated last; a run continued as new shows the one its carried figures give until it evaluates
        its own (the figures are the last run's, so it is the same LTV), not none."""
        if self.ltv is not None or self.collateral <= 0 or self.tick is None:
            return self.ltv
        return ltv_pct(self.principal + self.interest, self.collateral, self.tick.last, self.tick.index)

    @workflow.query
    def state(self) -> LoanView:
        facts = self._last_facts()
        current = -facts.size if facts else ZERO
        ltv = self._shown_ltv()
        return LoanView(
            loan_id=self.inp.loan_id, venue=self.inp.venue, account=self.inp.account, ltv_pct=ltv,
            band=self.band.name, max_ltv_pct=self.max_ltv, debt_usdt=self.principal + self.interest,
            principal_usdt=self.principal, interest_usdt=self.interest, collateral_btc=self.collateral,
            price=risk_price(self.tick.last, self.tick.index) if self.tick else None,
            price_source=self.tick.source if self.tick else None, price_at=self.tick.at if self.tick else None,
            feed_stale=self.stale, hedge_id=self._hedge_id(),
            hedge_target_btc=(self.sent_target or ZERO) if self.paused or self.closing_hedge or self.hedge_closed
            else self._target()[0],
            hedge_current_btc=current, hedge_realised_pnl=facts.realised_pnl if facts else ZERO,
            hedge_unrealised_pnl=facts.unrealised_pnl if facts else ZERO,
            hedge_liquidation_price=facts.liquidation_price if facts else None,
            net_delta_btc=net_delta_btc(self.collateral, current), realising=self.realising,
            hedge_fees_usdt=facts.fees if facts else ZERO, hedge_funding_usdt=facts.funding if facts else ZERO,
            realisations=self.realisations, realised_btc=self.realised_btc,
            realised_notional_usdt=self.realised_notional,
            reserve_usdt=self.reserve, enrol_reserve_left_usdt=self.enrol_reserve, allocated_pnl_usdt=self.allocated,
            written_off_usdt=self.written_off,
            last_treasury=self.last_treasury, treasury_actions=self.treasury_seq, paused=self.paused,
            hedge_closed=self.hedge_closed, hedge_started=self.hedge_started, unenrolling=self.unenrolling, bands=self.cfg,
            always_repay=self.inp.always_repay, next_sync_at=self.next_sync,
            summary=summary_line(self.inp.loan_id, ltv, self.band, current))

    # -- the loop -------------------------------------------------------------------------------
    @workflow.run
    async def run(self, inp: LoanGuardInput) -> LoanView:
        self._started_at = workflow.now()
        if not self.tag:  # distinguishes this enrolment's hedge and money keys from an earlier one's
            self.tag = workflow.uuid4().hex[:4]
        self._show()
        while True:
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                continue_as_new(inp.model_copy(update={"bands": self.cfg, "carry": self._carry()}))
            now = workflow.now()
            if self.retry_at is None or now >= self.retry_at:
                self.retry_at = None
                try:
                    await self._step(now)
                except ActivityError as err:
                    cause = err.cause.message if isinstance(err.cause, ApplicationError) else str(err.cause or err)
                    self._alert("CRITICAL", "venue", f"loan {inp.loan_id}: venue call failing", cause)
                    self.retry_at = workflow.now() + timedelta(seconds=inp.timing.poll_every_s)
            self._show()
            if self.unenrolling and (self.hedge_closed or not self.hedge_started) and self.pending is None:
                try:
                    await workflow.execute_activity("feed_unsubscribe", FeedUnsubscribe(
                        loan_id=inp.loan_id, venue=inp.venue, symbol=inp.symbol), **VENUE_CALL)
                except ActivityError:
                    pass  # the feed drops a loan it cannot signal; nothing here depends on it
                await workflow.execute_activity("raise_alert", Alert(
                    severity="INFO", key=f"loan-{inp.loan_id}:unenrolled", title=f"loan {inp.loan_id} unenrolled",
                    text="hedge closed; no longer guarded", book=Book.LOAN.value, exposure_id=inp.loan_id), **ALERT_CALL)
                return self.state()
            await self._sleep()

    async def _step(self, now: datetime) -> None:
        t = self.inp.timing
        if self.next_sync is None or now >= self.next_sync:
            await self._sync_loan()
        await self._refresh_price(now)
        if self.tick is None:
            return
        if self.collateral > 0:
            self._evaluate()
            await self._steer_hedge()  # a band change reaches the hedge before the feed hears of it
            await self._subscribe()
        else:
            self.ltv = None  # no loan at the venue any more: the hedge target falls to 0 with the collateral
        await self._steer_hedge()
        if self.hedge_started and not self.hedge_closed and (self.next_facts is None or workflow.now() >= self.next_facts):
            self.facts = await workflow.execute_activity("loan_hedge_facts", self._facts_request(),
                                                         result_type=HedgeFacts, **VENUE_CALL)
            hedged = ((self.sent_target or ZERO) > 0 or self.facts.size != 0 or self.realising is not None
                      or self.closing_hedge)
            if hedged:
                every = t.hedge_check_s
            else:  # a flat hedge wanting nothing has nothing to report: read it rarely
                every = t.idle_hedge_check_s
            self.next_facts = workflow.now() + timedelta(seconds=every)
            if self.closing_hedge and self.facts.status == HedgeStatus.CLOSED:
                self._hedge_ended("closed")
        if self.pending is not None and not self.paused:
            await self._run_pending()
        if self.facts is None or self.paused or self.hedge_closed or self.closing_hedge or self.ltv is None:
            if self.facts is not None and not self.hedge_closed:
                self._watch_margin(top_up=False)
            return
        await self._watch_margin_and_top_up()
        self._realise()
        await self._steer_hedge()
        await self._treasury()
        if self.band == Band.CRITICAL:
            await self._deploy_reserve()

    # -- the loan and its price --------------------------------------------------------------------------
    async def _sync_loan(self) -> None:
        snap: LoanSnapshot = await workflow.execute_activity("loan_read", self.ref, result_type=LoanSnapshot,
                                                             **VENUE_CALL)
        if snap.collateral_btc <= 0 and snap.debt <= 0:
            self._alert("CRITICAL", "loan-gone", f"loan {self.inp.loan_id}: the venue shows no ongoing loan",
                        "repaid or liquidated outside hedgeguard? unenrol it or check the account")
        self.principal, self.interest, self.collateral = snap.principal, snap.interest, snap.collateral_btc
        self.next_sync = workflow.now() + timedelta(seconds=self.inp.timing.sync_every_s)

    async def _refresh_price(self, now: datetime) -> None:
        t = self.inp.timing
        stale_after = timedelta(seconds=t.stale_after_s)
        since = self.feed_at or self._started_at
        assert since is not None
        silent = now - since >= stale_after or self.feed_lost is not None
        fresh = self.feed_at is not None and not silent
        if not fresh and (self.tick is None or silent):
            if not self.stale and silent:
                self.stale = True
                why = self.feed_lost or f"no {self.inp.symbol} tick for {t.stale_after_s} s"
                self._alert("WARNING", "feed", f"loan {self.inp.loan_id}: price feed stale",
                            f"{why}; polling the price every {t.poll_every_s} s")
            if self.next_poll is None or now >= self.next_poll:
                self.tick = await workflow.execute_activity("loan_price", PriceRequest(
                    venue=self.inp.venue, account=self.inp.account, symbol=self.inp.symbol),
                    result_type=PriceTick, **VENUE_CALL)
                self.next_poll = workflow.now() + timedelta(seconds=t.poll_every_s)
        elif fresh and self.stale:
            self.stale, self.next_poll = False, None
            self._alert("INFO", "feed", f"loan {self.inp.loan_id}: price feed back", "ticks arriving again")

    def _evaluate(self) -> None:
        assert self.tick is not None
        bands = self.cfg.bands()
        self.ltv = ltv_pct(self.principal + self.interest, self.collateral, self.tick.last, self.tick.index)
        self.max_ltv = max(self.max_ltv, self.ltv)
        band = band_for(self.ltv, self.band, bands)
        if band != self.band:
            rising = band > self.band
            severity = "INFO" if not rising or band == Band.SAFE else "WARNING" if band == Band.CAUTION else "CRITICAL"
            self._alert(severity, "band", f"loan {self.inp.loan_id}: {self.band.name} → {band.name}",
                        f"LTV {self.ltv:.2f} % at {risk_price(self.tick.last, self.tick.index)}; "
                        f"hedge target {self._target_for(band)[0]} BTC",
                        topic=f"LTV alerts for {self.inp.loan_id}", figure=self.ltv.quantize(Decimal("0.01")), unit="%")
            self.band = band

    async def _subscribe(self) -> None:
        """Tell the feed what it needs to value this loan; only the band moving is no news to it (it told us)."""
        t = self.inp.timing
        sub = FeedSubscription(loan_id=self.inp.loan_id, venue=self.inp.venue, account=self.inp.account,
                               symbol=self.inp.symbol, debt=self.principal + self.interest, collateral_btc=self.collateral,
                               bands=self.cfg, band=int(self.band), keepalive_s=t.keepalive_s, ltv_step_pct=t.ltv_step_pct)
        if self.unenrolling or (self.subscribed is not None
                                and sub.model_copy(update={"band": self.subscribed.band}) == self.subscribed):
            return
        await workflow.execute_activity("feed_subscribe", sub, **VENUE_CALL)
        self.subscribed = sub

    # -- the hedge ------------------------------------------------------------------------------------
    def _hedge_id(self) -> str:
        return f"loan-{self.inp.loan_id}-{self.tag}{self.hedge_gen}"

    def _facts_request(self) -> HedgeFactsRequest:
        return HedgeFactsRequest(hedge_id=self._hedge_id(), venue=self.inp.venue, account=self.inp.account,
                                 symbol=self.inp.symbol)

    def _target_for(self, band: Band) -> tuple[Decimal, str]:
        step = self.facts.qty_step if self.facts else QTY_STEP
        return round_down_to_step(hedge_target_btc(self.collateral, band, self.cfg.bands()), step), urgency_for(band)

    def _target(self) -> tuple[Decimal, str]:
        band_target, urgency = self._target_for(self.band)
        if self.realising is not None:  # the realised part off the band's current target, however the band moved
            return max(ZERO, band_target - self.realising.qty), "critical"
        return band_target, urgency

    async def _steer_hedge(self) -> None:
        if self.unenrolling and not self.hedge_started:
            return
        if self.closing_hedge and not self.hedge_started:
            self.closing_hedge, self.hedge_closed = False, True  # nothing was started: nothing to close
        if self.closing_hedge or self.hedge_closed:
            if self.closing_hedge and self.sent_target is not None:
                await self._signal_hedge("force_close", f"{BOOK_SENDER}loan {self.inp.loan_id}: "
                                         + ("unenrol" if self.unenrolling else "operator"))
                self.sent_target = None
                self.next_facts = workflow.now() + timedelta(seconds=1)  # see the close through promptly
            if self.hedge_closed and not self.paused and not self.unenrolling:  # resumed: a fresh hedge
                self.hedge_gen += 1
                self.hedge_started = self.hedge_closed = False
                self.facts, self.next_facts, self.realising = None, None, None
            else:
                return
        target, urgency = self._target()
        if not self.hedge_started:
            if target <= 0 or self.paused:  # opened when the loan first needs a short: at rest a loan is one workflow
                return
            await self._start_hedge(target, urgency)
        if self.paused != self.hedge_paused_sent:
            await self._signal_hedge("pause" if self.paused else "resume", f"{BOOK_SENDER}loan {self.inp.loan_id}")
            self.hedge_paused_sent = self.paused
        if (target, urgency) != (self.sent_target, self.sent_urgency):
            await self._retarget(target, urgency)
            self.sent_target, self.sent_urgency = target, urgency
            # read the hedge at its usual interval: a read 1 s after every retarget rarely saw a fill yet
            self.next_facts = workflow.now() + timedelta(seconds=self.inp.timing.hedge_check_s)

    async def _start_hedge(self, target: Decimal, urgency: str) -> None:
        hedge = HedgeInput(hedge_id=self._hedge_id(), book=Book.LOAN.value, exposure_id=self.inp.loan_id,
                           venue=self.inp.venue, account=self.inp.account, symbol=self.inp.symbol,
                           side=HedgeSide.SHORT, target=target, leverage=self.inp.hedge_leverage,
                           # the band's urgency from the first order on, not only once the retarget arrives
                           policy=self.inp.hedge_policy.model_copy(update={"urgency": Urgency(urgency)}))
        try:
            await workflow.start_child_workflow(
                "HedgeWorkflow", hedge, id=f"hedge-{hedge.hedge_id}", static_summary=hedge.summary(),
                parent_close_policy=workflow.ParentClosePolicy.ABANDON)
        except WorkflowAlreadyStartedError:
            pass  # a previous run started it: steer it by signals as usual
        self.hedge_started, self.sent_target, self.sent_urgency = True, target, urgency
        self.hedge_paused_sent = False
        if self.paused:
            # a paused guard's new hedge must hold its target, not trade on it before the pause arrives
            await self._signal_hedge("pause", f"{BOOK_SENDER}loan {self.inp.loan_id}")
            self.hedge_paused_sent = True
        await self._retarget(target, urgency)

    async def _retarget(self, target: Decimal, urgency: str) -> None:
        self.target_seq += 1
        await self._signal_hedge("retarget", TargetChange(target=target, urgency=urgency, seq=self.target_seq))

    async def _signal_hedge(self, name: str, arg: Any = None) -> None:
        handle = workflow.get_external_workflow_handle(f"hedge-{self._hedge_id()}")
        args = [] if arg is None else [arg]
        try:
            await handle.signal(name, args=args)
        except Exception as exc:  # the hedge workflow ended (closed by an operator, failed): not ours to steer
            self._alert("CRITICAL", "hedge-gone", f"loan {self.inp.loan_id}: hedge workflow {self._hedge_id()} ended",
                        f"{name} could not be delivered ({exc}); a new hedge takes over unless paused")
            self._hedge_ended("ended")

    def _hedge_ended(self, how: str) -> None:
        """The hedge is closed: profit it realised that the treasury has not seen yet is kept as reserve."""
        left = (self.facts.realised_pnl if self.facts else ZERO) - self.allocated
        if left > 0:
            self.reserve += left
            self._record(TreasuryRecord(key=self._next_key("k"), kind=TreasuryAction.RESERVE, usdt=left, at=workflow.now(),
                                        note=f"profit of hedge {self._hedge_id()}, {how}"))
        self.allocated = ZERO  # the next hedge's ledger starts from zero
        self.closing_hedge, self.hedge_closed = False, True
        self.sent_target = None
        self._alert("INFO", "hedge-closed", f"loan {self.inp.loan_id}: hedge {how}", self._hedge_id())

    def _realise(self) -> None:
        """Realise-and-re-hedge: from CAUTION up, take enough short profit to bring the LTV back to target once
        the treasury pledges it, by asking the hedge down by that part; the next step asks it back up."""
        facts, now = self.facts, workflow.now()
        assert facts is not None and self.tick is not None and self.ltv is not None
        if self.realising is not None:
            reached = -facts.size <= self._target()[0] + facts.min_qty / 2
            if reached or now - self.realising.started_at > REALISE_GIVE_UP:
                if not reached:
                    self._alert("WARNING", "realise", f"loan {self.inp.loan_id}: realising profit did not complete",
                                f"hedge still {facts.size} after {REALISE_GIVE_UP}; re-hedging to the band target")
                self.realising = None
            return
        target = self.sent_target or ZERO
        short = -facts.size
        if self.band < Band.CAUTION or short <= 0 or short < target - facts.min_qty or facts.unrealised_pnl <= 0:
            return
        price = risk_price(self.tick.last, self.tick.index)
        due = realisation_due(facts.unrealised_pnl, self.ltv, self.principal + self.interest, self.collateral, price,
                              self.cfg.bands(), minimum_usdt=self.inp.timing.min_treasury_usdt,
                              always_repay=self.inp.always_repay)
        qty = round_down_to_step(short * due / facts.unrealised_pnl, facts.qty_step) if due > 0 else ZERO
        if qty >= facts.min_qty:
            self.realising = RealiseState(qty=qty, reduce_to=max(ZERO, target - qty), started_at=now)
            self.realisations += 1
            self.realised_btc += qty
            self.realised_notional += qty * price

    async def _watch_margin_and_top_up(self) -> None:
        need = self._watch_margin(top_up=True)
        if need <= 0 or self.paused or self.closing_hedge or self._backing_off():
            return
        pool = self.reserve + self.enrol_reserve
        amount = min(need, pool).quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        if amount <= 0:
            return
        key = self._next_key("m")
        outcome: TreasuryOutcome = await workflow.execute_activity("loan_margin_topup", MarginTopUp(
            key=key, hedge=self._facts_request(), usdt=amount), result_type=TreasuryOutcome, **TOPUP_CALL)
        if outcome.refused:
            self.treasury_backoff = workflow.now() + timedelta(seconds=60)
        self._spend_reserve(outcome.usdt)
        self._record(TreasuryRecord(key=key, kind=TreasuryAction.MARGIN_TOPUP, usdt=outcome.usdt, at=workflow.now(),
                                    note=outcome.refused or "hedge margin topped up from the reserve"))
        self.next_facts = workflow.now()

    def _watch_margin(self, *, top_up: bool) -> Decimal:
        """USDT the hedge's margin needs (0 when healthy); alerts when the mark nears its liquidation price."""
        facts = self.facts
        assert facts is not None
        distance = self.inp.timing.margin_distance_pct
        if facts.size >= 0 or facts.mark is None or not margin_needs_topup(facts.mark, facts.liquidation_price, short=True,
                                                                            min_distance_pct=distance):
            self._alerted.pop("margin", None)
            return ZERO
        assert facts.liquidation_price is not None
        self._alert("CRITICAL", "margin", f"loan {self.inp.loan_id}: hedge margin thin",
                    f"mark {facts.mark}, hedge liquidation at {facts.liquidation_price}"
                    + ("; topping up from the reserve" if top_up else "; paused, not topping up"))
        # enough to push the liquidation price out to twice the alert distance
        wanted = facts.mark * (1 + 2 * distance / 100)
        return max(ZERO, (wanted - facts.liquidation_price) * -facts.size)

    # -- treasury -----------------------------------------------------------------------------------------
    def _next_key(self, kind: str) -> str:
        self.treasury_seq += 1
        return f"{self.inp.loan_id}-{self.tag}-{kind}{self.treasury_seq}"

    async def _treasury(self) -> None:
        facts = self.facts
        assert facts is not None and self.ltv is not None
        lost = loss_to_write_off(facts.realised_pnl, self.allocated)
        if lost > 0:
            self.allocated -= lost
            self.written_off += lost
        available = facts.realised_pnl - self.allocated
        if (available < max(self.inp.timing.min_treasury_usdt, Decimal("0.01")) or self.realising is not None
                or self.paused or self.closing_hedge or self.pending is not None or self._backing_off()):
            return
        action = allocate(available, self.ltv, self.cfg.bands(), always_repay=self.inp.always_repay)
        usdt = action.usdt.quantize(Decimal("0.01"), rounding=ROUND_DOWN)
        self.allocated += available
        if action.kind == TreasuryKind.RESERVE:
            self.reserve += available
            self._record(TreasuryRecord(key=self._next_key("k"), kind=TreasuryAction.RESERVE, usdt=available, at=workflow.now(),
                                        note=f"LTV {self.ltv:.2f} % between {self.cfg.repay_below} and {self.cfg.caution}"))
            return
        self.reserve += action.kept
        if action.kind == TreasuryKind.REPAY:
            capped = min(usdt, self.principal + self.interest)
            self.reserve += usdt - capped  # more than the debt: the rest is kept
            await self._move(TreasuryAction.REPAY, capped)
        else:
            await self._move(TreasuryAction.ADD_COLLATERAL, usdt)

    async def _move(self, kind: TreasuryAction, usdt: Decimal) -> None:
        if usdt <= 0:
            return
        key = self._next_key("c" if kind == TreasuryAction.ADD_COLLATERAL else "r")
        # kept until the venue answers: a move whose activity gave up is asked again under the same key
        self.pending = PendingMove(kind=kind, request=TreasuryRequest(key=key, loan=self.ref, usdt=usdt))
        await self._run_pending()

    async def _run_pending(self) -> None:
        assert self.pending is not None
        kind, usdt, key = self.pending.kind, self.pending.request.usdt, self.pending.request.key
        from_reserve = kind == TreasuryAction.DEPLOY_RESERVE
        outcome: TreasuryOutcome = await workflow.execute_activity(kind.activity, self.pending.request,
                                                                   result_type=TreasuryOutcome, **MONEY_CALL)
        self.pending = None
        if outcome.refused:
            self.treasury_backoff = workflow.now() + timedelta(seconds=60)
            if not from_reserve:
                self.reserve += usdt - outcome.usdt  # not spent: kept
            what = "repay" if from_reserve else kind.value.replace("_", " ")
            self._alert("WARNING", "treasury-refused", f"loan {self.inp.loan_id}: {what} refused by the venue",
                        outcome.refused)
        elif from_reserve:
            self._spend_reserve(outcome.usdt)
        note = outcome.refused or ("already done (found at the venue)" if outcome.already_done else "done")
        self._record(TreasuryRecord(key=key, kind=kind, usdt=outcome.usdt,
                                    btc=outcome.btc, at=workflow.now(), note=note))
        await self._sync_loan()
        if self.collateral > 0:
            self._evaluate()

    def _backing_off(self) -> bool:
        return self.treasury_backoff is not None and workflow.now() < self.treasury_backoff

    async def _deploy_reserve(self) -> None:
        assert self.tick is not None
        pool = self.reserve + self.enrol_reserve
        if (pool < max(self.inp.timing.min_treasury_usdt, Decimal("0.01")) or self.paused or self.closing_hedge
                or self.pending is not None or self._backing_off()):
            return
        need = repay_to_reach(self.principal + self.interest, self.collateral, risk_price(self.tick.last, self.tick.index),
                              self.cfg.target)
        await self._move(TreasuryAction.DEPLOY_RESERVE, min(pool, need).quantize(Decimal("0.01"), rounding=ROUND_DOWN))

    def _spend_reserve(self, usdt: Decimal) -> None:
        from_enrol = min(usdt, self.enrol_reserve)
        self.enrol_reserve -= from_enrol
        self.reserve = max(ZERO, self.reserve - (usdt - from_enrol))

    def _record(self, record: TreasuryRecord) -> None:
        """Keep the last treasury action and tell people, with the LTV it brings (the loan is read back next)."""
        self.last_treasury = record
        debt, collateral = self.principal + self.interest, self.collateral
        moved = record.usdt > 0 or record.btc > 0
        if record.kind in (TreasuryAction.REPAY, TreasuryAction.DEPLOY_RESERVE):
            debt -= record.usdt
        elif record.kind == TreasuryAction.ADD_COLLATERAL:
            collateral += record.btc
        figures = ""
        if self.tick is not None and self.ltv is not None and collateral > 0:
            after = ltv_pct(max(debt, ZERO), collateral, self.tick.last, self.tick.index)
            figures = f"; LTV {self.ltv:.2f} % → {after:.2f} %" if moved else f"; LTV {self.ltv:.2f} %"
        self._alert("INFO", f"treasury-{record.key}", f"loan {self.inp.loan_id}: treasury {record.kind.replace('_', ' ')}",
                    f"{record.usdt} USDT" + (f" → {record.btc} BTC collateral" if record.btc else "") + f" ({record.note})"
                    + figures, category="action")

    # -- waiting, continue-as-new, the UI ------------------------------------------------------------------
    async def _sleep(self) -> None:
        now, t = workflow.now(), self.inp.timing
        timers: list[tuple[str, datetime]] = []
        if self.next_sync is not None:
            timers.append(("loan sync", self.next_sync))
        if self.retry_at is not None and self.retry_at > now:
            timers = [("retry", self.retry_at)]  # nothing else runs before it
        elif self.stale and self.next_poll is not None:
            timers.append(("price poll", self.next_poll))
        elif self.feed_at is not None or self._started_at is not None:
            since = self.feed_at or self._started_at
            assert since is not None
            timers.append(("feed stale check", max(now, since + timedelta(seconds=t.stale_after_s))))
        if self.next_facts is not None and self.hedge_started and not self.hedge_closed and self.retry_at is None:
            timers.append(("hedge check", self.next_facts))
        label, at = min(timers, key=lambda x: x[1]) if timers else ("loan sync", now + timedelta(seconds=t.sync_every_s))
        if self.wake:
            self.wake = False
            return
        try:
            await workflow.wait_condition(lambda: self.wake, timeout=max(at - now, timedelta(milliseconds=1)),
                                          timeout_summary=label)
        except TimeoutError:
            pass
        self.wake = False

    def _should_continue_as_new(self) -> bool:
        if continue_as_new_due(self.inp.continue_as_new_after or CONTINUE_AS_NEW_AFTER):
            return True
        rest_limit = self.inp.rest_continue_as_new_after or REST_CONTINUE_AS_NEW_AFTER
        return self._at_rest() and workflow.info().get_current_history_length() >= rest_limit

    def _at_rest(self) -> bool:
        """SAFE with nothing in flight: a new run costs the loan nothing now, and frees what this one holds."""
        return (self.band == Band.SAFE and self.pending is None and self.realising is None and not self.closing_hedge
                and not self.unenrolling and self.retry_at is None
                and (not self.hedge_started or not self.sent_target))

    def _carry(self) -> LoanCarry:
        return LoanCarry(band=int(self.band), principal=self.principal, interest=self.interest,
                         collateral_btc=self.collateral, price=self.tick, hedge_gen=self.hedge_gen,
                         hedge_started=self.hedge_started, target_seq=self.target_seq, sent_target=self.sent_target,
                         sent_urgency=self.sent_urgency, treasury_seq=self.treasury_seq, allocated_pnl=self.allocated,
                         written_off_usdt=self.written_off,
                         reserve_usdt=self.reserve, enrol_reserve_left=self.enrol_reserve,
                         last_treasury=self.last_treasury, paused=self.paused, hedge_closed=self.hedge_closed,
                         unenrolling=self.unenrolling, realising=self.realising, max_ltv=self.max_ltv,
                         tag=self.tag, closing_hedge=self.closing_hedge, realisations=self.realisations,
                         realised_btc=self.realised_btc, realised_notional=self.realised_notional,
                         hedge_paused_sent=self.hedge_paused_sent, pending=self.pending, subscribed=self.subscribed,

                         shown_facts=self._last_facts())

    def _alert(self, severity: str, kind: str, title: str, text: str, *, topic: str | None = None,
               figure: Decimal | None = None, unit: str = "", category: str = "alert") -> None:
        alert_once(self._alerted, kind, Alert(severity=severity, key=f"loan-{self.inp.loan_id}:{kind}", title=title,
                                              text=text, book=Book.LOAN.value, exposure_id=self.inp.loan_id,
                                              topic=topic, figure=figure, figure_unit=unit, category=category))

    def _show(self) -> None:
        """Search attributes when they change (LTV in half-point steps), details always."""
        ltv_shown = f"{(self.ltv * 2).to_integral_value() / 2}" if self.ltv is not None else ""
        shown = (self.band.name, self.paused, ltv_shown)
        if shown != self._shown:
            updates = [sa.RISK_STATE.value_set(self.band.name), sa.PAUSED.value_set(self.paused)]
            if self.ltv is not None:
                updates.append(sa.LTV_PCT.value_set(float(self.ltv.quantize(Decimal("0.01")))))
            if self._shown is None:
                updates += [sa.LOAN_ID.value_set(self.inp.loan_id), sa.BOOK.value_set(Book.LOAN.value),
                            sa.VENUE.value_set(self.inp.venue), sa.SYMBOL.value_set(self.inp.symbol)]
            workflow.upsert_search_attributes(updates)
            self._shown = shown
        view = self.state()
        c = self.cfg
        t = self.last_treasury
        workflow.set_current_details("\n".join([
            f"**{view.summary}**" + (" · **PAUSED**" if self.paused else "") + (" · unenrolling" if self.unenrolling else ""),
            f"- debt {view.debt_usdt:.2f} USDT · collateral {self.collateral} BTC · price {view.price} ({view.price_source})"
            + (" · **feed stale**" if self.stale else ""),
            f"- bands target {c.target} · caution {c.caution} · danger {c.danger} · critical {c.critical} "
            f"(hysteresis {c.hysteresis}); multipliers {c.multiplier_caution}/{c.multiplier_danger}/{c.multiplier_critical}",
            f"- hedge {view.hedge_id}: target {view.hedge_target_btc} · short {view.hedge_current_btc} BTC · "
            f"realised {view.hedge_realised_pnl} · unrealised {view.hedge_unrealised_pnl}"
            + (f" · realising {self.realising.qty} BTC" if self.realising else "") + (" · closed" if self.hedge_closed else ""),
            f"- treasury: reserve {self.reserve:.2f} + enrolment reserve {self.enrol_reserve:.2f} USDT; last: "
            + (f"{t.kind} {t.usdt} USDT{f' → {t.btc} BTC' if t.btc else ''} at {t.at:%H:%M:%S} ({t.note})" if t else "none")
            + (f"; hedge losses written off {self.written_off:.2f} USDT" if self.written_off else ""),
            f"- max LTV {self.max_ltv:.2f} %",
        ]))
