"""The admin console's API: progress, agreement, LangSmith sync, import, export, annotators, settings.

Every endpoint needs the admin role (the router's dependency).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response

from feedback import agreement, export, importer
from feedback.app.deps import StoreDep, admin
from feedback.app.schemas import ERRORS, AnnotatorIn, ImportIn, SettingsIn
from feedback.enums import Mode

router = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(admin)], responses=ERRORS)


# -- monitoring --------------------------------------------------------------------------------


@router.get("/progress")
def progress(store: StoreDep) -> dict[str, Any]:
    return asdict(store.progress())


@router.get("/agreement")
def get_agreement(store: StoreDep) -> list[dict[str, Any]]:
    """Krippendorff's alpha per question (nominal for thumbs, ordinal for ranks)."""
    return [asdict(row) for row in agreement.agreement(store.records())]


@router.get("/sync")
def sync_status(store: StoreDep) -> dict[str, Any]:
    """LangSmith sync: answers waiting, failing (with the last error) and sent."""
    return asdict(store.sync_status())


# -- data in and out ---------------------------------------------------------------------------


@router.post("/import")
def import_items(body: ImportIn, store: StoreDep) -> dict[str, Any]:
    """Import items (prompt + candidates), all or nothing; rows as in an import JSONL file."""
    report = importer.import_rows(store, body.rows)
    return {k: v for k, v in asdict(report).items() if k != "prompt_ids"}


@router.get("/export", responses={200: {"content": {"application/zip": {}}}})
def export_zip(
    store: StoreDep,
    format: Literal["pairs", "kto", "sft"] = "pairs",
    aggregation: Literal["majority", "all"] = "majority",
    test_fraction: Annotated[float, Query(ge=0.0, lt=1.0)] = 0.1,
    seed: int = 0,
) -> Response:
    """The export folder (JSONL, Parquet, save_to_disk, export.json) as a zip archive."""
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        export.export(store, format, tmp, aggregation=aggregation, test_fraction=test_fraction, seed=seed)
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(tmp).as_posix())
    return Response(
        buffer.getvalue(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="feedback-{format}-{aggregation}.zip"'},
    )


# -- annotators and settings -------------------------------------------------------------------


@router.get("/annotators")
def list_annotators(store: StoreDep) -> list[dict[str, Any]]:
    return [asdict(a) for a in store.annotators()]


@router.post("/annotators", status_code=201)
def add_annotator(body: AnnotatorIn, store: StoreDep) -> dict[str, Any]:
    """Create an annotator; the response holds their API token, shown only this once."""
    token = store.add_annotator(body.name, body.role, password=body.password)
    return {"name": store.annotator(body.name).name, "role": body.role, "token": token}


@router.get("/settings")
def get_settings(store: StoreDep) -> dict[str, Any]:
    return {**asdict(store.settings()), "modes": list(Mode)}


@router.put("/settings")
def put_settings(body: SettingsIn, store: StoreDep) -> dict[str, Any]:
    return asdict(store.update_settings(**body.model_dump()))
