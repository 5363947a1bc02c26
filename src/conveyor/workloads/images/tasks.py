"""Celery tasks of the images workload (queue `images`): thin adapters over `service`.

A chord runs its body only if every header task succeeded, so a variant that fails for
good does not raise: it records the failure on its variant, dead-letters its own job for
visibility, and returns, letting `finalize` settle the image as partially processed.
"""

from __future__ import annotations

import traceback
from typing import Any, ClassVar

import pyvips
from celery import shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.dispatch import Signal

from conveyor.core.db import session_scope
from conveyor.core.errors import ErrorKind, PermanentError
from conveyor.core.settings import get_settings, section
from conveyor.core.storage import NotFound, get_storage
from conveyor.core.task import ConveyorTask
from conveyor.workloads.images import engine, pipeline, service, vips
from conveyor.workloads.images.fetch import fetch_image
from conveyor.workloads.images.models import Image, ImageStatus, VariantStatus
from conveyor.workloads.images.pipeline import FETCH, FINALIZE, VALIDATE, VARIANT
from conveyor.workloads.images.settings import ImagesSettings
from conveyor.workloads.images.validation import RejectedImage, inspect_upload

# Sent just before a variant is made, with image_id, variant and owner: a hook for
# instrumentation (and for tests that need a variant to be slow or to fail). A receiver
# that raises fails the variant, classified like any other error.
before_variant = Signal(name="conveyor.images.before_variant")


def _send_before_variant(task: ConveyorTask, image_id: str, name: str, owner: str) -> None:
    """Celery signals log a receiver's exception and carry on; here it fails the variant."""
    responses = before_variant.send(sender=task, image_id=image_id, variant=name, owner=owner)
    for _, response in responses:
        if isinstance(response, Exception):
            raise response


class ImageTask(ConveyorTask):
    # A file libvips cannot decode, or a missing original, will not get better by waiting.
    permanent_errors: ClassVar[tuple[type[BaseException], ...]] = (
        pyvips.Error,
        RejectedImage,
        NotFound,
        LookupError,
        engine.WatermarkError,
        SoftTimeLimitExceeded,
    )
    backoff_base = 1.0
    backoff_max = 30.0

    def image(self, image_id: str) -> Image:
        image = self.db.get(Image, image_id)
        if image is None:
            raise PermanentError(f"image {image_id} does not exist (deleted?)")
        return image


class FirstStepTask(ImageTask):
    """A step before the variants: when it fails for good, the chain stops there."""

    failure: ClassVar[str] = "validation failed"

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        super().on_failure(exc, task_id, args, kwargs, einfo)
        # No variant will run, so the image and its run end now.
        image_id = (kwargs or {}).get("image_id")
        with session_scope() as session:
            image = session.get(Image, image_id) if image_id else None
            if image is not None:
                service.fail_image(session, image, f"{self.failure}: {exc}")


class ValidateTask(FirstStepTask):
    failure = "validation failed"


class FetchTask(FirstStepTask):
    failure = "fetch failed"
    # One fetch per owner at a time across all workers: the others wait re-published,
    # holding no worker, so one key's slow URLs never take every images worker.
    overlap_key = "images:fetch:{owner}"
    # Each attempt may take the whole deadline; a server that failed three times is down.
    retry_max = 2


@shared_task(bind=True, base=FetchTask, name=FETCH)
def fetch(self: FetchTask, image_id: str) -> dict[str, Any]:
    """Fetch the image's URL and check the bytes as an upload is checked in the API,
    decoding them to the end, before they are kept as its original."""
    images = section(ImagesSettings)
    vips.configure(images.image_vips_concurrency, tune_malloc=images.image_tune_malloc)
    image = self.image(image_id)
    replayed = image.status == ImageStatus.FAILED
    if image.source_key is None:
        if image.source_url is None:
            raise PermanentError(f"image {image_id} has neither a source nor a URL")
        if image.job_id is not None and not replayed:
            service.begin_fetch(self.db, image, image.job_id, self.request.hostname)
        limits = service.limits(images)
        try:
            fetched = fetch_image(
                image.source_url,
                max_bytes=limits.max_bytes,
                deadline=images.image_fetch_timeout_seconds,
            )
            # A server's names and types are often wrong; only the content decides here.
            inspected = inspect_upload(fetched.data, limits, field="url")
        except RejectedImage as exc:
            raise PermanentError(exc.message) from exc
        storage = get_storage(get_settings())
        service.store_fetched(self.db, storage, image, inspected, fetched.data, fetched.filename)
    if replayed:
        # A replayed dead letter, outside any pipeline: make the variants with a new run.
        names = service.prepare_retry(self.db, image, None)
        run = service.record_run(self.db, image, names, replay_of=image.job_id)
        self.db.commit()
        pipeline.publish(image.id, image.owner, run)
    return {"image_id": image_id, "bytes": image.source_bytes}


