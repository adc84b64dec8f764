"""Names compared by one key (NFKC + case folding), and login attempts counted in the database.

Revision ID: 0004
Revises: 0003

``annotators.name_key`` is filled from each stored name (:func:`feedback.store.names.key`) and made
unique. Accounts created before it may share a key (``root`` and ``ROOT``) or a look (``rооt`` with
Cyrillic o), or hold characters names may no longer hold (a newline, a bidi override): nothing is
changed or deleted for them. The oldest account keeps a shared key; a later one keeps its name, its
answers and its tokens, with no key (it logs in by its exact name). Each such account is reported
here, as a warning, and by ``rlhf feedback doctor`` until it is renamed or deactivated.

Plain ``ADD COLUMN`` and ``CREATE INDEX`` on both backends: SQLite's copy-and-move batch mode would
drop the old ``annotators`` table, and with foreign keys on that cascades to every token and answer.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from feedback.store import names

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

logger = logging.getLogger("feedback.migrations")


def upgrade() -> None:
    op.add_column("annotators", sa.Column("name_key", sa.String(length=300), nullable=True))
    connection = op.get_bind()
    annotators = sa.table("annotators", sa.column("id", sa.Integer), sa.column("name"), sa.column("name_key"))
    existing = dict(connection.execute(sa.select(annotators.c.id, annotators.c.name).order_by("id")).tuples().all())
    taken: set[str] = set()
    for annotator_id, name in existing.items():
        key = names.key(name)
        if key in taken or len(key) > names.MAX_KEY_CHARS:
            continue  # a later account with an older one's key: no key, reported below
        taken.add(key)
        connection.execute(sa.update(annotators).where(annotators.c.id == annotator_id).values(name_key=key))
    op.create_index("ix_annotators_name_key", "annotators", ["name_key"], unique=True)
    for line in names.collisions(existing):
        logger.warning("%s", line)

    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.String(length=32), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_attempts")),
    )
    op.create_index("ix_login_attempts_key_at", "login_attempts", ["key", "at"])
    op.create_index("ix_login_attempts_at", "login_attempts", ["at"])


def downgrade() -> None:
    op.drop_index("ix_login_attempts_at", table_name="login_attempts")
    op.drop_index("ix_login_attempts_key_at", table_name="login_attempts")
    op.drop_table("login_attempts")
    op.drop_index("ix_annotators_name_key", table_name="annotators")
    op.drop_column("annotators", "name_key")
