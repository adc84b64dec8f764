"""The feedback web app: a REST API (OpenAPI at ``/openapi.json``) and two pages that use only that API.

Every endpoint but ``POST /api/login`` and ``GET /health`` needs ``Authorization: Bearer <token>``:
an annotator's API token, or the session token ``/api/login`` returns for a name and password.
Annotators get items, answer them, and see and change only their own answers; admins also
import, watch progress and agreement, manage annotators and settings, and export.

The app calls only :class:`feedback.store.Store` (and the pure export/agreement code on its
records). Endpoints are plain functions, so FastAPI runs them in its thread pool and the store's
blocking database calls never stall the event loop.

Bad input is always a 4xx with a message a person can act on, never a 500, and changes nothing:
invalid JSON is 400, a body over the size limit 413, schema errors 422 naming the field (ids past
the database's 32-bit integers and text holding NUL characters included: PostgreSQL cannot store
them, so they are refused before they reach it, alike on both backends), unknown ids 404 (another
annotator's answer is reported as not found too), a missing or bad token 401, the wrong role 403,
409 for a client id reused with another body, a second answer to an item, an edit based on a stale
revision, a late answer to an item others completed meanwhile, or a constraint a concurrent request
hit first; a busy database 503.

Model output is untrusted: the pages insert it with ``textContent`` only, and a strict Content
Security Policy (no inline script, no inline handlers) backs that up.
"""

from __future__ import annotations

import io
import logging
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from markdown_it import MarkdownIt
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from feedback import agreement, export, importer
from feedback.store import (
    MAX_TEXT,
    MODES,
    Annotator,
    AnswerView,
    Conflict,
    Forbidden,
    Invalid,
    ItemView,
    NotFound,
    Store,
    StoreError,
    Unauthorized,
)

logger = logging.getLogger(__name__)

STATIC = FilePath(__file__).parent / "static"
MAX_BODY_BYTES = 1 << 20  # 1 MiB: an answer is a few kB; imports of more go through the CLI
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
STATUS = {NotFound: 404, Conflict: 409, Invalid: 422, Forbidden: 403, Unauthorized: 401}
_markdown = MarkdownIt("commonmark", {"html": False})  # raw HTML in guidelines is shown as text
# Ids are INTEGER columns (32-bit on PostgreSQL): a larger number cannot name anything, and sent
# to PostgreSQL it fails as "integer out of range" (a 500), so the schema refuses it up front.
MAX_ID = 2**31 - 1


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters (the driver refuses them with an error that would
    # be a 500); SQLite would store them. Refusing them here makes both backends answer alike.
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]
PromptId = Annotated[int, Path(ge=1, le=MAX_ID, description="a prompt (item) id")]
AnswerId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$", description="an answer's client id")
]


# ----------------------------------------------------------------------------------------------
# Request and response bodies (they make the OpenAPI document)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(Strict):
    name: Text | None = Field(None, max_length=100, description="annotator name (with password)")
    password: Text | None = Field(None, max_length=500)
    token: Text | None = Field(None, max_length=200, description="an API token instead of name and password")


class Thumb(Strict):
    candidate_id: DbId
    up: bool = Field(description="true: thumbs up, false: thumbs down")


class Rank(Strict):
    candidate_id: DbId
    rank: int = Field(ge=1, le=1000, description="1 is best; equal ranks are ties")


class AnswerBody(Strict):
    thumbs: list[Thumb] = Field(default_factory=list, max_length=1000)
    ranking: list[Rank] = Field(default_factory=list, max_length=1000)
    comment: Text | None = Field(None, max_length=MAX_TEXT)
    correction: Text | None = Field(
        None, max_length=MAX_TEXT, description="a better response, written by the annotator"
    )
    corrected_candidate_id: DbId | None = Field(None, description="the response the correction edits, if any")


class AnswerIn(AnswerBody):
    client_id: str = Field(
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="chosen by the client (a UUID): a retried request with the same id is recorded once",
    )
    prompt_id: DbId


class AnswerEditIn(AnswerBody):
    revision: int | None = Field(
        None,
        ge=1,
        le=MAX_ID,
        description="the revision this edit is based on: a stale one is refused with 409 (no lost updates)",
    )


class SettingsIn(Strict):
    overlap: int | None = Field(None, ge=1, le=10_000, description="annotators per item")
    mode: Literal["ranking", "thumbs"] | None = None
    lease_minutes: int | None = Field(None, ge=1, le=10_000)
    guidelines: Text | None = Field(None, max_length=MAX_TEXT, description="markdown")


