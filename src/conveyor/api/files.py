"""File uploads (email attachments): POST /api/v1/files, owner-scoped, size-bounded."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, File, HTTPException, UploadFile, status
from starlette.concurrency import run_in_threadpool

from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.schemas import Problem
from conveyor.core.filenames import display_name
from conveyor.core.settings import get_settings
from conveyor.core.storage import get_storage
from conveyor.workloads.email.files import store_file
from conveyor.workloads.email.models import StoredFile
from conveyor.workloads.email.schemas import FileOut

router = APIRouter(prefix="/api/v1/files", tags=["files"], route_class=IdempotentRoute)
_CONTENT_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")


def _out(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id,
        "filename": stored.filename,
        "content_type": stored.content_type,
        "size": stored.size,
    }


@router.post(
    "",
    response_model=FileOut,
    status_code=status.HTTP_201_CREATED,
    responses={413: {"model": Problem}, 422: {"model": Problem}},
    summary="Upload a file (for email attachments)",
)
async def upload_file(
    file: Annotated[UploadFile, File(description="The file, as multipart field `file`.")],
    caller: CallerDep,
    session: SessionDep,
) -> dict[str, Any]:
    settings = get_settings()
    limit = settings.file_max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"file: larger than {limit} bytes")
    content_type = (file.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not _CONTENT_TYPE.fullmatch(content_type):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"file: content type {content_type!r} is invalid"
        )
    stored = await run_in_threadpool(
        store_file,
        session,
        get_storage(settings),
        owner=caller.owner,
        filename=display_name(file.filename, default="attachment"),
        content_type=content_type,
        data=data,
    )
    session.commit()
    return _out(stored)


@router.get("/{file_id}", response_model=FileOut, responses={404: {"model": Problem}})
def get_file(file_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    stored = session.get(StoredFile, file_id)
    if stored is None or (caller.scope is not None and stored.owner != caller.scope):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "file not found")
    return _out(stored)
