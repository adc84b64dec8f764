"""What endpoints depend on (FastAPI ``Depends``): the store, the answer hook, the login limits, the current
annotator, the admin check.

The store, the hook and the limits live in ``app.state`` (set by :func:`feedback.app.create_app`), so routers
are plain module-level objects. Module level also because FastAPI resolves these annotations by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from feedback.store import Annotator, Forbidden, LoginLimits, Store, Unauthorized


def get_store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def get_on_answer(request: Request) -> Callable[[], None]:
    """Called after an answer is stored or edited (wakes the LangSmith sync)."""
    on_answer: Callable[[], None] = request.app.state.on_answer
    return on_answer


def get_login_limits(request: Request) -> LoginLimits:
    limits: LoginLimits = request.app.state.login_limits
    return limits


StoreDep = Annotated[Store, Depends(get_store)]
Limits = Annotated[LoginLimits, Depends(get_login_limits)]
OnAnswer = Annotated[Callable[[], None], Depends(get_on_answer)]
bearer = HTTPBearer(auto_error=False, description="an annotator's API token or a session token from /api/login")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def current(store: StoreDep, credentials: Credentials) -> Annotator:
    """The annotator the bearer token belongs to (401 otherwise)."""
    if credentials is None:
        raise Unauthorized("missing Authorization: Bearer <token> header; log in first")
    annotator = store.authenticate(credentials.credentials)
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
