"""Sessions and the signed-in annotator: health, login, logout, who am I, the guidelines."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from markdown_it import MarkdownIt

from feedback.app.deps import Credentials, Limits, Me, StoreDep
from feedback.app.schemas import ERRORS, AnnotatorOut, LoginIn, LoginOut, Message
from feedback.store import Invalid, Unauthorized

router = APIRouter(responses=ERRORS)
_markdown = MarkdownIt("commonmark", {"html": False})  # raw HTML in guidelines is shown as text


@router.get("/health", tags=["public"])
def health(store: StoreDep) -> dict[str, str]:
    return {"status": "ok", "backend": store.backend}


@router.post("/api/login", tags=["public"], responses={429: {"model": Message}})
def login(body: LoginIn, request: Request, store: StoreDep, limits: Limits) -> LoginOut:
    """A session token for name + password (12 hours), or check an API token.

    Each attempt is counted before the password is checked; past the limits for the name from this
    address, the address or the name, logins are refused with 429 and ``Retry-After`` for a while
    (:mod:`feedback.store.logins`). The address is the connection's, or the one a proxy the operator
    trusts forwarded (:func:`feedback.app.create_app`).
    """
    if body.token:
        annotator = store.authenticate(body.token)
        if annotator is None:
            raise Unauthorized("unknown or expired token")
        token = body.token
    elif body.name and body.password:
        address = request.client.host if request.client else "unknown"
        token, annotator = store.login(body.name, body.password, limits=limits, address=address)
    else:
        raise Invalid("give name and password, or token")
    return LoginOut(token=token, annotator=AnnotatorOut(id=annotator.id, name=annotator.name, role=annotator.role))


@router.post("/api/logout", tags=["annotate"])
def logout(me: Me, credentials: Credentials, store: StoreDep) -> dict[str, str]:
    """End the session this token belongs to. An API token is refused with 422: it stays valid until rotated."""
    del me
    assert credentials is not None  # `current` checked it
    store.logout(credentials.credentials)
    return {"detail": "logged out"}


@router.get("/api/me", tags=["annotate"])
def whoami(me: Me, store: StoreDep) -> dict[str, Any]:
    return {
        "annotator": AnnotatorOut(id=me.id, name=me.name, role=me.role).model_dump(),
        "progress": asdict(store.annotator_progress(me.id)),
    }


@router.get("/api/guidelines", tags=["annotate"])
def guidelines(me: Me, store: StoreDep) -> dict[str, str]:
    """The guidelines as markdown and as HTML rendered without raw HTML (safe to insert)."""
    del me
    text = store.settings().guidelines
    return {"markdown": text, "html": _markdown.render(text)}
