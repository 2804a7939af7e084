"""Property: for any stream of venue events, with duplicates and in any arrival order, the figures the
store keeps incrementally equal the rebuild from the ledger alone, every event is stored once, and size
and all-in PnL at a mark do not depend on the order the events arrived in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities.store import Store
from models.venue_events import VenueFill, VenueFunding

T0 = datetime(2020, 3, 12, tzinfo=UTC)
_ids = itertools.count()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> Store:
    store = Store(f"sqlite:///{Path(tmp_path_factory.mktemp('prop')) / 'ledger.db'}")
    store.migrate()
    return store


qty = st.integers(1, 2000).map(lambda n: D(n) / 1000)  # 0.001 .. 2 BTC
price = st.integers(100_000, 10_000_000).map(lambda n: D(n) / 100)  # 1,000.00 .. 100,000.00
fee = st.integers(-50, 500).map(lambda n: D(n) / 100)


@st.composite
def venue_events(draw):
    n = draw(st.integers(1, 25))
    events = []
    for i in range(n):
        ts = T0 + timedelta(minutes=i)
        if draw(st.integers(0, 5)) == 0:
            events.append(VenueFunding(venue="bybit", account="acct", symbol="BTCUSDT", ts=ts, funding_id=f"f{i}",
                                       amount=draw(st.integers(-1000, 1000).map(lambda n: D(n) / 100))))
        else:
            events.append(VenueFill(venue="bybit", account="acct", symbol="BTCUSDT", fill_id=f"x{i}", ts=ts,
                                    side=draw(st.sampled_from(["buy", "sell"])), qty=draw(qty), price=draw(price),
                                    fee=draw(fee), liquidation=draw(st.integers(0, 20)) == 0))
    # arrival: every event at least once, some twice or three times, in any order
    arrival = draw(st.permutations(events + draw(st.lists(st.sampled_from(events), max_size=n))))
    batches = draw(st.lists(st.integers(1, 6), min_size=len(arrival), max_size=len(arrival)))
    return events, arrival, batches


def ingest(store: Store, arrival, batches) -> str:
    """A fresh hedge on a fresh account (venue event identities are per account, as at the venue)."""
    hedge_id = f"h{next(_ids)}"
    store.create_hedge(id=hedge_id, book="loan", exposure_id="L-1", venue="bybit", account=hedge_id,
                       symbol="BTCUSDT", side="short")
    arrival = [e.model_copy(update={"account": hedge_id}) for e in arrival]
    i = 0
    for size in batches:
        if i >= len(arrival):
            break
        store.record(hedge_id, arrival[i:i + size])
        i += size
    return hedge_id


def all_in_pnl(store: Store, hedge_id: str, mark: D) -> D:
    hedge = store.get_hedge(hedge_id)
    return hedge.realised_pnl + store.rebuild(hedge_id).unrealised_pnl(mark)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=venue_events(), mark=price)
def test_rebuild_equals_incremental_for_any_arrival(shared_store: Store, case, mark):
    events, arrival, batches = case
    hedge_id = ingest(shared_store, arrival, batches)

    assert shared_store.verify(hedge_id) == []

    stored_ids = {e.venue_event_id for e in shared_store.events(hedge_id)}
    expected_ids = {e.fill_id if isinstance(e, VenueFill) else e.funding_id for e in events}
    assert stored_ids == expected_ids  # each venue event once, none lost

    fills = [e for e in events if isinstance(e, VenueFill)]
    fundings = [e for e in events if isinstance(e, VenueFunding)]
    hedge = shared_store.get_hedge(hedge_id)
    assert hedge.current_size == sum((f.signed_qty for f in fills), D(0))
    expected_pnl = (sum(((mark - f.price) * f.signed_qty - f.fee for f in fills), D(0))
                    + sum((f.amount for f in fundings), D(0)))
    assert all_in_pnl(shared_store, hedge_id, mark) == expected_pnl

    in_venue_order = ingest(shared_store, events, [len(events)])
    assert shared_store.get_hedge(in_venue_order).current_size == hedge.current_size
    assert all_in_pnl(shared_store, in_venue_order, mark) == expected_pnl
