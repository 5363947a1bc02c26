"""The image pipeline's domain logic: records, state changes and the manifest. No Celery here;
the canvas is built by `pipeline.py` and the tasks are thin adapters over these functions.

An image's pipeline run is one ledger job (`Image.job_id`) whose progress is the number of
variants finished out of all of the image's variants. Its steps are ledger jobs of their
own, linked to it by `root_id`, so the core's step-counting parent logic leaves its
progress alone.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from conveyor.core import ledger, outcomes
from conveyor.core.events import publish_job
from conveyor.core.filenames import display_name
from conveyor.core.models import TERMINAL_STATES, Job, JobState, utcnow
from conveyor.core.storage import NotFound, Storage
from conveyor.workloads.images.engine import (
    Encoded,
    EncodeOptions,
    WorkingCopy,
    needed_width,
    working_copy,
)
from conveyor.workloads.images.models import (
    FINISHED_VARIANT,
    Image,
    ImageStatus,
    ImageVariant,
    VariantStatus,
)
from conveyor.workloads.images.presets import (
    EXTENSIONS,
    MEDIA_TYPES,
    Preset,
    parse_presets,
)
from conveyor.workloads.images.settings import ImagesSettings
from conveyor.workloads.images.validation import Inspected, Limits

PIPELINE_TASK = "conveyor.workloads.images.pipeline"
SOURCE_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "avif": "avif"}


class ImageConflict(Exception):
    """The request does not fit the image's current state (HTTP 409)."""


class VariantsFailed(Exception):
    """Recorded as the pipeline job's error when some variants could not be made."""


@functools.cache
def _parsed(text: str) -> dict[str, Preset]:
    return parse_presets(text)


def presets(settings: ImagesSettings) -> dict[str, Preset]:
    return _parsed(settings.image_presets)


def preset_of(settings: ImagesSettings, image: Image) -> Preset:
    found = presets(settings).get(image.preset)
    if found is None:
        raise LookupError(f"preset {image.preset!r} is no longer configured")
    return found


def limits(settings: ImagesSettings) -> Limits:
    return Limits(
        max_bytes=settings.image_max_upload_bytes,
        max_width=settings.image_max_width,
        max_height=settings.image_max_height,
        max_pixels=settings.image_max_pixels,
    )


def encode_options(settings: ImagesSettings, preset: Preset) -> EncodeOptions:
    return EncodeOptions(
        jpeg_quality=settings.image_jpeg_quality,
        webp_quality=settings.image_webp_quality,
        webp_effort=settings.image_webp_effort,
        avif_quality=settings.image_avif_quality,
        avif_effort=settings.image_avif_effort,
        strip_metadata=preset.strip_metadata,
    )


def variant_key(image_id: str, name: str, fmt: str) -> str:
    return f"images/{image_id}/{name}.{EXTENSIONS[fmt]}"


def source_key(image: Image) -> str:
    """Where the original is; NotFound while an image given by URL is not fetched yet."""
    if image.source_key is None:
        raise NotFound(f"image {image.id} has no source yet (its URL was not fetched)")
    return image.source_key


# --- creating an image --------------------------------------------------------------------


def create_image(
    session: Session,
    storage: Storage,
    *,
    owner: str,
    preset_name: str,
    preset: Preset,
    inspected: Inspected,
    data: bytes,
    filename: str | None,
) -> Image:
    """Store the original and record the image with one pending row per variant."""
    image = _new_image(owner, preset_name, preset, ImageStatus.QUEUED)
    _keep_source(storage, image, inspected, data, filename)
    session.add(image)
    session.flush()
    return image


def create_image_from_url(
    session: Session, *, owner: str, preset_name: str, preset: Preset, url: str
) -> Image:
    """Record an image a worker will fetch from `url` (the run's first step)."""
    image = _new_image(owner, preset_name, preset, ImageStatus.FETCHING)
    image.source_url = url
    session.add(image)
    session.flush()
    return image


def store_fetched(
    session: Session,
    storage: Storage,
    image: Image,
    inspected: Inspected,
    data: bytes,
    filename: str | None,
) -> None:
    """The fetched bytes passed the upload checks: keep them as the original."""
    _keep_source(storage, image, inspected, data, filename)
    if image.status == ImageStatus.FETCHING:
        image.status = ImageStatus.QUEUED
    session.commit()


