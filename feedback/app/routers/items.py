"""Items from the queue: the next one, one handed out before (with the answer given), skipping one."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from feedback.app.deps import Me, StoreDep
from feedback.app.schemas import ERRORS, ItemOut, NextOut, PromptId

router = APIRouter(prefix="/api/items", tags=["annotate"], responses=ERRORS)


@router.get("/next")
def next_item(me: Me, store: StoreDep) -> NextOut:
    """The next item to answer (the same one until it is answered or skipped), or null when none is left."""
    view, progress = store.next_with_progress(me.id)
    return NextOut(item=ItemOut.of(view) if view else None, progress=asdict(progress))


@router.get("/{prompt_id}")
def get_item(prompt_id: PromptId, me: Me, store: StoreDep) -> ItemOut:
    """An item handed to you, with your answer if you gave one."""
    return ItemOut.of(*store.held_item(me.id, prompt_id))


@router.post("/{prompt_id}/skip")
def skip(prompt_id: PromptId, me: Me, store: StoreDep) -> dict[str, str]:
    """Discard an item handed to you: it is not offered to you again (any other item is 403, as for an answer)."""
    store.skip(me.id, prompt_id, require_assignment=True)
    return {"detail": f"prompt {prompt_id} skipped"}
