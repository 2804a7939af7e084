"""hedge, hedge_ledger_event and hedge_sync_state

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from models.types import DecimalType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _money(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, DecimalType(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "hedge",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("book", sa.String(16), nullable=False, index=True),
        sa.Column("exposure_id", sa.String(128), nullable=False, index=True),
        sa.Column("venue", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False),
        sa.Column("symbol", sa.String(32), nullable=False),
        sa.Column("side", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        _money("target_size"),
        _money("current_size"),
        _money("notional"),
        _money("cost_basis"),
        _money("realised_pnl"),
        _money("unrealised_pnl"),
        _money("mark_price", nullable=True),
        sa.Column("opened_at", UTCDateTime(), nullable=True),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "hedge_ledger_event",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("hedge_id", sa.String(64), sa.ForeignKey("hedge.id"), nullable=False, index=True),
        sa.Column("type", sa.String(16), nullable=False),
        _money("size_delta"),
        _money("notional_delta"),
        _money("cost_basis_delta"),
        _money("realised_pnl_delta"),
        _money("margin_delta"),
        _money("price", nullable=True),
        _money("quantity", nullable=True),
        _money("fee", nullable=True),
        sa.Column("fee_asset", sa.String(16), nullable=True),
        sa.Column("venue_event_id", sa.String(128), nullable=False),
        sa.Column("venue_ts", UTCDateTime(), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("venue_payload", sa.JSON(), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "hedge_sync_state",
        sa.Column("hedge_id", sa.String(64), sa.ForeignKey("hedge.id"), primary_key=True),
        sa.Column("last_reconciled_at", UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        _money("venue_size", nullable=True),
        sa.Column("venue_snapshot", sa.JSON(), nullable=False),
        sa.Column("fills_cursor", sa.String(128), nullable=True),
        sa.Column("mismatch", sa.String(512), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("hedge_sync_state")
    op.drop_table("hedge_ledger_event")
    op.drop_table("hedge")
