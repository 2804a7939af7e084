"""PriceFeedWorkflow: one per venue, symbol and shard (`feed-bybit-BTCUSDT-07`, the shard a hash of the loan id);
keeps the feed_watch activity running while any of its loans is subscribed. Loans subscribe through the
feed_subscribe activity (signal-with-start) and leave with unsubscribe; the activity reads the list through
the `subscriptions` query.

A feed that dies is not a loan that goes blind: each loan notices a silent feed itself and polls.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, CancelledError

from workflows.common import continue_as_new, continue_as_new_due

with workflow.unsafe.imports_passed_through():
    from models.loan_guard import FeedInput, FeedSubscription, FeedSubscriptions, FeedUnsubscribe, FeedWatch

IDLE_EXIT = timedelta(hours=1)  # no loan subscribed this long: the feed ends (the next subscribe restarts it)
CONTINUE_AS_NEW_AFTER = 2000
SHOW_LOANS = 20  # loan ids listed in the UI's details


@workflow.defn
class PriceFeedWorkflow:
    @workflow.init
    def __init__(self, inp: FeedInput) -> None:
        self.inp = inp
        self.subs: dict[str, FeedSubscription] = dict(inp.subscriptions)
        self.version = inp.version
        # the version each loan last subscribed or left at, since this run began (a loan not in `subs` left): an
        # asker at or after `base` gets only what changed (the activity asks every second; the whole list is
        # O(loans) each time)
        self.base = inp.version
        self.changed_at: dict[str, int] = {}

    @workflow.signal
    def subscribe(self, sub: FeedSubscription) -> None:
        if self.subs.get(sub.loan_id) != sub:
            self.subs[sub.loan_id] = sub
            self.version += 1
            self.changed_at[sub.loan_id] = self.version

    @workflow.signal
    def unsubscribe(self, req: FeedUnsubscribe) -> None:
        if self.subs.pop(req.loan_id, None) is not None:
            self.version += 1
            self.changed_at[req.loan_id] = self.version

    @workflow.query
    def subscriptions(self, known_version: int = -1) -> FeedSubscriptions:
        """The loans to watch: what changed since `known_version` when this run can tell, else all of them."""
        if known_version == self.version:
            return FeedSubscriptions(version=self.version, subscriptions=[], full=False)
        if self.base <= known_version < self.version:
            changed = [loan for loan, at in self.changed_at.items() if at > known_version]
            return FeedSubscriptions(version=self.version, full=False,
                                     subscriptions=[self.subs[loan] for loan in changed if loan in self.subs],
                                     removed=[loan for loan in changed if loan not in self.subs])
        return FeedSubscriptions(version=self.version, subscriptions=list(self.subs.values()))

    @workflow.run
    async def run(self, inp: FeedInput) -> str:
        while True:
            if self._should_continue_as_new():
                await workflow.wait_condition(workflow.all_handlers_finished)
                continue_as_new(FeedInput(venue=inp.venue, symbol=inp.symbol, shard=inp.shard,
                                                   subscriptions=self.subs, version=self.version))
            self._show()
            if not self.subs:
                try:
                    await workflow.wait_condition(lambda: bool(self.subs), timeout=IDLE_EXIT,
                                                  timeout_summary="no loan subscribed")
                except TimeoutError:
                    return f"no loan subscribed for {IDLE_EXIT}; feed stopped"
                continue
            account = sorted(self.subs.values(), key=lambda s: s.loan_id)[0].account
            watch = workflow.start_activity(
                "feed_watch", FeedWatch(venue=inp.venue, symbol=inp.symbol, account=account),
                start_to_close_timeout=timedelta(hours=2), heartbeat_timeout=timedelta(seconds=5),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=5)),
                summary=f"{inp.symbol} ticker stream")
            await workflow.wait_condition(lambda w=watch: w.done() or not self.subs or self._should_continue_as_new())
            if not watch.done():
                watch.cancel()
            try:
                await watch
            except (ActivityError, CancelledError) as err:
                workflow.logger.warning("feed %s %s stopped: %s", inp.venue, inp.symbol, err)

    def _should_continue_as_new(self) -> bool:
        return continue_as_new_due(CONTINUE_AS_NEW_AFTER)

    def _show(self) -> None:
        ids = sorted(self.subs)
        loans = ", ".join(ids[:SHOW_LOANS]) + (f" and {len(ids) - SHOW_LOANS} more" if len(ids) > SHOW_LOANS else "")
        shard = f" (shard {self.inp.shard})" if self.inp.shard is not None else ""
        workflow.set_current_details(f"**{self.inp.symbol}** on {self.inp.venue}{shard}\n"
                                     f"- {len(ids)} loans subscribed: {loans or 'none'}")
