"""loan_intent: repayments and collateral moves recorded before they are sent

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from models.types import DecimalType, UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "loan_intent",
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("venue", sa.String(32), nullable=False),
        sa.Column("account", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("currency", sa.String(16), nullable=False),
        sa.Column("amount", DecimalType(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("venue_ref", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(512), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("loan_intent")
