"""Errors as responses: a 4xx with a message a person can act on, never a 500 (a busy database is 503)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, IntegrityError, OperationalError

from feedback.store import Conflict, Forbidden, Invalid, NotFound, StoreError, TooManyAttempts, Unauthorized

logger = logging.getLogger(__name__)

STATUS = {NotFound: 404, Conflict: 409, Invalid: 422, Forbidden: 403, Unauthorized: 401, TooManyAttempts: 429}


def _validation_message(error: dict[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
    return f"{where}: {error.get('msg', 'invalid')}"


def store_error(_: Request, error: StoreError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
    if isinstance(error, TooManyAttempts):
        headers = {"Retry-After": str(error.retry_after)}
    return JSONResponse({"detail": str(error)}, status_code=STATUS.get(type(error), 400), headers=headers)


def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
    errors = error.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        context = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {})
        return JSONResponse(
            {"detail": f"request body is not valid JSON ({context.get('error', 'cannot parse')})"}, status_code=400
        )
    messages = "; ".join(_validation_message(e) for e in errors[:5])
    return JSONResponse({"detail": f"invalid request: {messages}"}, status_code=422)


def integrity_error(_: Request, error: IntegrityError) -> JSONResponse:
    # The store checks what it can before writing; a constraint that still fires is a concurrent
    # request that won a race (a duplicate key, a row deleted meanwhile): a conflict, not a crash.
    logger.info("constraint violated: %s", error.orig)
    return JSONResponse(
        {"detail": "the request conflicts with data stored meanwhile; reload and try again"}, status_code=409
    )


def data_error(_: Request, error: DataError) -> JSONResponse:
    # A value the database cannot hold that slipped past the schema (a number out of range, a
    # NUL byte in text): the transaction rolled back, so nothing changed.
    logger.info("value refused by the database: %s", error.orig)
    return JSONResponse({"detail": f"a value cannot be stored: {error.orig}".strip()}, status_code=422)


def database_busy(_: Request, error: OperationalError) -> JSONResponse:
    logger.warning("database unavailable: %s", error.orig)
    return JSONResponse(
        {"detail": "the database is busy or unavailable; retry shortly"}, status_code=503, headers={"Retry-After": "1"}
    )


HANDLERS: dict[type[Exception], Callable[..., JSONResponse]] = {
    StoreError: store_error,
    RequestValidationError: validation_error,
    IntegrityError: integrity_error,
    DataError: data_error,
    OperationalError: database_busy,
}


def install(app: FastAPI) -> None:
    """Register the handlers: store refusals, bad requests, and database errors that reach the app."""
    for kind, handler in HANDLERS.items():
        app.exception_handler(kind)(handler)
