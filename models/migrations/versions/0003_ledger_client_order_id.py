"""hedge_ledger_event.client_order_id: which of our orders produced a fill

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hedge_ledger_event") as batch:
        batch.add_column(sa.Column("client_order_id", sa.String(64), nullable=True))
        batch.create_index("ix_hedge_ledger_event_client_order_id", ["client_order_id"])


def downgrade() -> None:
    with op.batch_alter_table("hedge_ledger_event") as batch:
        batch.drop_index("ix_hedge_ledger_event_client_order_id")
        batch.drop_column("client_order_id")