def _new_image(owner: str, preset_name: str, preset: Preset, status: ImageStatus) -> Image:
    return Image(
        id=uuid.uuid4().hex,
        owner=owner,
        preset=preset_name,
        status=status,
        variants=[
            ImageVariant(name=spec.name, position=index, status=VariantStatus.PENDING, outputs=[])
            for index, spec in enumerate(preset.variants)
        ],
    )


def _keep_source(
    storage: Storage, image: Image, inspected: Inspected, data: bytes, filename: str | None
) -> None:
    source_key = f"images/{image.id}/original.{SOURCE_EXTENSIONS[inspected.format]}"
    storage.put(source_key, data, inspected.media_type)
    image.filename = display_name(filename)
    image.source_key = source_key
    image.source_format = inspected.format
    image.source_bytes = len(data)
    image.width = inspected.width
    image.height = inspected.height


def get_image(session: Session, image_id: str, owner: str | None) -> Image | None:
    """The image, or None if it does not exist or is someone else's (owner None: any)."""
    image = session.get(Image, image_id)
    if image is None or (owner is not None and image.owner != owner):
        return None
    return image


def variant_of(image: Image, name: str) -> ImageVariant | None:
    return next((variant for variant in image.variants if variant.name == name), None)


@dataclass(frozen=True)
class Run:
    """One pipeline run to publish: its job, and the step jobs in canvas order (a fetch
    first when the image was given by URL and is not stored yet)."""

    job_id: str
    validate_id: str
    variant_ids: dict[str, str]
    finalize_id: str
    fetch_id: str | None = None


def record_run(
    session: Session, image: Image, names: list[str], *, replay_of: str | None = None
) -> Run:
    """Record the run's job and its steps in the ledger before anything is published."""
    run = Run(
        job_id=str(uuid.uuid4()),
        validate_id=str(uuid.uuid4()),
        variant_ids={name: str(uuid.uuid4()) for name in names},
        finalize_id=str(uuid.uuid4()),
        fetch_id=str(uuid.uuid4()) if image.source_key is None else None,
    )
    parent = ledger.create_job(
        session,
        ledger.NewJob(
            id=run.job_id,
            name=PIPELINE_TASK,
            queue="images",
            owner=image.owner,
            kwargs={"image_id": image.id, "variants": names},
            replay_of=replay_of,
        ),
    )
    parent.progress_total = len(image.variants)
    parent.progress_current = sum(1 for v in image.variants if v.status in FINISHED_VARIANT)
    first = 0 if run.fetch_id is None else 1
    steps = [
        *([(run.fetch_id, "fetch", {"image_id": image.id}, 0)] if run.fetch_id else []),
        (run.validate_id, "validate", {"image_id": image.id}, first),
        *(
            (job_id, "variant", {"image_id": image.id, "name": name}, first + 1)
            for name, job_id in run.variant_ids.items()
        ),
        (run.finalize_id, "finalize", {"image_id": image.id}, first + 2),
    ]
    for job_id, step, kwargs, stage in steps:
        ledger.create_job(
            session,
            ledger.NewJob(
                id=job_id,
                name=f"conveyor.workloads.images.{step}",
                queue="images",
                owner=image.owner,
                kwargs=kwargs,
                root_id=run.job_id,
                workflow_stage=stage,
            ),
        )
    image.job_id = run.job_id
    for name in names:
        variant = variant_of(image, name)
        assert variant is not None
        variant.job_id = run.variant_ids[name]
    session.flush()
    return run


