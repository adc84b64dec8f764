"""The feedback web app: a REST API (OpenAPI at ``/openapi.json``) and two pages that use only that API.

Every endpoint but ``POST /api/login`` and ``GET /health`` needs ``Authorization: Bearer <token>``:
an annotator's API token, or the session token ``/api/login`` returns for a name and password.
Annotators get items, answer them, and see and change only their own answers; admins also
import, watch progress and agreement, manage annotators and settings, and export.

One router per resource (:mod:`feedback.app.routers`: session, items, answers, admin, pages), the
bodies in :mod:`feedback.app.schemas`, what endpoints depend on (store, current annotator, admin
check) in :mod:`feedback.app.deps`. The app calls only :class:`feedback.store.Store` (and the
pure export/agreement code on its records). Endpoints are plain functions, so FastAPI runs them
in its thread pool and the store's blocking database calls never stall the event loop.

Bad input is always a 4xx with a message a person can act on, never a 500, and changes nothing:
invalid JSON is 400, a body over the size limit 413, schema errors 422 naming the field (ids past
the database's 32-bit integers, booleans as ids or counts, text holding NUL characters or code
points UTF-8 cannot encode included: they are refused before they reach the database, alike on both
backends), unknown ids 404 (another annotator's answer is reported as not found too), a missing or
bad token 401, the wrong role 403, an item not handed to you 403 (whether it exists or not), too many
failed logins 429 with ``Retry-After``, 409 for a client
id reused with another body, a second answer to an item, an edit based on a stale revision, a late
answer to an item others completed meanwhile, or a constraint a concurrent request hit first; a busy
database 503 (:mod:`feedback.app.errors`). A row stored before these checks whose JSON holds such
code points is served with them escaped (``rlhf feedback doctor`` lists those rows).

Model output is untrusted: the pages insert it with ``textContent`` only, and a strict Content
Security Policy (no inline script, no inline handlers) backs that up (:mod:`feedback.app.guard`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from feedback.app import errors
from feedback.app.guard import MAX_BODY_BYTES, Guard
from feedback.app.routers import admin, answers, items, pages, session
from feedback.store import LoginLimits, Store


def _nothing() -> None:
    pass


def create_app(
    store: Store,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    on_answer: Callable[[], None] | None = None,
    login_limits: LoginLimits | None = None,
    trusted_proxies: Sequence[str] = (),
) -> FastAPI:
    """The web app over a store. ``on_answer`` is called after an answer is stored (wakes the LangSmith sync);
    ``login_limits`` limit failed logins (:class:`~feedback.store.LoginLimits`: by default 5 per name from one
    address, 50 per address, 20 per name, in 5 minutes).

    The client address those limits count is the connection's. ``X-Forwarded-For`` is believed only
    from ``trusted_proxies`` (addresses or networks the operator names: ``serve --trusted-proxies``),
    and the client is then the last address in it that is not a trusted proxy; by default no one is
    trusted, so a local process cannot pose as other addresses to dodge the per-address limit. Behind a
    reverse proxy that is not trusted every client shares the proxy's address.
    """
    app = FastAPI(
        title="rlhf feedback",
        version="1",
        description="Annotators rate and rank model responses; admins import, monitor and export.",
        docs_url=None,  # the interactive docs page loads scripts from a CDN, which the CSP (rightly) blocks
        redoc_url=None,
    )
    app.add_middleware(Guard, max_body_bytes=max_body_bytes)
    if trusted_proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(trusted_proxies))
    app.state.store = store
    app.state.on_answer = on_answer or _nothing
    app.state.login_limits = login_limits or LoginLimits()
    errors.install(app)
    for router in (session.router, items.router, answers.router, admin.router, pages.router):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=pages.STATIC), name="static")
    return app


__all__ = ["MAX_BODY_BYTES", "create_app"]
