"""The two pages: static shells whose data all comes from the API (not in the OpenAPI document)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent.parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def annotate_page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


@router.get("/admin")
def admin_page() -> FileResponse:
    return FileResponse(STATIC / "admin.html")
