"""loan_intent: one venue record belongs to at most one intent

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("uq_loan_intent_venue_ref", "loan_intent", ["venue", "account", "kind", "venue_ref"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_loan_intent_venue_ref", table_name="loan_intent")
