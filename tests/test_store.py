"""The store keeps money exact, the ledger append-only, and enrolment retries harmless."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlmodel import Session, select

from activities.store import Store, StoreError
from models.ledger import HedgeLedgerEvent, HedgeStatus, LedgerImmutableError
from models.venue_events import VenueFill, VenueFunding

TS = datetime(2022, 11, 9, 21, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Store:
    """Every store test runs on both backends the schema promises."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        admin = Store(url)
        with admin.engine.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        admin.close()
    store = Store(url)
    store.migrate()
    yield store
    store.close()


def fill(fill_id: str, side: str, qty: str, price: str, fee: str = "0", **kw) -> VenueFill:
    return VenueFill(venue="bybit", account="desk", symbol="BTCUSDT", fill_id=fill_id, side=side, qty=D(qty),
                     price=D(price), fee=D(fee), ts=TS, **kw)


@pytest.fixture
def hedge(store: Store) -> str:
    store.create_hedge(id="loan-L-1", book="loan", exposure_id="L-1", venue="bybit", account="desk",
                       symbol="BTCUSDT", side="short", config={"band": "CAUTION"})
    return "loan-L-1"


def test_migration_is_idempotent_and_at_head(store: Store):
    assert store.migrate() == Store.head_revision() == store.schema_revision()


def test_amounts_round_trip_exactly(store: Store, hedge: str):
    qty, price, fee = "0.00000001", "123456789.12345678", "0.000000000000000001"
    store.record(hedge, [fill("a", "sell", qty, price, fee=fee)])
    (open_event, fee_event) = store.events(hedge)
    assert open_event.quantity == D("-" + qty) and open_event.price == D(price)
    assert open_event.cost_basis_delta == D("-1.2345678912345678")
    assert fee_event.fee == D(fee)
    assert store.get_hedge(hedge).current_size == D("-" + qty)


def test_more_decimals_than_the_schema_keeps_is_refused_not_rounded(store: Store, hedge: str):
    with pytest.raises(Exception, match="more than 18 decimal places"):
        store.record(hedge, [fill("a", "sell", "0.000000000000000001", "60000.5")])
    assert store.events(hedge) == []


def test_float_money_is_refused(store: Store, hedge: str):
    with pytest.raises(Exception, match="must be Decimal, not float"):
        store.mark(hedge, 61234.5)  # type: ignore[arg-type]


def test_same_fill_seen_twice_is_stored_once(store: Store, hedge: str):
    first = store.record(hedge, [fill("e1", "sell", "0.5", "60000", fee="1.65")])
    again = store.record(hedge, [fill("e1", "sell", "0.5", "60000", fee="1.65")])
    assert (first.written, first.duplicates) == (2, 0)  # OPEN + FEE
    assert (again.written, again.duplicates) == (0, 1)
    hedge_row = store.get_hedge(hedge)
    assert hedge_row.current_size == D("-0.5") and hedge_row.realised_pnl == D("-1.65")
    assert hedge_row.status == HedgeStatus.OPEN and hedge_row.opened_at == TS


def test_funding_and_mark(store: Store, hedge: str):
    store.record(hedge, [fill("e1", "sell", "1", "60000"),
                         VenueFunding(venue="bybit", account="desk", symbol="BTCUSDT", amount=D("6.0"), ts=TS)])
    marked = store.mark(hedge, D("57000"))
    assert marked.unrealised_pnl == D("3000") and marked.realised_pnl == D("6.0")
    assert [e.type for e in store.events(hedge)] == ["OPEN", "FUNDING"]


def test_event_for_another_account_is_refused_and_nothing_written(store: Store, hedge: str):
    other = VenueFill(venue="bybit", account="someone-else", symbol="BTCUSDT", fill_id="z", side="sell",
                      qty=D(1), price=D(1), ts=TS)
    with pytest.raises(StoreError, match="not hedge loan-L-1"):
        store.record(hedge, [fill("ok", "sell", "1", "60000"), other])
    assert store.events(hedge) == [] and store.get_hedge(hedge).current_size == 0


def test_ledger_rows_cannot_be_changed_or_deleted(store: Store, hedge: str):
    store.record(hedge, [fill("e1", "sell", "1", "60000")])
    with Session(store.engine) as session:
        row = session.exec(select(HedgeLedgerEvent)).one()
        row.size_delta = D(5)
        session.add(row)
        with pytest.raises(LedgerImmutableError):
            session.commit()
    with Session(store.engine) as session:
        session.delete(session.exec(select(HedgeLedgerEvent)).one())
        with pytest.raises(LedgerImmutableError):
            session.commit()
    assert store.verify(hedge) == []


def test_enrolment_retry_returns_the_hedge_and_a_conflict_is_refused(store: Store, hedge: str):
    again = store.create_hedge(id=hedge, book="loan", exposure_id="L-1", venue="bybit", account="desk",
                               symbol="BTCUSDT", side="short", config={"band": "CAUTION"})
    assert again.id == hedge
    with pytest.raises(StoreError, match="different settings"):
        store.create_hedge(id=hedge, book="loan", exposure_id="L-1", venue="bybit", account="desk",
                           symbol="BTCUSDT", side="long")


def test_concurrent_ingestion_loses_no_update(store: Store, hedge: str):
    """Two writers appending fills to one hedge at once: the running figures still add up."""
    def writer(prefix: str, side: str) -> None:
        for i in range(15):
            store.record(hedge, [fill(f"{prefix}{i}", side, "0.01", str(60000 + i))])

    threads = [threading.Thread(target=writer, args=("s", "sell")), threading.Thread(target=writer, args=("b", "buy")),
               threading.Thread(target=writer, args=("t", "sell"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_hedge(hedge).current_size == D("-0.15")
    assert len(store.events(hedge)) >= 45 and store.verify(hedge) == []


def test_verify_reports_a_tampered_running_figure(store: Store, hedge: str):
    store.record(hedge, [fill("e1", "sell", "1", "60000")])
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE hedge SET current_size = '-2' WHERE id = 'loan-L-1'")
    assert store.verify(hedge) == ["size: kept -2 but ledger rebuilds -1"]


def test_closing_records_the_close_time(store: Store, hedge: str):
    store.record(hedge, [fill("e1", "sell", "1", "60000"), fill("e2", "buy", "1", "59000")])
    closed = store.set_status(hedge, HedgeStatus.CLOSED)
    assert closed.closed_at is not None and closed.current_size == 0 and closed.realised_pnl == D(1000)
