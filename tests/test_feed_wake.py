"""When the price feed wakes a loan, and which feed shard a loan belongs to. A loan no longer re-subscribes when
only its band moved, so the feed must anchor band hysteresis on the band it last told the loan."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal as D

from activities.feed import Sent, apply_subscriptions, wake_due
from models.loan_guard import FEED_SHARDS, BandSettings, FeedSubscription, FeedSubscriptions, feed_shard, feed_workflow_id
from risk.loan import Band


def sub(band: Band = Band.SAFE, debt: str = "24000", loan_id: str = "L-1") -> FeedSubscription:
    return FeedSubscription(loan_id=loan_id, venue="bybit", account="a", symbol="BTCUSDT", debt=D(debt),
                            collateral_btc=D(1), bands=BandSettings(), band=int(band), keepalive_s=10,
                            ltv_step_pct=D("0.25"))


def tick(price: str):
    from models.loan_guard import PriceTick

    return PriceTick(last=D(price), index=D(price), mark=D(price), at=datetime(2026, 1, 1, tzinfo=UTC))


def test_a_band_crossing_wakes_the_loan_and_a_quiet_price_does_not():
    s = sub()
    due, band, ltv = wake_due(s, tick("52700"), Sent(band=Band.SAFE, ltv=D("40"), at=100.0), now=101.0)
    assert due and band == Band.CAUTION and ltv > 45
    quiet = Sent(band=Band.CAUTION, ltv=ltv, at=101.0)
    assert wake_due(s, tick("52690"), quiet, now=102.0)[0] is False
    assert wake_due(s, tick("52690"), quiet, now=111.5)[0] is True  # the keep-alive


def test_hysteresis_anchors_on_the_band_last_told_not_the_stale_subscription():
    # the loan subscribed in SAFE and was told CAUTION; a small dip back under caution stays CAUTION
    s = sub(Band.SAFE)
    told = Sent(band=Band.CAUTION, ltv=D("45.5"), at=100.0)
    price_just_under_caution = "53400"  # LTV ~44.9 %: under 45, above 45 minus the hysteresis
    due, band, _ = wake_due(s, tick(price_just_under_caution), told, now=100.5)
    assert band == Band.CAUTION and due is True  # due only because the LTV moved more than its step
    # anchored on the stale subscription instead, the feed would have called it SAFE
    assert wake_due(s, tick(price_just_under_caution), None, now=100.5)[1] == Band.SAFE


def test_a_new_subscription_resets_the_anchor_and_a_gone_loan_is_forgotten():
    subs = {"L-1": sub(Band.SAFE), "L-2": sub(loan_id="L-2")}
    sent = {"L-1": Sent(band=Band.CAUTION, ltv=D("45.5"), at=1.0), "L-2": Sent(band=Band.SAFE, ltv=D(40), at=1.0)}
    repaid = sub(Band.SAFE, debt="20000")  # a treasury repay: the loan says where it stands now
    apply_subscriptions(subs, FeedSubscriptions(version=3, subscriptions=[repaid]), sent)  # a whole list
    assert subs == {"L-1": repaid}
    assert sent["L-1"].band == Band.SAFE and "L-2" not in sent


def test_a_new_stream_attempt_keeps_what_the_loans_were_told_and_forgets_the_loans_gone():
    """The worker keeps each shard's marks across stream attempts: a restart does not wake every guard again."""
    sent = {"L-1": Sent(band=Band.SAFE, ltv=D(40), at=1.0), "L-2": Sent(band=Band.SAFE, ltv=D(40), at=1.0)}
    subs: dict = {}  # a new attempt starts with no list and reads the whole of it
    apply_subscriptions(subs, FeedSubscriptions(version=9, subscriptions=[sub(Band.SAFE)]), sent)
    assert list(subs) == ["L-1"] and list(sent) == ["L-1"]  # L-2 left while no attempt was listening
    due, band, _ = wake_due(subs["L-1"], tick("60000"), sent["L-1"], now=2.0)
    assert (due, band) == (False, Band.SAFE)  # told a moment ago, nothing moved: no signal


def test_a_delta_patches_the_list_and_leaves_the_unchanged_loans_and_their_anchors_alone():
    subs = {f"L-{i}": sub(loan_id=f"L-{i}") for i in range(1, 4)}
    sent = {loan: Sent(band=Band.CAUTION, ltv=D("45.5"), at=1.0) for loan in subs}
    repaid, new = sub(Band.SAFE, debt="20000", loan_id="L-2"), sub(loan_id="L-9")
    apply_subscriptions(subs, FeedSubscriptions(version=7, subscriptions=[repaid, new], full=False, removed=["L-3"]), sent)
    assert subs == {"L-1": sub(loan_id="L-1"), "L-2": repaid, "L-9": new}
    assert sent["L-1"].band == Band.CAUTION  # not in the delta: still anchored where the feed told it
    assert sent["L-2"].band == Band.SAFE and "L-3" not in sent and "L-9" not in sent


def test_a_loan_always_lands_on_the_same_shard_and_loans_spread_over_all():
    assert feed_shard("L-1") == feed_shard("L-1")
    shards = [feed_shard(f"LAT-{i:05d}") for i in range(2000)]
    counts = [shards.count(k) for k in range(FEED_SHARDS)]
    assert min(counts) > 2000 / FEED_SHARDS / 2  # no shard left empty or carrying double its share
    assert max(counts) < 2000 / FEED_SHARDS * 2
    assert feed_workflow_id("bybit", "BTCUSDT", 7) == "feed-bybit-BTCUSDT-07"


def test_keep_alives_of_loans_woken_together_drift_apart():
    from activities.feed import keepalive_spread

    spreads = {keepalive_spread(f"LAT-{i:05d}") for i in range(1000)}
    assert all(0.8 <= s <= 1.0 for s in spreads) and len(spreads) > 100
    told = Sent(band=Band.SAFE, ltv=D(40), at=0.0)
    due_at_55 = [wake_due(sub(loan_id=f"LAT-{i:05d}").model_copy(update={"keepalive_s": 60}), tick("60000"), told,
                          now=55.0)[0] for i in range(1000)]
    assert 0 < sum(due_at_55) < 1000  # some are due at 55 s of 60, not all in the same second
