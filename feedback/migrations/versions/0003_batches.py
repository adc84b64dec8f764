"""Annotation batches: the round of iterated RLHF each prompt was put into, its selector and its score.

Revision ID: 0003
Revises: 0002

Plain ``ADD COLUMN`` on both backends (the check on ``batch`` is part of the column), so SQLite's
copy-and-move batch mode is not needed: with foreign keys on, dropping the old ``prompts`` table
would cascade to every candidate and answer.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    positive = sa.CheckConstraint("batch >= 1", name=op.f("ck_prompts_batch"))
    op.add_column("prompts", sa.Column("batch", sa.Integer(), positive, nullable=True))
    op.add_column("prompts", sa.Column("selected_by", sa.String(length=32), nullable=True))
    op.add_column("prompts", sa.Column("selection_score", sa.Float(), nullable=True))
    op.create_index("ix_prompts_batch", "prompts", ["batch"])


def downgrade() -> None:
    op.drop_index("ix_prompts_batch", table_name="prompts")
    op.drop_column("prompts", "selection_score")
    op.drop_column("prompts", "selected_by")
    op.drop_column("prompts", "batch")
