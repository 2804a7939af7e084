"""The store: hedges, their append-only ledger and their sync state, on SQLite or PostgreSQL.

Ingesting a venue event and moving the hedge's running figures happen in one transaction, and the
ledger's unique `input_hash` makes a fill or funding payment seen twice a no-op. On SQLite the writing
transaction takes the database lock up front (BEGIN IMMEDIATE), so two processes ingesting fills for
the same hedge cannot both read the old position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine, select

import models.migrations
from models.ledger import Hedge, HedgeLedgerEvent, HedgeStatus, HedgeSyncState
from models.loan import IntentStatus, LoanIntent
from models.venue_events import VenueEvent, VenueFill, VenueFunding, input_hash
from risk.accounting import Delta, LedgerEventType, Position, apply, fee_delta, fill_deltas, funding_delta, rebuild

MIGRATIONS = Path(models.migrations.__file__).parent


class StoreError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ingested:
    """What one ingestion call did: events written and venue events already in the ledger."""

    written: int
    duplicates: int
    fills: list[VenueFill] = field(default_factory=list)  # the fills this call wrote (not those already in)


def _now() -> datetime:
    return datetime.now(UTC)


def _position(hedge: Hedge) -> Position:
    return Position(size=hedge.current_size, cost_basis=hedge.cost_basis, realised_pnl=hedge.realised_pnl,
                    notional=hedge.notional)


def delta_of(row: HedgeLedgerEvent) -> Delta:
    return Delta(type=LedgerEventType(row.type), size=row.size_delta, notional=row.notional_delta,
                 cost_basis=row.cost_basis_delta, realised_pnl=row.realised_pnl_delta, margin=row.margin_delta)


class Store:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.is_sqlite = url.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["pool_pre_ping"] = True
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_transactions(self.engine)
        self._writer = self.engine.execution_options(hedgeguard_write=True)

    def close(self) -> None:
        self.engine.dispose()

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> str:
        """Bring the schema to the newest revision (a no-op when it is there); returns that revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self._writer.begin() as conn:
            if not self.is_sqlite:  # workers starting together migrate one at a time
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7410001)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        revision = self.schema_revision()
        assert revision is not None
        return revision

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @staticmethod
    def head_revision() -> str:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        head = ScriptDirectory.from_config(cfg).get_current_head()
        assert head is not None
        return head

    # -- sessions -------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    # -- hedges ---------------------------------------------------------------------------------
    def create_hedge(self, *, id: str, book: str, exposure_id: str, venue: str, account: str, symbol: str,
                     side: str, config: dict[str, Any] | None = None) -> Hedge:
        """Create a hedge, or return the existing one when enrolment is retried with the same identity.

        One active hedge per venue account and symbol: its fills and position are the account's, so a second
        hedge there could not tell its fills from the first one's."""
        identity = dict(book=book, exposure_id=exposure_id, venue=venue, account=account, symbol=symbol, side=side)
        with self._write() as session:
            clash = session.exec(select(Hedge.id).where(
                Hedge.venue == venue, Hedge.account == account, Hedge.symbol == symbol, Hedge.id != id,
                Hedge.status != HedgeStatus.CLOSED)).first()
            if clash is not None:
                raise StoreError(f"hedge {clash} is already active on {venue}:{account} {symbol}; one hedge per "
                                 "venue account and symbol")
            existing = session.get(Hedge, id)
            if existing is not None:
                differs = {k: (getattr(existing, k), v) for k, v in identity.items() if getattr(existing, k) != v}
                if differs or (config is not None and existing.config != config):
                    raise StoreError(f"hedge {id} already exists with different settings: {differs or 'config'}")
                return existing
            now = _now()
            hedge = Hedge(id=id, **identity, config=config or {}, state={}, created_at=now, updated_at=now)
            session.add(hedge)
        return hedge

    def get_hedge(self, hedge_id: str) -> Hedge | None:
        with self._read() as session:
            return session.get(Hedge, hedge_id)

    def list_hedges(self, *, book: str | None = None, status: str | None = None) -> list[Hedge]:
        with self._read() as session:
            query = select(Hedge).order_by(Hedge.created_at)
            if book:
                query = query.where(Hedge.book == book)
            if status:
                query = query.where(Hedge.status == status)
            return list(session.exec(query))

    def set_status(self, hedge_id: str, status: HedgeStatus, *, target_size: Decimal | None = None) -> Hedge:
        with self._write() as session:
            hedge = self._locked(session, hedge_id)
            hedge.status = status
            if target_size is not None:
                hedge.target_size = target_size
            now = _now()
            if status == HedgeStatus.CLOSED and hedge.closed_at is None:
                hedge.closed_at = now
            hedge.updated_at = now
            session.add(hedge)
        return hedge

    def mark(self, hedge_id: str, mark_price: Decimal) -> Hedge:
        """Revalue the open position at a mark price (unrealised PnL)."""
        if not isinstance(mark_price, Decimal):
            raise TypeError(f"money must be Decimal, not {type(mark_price).__name__} ({mark_price!r})")
        with self._write() as session:
            hedge = self._locked(session, hedge_id)
            hedge.mark_price = mark_price
            hedge.unrealised_pnl = _position(hedge).unrealised_pnl(mark_price)
            hedge.updated_at = _now()
            session.add(hedge)
        return hedge

    def _locked(self, session: Session, hedge_id: str) -> Hedge:
        hedge = session.exec(select(Hedge).where(Hedge.id == hedge_id).with_for_update()).first()
        if hedge is None:
            raise StoreError(f"no hedge {hedge_id}")
        return hedge

    # -- ledger ---------------------------------------------------------------------------------
    def record(self, hedge_id: str, events: Sequence[VenueEvent]) -> Ingested:
        """Append the ledger events for venue events, skipping any already recorded (by input_hash)."""
        written = duplicates = 0
        fills: list[VenueFill] = []
        with self._write() as session:
            hedge = self._locked(session, hedge_id)
            position = _position(hedge)
            for venue_event in events:
                if (venue_event.venue, venue_event.account, venue_event.symbol) != (
                        hedge.venue, hedge.account, hedge.symbol):
                    raise StoreError(
                        f"{venue_event.identity} is for {venue_event.venue}:{venue_event.account} "
                        f"{venue_event.symbol}, not hedge {hedge_id} ({hedge.venue}:{hedge.account} {hedge.symbol})")
                rows = self._rows(hedge_id, venue_event, position)
                if session.exec(select(HedgeLedgerEvent.id).where(
                        HedgeLedgerEvent.input_hash == rows[0][1].input_hash)).first() is not None:
                    duplicates += 1
                    continue
                for delta, row in rows:
                    position = apply(position, delta)
                    session.add(row)
                    written += 1
                if isinstance(venue_event, VenueFill):
                    fills.append(venue_event)
                    if hedge.opened_at is None:
                        hedge.opened_at = venue_event.ts
                session.flush()  # the unique index sees each event before the next is checked
            if written:
                hedge.current_size, hedge.cost_basis = position.size, position.cost_basis
                hedge.realised_pnl, hedge.notional = position.realised_pnl, position.notional
                if hedge.mark_price is not None:
                    hedge.unrealised_pnl = position.unrealised_pnl(hedge.mark_price)
                if hedge.status == HedgeStatus.PENDING and position.size != 0:
                    hedge.status = HedgeStatus.OPEN
                hedge.updated_at = _now()
                session.add(hedge)
        return Ingested(written=written, duplicates=duplicates, fills=fills)

    @staticmethod
    def _rows(hedge_id: str, venue_event: VenueEvent, position: Position) -> list[tuple[Delta, HedgeLedgerEvent]]:
        recorded_at = _now()
        base = input_hash(venue_event.identity)

        def row(delta: Delta, part: int, **extra: Any) -> tuple[Delta, HedgeLedgerEvent]:
            return delta, HedgeLedgerEvent(
                hedge_id=hedge_id, type=delta.type, size_delta=delta.size, notional_delta=delta.notional,
                cost_basis_delta=delta.cost_basis, realised_pnl_delta=delta.realised_pnl, margin_delta=delta.margin,
                venue_ts=venue_event.ts, recorded_at=recorded_at, venue_payload=venue_event.payload,
                input_hash=base if part == 0 else input_hash(f"{venue_event.identity}#{part}"), **extra)

        if isinstance(venue_event, VenueFunding):
            key = venue_event.funding_id or venue_event.ts.isoformat()
            return [row(funding_delta(venue_event.amount), 0, venue_event_id=key, fee_asset=None)]
        rows = [row(delta, part, venue_event_id=venue_event.fill_id, price=venue_event.price,
                    quantity=delta.size, client_order_id=venue_event.client_order_id)
                for part, delta in enumerate(fill_deltas(position, venue_event.signed_qty, venue_event.price,
                                                         liquidation=venue_event.liquidation))]
        if venue_event.fee != 0:
            rows.append(row(fee_delta(venue_event.fee), len(rows), venue_event_id=venue_event.fill_id,
                            fee=venue_event.fee, fee_asset=venue_event.fee_asset,
                            client_order_id=venue_event.client_order_id))
        return rows

    def events(self, hedge_id: str) -> list[HedgeLedgerEvent]:
        with self._read() as session:
            return list(session.exec(select(HedgeLedgerEvent).where(HedgeLedgerEvent.hedge_id == hedge_id)
                                     .order_by(HedgeLedgerEvent.id)))

    def costs(self, hedge_id: str) -> tuple[Decimal, Decimal]:
        """Fees paid and funding received (negative: paid) over the hedge's life, from its ledger."""
        with self._read() as session:
            rows = session.exec(select(HedgeLedgerEvent.type, HedgeLedgerEvent.fee, HedgeLedgerEvent.realised_pnl_delta)
                                .where(HedgeLedgerEvent.hedge_id == hedge_id,
                                       HedgeLedgerEvent.type.in_([LedgerEventType.FEE, LedgerEventType.FUNDING])))  # type: ignore[attr-defined]
            fees = funding = Decimal(0)
            for kind, fee, delta in rows:
                if kind == LedgerEventType.FEE:
                    fees += fee or 0
                else:
                    funding += delta
        return fees, funding

    def filled_by_order(self, hedge_id: str, client_order_id: str) -> Decimal:
        """How much of one of our orders the ledger has seen filled."""
        with self._read() as session:
            rows = session.exec(select(HedgeLedgerEvent).where(
                HedgeLedgerEvent.hedge_id == hedge_id, HedgeLedgerEvent.client_order_id == client_order_id,
                HedgeLedgerEvent.type != "FEE"))
            return sum((abs(r.size_delta) for r in rows), Decimal(0))

    def rebuild(self, hedge_id: str) -> Position:
        """A hedge's size, cost basis, notional and realised PnL from its ledger events alone."""
        return rebuild([delta_of(row) for row in self.events(hedge_id)])

    def verify(self, hedge_id: str) -> list[str]:
        """Differences between the hedge's running figures and its ledger rebuild; empty when they agree."""
        hedge = self.get_hedge(hedge_id)
        if hedge is None:
            raise StoreError(f"no hedge {hedge_id}")
        rebuilt, kept = self.rebuild(hedge_id), _position(hedge)
        return [f"{name}: kept {getattr(kept, name)} but ledger rebuilds {getattr(rebuilt, name)}"
                for name in ("size", "cost_basis", "realised_pnl", "notional")
                if getattr(kept, name) != getattr(rebuilt, name)]

    # -- sync state -----------------------------------------------------------------------------
    def record_sync(self, hedge_id: str, *, source: str, venue_size: Decimal | None, snapshot: dict[str, Any],
                    fills_cursor: str | None = None, mismatch: str | None = None) -> HedgeSyncState:
        with self._write() as session:
            self._locked(session, hedge_id)
            sync = session.get(HedgeSyncState, hedge_id) or HedgeSyncState(
                hedge_id=hedge_id, last_reconciled_at=_now(), source=source)
            sync.last_reconciled_at, sync.source = _now(), source
            sync.venue_size, sync.venue_snapshot, sync.mismatch = venue_size, snapshot, mismatch
            if fills_cursor is not None:
                sync.fills_cursor = fills_cursor
            session.add(sync)
        return sync

    def sync_state(self, hedge_id: str) -> HedgeSyncState | None:
        with self._read() as session:
            return session.get(HedgeSyncState, hedge_id)


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, issue BEGIN, so writers can take the lock first (BEGIN IMMEDIATE)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        immediate = conn.get_execution_options().get("hedgeguard_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class LoanIntents:
    """Loan repayment and collateral intents (see models.loan). Shares the store's engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, key: str) -> LoanIntent | None:
        with self.store._read() as session:
            return session.get(LoanIntent, key)

    def create(self, *, key: str, venue: str, account: str, kind: str, currency: str, amount: Decimal,
               before: dict[str, Any]) -> LoanIntent:
        """Write the intent, or return the one already written under this key (it must say the same)."""
        with self.store._write() as session:
            existing = session.get(LoanIntent, key)
            if existing is not None:
                if (existing.venue, existing.account, existing.kind, existing.amount) != (venue, account, kind, amount):
                    raise StoreError(f"loan intent {key} exists for {existing.kind} {existing.amount} on "
                                     f"{existing.venue}:{existing.account}, not {kind} {amount} on {venue}:{account}")
                return existing
            now = _now()
            intent = LoanIntent(key=key, venue=venue, account=account, kind=kind, currency=currency, amount=amount,
                                before=before, created_at=now, updated_at=now)
            session.add(intent)
        return intent

    def finish(self, key: str, *, status: IntentStatus, venue_ref: str | None = None, error: str | None = None) -> LoanIntent:
        """Record the outcome. A venue record already claimed by another intent is refused (the same
        transaction checks and claims, and a unique index backs it)."""
        with self.store._write() as session:
            intent = session.get(LoanIntent, key)
            if intent is None:
                raise StoreError(f"no loan intent {key}")
            if venue_ref is not None:
                holder = session.exec(select(LoanIntent.key).where(
                    LoanIntent.venue == intent.venue, LoanIntent.account == intent.account,
                    LoanIntent.kind == intent.kind, LoanIntent.venue_ref == venue_ref, LoanIntent.key != key)).first()
                if holder is not None:
                    raise StoreError(f"venue record {venue_ref} already belongs to loan intent {holder}")
            intent.status, intent.venue_ref, intent.error = status, venue_ref, error
            intent.updated_at = _now()
            session.add(intent)
        return intent

    def claimed_refs(self, venue: str, account: str, kind: str) -> set[str]:
        with self.store._read() as session:
            rows = session.exec(select(LoanIntent.venue_ref).where(
                LoanIntent.venue == venue, LoanIntent.account == account, LoanIntent.kind == kind,
                LoanIntent.status == IntentStatus.DONE))
            return {r for r in rows if r}
