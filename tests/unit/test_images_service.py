"""The pipeline's records: run jobs, progress across variants, finalize, retry, manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from conveyor.api.idempotency import _without_boundary
from conveyor.core.models import Job
from conveyor.core.storage import LocalStorage
from conveyor.workloads.images import service
from conveyor.workloads.images.models import Image, ImageStatus, VariantStatus
from conveyor.workloads.images.presets import BUILTIN
from conveyor.workloads.images.validation import Inspected

PRESET = BUILTIN["default"]


@pytest.fixture(autouse=True)
def _no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    # Job events are best effort: a closed port makes them fail at once, as without Redis.
    monkeypatch.setenv("CONVEYOR_REDIS_URL", "redis://127.0.0.1:1/0")


def _image(session: Session, tmp_path: Path) -> Image:
    image = service.create_image(
        session,
        LocalStorage(tmp_path),
        owner="alice",
        preset_name="default",
        preset=PRESET,
        inspected=Inspected(format="jpeg", width=1200, height=900),
        data=b"\xff\xd8\xffpretend",
        filename="photo.jpg",
    )
    session.commit()
    return image


def _output(image: Image, name: str, width: int, height: int) -> list[dict[str, object]]:
    return [
        {
            "format": fmt,
            "width": width,
            "height": height,
            "bytes": 10,
            "key": service.variant_key(image.id, name, fmt),
        }
        for fmt in PRESET.formats
    ]


def _started_run(session: Session, image: Image) -> service.Run:
    run = service.record_run(session, image, [v.name for v in image.variants])
    session.commit()
    service.begin_run(session, image, run.job_id, "host")
    return run


def test_a_run_records_its_job_and_steps_before_publishing(
    session: Session, tmp_path: Path
) -> None:
    image = _image(session, tmp_path)
    assert (tmp_path / image.source_key).read_bytes() == b"\xff\xd8\xffpretend"
    run = service.record_run(session, image, ["thumbnail", "medium", "large"])
    session.commit()
    parent = session.get(Job, run.job_id)
    assert parent is not None
    assert (parent.name, parent.state, parent.progress_total) == (
        service.PIPELINE_TASK,
        "queued",
        3,
    )
    steps = session.scalars(select(Job).where(Job.root_id == run.job_id)).all()
    assert sorted(step.name.rsplit(".", 1)[1] for step in steps) == [
        "finalize", "validate", "variant", "variant", "variant",
    ]  # fmt: skip
    # Steps are not children in the core's sense: it would count them as the progress.
    assert all(step.parent_id is None for step in steps)
    assert image.job_id == run.job_id
    assert {v.job_id for v in image.variants} == set(run.variant_ids.values())


def test_progress_counts_finished_variants_and_finalize_settles_partial(
    session: Session, tmp_path: Path
) -> None:
    image = _image(session, tmp_path)
    run = _started_run(session, image)
    thumb, medium, large = image.variants
    service.finish_variant(session, thumb, outputs=_output(image, "thumbnail", 200, 200))
    job = session.get(Job, run.job_id)
    assert job is not None
    assert (job.state, job.progress_current, job.progress_total) == ("started", 1, 3)
    assert job.progress_message == "1 of 3 variants done"
    service.finish_variant(session, medium, outputs=_output(image, "medium", 800, 600))
    service.finish_variant(session, large, error="Error: cannot encode")
    session.refresh(job)
    assert job.progress_message == "3 of 3 variants done, 1 failed"

    result = service.finalize(session, image, PRESET)
    assert result == {"image_id": image.id, "status": "partially_processed", "failed": ["large"]}
    session.refresh(job)
    assert job.state == "failed"
    assert job.error_message is not None
    assert "1 of 3 variants failed: large: Error: cannot encode" in job.error_message
    manifest = image.manifest
    assert manifest is not None
    assert set(manifest["variants"]) == {"thumbnail", "medium"}
    # The square thumbnail stays out of srcset.
    assert [entry["width"] for entry in manifest["srcset"]["webp"]] == [800]


def test_retry_resets_only_failed_variants_of_a_finished_image(
    session: Session, tmp_path: Path
) -> None:
    image = _image(session, tmp_path)
    _started_run(session, image)
    with pytest.raises(service.ImageConflict, match="only failed variants"):
        service.prepare_retry(session, image, "large")
    thumb, medium, large = image.variants
    service.finish_variant(session, thumb, outputs=_output(image, "thumbnail", 200, 200))
    service.finish_variant(session, medium, outputs=_output(image, "medium", 800, 600))
    service.finish_variant(session, large, error="boom")
    service.finalize(session, image, PRESET)

    with pytest.raises(service.ImageConflict, match="'medium' is done, not failed"):
        service.prepare_retry(session, image, "medium")
    with pytest.raises(LookupError, match="no variant 'poster'"):
        service.prepare_retry(session, image, "poster")
    assert service.prepare_retry(session, image, None) == ["large"]
    assert (image.status, large.status, large.error) == (ImageStatus.QUEUED, "pending", None)
    assert thumb.status == VariantStatus.DONE


def test_a_variant_that_never_reported_is_failed_by_finalize(
    session: Session, tmp_path: Path
) -> None:
    image = _image(session, tmp_path)
    _started_run(session, image)
    for variant in image.variants[:2]:
        service.finish_variant(session, variant, outputs=_output(image, variant.name, 10, 10))
    assert service.finalize(session, image, PRESET)["failed"] == ["large"]
    assert "ended without making it" in (image.variants[2].error or "")


def test_finalize_with_every_variant_done_succeeds_the_job(
    session: Session, tmp_path: Path
) -> None:
    image = _image(session, tmp_path)
    run = _started_run(session, image)
    for variant in image.variants:
        service.finish_variant(session, variant, outputs=_output(image, variant.name, 10, 10))
    assert service.finalize(session, image, PRESET)["status"] == ImageStatus.PROCESSED
    job = session.get(Job, run.job_id)
    assert job is not None
    assert job.state == "succeeded"
    assert job.result == {"image_id": image.id, "status": "processed"}


def test_multipart_boundaries_do_not_change_the_idempotency_fingerprint() -> None:
    def body(boundary: str, content: bytes) -> bytes:
        return (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="a.jpg"\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )

    first = _without_boundary(body("aaa111", b"JPEG"), "multipart/form-data; boundary=aaa111")
    again = _without_boundary(body("bbb222", b"JPEG"), 'multipart/form-data; boundary="bbb222"')
    other = _without_boundary(body("ccc333", b"PNG!"), "multipart/form-data; boundary=ccc333")
    assert first == again
    assert first != other
    assert _without_boundary(b'{"a": 1}', "application/json") == b'{"a": 1}'


def _url_image(session: Session) -> Image:
    image = service.create_image_from_url(
        session,
        owner="alice",
        preset_name="default",
        preset=PRESET,
        url="https://images.example.com/a/photo.jpg",
    )
    session.commit()
    return image


def test_an_image_given_by_url_is_fetched_first_then_validated(
    session: Session, tmp_path: Path
) -> None:
    image = _url_image(session)
    assert (image.status, image.source_key, image.width) == ("fetching", None, None)
    run = service.record_run(session, image, [v.name for v in image.variants])
    session.commit()
    assert run.fetch_id is not None
    stages = {
        step.name.rsplit(".", 1)[1]: step.workflow_stage
        for step in session.scalars(select(Job).where(Job.root_id == run.job_id))
    }
    assert stages == {"fetch": 0, "validate": 1, "variant": 2, "finalize": 3}

    service.begin_fetch(session, image, run.job_id, "host")
    job = session.get(Job, run.job_id)
    assert job is not None
    assert (job.state, job.attempts, job.progress_message) == ("started", 1, "fetching the image")
    service.store_fetched(
        session,
        LocalStorage(tmp_path),
        image,
        Inspected(format="png", width=64, height=48),
        b"\x89PNG\r\n\x1a\nrest",
        "../../photo\x00.png",
    )
    assert (image.status, image.width, image.filename) == ("queued", 64, "photo.png")
    assert image.source_key == f"images/{image.id}/original.png"
    service.begin_run(session, image, run.job_id, "host")
    session.refresh(job)
    # The run's job started once, whichever step came first.
    assert (job.state, job.attempts, job.progress_message) == ("started", 1, None)


def test_a_failed_fetch_cancels_the_steps_that_will_never_run_and_retry_fetches_again(
    session: Session,
) -> None:
    image = _url_image(session)
    run = service.record_run(session, image, [v.name for v in image.variants])
    session.commit()
    service.fail_image(session, image, "fetch failed: url: the server answered 404")
    assert image.status == "failed"
    errors = [v.error or "" for v in image.variants]
    assert all(error.startswith("not attempted: fetch failed") for error in errors)
    states = session.scalars(select(Job.state).where(Job.root_id == run.job_id)).all()
    assert set(states) == {"cancelled"}
    job = session.get(Job, run.job_id)
    assert job is not None
    assert job.state == "failed"

    names = service.prepare_retry(session, image, None)
    assert image.status == "fetching"
    again = service.record_run(session, image, names, replay_of=run.job_id)
    assert again.fetch_id is not None
