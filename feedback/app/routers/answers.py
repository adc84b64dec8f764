"""An annotator's own answers: submit (idempotent on the client id), list, read, edit (compare-and-set)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Response

from feedback.app.deps import Me, OnAnswer, StoreDep
from feedback.app.schemas import ERRORS, MAX_ID, AnswerEditIn, AnswerId, AnswerIn, AnswerOut, ReceiptOut

router = APIRouter(prefix="/api/answers", tags=["annotate"], responses=ERRORS)


@router.post("", status_code=201, responses={200: {"model": ReceiptOut}})
def submit(body: AnswerIn, me: Me, response: Response, store: StoreDep, on_answer: OnAnswer) -> ReceiptOut:
    """Record an answer once per client_id: a retry returns 200 with the first receipt."""
    receipt = store.submit(
        me.id,
        body.prompt_id,
        client_id=body.client_id,
        require_assignment=True,
        enforce_mode=True,
        **body.store_fields(),
    )
    if receipt.created:
        on_answer()
    else:
        response.status_code = 200
    return ReceiptOut(**asdict(receipt))


@router.get("")
def my_answers(
    me: Me,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
) -> list[AnswerOut]:
    """Your answers, newest first."""
    return [AnswerOut.of(a) for a in store.answers(me.id, limit=limit, offset=offset)]


@router.get("/{answer_id}")
def my_answer(answer_id: AnswerId, me: Me, store: StoreDep) -> AnswerOut:
    return AnswerOut.of(store.answer(me.id, answer_id))


@router.put("/{answer_id}")
def edit_answer(answer_id: AnswerId, body: AnswerEditIn, me: Me, store: StoreDep, on_answer: OnAnswer) -> ReceiptOut:
    """Replace one of your answers (the same edit twice changes nothing; a stale revision is 409)."""
    receipt = store.edit(me.id, answer_id, expected_revision=body.revision, enforce_mode=True, **body.store_fields())
    on_answer()  # a no-op edit makes the sync pass find nothing to send
    return ReceiptOut(**asdict(receipt))
