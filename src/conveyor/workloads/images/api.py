"""HTTP routes of the images workload: upload, status, variant files, retry."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from conveyor.api.deps import CallerDep, SessionDep
from conveyor.api.idempotency import IdempotentRoute
from conveyor.api.schemas import Problem
from conveyor.api.urls import path_to, public_base_url
from conveyor.core import ledger
from conveyor.core.filenames import display_name
from conveyor.core.models import Job
from conveyor.core.redaction import safe_url
from conveyor.core.settings import Settings, get_settings, section
from conveyor.core.storage import NotFound, Storage, get_storage
from conveyor.workloads.images import pipeline, service, vips
from conveyor.workloads.images.fetch import check_url
from conveyor.workloads.images.models import Image, VariantStatus
from conveyor.workloads.images.presets import DEFAULT_PRESET, EXTENSIONS, MEDIA_TYPES
from conveyor.workloads.images.settings import ImagesSettings
from conveyor.workloads.images.validation import RejectedImage, inspect_upload

router = APIRouter(prefix="/api/v1/images", tags=["images"], route_class=IdempotentRoute)
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such image (or variant) visible to this key."}
}
FORMAT_OF_EXTENSION = {extension: fmt for fmt, extension in EXTENSIONS.items()}


class ImageAccepted(BaseModel):
    id: str
    job_id: str
    status: str
    url: str


class VariantOut(BaseModel):
    name: str
    format: str
    width: int | None
    height: int | None
    bytes: int | None
    status: str
    url: str | None


class VariantProgress(BaseModel):
    name: str
    status: str
    attempts: int
    error: str | None
    job_id: str | None


class ImageOut(BaseModel):
    id: str
    job_id: str | None
    status: str
    preset: str
    filename: str | None
    source_url: str | None
    source_format: str | None
    width: int | None
    height: int | None
    error: str | None
    progress: dict[str, Any]
    variants: list[VariantOut]
    variant_progress: list[VariantProgress]
    manifest: dict[str, Any] | None
    created_at: str | None


def _not_found(what: str = "image") -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} not found")


@router.post(
    "",
    response_model=ImageAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        413: {"model": Problem, "description": "Over CONVEYOR_IMAGE_MAX_UPLOAD_BYTES."},
        415: {"model": Problem, "description": "Not JPEG, PNG, WebP or AVIF."},
        422: {"model": Problem, "description": "Corrupt, too many pixels, or a bad field."},
    },
    summary="Upload an image (or a URL to fetch) and make its variants",
    description=(
        "Multipart form: `file` (the image) or `url`, and optionally `preset` (default "
        "`default`). A file's type is read from the content; dimensions are checked from "
        "the header before decoding, then it is decoded to the end. A `url` is checked "
        "against the SSRF guard here and fetched by a worker (status `fetching`), whose "
        "first step puts the bytes through the same checks before any variant is made. "
        "Answers 202 with the image id and the pipeline's job id; follow it at "
        "`/api/v1/jobs/{job_id}/events`."
    ),
)
def upload_image(
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    file: Annotated[UploadFile | None, File(description="The image.")] = None,
    url: Annotated[str | None, Form(max_length=2048, description="Or a URL to fetch.")] = None,
    preset: Annotated[str | None, Form(max_length=40)] = None,
) -> dict[str, Any]:
    images = section(ImagesSettings)
    preset_name = preset or DEFAULT_PRESET
    chosen = service.presets(images).get(preset_name)
    if chosen is None:
        known = ", ".join(sorted(service.presets(images)))
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"preset: unknown preset {preset_name!r}; configured presets: {known}",
        )
    if (file is None) == (url is None):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, "file: send exactly one of `file` or `url`"
        )
    if url is not None:
        # A slow server must hold a worker (one per owner at a time), never an API thread.
        try:
            check_url(url)
        except RejectedImage as exc:
            raise HTTPException(exc.status, exc.message) from None
        image = service.create_image_from_url(
            session, owner=caller.owner, preset_name=preset_name, preset=chosen, url=url
        )
        return _start(request, session, image, [variant.name for variant in image.variants])
    assert file is not None
    vips.configure(images.image_vips_concurrency, tune_malloc=images.image_tune_malloc)
    limits = service.limits(images)
    data = file.file.read(limits.max_bytes + 1)
    filename = display_name(file.filename)
    try:
        inspected = inspect_upload(data, limits, filename=filename, content_type=file.content_type)
    except RejectedImage as exc:
        raise HTTPException(exc.status, exc.message) from None
    image = service.create_image(
        session,
        get_storage(get_settings()),
        owner=caller.owner,
        preset_name=preset_name,
        preset=chosen,
        inspected=inspected,
        data=data,
        filename=filename,
    )
    return _start(request, session, image, [variant.name for variant in image.variants])


def _start(
    request: Request,
    session: SessionDep,
    image: Image,
    names: list[str],
    *,
    replay_of: str | None = None,
) -> dict[str, Any]:
    run = service.record_run(session, image, names, replay_of=replay_of)
    session.commit()
    try:
        pipeline.publish(image.id, image.owner, run)
    except Exception as exc:
        # The broker refused it: the records must not promise work that will never run.
        service.fail_image(session, image, f"could not queue the pipeline: {exc}")
        raise
    return {
        "id": image.id,
        "job_id": run.job_id,
        "status": image.status,
        "url": path_to(request, "conveyor.image", image_id=image.id),
    }


@router.get(
    "/{image_id}",
    response_model=ImageOut,
    responses=NOT_FOUND,
    summary="Get an image",
    name="conveyor.image",
)
def get_image(
    image_id: str, request: Request, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    image = service.get_image(session, image_id, caller.scope)
    if image is None:
        raise _not_found()
    return _image_out(session, image, get_storage(), public_base_url(request.scope))


def _file_url(storage: Storage, base_url: str, image: Image, key: str, name: str, fmt: str) -> str:
    direct = storage.url(key)
    return direct or f"{base_url}/api/v1/images/{image.id}/variants/{name}.{EXTENSIONS[fmt]}"


def _image_out(
    session: SessionDep, image: Image, storage: Storage, base_url: str
) -> dict[str, Any]:
    preset = service.presets(section(ImagesSettings)).get(image.preset)
    variants: list[dict[str, Any]] = []
    for variant in image.variants:
        spec = preset.variant(variant.name) if preset else None
        made = {item["format"]: item for item in variant.outputs}
        formats = list(preset.formats_of(spec)) if preset and spec else list(made)
        for fmt in formats:
            item = made.get(fmt) if variant.status == VariantStatus.DONE else None
            url = (
                _file_url(storage, base_url, image, item["key"], variant.name, fmt)
                if item
                else None
            )
            variants.append(
                {
                    "name": variant.name,
                    "format": fmt,
                    "width": item["width"] if item else None,
                    "height": item["height"] if item else None,
                    "bytes": item["bytes"] if item else None,
                    "status": variant.status,
                    "url": url,
                }
            )
    job = session.get(Job, image.job_id) if image.job_id else None
    done = sum(1 for v in image.variants if v.status in (VariantStatus.DONE, VariantStatus.FAILED))
    return {
        "id": image.id,
        "job_id": image.job_id,
        "status": image.status,
        "preset": image.preset,
        "filename": image.filename,
        "source_url": safe_url(image.source_url) if image.source_url else None,
        "source_format": image.source_format,
        "width": image.width,
        "height": image.height,
        "error": image.error,
        "progress": {
            "current": done,
            "total": len(image.variants),
            "job_state": job.state if job else None,
        },
        "variants": variants,
        "variant_progress": [
            {
                "name": v.name,
                "status": v.status,
                "attempts": v.attempts,
                "error": v.error,
                "job_id": v.job_id,
            }
            for v in image.variants
        ],
        "manifest": _manifest_out(image, storage, base_url),
        "created_at": ledger.iso(image.created_at),
    }


def _manifest_out(image: Image, storage: Storage, base_url: str) -> dict[str, Any] | None:
    """The stored manifest with URLs in place of keys, and ready `srcset` strings."""
    manifest = image.manifest
    if not manifest:
        return None

    def url_of(item: dict[str, Any], name: str) -> str:
        return _file_url(storage, base_url, image, item["key"], name, item["format"])

    variants = {
        name: {
            fmt: {k: v for k, v in item.items() if k != "key"} | {"url": url_of(item, name)}
            for fmt, item in formats.items()
        }
        for name, formats in manifest.get("variants", {}).items()
    }
    key_names = {
        item["key"]: name
        for name, formats in manifest.get("variants", {}).items()
        for item in formats.values()
    }
    srcset = {
        fmt: ", ".join(
            f"{url_of({'key': e['key'], 'format': fmt}, key_names[e['key']])} {e['width']}w"
            for e in entries
        )
        for fmt, entries in manifest.get("srcset", {}).items()
    }
    return {
        "width": manifest.get("width"),
        "height": manifest.get("height"),
        "variants": variants,
        "srcset": srcset,
    }


@router.get(
    "/{image_id}/variants/{name}",
    responses={
        **NOT_FOUND,
        200: {"content": {fmt: {} for fmt in MEDIA_TYPES.values()}, "description": "The file."},
    },
    summary="Download a variant (`thumbnail.webp`, or `thumbnail?format=webp`)",
)
def get_variant_file(
    image_id: str,
    name: str,
    caller: CallerDep,
    session: SessionDep,
    format: str | None = None,
) -> Response:
    image = service.get_image(session, image_id, caller.scope)
    if image is None:
        raise _not_found()
    base, _, extension = name.partition(".")
    fmt = FORMAT_OF_EXTENSION.get(extension) if extension else format
    variant = service.variant_of(image, base)
    if variant is None or variant.status != VariantStatus.DONE:
        raise _not_found("variant")
    made = {item["format"]: item for item in variant.outputs}
    item = made.get(fmt) if fmt else (variant.outputs[0] if variant.outputs else None)
    if item is None:
        raise _not_found("variant format")
    storage = get_storage()
    direct = storage.url(item["key"])
    if direct is not None:
        return RedirectResponse(direct, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    try:
        body = storage.get(item["key"])
    except NotFound:
        raise _not_found("variant file") from None
    return Response(
        body,
        media_type=MEDIA_TYPES[item["format"]],
        headers={"Cache-Control": "private, max-age=86400"},
    )


def _retry(
    request: Request, session: SessionDep, caller: CallerDep, image_id: str, name: str | None
) -> dict[str, Any]:
    image = service.get_image(session, image_id, caller.scope)
    if image is None:
        raise _not_found()
    previous = image.job_id
    try:
        names = service.prepare_retry(session, image, name)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    except service.ImageConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    return _start(request, session, image, names, replay_of=previous)


RETRY_RESPONSES: dict[int | str, dict[str, Any]] = {
    **NOT_FOUND,
    409: {"model": Problem, "description": "Still processing, or nothing failed to retry."},
}


@router.post(
    "/{image_id}/variants/{name}/retry",
    response_model=ImageAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=RETRY_RESPONSES,
    summary="Make a failed variant again",
)
def retry_variant(
    image_id: str, name: str, request: Request, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    return _retry(request, session, caller, image_id, name)


@router.post(
    "/{image_id}/retry",
    response_model=ImageAccepted,
    status_code=status.HTTP_202_ACCEPTED,
    responses=RETRY_RESPONSES,
    summary="Make every failed variant again",
)
def retry_failed(
    image_id: str, request: Request, caller: CallerDep, session: SessionDep
) -> dict[str, Any]:
    return _retry(request, session, caller, image_id, None)


def body_limits(settings: Settings) -> dict[str, int]:
    # Room for the multipart framing around the file itself.
    return {"/api/v1/images": section(ImagesSettings).image_max_upload_bytes + 64 * 1024}