def prepare_retry(session: Session, image: Image, name: str | None) -> list[str]:
    """Reset the failed variant `name` (or every failed one) to pending; their names.

    A run that ended without `finalize` (a variant killed by the hard time limit fails the
    whole chord) counts as finished: its unfinished variants can be retried too."""
    finished = image.status in (ImageStatus.PARTIALLY_PROCESSED, ImageStatus.FAILED)
    if not finished and run_is_active(session, image.job_id):
        raise ImageConflict(
            f"image is {image.status}; only failed variants of a finished image can be retried"
        )
    retryable = (
        {VariantStatus.FAILED}
        if finished
        else {VariantStatus.FAILED, VariantStatus.PENDING, VariantStatus.PROCESSING}
    )
    if name is not None:
        variant = variant_of(image, name)
        if variant is None:
            raise LookupError(f"image has no variant {name!r}")
        if variant.status not in retryable:
            raise ImageConflict(f"variant {name!r} is {variant.status}, not failed")
        chosen = [variant]
    else:
        chosen = [v for v in image.variants if v.status in retryable]
        if not chosen:
            raise ImageConflict("image has no failed variants")
    for variant in chosen:
        variant.status = VariantStatus.PENDING
        variant.error = None
    image.status = ImageStatus.QUEUED if image.source_key else ImageStatus.FETCHING
    image.error = None
    session.flush()
    return [variant.name for variant in chosen]


def run_is_active(session: Session, job_id: str | None) -> bool:
    """Whether validate or a variant of the run is still queued, started or retrying.

    `finalize` is left out: after a chord failed, its ledger row stays queued for good."""
    if job_id is None:
        return False
    active = session.scalar(
        select(func.count()).where(
            Job.root_id == job_id,
            Job.state.in_(ledger.ACTIVE_STATES),
            Job.name != "conveyor.workloads.images.finalize",
        )
    )
    return bool(active)


# --- the steps ------------------------------------------------------------------------


def begin_run(session: Session, image: Image, job_id: str, worker_host: str | None) -> None:
    """The validate step started: the image is processing and its job is running."""
    image.status = ImageStatus.PROCESSING
    _start_job(session, image, job_id, worker_host, None)


def begin_fetch(session: Session, image: Image, job_id: str, worker_host: str | None) -> None:
    """The fetch step started: the run's job is running, and says what it waits for."""
    _start_job(session, image, job_id, worker_host, "fetching the image")


def _start_job(
    session: Session, image: Image, job_id: str, worker_host: str | None, message: str | None
) -> None:
    current = session.get(Job, job_id)
    job: Job | None = current
    if current is None or current.state != JobState.STARTED:
        # The run's job starts once, whichever of its steps comes first.
        job = ledger.mark_started(
            session,
            ledger.NewJob(id=job_id, name=PIPELINE_TASK, queue="images", owner=image.owner),
            worker_host=worker_host,
        )
    if job is not None:
        job.progress_message = message
    session.commit()
    if job is not None:
        publish_job(ledger.job_to_dict(job))


def store_working_copy(
    session: Session, storage: Storage, image: Image, preset: Preset, data: bytes
) -> None:
    """Decode the original once, at the largest size the preset needs, for the variants."""
    assert image.width is not None
    assert image.height is not None
    width = needed_width(preset.variants, image.width, image.height)
    copy = working_copy(data, width)
    key = f"images/{image.id}/work/{copy.name}"
    storage.put(key, copy.data, "application/octet-stream")
    image.work_key = key
    session.commit()


def load_source(storage: Storage, image: Image) -> bytes | WorkingCopy:
    """What a variant starts from: the working copy, or the original if there is none."""
    if image.work_key is None:
        return storage.get(source_key(image))
    return WorkingCopy.from_name(image.work_key.rsplit("/", 1)[1], storage.get(image.work_key))


def claim_variant(session: Session, variant: ImageVariant, job_id: str | None) -> None:
    variant.status = VariantStatus.PROCESSING
    variant.attempts += 1
    variant.job_id = job_id or variant.job_id
    session.commit()


def store_outputs(
    storage: Storage, image_id: str, name: str, encoded: list[Encoded]
) -> list[dict[str, Any]]:
    outputs = []
    for item in encoded:
        key = variant_key(image_id, name, item.format)
        storage.put(key, item.data, MEDIA_TYPES[item.format])
        outputs.append(
            {
                "format": item.format,
                "width": item.width,
                "height": item.height,
                "bytes": len(item.data),
                "key": key,
            }
        )
    return outputs


