"""Reports over all annotation data: progress (overall, per annotator, per batch), records for export and agreement."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import asdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from feedback import records as r
from feedback import schema as t
from feedback.enums import AssignmentStatus, Role
from feedback.store import settings
from feedback.store.answers import content
from feedback.store.queue import lease_cutoff, open_prompts
from feedback.store.views import AnnotatorCount, AnnotatorProgress, BatchProgress, Progress, Settings


def _batches(c: Connection, answered: dict[int, int], overlap: int) -> list[BatchProgress]:
    """One line per batch in round order, then one for the prompts without a batch (if there are any)."""
    by_batch: dict[int | None, list[tuple[int, str | None, float | None]]] = defaultdict(list)
    for prompt_id, batch, selector, score in c.execute(
        sa.select(t.prompts.c.id, t.prompts.c.batch, t.prompts.c.selected_by, t.prompts.c.selection_score)
    ).tuples():
        by_batch[batch].append((prompt_id, selector, score))
    lines = []
    for batch in sorted(by_batch, key=r.batch_order):
        prompts = by_batch[batch]
        selectors = sorted({selector for _, selector, _ in prompts if selector is not None})
        scores = [score for _, _, score in prompts if score is not None]
        counts = [answered.get(prompt_id, 0) for prompt_id, _, _ in prompts]
        lines.append(
            BatchProgress(
                batch=batch,
                selected_by=", ".join(selectors) or None,
                items=len(prompts),
                complete=sum(n >= overlap for n in counts),
                answers=sum(counts),
                mean_selection_score=statistics.fmean(scores) if scores else None,
            )
        )
    return lines


def progress(c: Connection) -> Progress:
    """Items total / complete / in progress / untouched, and answers per annotator and per batch."""
    overlap = settings.read(c).overlap
    answered: dict[int, int] = dict(
        c.execute(sa.select(t.submissions.c.prompt_id, sa.func.count()).group_by(t.submissions.c.prompt_id))
        .tuples()
        .all()
    )
    total = c.execute(sa.select(sa.func.count()).select_from(t.prompts)).scalar_one()
    per_annotator = c.execute(
        sa.select(t.annotators.c.id, t.annotators.c.name, t.annotators.c.role, sa.func.count(t.submissions.c.id))
        .select_from(t.annotators.outerjoin(t.submissions, t.submissions.c.annotator_id == t.annotators.c.id))
        .group_by(t.annotators.c.id, t.annotators.c.name, t.annotators.c.role)
        .order_by(t.annotators.c.id)
    ).all()
    skipped: dict[int, int] = dict(
        c.execute(
            sa.select(t.assignments.c.annotator_id, sa.func.count())
            .where(t.assignments.c.status == AssignmentStatus.SKIPPED)
            .group_by(t.assignments.c.annotator_id)
        )
        .tuples()
        .all()
    )
    complete = sum(1 for n in answered.values() if n >= overlap)
    return Progress(
        overlap=overlap,
        items=total,
        complete=complete,
        in_progress=len(answered) - complete,
        untouched=total - len(answered),
        answers=sum(answered.values()),
        annotators=[
            AnnotatorCount(name=name, role=Role(role), answers=count, skipped=skipped.get(annotator_id, 0))
            for annotator_id, name, role, count in per_annotator
        ],
        batches=_batches(c, answered, overlap),
    )


def annotator_progress(c: Connection, annotator_id: int, current: Settings | None = None) -> AnnotatorProgress:
    """This annotator's answers so far and how many items are still open to them."""
    current = current or settings.read(c)
    done = c.execute(
        sa.select(sa.func.count()).select_from(t.submissions).where(t.submissions.c.annotator_id == annotator_id)
    ).scalar_one()
    open_items = c.execute(
        sa.select(sa.func.count())
        .select_from(t.prompts)
        .where(open_prompts(annotator_id, current, lease_cutoff(current)))
    ).scalar_one()
    held = c.execute(
        sa.select(sa.func.count())
        .select_from(t.assignments)
        .where(t.assignments.c.annotator_id == annotator_id, t.assignments.c.status == AssignmentStatus.ASSIGNED)
    ).scalar_one()
    return AnnotatorProgress(answered=done, remaining=open_items + held)


def records(c: Connection) -> list[r.Item]:
    """Every prompt with its candidates and all answers, for export and agreement (pure code)."""
    prompt_rows = c.execute(
        sa.select(
            t.prompts.c.id,
            t.prompts.c.messages,
            t.prompts.c.batch,
            t.prompts.c.selected_by,
            t.prompts.c.selection_score,
        ).order_by(t.prompts.c.id)
    ).all()
    candidates: dict[int, list[r.Candidate]] = {p.id: [] for p in prompt_rows}
    for row in c.execute(sa.select(t.candidates).order_by(t.candidates.c.id)):
        candidates[row.prompt_id].append(r.Candidate(row.id, row.text, row.model))
    subs = c.execute(
        sa.select(t.submissions, t.annotators.c.name.label("annotator"))
        .join(t.annotators, t.annotators.c.id == t.submissions.c.annotator_id)
        .order_by(t.submissions.c.created_at, t.submissions.c.id)
    ).all()
    thumbs: dict[str, dict[int, bool]] = {s.id: {} for s in subs}
    ranks: dict[str, dict[int, int]] = {s.id: {} for s in subs}
    for row in c.execute(sa.select(t.ratings)):
        thumbs[row.submission_id][row.candidate_id] = row.up
    for row in c.execute(sa.select(t.ranks)):
        ranks[row.submission_id][row.candidate_id] = row.rank
    answers: dict[int, list[r.Answer]] = {p.id: [] for p in prompt_rows}
    for s in subs:
        answers[s.prompt_id].append(r.Answer(annotator=s.annotator, **asdict(content(s, thumbs[s.id], ranks[s.id]))))
    return [
        r.Item(
            p.id,
            p.messages,
            tuple(candidates[p.id]),
            tuple(answers[p.id]),
            batch=p.batch,
            selected_by=p.selected_by,
            selection_score=p.selection_score,
        )
        for p in prompt_rows
    ]


def submission_ids(c: Connection) -> list[str]:
    """Every stored submission id (the load test counts them against what was acknowledged)."""
    return list(c.execute(sa.select(t.submissions.c.id)).scalars())
