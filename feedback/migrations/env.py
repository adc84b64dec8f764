"""Alembic environment: runs the migrations on the connection the store hands over.

The store calls Alembic in-process (``feedback.store.migrate``) with its own engine, so the
SQLite pragmas and transaction handling are the same for migrations as for everything else.
"""

from __future__ import annotations

from alembic import context

from feedback.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
