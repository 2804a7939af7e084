"""The feed shard's subscription list on the dev server: its feed activity asks once a second, so the shard
answers with what changed since the version the asker has, and the whole list only to one that has none (or
one from before a continue-as-new). At ten thousand loans whole lists each second were most of the worker's
time while loans enrolled."""

from __future__ import annotations

from decimal import Decimal as D

from temporalio.common import WorkflowIDConflictPolicy

from activities.feed import read_subscriptions
from activities.venues import ensure_paper_account
from models.loan_guard import (
    BandSettings,
    FeedInput,
    FeedSubscription,
    FeedSubscriptions,
    FeedUnsubscribe,
    feed_shard,
    feed_workflow_id,
)
from tests.loan_helpers import end_loan_workflows

SHARD = feed_shard("ROSTER-0")


def same_shard_loans(n: int) -> list[str]:
    ids = (f"ROSTER-{i}" for i in range(10_000))
    return [loan for loan in ids if feed_shard(loan) == SHARD][:n]


def sub(loan_id: str, debt: str = "24000") -> FeedSubscription:
    return FeedSubscription(loan_id=loan_id, venue="bybit", account="roster", symbol="BTCUSDT", debt=D(debt),
                            collateral_btc=D(1), bands=BandSettings(), band=0, keepalive_s=600, ltv_step_pct=D("0.25"))


async def test_the_feed_answers_what_changed_since_the_askers_version(dev_env, paper_settings, store, venues, task_queue):
    from worker import build_worker

    await ensure_paper_account(paper_settings, "bybit", "roster")  # the account whose connection carries the stream
    client = dev_env.client
    feed_id = feed_workflow_id("bybit", "BTCUSDT", SHARD)
    a, b, c, d = same_shard_loans(4)

    async def subscribe(s: FeedSubscription) -> None:  # as the feed_subscribe activity does
        await client.start_workflow("PriceFeedWorkflow", FeedInput(venue="bybit", symbol="BTCUSDT", shard=SHARD), id=feed_id,
                                    task_queue=task_queue, id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                                    start_signal="subscribe", start_signal_args=[s])

    async def ask(version: int = -1) -> FeedSubscriptions:
        return await client.get_workflow_handle(feed_id).query("subscriptions", version, result_type=FeedSubscriptions)

    async with build_worker(client, paper_settings, store, venues, task_queue=task_queue):
        try:
            for loan in (a, b, c):
                await subscribe(sub(loan))
            whole = await ask()
            assert whole.full and {s.loan_id for s in whole.subscriptions} == {a, b, c} and whole.version == 3

            same = await ask(whole.version)
            assert not same.full and same.subscriptions == [] and same.removed == [] and same.version == 3

            await subscribe(sub(b, debt="20000"))  # b repaid: it subscribes again with its new debt
            await subscribe(sub(d))
            await subscribe(sub(a))  # unchanged: no new version
            await client.get_workflow_handle(feed_id).signal("unsubscribe", FeedUnsubscribe(loan_id=c, venue="bybit",
                                                                                           symbol="BTCUSDT"))
            delta = await ask(whole.version)
            assert not delta.full and delta.version == 6
            assert {s.loan_id: s.debt for s in delta.subscriptions} == {b: D(20000), d: D(24000)}
            assert delta.removed == [c]

            since_d = await ask(5)  # an asker that saw b's change and d's arrival
            assert [s.loan_id for s in since_d.subscriptions] == [] and since_d.removed == [c]

            again = await ask()
            assert again.full and {s.loan_id for s in again.subscriptions} == {a, b, d}

            # a read the shard does not answer (here: a version it cannot parse) leaves the feed with its last list
            assert await read_subscriptions(client.get_workflow_handle(feed_id), "v6") is None  # type: ignore[arg-type]
            assert (await read_subscriptions(client.get_workflow_handle(feed_id), 5)) == since_d
        finally:
            await end_loan_workflows(client)