@shared_task(bind=True, base=ValidateTask, name=VALIDATE)
def validate(self: ValidateTask, image_id: str) -> dict[str, Any]:
    """Check the stored original again, decode it once for every variant, start the run."""
    images = section(ImagesSettings)
    vips.configure(images.image_vips_concurrency, tune_malloc=images.image_tune_malloc)
    image = self.image(image_id)
    storage = get_storage(get_settings())
    data = storage.get(service.source_key(image))
    try:
        # The working copy below decodes every byte, failing on truncation.
        inspect_upload(data, service.limits(images), decode_check=False)
    except RejectedImage as exc:
        raise PermanentError(exc.message) from exc
    service.store_working_copy(self.db, storage, image, service.preset_of(images, image), data)
    assert image.job_id is not None
    service.begin_run(self.db, image, image.job_id, self.request.hostname)
    return {"image_id": image_id, "width": image.width, "height": image.height}


@shared_task(bind=True, base=ImageTask, name=VARIANT)
def variant(self: ImageTask, image_id: str, name: str) -> dict[str, Any]:
    images = section(ImagesSettings)
    vips.configure(images.image_vips_concurrency, tune_malloc=images.image_tune_malloc)
    image = self.image(image_id)
    row = service.variant_of(image, name)
    if row is None:
        raise PermanentError(f"image {image_id} has no variant {name!r}")
    if row.status == VariantStatus.DONE:
        # A redelivery after the work was recorded: nothing to redo.
        return {"variant": name, "status": row.status}
    service.claim_variant(self.db, row, self.request.id)
    try:
        _send_before_variant(self, image_id, name, image.owner)
        preset = service.preset_of(images, image)
        spec = preset.variant(name)
        if spec is None:
            raise LookupError(f"preset {image.preset!r} has no variant {name!r}")
        storage = get_storage(get_settings())
        encoded = engine.make_variant(
            service.load_source(storage, image),
            spec,
            preset.formats_of(spec),
            service.encode_options(images, preset),
            preset.watermark,
        )
        outputs = service.store_outputs(storage, image_id, name, encoded)
    except Exception as exc:
        retry_left = self.request.retries < self.max_retry_count()
        if self.classify(exc) is ErrorKind.TRANSIENT and retry_left:
            raise  # the base task retries this variant alone
        self.db.rollback()
        service.finish_variant(self.db, row, error=f"{type(exc).__name__}: {exc}")
        reason = "permanent_error" if retry_left else "retries_exhausted"
        kwargs = {"image_id": image_id, "name": name}
        self._dead_letter(self.request.id, exc, traceback.format_exc(), (), kwargs, reason=reason)
        return {"variant": name, "status": VariantStatus.FAILED}
    service.finish_variant(self.db, row, outputs=outputs)
    if image.status in (ImageStatus.PARTIALLY_PROCESSED, ImageStatus.FAILED):
        # Run outside a pipeline (a replayed dead letter): settle the image here.
        service.finalize(self.db, image, preset)
    return {"variant": name, "status": VariantStatus.DONE}


@shared_task(bind=True, base=ImageTask, name=FINALIZE)
def finalize(self: ImageTask, image_id: str) -> dict[str, Any]:
    image = self.image(image_id)
    preset = service.presets(section(ImagesSettings)).get(image.preset)
    return service.finalize(self.db, image, preset)