def finish_variant(
    session: Session,
    variant: ImageVariant,
    *,
    outputs: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> None:
    """Record a variant done (with its outputs) or failed (with why), then move the run's
    progress on."""
    if error is None:
        variant.status = VariantStatus.DONE
        variant.outputs = outputs or []
        variant.error = None
    else:
        variant.status = VariantStatus.FAILED
        variant.error = error[:2000]
    session.commit()
    report_progress(session, variant.image)


def report_progress(session: Session, image: Image) -> None:
    if image.job_id is None:
        return
    session.refresh(image)
    total = len(image.variants)
    done = sum(1 for v in image.variants if v.status in FINISHED_VARIANT)
    failed = sum(1 for v in image.variants if v.status == VariantStatus.FAILED)
    message = f"{done} of {total} variants done" + (f", {failed} failed" if failed else "")
    job = ledger.mark_progress(session, image.job_id, done, total, message)
    session.commit()
    if job is not None:
        publish_job(ledger.job_to_dict(job))


def fail_image(session: Session, image: Image, reason: str) -> None:
    """The whole run failed before any variant could be made (the source is unusable)."""
    image.status = ImageStatus.FAILED
    image.error = reason[:2000]
    for variant in image.variants:
        if variant.status not in FINISHED_VARIANT:
            variant.status = VariantStatus.FAILED
            variant.error = f"not attempted: {reason}"[:2000]
    if image.job_id is not None:
        # The chain stopped: its steps still queued will never run; the ledger says so.
        session.execute(
            update(Job)
            .where(Job.root_id == image.job_id, Job.state == JobState.QUEUED)
            .values(state=JobState.CANCELLED, finished_at=utcnow(), updated_at=utcnow())
        )
    session.commit()
    _end_job(session, image, VariantsFailed(reason))


def finalize(session: Session, image: Image, preset: Preset | None) -> dict[str, Any]:
    """Settle the image's status from its variants and record the srcset manifest."""
    session.refresh(image)
    for variant in image.variants:
        if variant.status not in FINISHED_VARIANT:
            # Its task gave up without recording an outcome (redelivered too often).
            variant.status = VariantStatus.FAILED
            variant.error = variant.error or "the variant task ended without making it"
    failed = [v for v in image.variants if v.status == VariantStatus.FAILED]
    done = len(image.variants) - len(failed)
    if not failed:
        image.status = ImageStatus.PROCESSED
    elif done:
        image.status = ImageStatus.PARTIALLY_PROCESSED
    else:
        image.status = ImageStatus.FAILED
    image.error = "; ".join(f"{v.name}: {v.error}" for v in failed)[:2000] or None
    image.manifest = build_manifest(image, preset)
    session.commit()
    report_progress(session, image)
    error = (
        VariantsFailed(f"{len(failed)} of {len(image.variants)} variants failed: {image.error}")
        if failed
        else None
    )
    _end_job(session, image, error)
    return {"image_id": image.id, "status": image.status, "failed": [v.name for v in failed]}


def _end_job(session: Session, image: Image, error: Exception | None) -> None:
    if image.job_id is None:
        return
    before = session.get(Job, image.job_id)
    if before is None or before.state in TERMINAL_STATES:
        return
    result = {"image_id": image.id, "status": image.status}
    if error is None:
        job = ledger.mark_succeeded(session, image.job_id, result)
    else:
        job = ledger.mark_failed(session, image.job_id, error, None, state=JobState.FAILED)
    session.commit()
    if job is not None:
        snapshot = ledger.job_to_dict(job)
        publish_job(snapshot)
        outcomes.emit({**snapshot, "owner": job.owner})


def build_manifest(image: Image, preset: Preset | None) -> dict[str, Any]:
    """Keys and sizes per variant and format, and per format the widths a `srcset` lists
    (cropped variants have another aspect ratio, so they stay out of it)."""
    cropped = {spec.name for spec in preset.variants if spec.crop} if preset else set()
    variants: dict[str, dict[str, Any]] = {}
    srcset: dict[str, list[dict[str, Any]]] = {}
    for variant in image.variants:
        if variant.status != VariantStatus.DONE:
            continue
        variants[variant.name] = {item["format"]: dict(item) for item in variant.outputs}
        if variant.name in cropped:
            continue
        for item in variant.outputs:
            srcset.setdefault(item["format"], []).append(
                {"key": item["key"], "width": item["width"]}
            )
    for entries in srcset.values():
        entries.sort(key=lambda entry: entry["width"])
    return {"width": image.width, "height": image.height, "variants": variants, "srcset": srcset}
