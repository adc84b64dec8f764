"""The feedback store's tables (SQLAlchemy Core), the single source the Alembic migrations follow.

Design notes (why the tables look like this):

* ``submissions.id`` is the **client-supplied id** of an answer. It is the primary key, so a
  retried request can never record an answer twice, whatever the timing: the second insert fails
  on the key and the store returns the first one. ``(annotator_id, prompt_id)`` is unique too: an
  annotator answers an item once and changes that answer with an edit, never a second record.
* ``ratings`` (thumbs) and ``ranks`` hang off a submission, one row per candidate.
* ``assignments`` hold who is working on which item (``assigned``, ``submitted``, ``skipped``), so
  an item goes to exactly ``overlap`` annotators and leaves the queue when they have answered; an
  assignment older than the lease stops counting, so an abandoned browser tab frees its slot.
* ``submissions.revision`` / ``synced_revision`` are the LangSmith outbox: a rating is committed
  first and sent later, and whatever was not sent (LangSmith down, server killed) is retried
  from here.
* ``pending_runs`` is the outbox of LangSmith runs still to create: ``rlhf feedback generate
  --langsmith-project`` gives each new candidate a run id at once (stored on the candidate, in the
  same transaction as this row) and the sync creates the run later, so an outage delays runs
  instead of losing them; answers on an item wait until all its runs exist. A created run's row
  is deleted.
* ``prompts.batch`` / ``selected_by`` / ``selection_score`` record the round of iterated RLHF a
  prompt was put into, the selector that chose it (``random``, ``uncertainty``, ...) and its score
  there: which prompts the reward model was least sure of is a finding of that round, so it is kept
  with the prompt (and exported with its rows) rather than recomputed later from a changed model.
  All three are NULL for prompts imported outside the rounds; a prompt keeps its first batch.
* Tokens are stored as SHA-256 hashes (they are long random strings, so a fast hash is enough);
  passwords with scrypt.
* ``annotators.name_key`` is the name as names are compared (NFKC + case folding,
  :func:`feedback.store.names.key`), unique: ``ROOT`` and ``ｒｏｏｔ`` cannot be a second ``root``, and a
  login by either finds ``root``. It is NULL only for an account created before the key existed whose
  key an older account holds (the 0004 migration reports them); such an account logs in by its exact name.
* ``login_attempts`` counts logins per key (a name, an address, the pair; stored as SHA-256 hashes,
  since a mistyped name may be a password) in a sliding window: a row is written *before* the
  password is checked and removed only when the login succeeds (:mod:`feedback.store.logins`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from feedback.enums import AssignmentStatus, Role, TokenKind

# Named constraints, so migrations can refer to them on every backend (SQLite has no names otherwise).
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _one_of(column: str, values: type[StrEnum]) -> CheckConstraint:
    """``column IN ('a', 'b')`` from an enum, named after the column (the text the migrations hold)."""
    listed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"{column} IN ({listed})", name=column)


def _now_column(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


prompts = Table(
    "prompts",
    metadata,
    Column("id", Integer, primary_key=True),
    # sha256 of the external id (when given) or of the canonical messages: re-importing a file adds nothing.
    Column("key", String(64), nullable=False, unique=True),
    Column("external_id", String(200), nullable=True),
    Column("messages", JSON, nullable=False),
    _now_column("created_at"),
    Column("batch", Integer, CheckConstraint("batch >= 1", name="batch"), nullable=True, index=True),
    Column("selected_by", String(32), nullable=True),
    Column("selection_score", Float, nullable=True),
)

candidates = Table(
    "candidates",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("text", Text, nullable=False),
    # Identical samples are stored once: two equal responses have no preference between them.
    Column("text_hash", String(64), nullable=False),
    Column("model", String(500), nullable=True),
    Column("adapter", String(500), nullable=True),
    Column("generation", JSON, nullable=True),
    Column("langsmith_run_id", String(36), nullable=True),
    Column("langsmith_session_id", String(36), nullable=True),
    _now_column("created_at"),
    UniqueConstraint("prompt_id", "text_hash", name="uq_candidates_prompt_text"),
)

annotators = Table(
    "annotators",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(300), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    _now_column("created_at"),
    Column("name_key", String(300), nullable=True),
    _one_of("role", Role),
    Index("ix_annotators_name_key", "name_key", unique=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    _now_column("created_at"),
    _now_column("expires_at", nullable=True),
    _one_of("kind", TokenKind),
)

assignments = Table(
    "assignments",
    metadata,
    Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True),
    Column("prompt_id", Integer, ForeignKey("prompts.id", ondelete="CASCADE"), primary_key=True),
    Column("status", String(16), nullable=False),
    _now_column("assigned_at"),
    _now_column("updated_at"),
    _one_of("status", AssignmentStatus),
    Index("ix_assignments_prompt_status", "prompt_id", "status"),
)

submissions = Table(
    "submissions",
    metadata,
    Column("id", String(64), primary_key=True),  # the client-supplied id
    Column("annotator_id", Integer, ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False),
    Column("prompt_id", Integer, ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("body_hash", String(64), nullable=False),  # of the first request: a retry must carry the same body
    Column("comment", Text, nullable=True),
    Column("correction", Text, nullable=True),
    Column("corrected_candidate_id", Integer, ForeignKey("candidates.id", ondelete="SET NULL"), nullable=True),
    _now_column("created_at"),
    _now_column("updated_at"),
    Column("revision", Integer, nullable=False, default=1),
    Column("synced_revision", Integer, nullable=True),
    Column("sync_attempts", Integer, nullable=False, default=0),
    Column("sync_error", Text, nullable=True),
    _now_column("sync_after", nullable=True),
    UniqueConstraint("annotator_id", "prompt_id", name="uq_submissions_annotator_prompt"),
)

ratings = Table(
    "ratings",
    metadata,
    Column("submission_id", String(64), ForeignKey("submissions.id", ondelete="CASCADE"), primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
    Column("up", Boolean, nullable=False),
)

ranks = Table(
    "ranks",
    metadata,
    Column("submission_id", String(64), ForeignKey("submissions.id", ondelete="CASCADE"), primary_key=True),
    Column("candidate_id", Integer, ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
    Column("rank", Integer, nullable=False),
    CheckConstraint("rank >= 1", name="positive"),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", JSON, nullable=False),
)

pending_runs = Table(
    "pending_runs",
    metadata,
    Column("candidate_id", Integer, ForeignKey("candidates.id", ondelete="CASCADE"), primary_key=True),
    Column("project", String(200), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("error", Text, nullable=True),
    _now_column("retry_after", nullable=True),
)

login_attempts = Table(
    "login_attempts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(64), nullable=False),  # sha256 of "name:...", "address:..." or "pair:..."
    Column("attempt", String(32), nullable=False),  # the rows one login wrote share it
    Column("at", Float, nullable=False),  # seconds since the epoch
    Index("ix_login_attempts_key_at", "key", "at"),
    Index("ix_login_attempts_at", "at"),
)
