"""Initial schema: prompts, candidates, annotators, tokens, assignments, submissions, ratings, ranks, settings.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "annotators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=300), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'annotator')", name=op.f("ck_annotators_role")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotators")),
        sa.UniqueConstraint("name", name=op.f("uq_annotators_name")),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("key", name=op.f("uq_prompts_key")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "assignments",
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('assigned', 'submitted', 'skipped')", name=op.f("ck_assignments_status")),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_assignments_annotator_id_annotators"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_assignments_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("annotator_id", "prompt_id", name=op.f("pk_assignments")),
    )
    op.create_index("ix_assignments_prompt_status", "assignments", ["prompt_id", "status"])
    op.create_table(
        "candidates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=500), nullable=True),
        sa.Column("adapter", sa.String(length=500), nullable=True),
        sa.Column("generation", sa.JSON(), nullable=True),
        sa.Column("langsmith_run_id", sa.String(length=36), nullable=True),
        sa.Column("langsmith_session_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_candidates_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidates")),
        sa.UniqueConstraint("prompt_id", "text_hash", name="uq_candidates_prompt_text"),
    )
    op.create_index("ix_candidates_prompt_id", "candidates", ["prompt_id"])
    op.create_table(
        "tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('api', 'session')", name=op.f("ck_tokens_kind")),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_tokens_annotator_id_annotators"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_tokens")),
    )
    op.create_index("ix_tokens_annotator_id", "tokens", ["annotator_id"])
    op.create_table(
        "submissions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("body_hash", sa.String(length=64), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("correction", sa.Text(), nullable=True),
        sa.Column("corrected_candidate_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("synced_revision", sa.Integer(), nullable=True),
        sa.Column("sync_attempts", sa.Integer(), nullable=False),
        sa.Column("sync_error", sa.Text(), nullable=True),
        sa.Column("sync_after", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["annotator_id"], ["annotators.id"], name=op.f("fk_submissions_annotator_id_annotators"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["corrected_candidate_id"],
            ["candidates.id"],
            name=op.f("fk_submissions_corrected_candidate_id_candidates"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["prompt_id"], ["prompts.id"], name=op.f("fk_submissions_prompt_id_prompts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_submissions")),
        sa.UniqueConstraint("annotator_id", "prompt_id", name="uq_submissions_annotator_prompt"),
    )
    op.create_index("ix_submissions_prompt_id", "submissions", ["prompt_id"])
    op.create_table(
        "ranks",
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.CheckConstraint("rank >= 1", name=op.f("ck_ranks_positive")),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_ranks_candidate_id_candidates"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submissions.id"], name=op.f("fk_ranks_submission_id_submissions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("submission_id", "candidate_id", name=op.f("pk_ranks")),
    )
    op.create_table(
        "ratings",
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["candidates.id"], name=op.f("fk_ratings_candidate_id_candidates"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"], ["submissions.id"], name=op.f("fk_ratings_submission_id_submissions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("submission_id", "candidate_id", name=op.f("pk_ratings")),
    )


def downgrade() -> None:
    op.drop_table("ratings")
    op.drop_table("ranks")
    op.drop_index("ix_submissions_prompt_id", table_name="submissions")
    op.drop_table("submissions")
    op.drop_index("ix_tokens_annotator_id", table_name="tokens")
    op.drop_table("tokens")
    op.drop_index("ix_candidates_prompt_id", table_name="candidates")
    op.drop_table("candidates")
    op.drop_index("ix_assignments_prompt_status", table_name="assignments")
    op.drop_table("assignments")
    op.drop_table("settings")
    op.drop_table("prompts")
    op.drop_table("annotators")
