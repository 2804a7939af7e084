"""Alembic environment: runs the versioned schema steps on the connection the store hands over."""

from alembic import context
from sqlalchemy import create_engine

import models.loan  # noqa: F401  (registers loan_intent in the metadata)
from models.ledger import SQLModel

target_metadata = SQLModel.metadata
config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic` CLI use: the URL comes from the config
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
