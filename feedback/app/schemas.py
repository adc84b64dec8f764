"""The API's request and response bodies (they make the OpenAPI document), and their conversions from store views.

Ids are INTEGER columns (32-bit on PostgreSQL): a larger number cannot name anything, and sent
to PostgreSQL it fails as "integer out of range" (a 500), so the schema refuses it up front. Ids
and counts are strict integers: JSON ``true`` is not the id 1, nor ``"2"`` the count 2. Text is
refused when it holds NUL or code points UTF-8 cannot encode (lone surrogates such as
``\\ud800``), before anything reaches the store.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictInt

from feedback.enums import Mode, Role
from feedback.store import MAX_INTEGER, MAX_TEXT, AnswerView, Invalid, ItemView, unencodable

MAX_ID = MAX_INTEGER


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters (the driver refuses them with an error that would
    # be a 500); SQLite would store them. Refusing them here makes both backends answer alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    problem = unencodable(value)
    if problem is not None:
        raise ValueError(f"{problem} (a lone surrogate); send valid Unicode text")
    return value


Text = Annotated[str, AfterValidator(_storable)]
DbId = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
Count = Annotated[StrictInt, Field(ge=1, le=10_000)]
PromptId = Annotated[int, Path(ge=1, le=MAX_ID, description="a prompt (item) id")]
AnswerId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$", description="an answer's client id")
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    name: Text | None = Field(None, max_length=100, description="annotator name (with password)")
    password: Text | None = Field(None, max_length=500)
    token: Text | None = Field(None, max_length=200, description="an API token instead of name and password")


class Thumb(Strict):
    candidate_id: DbId
    up: StrictBool = Field(description="true: thumbs up, false: thumbs down")


class Rank(Strict):
    candidate_id: DbId
    rank: StrictInt = Field(ge=1, le=1000, description="1 is best; equal ranks are ties")


def _unique(pairs: list[tuple[int, Any]], name: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for candidate_id, value in pairs:
        if candidate_id in out:
            raise Invalid(f"{name}: candidate {candidate_id} appears more than once")
        out[candidate_id] = value
    return out


class AnswerBody(Strict):
    thumbs: list[Thumb] = Field(default_factory=list, max_length=1000)
    ranking: list[Rank] = Field(default_factory=list, max_length=1000)
    comment: Text | None = Field(None, max_length=MAX_TEXT)
    correction: Text | None = Field(
        None, max_length=MAX_TEXT, description="a better response, written by the annotator"
    )
    corrected_candidate_id: DbId | None = Field(None, description="the response the correction edits, if any")

    def store_fields(self) -> dict[str, Any]:
        """The answer as the store's ``submit`` / ``edit`` keyword arguments (a candidate twice is 422)."""
        return {
            "thumbs": _unique([(t.candidate_id, t.up) for t in self.thumbs], "thumbs"),
            "ranks": _unique([(r.candidate_id, r.rank) for r in self.ranking], "ranking"),
            "comment": self.comment,
            "correction": self.correction,
            "corrected_candidate_id": self.corrected_candidate_id,
        }


class AnswerIn(AnswerBody):
    client_id: Text = Field(
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="chosen by the client (a UUID): a retried request with the same id is recorded once",
    )
    prompt_id: DbId


class AnswerEditIn(AnswerBody):
    revision: StrictInt | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="the revision this edit is based on: a stale one is refused with 409 (no lost updates)",
    )


class SettingsIn(Strict):
    overlap: Count | None = Field(None, description="annotators per item")
    mode: Mode | None = None
    lease_minutes: Count | None = None
    guidelines: Text | None = Field(None, max_length=MAX_TEXT, description="markdown")


class AnnotatorIn(Strict):
    name: Text = Field(min_length=1, max_length=100)
    role: Role = Role.ANNOTATOR
    password: Text | None = Field(None, min_length=8, max_length=500)


class ImportIn(Strict):
    rows: list[dict[str, Any]] = Field(max_length=10_000, description="items as in an import JSONL file")


class AnnotatorOut(BaseModel):
    id: int
    name: str
    role: Role


class LoginOut(BaseModel):
    token: str
    annotator: AnnotatorOut


class Candidate(BaseModel):
    id: int
    text: str


class AnswerOut(AnswerBody):
    model_config = ConfigDict(extra="ignore")
    id: str
    prompt_id: int
    revision: int
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, view: AnswerView) -> AnswerOut:
        return cls(
            id=view.id,
            prompt_id=view.prompt_id,
            revision=view.revision,
            created_at=view.created_at.isoformat(),
            updated_at=view.updated_at.isoformat(),
            thumbs=[Thumb(candidate_id=c, up=u) for c, u in sorted(view.thumbs.items())],
            ranking=[Rank(candidate_id=c, rank=r) for c, r in sorted(view.ranks.items())],
            comment=view.comment,
            correction=view.correction,
            corrected_candidate_id=view.corrected_candidate_id,
        )


class ItemOut(BaseModel):
    prompt_id: int
    messages: list[dict[str, str]]
    candidates: list[Candidate] = Field(description="in a random order per annotator; models are not shown")
    mode: Mode
    batch: int | None = Field(
        None, description="the annotation round the item belongs to (null: none); its selector is not shown"
    )
    answer: AnswerOut | None = None

    @classmethod
    def of(cls, view: ItemView, answer: AnswerView | None = None) -> ItemOut:
        return cls(
            prompt_id=view.prompt_id,
            messages=view.messages,
            candidates=[Candidate(**c) for c in view.candidates],
            mode=view.mode,
            batch=view.batch,
            answer=AnswerOut.of(answer) if answer is not None else None,
        )


class NextOut(BaseModel):
    item: ItemOut | None
    progress: dict[str, int]


class ReceiptOut(BaseModel):
    id: str
    prompt_id: int
    created: bool = Field(description="false when this request repeated one already recorded")
    revision: int


class Message(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Message} for code in (400, 401, 403, 404, 409, 413, 422, 503)
}