class AnnotatorIn(Strict):
    name: Text = Field(min_length=1, max_length=100)
    role: Literal["admin", "annotator"] = "annotator"
    password: Text | None = Field(None, min_length=8, max_length=500)


class ImportIn(Strict):
    rows: list[dict[str, Any]] = Field(max_length=10_000, description="items as in an import JSONL file")


class AnnotatorOut(BaseModel):
    id: int
    name: str
    role: str


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


class ItemOut(BaseModel):
    prompt_id: int
    messages: list[dict[str, str]]
    candidates: list[Candidate] = Field(description="in a random order per annotator; models are not shown")
    mode: str
    answer: AnswerOut | None = None


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


# ----------------------------------------------------------------------------------------------
# Conversions


def _answer_out(view: AnswerView) -> AnswerOut:
    return AnswerOut(
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


def _item_out(view: ItemView, answer: AnswerView | None = None) -> ItemOut:
    return ItemOut(
        prompt_id=view.prompt_id,
        messages=view.messages,
        candidates=[Candidate(**c) for c in view.candidates],
        mode=view.mode,
        answer=_answer_out(answer) if answer is not None else None,
    )


def _unique(pairs: list[tuple[int, Any]], name: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for candidate_id, value in pairs:
        if candidate_id in out:
            raise Invalid(f"{name}: candidate {candidate_id} appears more than once")
        out[candidate_id] = value
    return out


def _answer_fields(body: AnswerBody) -> dict[str, Any]:
    return {
        "thumbs": _unique([(t.candidate_id, t.up) for t in body.thumbs], "thumbs"),
        "ranks": _unique([(r.candidate_id, r.rank) for r in body.ranking], "ranking"),
        "comment": body.comment,
        "correction": body.correction,
        "corrected_candidate_id": body.corrected_candidate_id,
    }


def _validation_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


# ----------------------------------------------------------------------------------------------
# Body size limit and security headers (pure ASGI, so it costs nothing per request)


class Guard:
    """Refuse bodies over ``max_body_bytes`` with 413 (declared or streamed) and add security headers."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # a chunked body with no Content-Length
                    raise HTTPException(413, f"request body over {limit} bytes")
            return message

        async def secured_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, limited_receive, secured_send)


# ----------------------------------------------------------------------------------------------
# Authentication (module level: FastAPI resolves these annotations by name)

bearer = HTTPBearer(auto_error=False, description="an annotator's API token or a session token from /api/login")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def current(request: Request, credentials: Credentials) -> Annotator:
    """The annotator the bearer token belongs to (401 otherwise)."""
    if credentials is None:
        raise Unauthorized("missing Authorization: Bearer <token> header; log in first")
    annotator = request.app.state.store.authenticate(credentials.credentials)
    if annotator is None:
        raise Unauthorized("unknown or expired token; log in again")
    return annotator


def admin(annotator: Annotated[Annotator, Depends(current)]) -> Annotator:
    """The current annotator, if an admin (403 otherwise)."""
    if not annotator.is_admin:
        raise Forbidden("this needs the admin role")
    return annotator


Me = Annotated[Annotator, Depends(current)]
Admin = Annotated[Annotator, Depends(admin)]


# ----------------------------------------------------------------------------------------------
# The app


def create_app(
    store: Store, *, max_body_bytes: int = MAX_BODY_BYTES, on_answer: Callable[[], None] | None = None
) -> FastAPI:
    """The web app over a store. ``on_answer`` is called after an answer is stored (wakes the LangSmith sync)."""
    app = FastAPI(
        title="rlhf feedback",
        version="1",
        description="Annotators rate and rank model responses; admins import, monitor and export.",
        docs_url=None,  # the interactive docs page loads scripts from a CDN, which the CSP (rightly) blocks
        redoc_url=None,
    )
    app.add_middleware(Guard, max_body_bytes=max_body_bytes)
    app.state.store = store
    notify = on_answer or (lambda: None)

    # -- errors --------------------------------------------------------------------------------

    @app.exception_handler(StoreError)
    def store_error(_: Request, error: StoreError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        return JSONResponse({"detail": str(error)}, status_code=STATUS.get(type(error), 400), headers=headers)

    @app.exception_handler(RequestValidationError)
    def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        errors = error.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            context = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
            return JSONResponse(
                {"detail": f"request body is not valid JSON ({context.get('error', 'cannot parse')})"}, status_code=400
            )
        messages = "; ".join(_validation_message(e) for e in errors[:5])
        return JSONResponse({"detail": f"invalid request: {messages}"}, status_code=422)

    @app.exception_handler(IntegrityError)
    def integrity_error(_: Request, error: IntegrityError) -> JSONResponse:
        # The store checks what it can before writing; a constraint that still fires is a concurrent
        # request that won a race (a duplicate key, a row deleted meanwhile): a conflict, not a crash.
        logger.info("constraint violated: %s", error.orig)
        return JSONResponse(
            {"detail": "the request conflicts with data stored meanwhile; reload and try again"}, status_code=409
        )

    @app.exception_handler(DataError)
    def data_error(_: Request, error: DataError) -> JSONResponse:
        # A value the database cannot hold that slipped past the schema (a number out of range, a
        # NUL byte in text): the transaction rolled back, so nothing changed.
        logger.info("value refused by the database: %s", error.orig)
        return JSONResponse({"detail": f"a value cannot be stored: {error.orig}".strip()}, status_code=422)

    @app.exception_handler(OperationalError)
    def database_busy(_: Request, error: OperationalError) -> JSONResponse:
        logger.warning("database unavailable: %s", error.orig)
        return JSONResponse(
            {"detail": "the database is busy or unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": "1"},
        )

    # -- public ------------------------------------------------------------------------------------

    @app.get("/health", tags=["public"])
    def health() -> dict[str, str]:
        return {"status": "ok", "backend": store.backend}

    @app.post("/api/login", tags=["public"], responses=ERRORS)
    def login(body: LoginIn) -> LoginOut:
        """A session token for name + password (12 hours), or check an API token."""
        if body.token:
            annotator = store.authenticate(body.token)
            if annotator is None:
                raise Unauthorized("unknown or expired token")
            token = body.token
        elif body.name and body.password:
            token, annotator = store.login(body.name, body.password)
        else:
            raise Invalid("give name and password, or token")
        return LoginOut(token=token, annotator=AnnotatorOut(id=annotator.id, name=annotator.name, role=annotator.role))

    # -- annotators ----------------------------------------------------------------------------------

    @app.post("/api/logout", tags=["annotate"], responses=ERRORS)
    def logout(me: Me, credentials: Credentials) -> dict[str, str]:
        del me
        assert credentials is not None  # `current` checked it
        store.logout(credentials.credentials)
        return {"detail": "logged out"}

    @app.get("/api/me", tags=["annotate"], responses=ERRORS)
    def whoami(me: Me) -> dict[str, Any]:
        return {
            "annotator": AnnotatorOut(id=me.id, name=me.name, role=me.role).model_dump(),
            "progress": store.annotator_progress(me.id),
        }

    @app.get("/api/guidelines", tags=["annotate"], responses=ERRORS)
    def guidelines(me: Me) -> dict[str, str]:
        """The guidelines as markdown and as HTML rendered without raw HTML (safe to insert)."""
        del me
        text = store.settings().guidelines
        return {"markdown": text, "html": _markdown.render(text)}

    @app.get("/api/items/next", tags=["annotate"], responses=ERRORS)
    def next_item(me: Me) -> NextOut:
        """The next item to answer (the same one until it is answered or skipped), or null when none is left."""
        view = store.next_item(me.id)
        return NextOut(item=_item_out(view) if view else None, progress=store.annotator_progress(me.id))

    @app.get("/api/items/{prompt_id}", tags=["annotate"], responses=ERRORS)
    def get_item(prompt_id: PromptId, me: Me) -> ItemOut:
        """An item handed to you, with your answer if you gave one."""
        view, answer = store.held_item(me.id, prompt_id)
        return _item_out(view, answer)

    @app.post("/api/items/{prompt_id}/skip", tags=["annotate"], responses=ERRORS)
    def skip(prompt_id: PromptId, me: Me) -> dict[str, str]:
        """Discard an item: it is not offered to you again."""
        store.skip(me.id, prompt_id)
        return {"detail": f"prompt {prompt_id} skipped"}

    @app.post("/api/answers", tags=["annotate"], status_code=201, responses={**ERRORS, 200: {"model": ReceiptOut}})
    def submit(body: AnswerIn, me: Me, response: Response) -> ReceiptOut:
        """Record an answer once per client_id: a retry returns 200 with the first receipt."""
        fields = _answer_fields(body)
        receipt = store.submit(me.id, body.prompt_id, client_id=body.client_id, require_assignment=True, **fields)
        if receipt.created:
            notify()
        else:
            response.status_code = 200
        return ReceiptOut(**asdict(receipt))

    @app.get("/api/answers", tags=["annotate"], responses=ERRORS)
    def my_answers(
        me: Me, limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0
    ) -> list[AnswerOut]:
        """Your answers, newest first."""
        return [_answer_out(a) for a in store.answers(me.id, limit=limit, offset=offset)]

    @app.get("/api/answers/{answer_id}", tags=["annotate"], responses=ERRORS)
    def my_answer(answer_id: AnswerId, me: Me) -> AnswerOut:
        return _answer_out(store.answer(me.id, answer_id))

    @app.put("/api/answers/{answer_id}", tags=["annotate"], responses=ERRORS)
    def edit_answer(answer_id: AnswerId, body: AnswerEditIn, me: Me) -> ReceiptOut:
        """Replace one of your answers (the same edit twice changes nothing; a stale revision is 409)."""
        receipt = store.edit(me.id, answer_id, expected_revision=body.revision, **_answer_fields(body))
        notify()  # a no-op edit makes the sync pass find nothing to send
        return ReceiptOut(**asdict(receipt))

    # -- admins -----------------------------------------------------------------------------------------

    @app.get("/api/admin/progress", tags=["admin"], responses=ERRORS)
    def progress(me: Admin) -> dict[str, Any]:
        del me
        return store.progress()

    @app.get("/api/admin/agreement", tags=["admin"], responses=ERRORS)
    def get_agreement(me: Admin) -> list[dict[str, Any]]:
        """Krippendorff's alpha per question (nominal for thumbs, ordinal for ranks)."""
        del me
        return [asdict(row) for row in agreement.agreement(store.records())]

    @app.post("/api/admin/import", tags=["admin"], responses=ERRORS)
    def import_items(body: ImportIn, me: Admin) -> dict[str, Any]:
        """Import items (prompt + candidates), all or nothing; rows as in an import JSONL file."""
        del me
        report = importer.import_rows(store, body.rows)
        return {k: v for k, v in asdict(report).items() if k != "prompt_ids"}

    @app.get("/api/admin/export", tags=["admin"], responses={**ERRORS, 200: {"content": {"application/zip": {}}}})
    def export_zip(
        me: Admin,
        format: Literal["pairs", "kto", "sft"] = "pairs",
        aggregation: Literal["majority", "all"] = "majority",
        test_fraction: Annotated[float, Query(ge=0.0, lt=1.0)] = 0.1,
        seed: int = 0,
    ) -> Response:
        """The export folder (JSONL, Parquet, save_to_disk, export.json) as a zip archive."""
        del me
        buffer = io.BytesIO()
        with tempfile.TemporaryDirectory() as tmp:
            export.export(store, format, tmp, aggregation=aggregation, test_fraction=test_fraction, seed=seed)
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for path in sorted(FilePath(tmp).rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(tmp).as_posix())
        return Response(
            buffer.getvalue(),
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="feedback-{format}-{aggregation}.zip"'},
        )

    @app.get("/api/admin/annotators", tags=["admin"], responses=ERRORS)
    def list_annotators(me: Admin) -> list[dict[str, Any]]:
        del me
        return [asdict(a) for a in store.annotators()]

    @app.post("/api/admin/annotators", tags=["admin"], status_code=201, responses=ERRORS)
    def add_annotator(body: AnnotatorIn, me: Admin) -> dict[str, Any]:
        """Create an annotator; the response holds their API token, shown only this once."""
        del me
        token = store.add_annotator(body.name, body.role, password=body.password)
        return {"name": body.name, "role": body.role, "token": token}

    @app.get("/api/admin/settings", tags=["admin"], responses=ERRORS)
    def get_settings(me: Admin) -> dict[str, Any]:
        del me
        return {**asdict(store.settings()), "modes": list(MODES)}

    @app.put("/api/admin/settings", tags=["admin"], responses=ERRORS)
    def put_settings(body: SettingsIn, me: Admin) -> dict[str, Any]:
        del me
        return asdict(store.update_settings(**body.model_dump()))

    @app.get("/api/admin/sync", tags=["admin"], responses=ERRORS)
    def sync_status(me: Admin) -> dict[str, Any]:
        """LangSmith sync: answers waiting, failing (with the last error) and sent."""
        del me
        return store.sync_status()

    # -- pages (static shells; all data comes from the API above) -----------------------------------------

    @app.get("/", include_in_schema=False)
    def annotate_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/admin", include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(STATIC / "admin.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
