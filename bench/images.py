"""The image pipeline against a straightforward Pillow implementation, in the same run.

    .venv/bin/python bench/images.py [--images 50] [--concurrency 2] [--redis-url URL]

50 generated 4000x3000 JPEGs (a gradient with blurred colour noise and fine grain, saved
at quality 90: about 4 MB each, like a phone photo) go through the default preset
(thumbnail 200 px square crop, medium 800 px, large 1600 px, each as JPEG, WebP and AVIF,
so 9 files per image) twice:

  1. Conveyor: each image uploaded the way the API does it (checked, stored, recorded),
     then the canvas chain(validate, chord(group(3 variants), finalize)) drains on one
     real worker (`celery -A conveyor.worker worker -Q images -c C`). `validate` decodes
     each upload once with libvips, shrunk on load to the largest variant's size, and
     every variant starts from those pixels.
  2. Pillow: one Celery task per image on the same kind of worker (-c C), doing what a
     first version does: open, exif_transpose, resize (or fit, for the crop), save each
     format, at the same quality settings and Pillow's default encoder effort.

Throughput runs from the first task starting to the last image finished (Conveyor: the
ledger's times; Pillow: the tasks' own clock in Redis). Memory is the peak resident set
(VmHWM) of each pool process, read from /proc when the run ends, and the same less the
process's resident set when idle (before its first image): what the image work itself
cost. Both worker kinds load the same modules, so their idle size is comparable.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from celery import shared_task

BENCH_DIR = Path(__file__).resolve().parent
# Workers import this file as their task module under this name, from the run's directory
# rather than bench/: a name no other module has, and no other bench script on their path.
TASK_MODULE = "conveyor_bench_images"
PYTHON = sys.executable
PILLOW_TASK = "bench.images.pillow_variants"
DONE_KEY = "bench:images:done"
TIMES_KEY = "bench:images:times"
SIZES = (("thumbnail", 200, True), ("medium", 800, False), ("large", 1600, False))


# --- the Pillow baseline (runs in the worker; this module is its task module) ------------


def pillow_variants(path: str, out_dir: str, redis_url: str, matched: bool = False) -> int:
    """`matched`: the encoders at Conveyor's default effort (libvips AVIF effort 0 is aom
    speed 9; WebP effort is libwebp's method), instead of Pillow's defaults."""
    import redis
    from PIL import Image, ImageOps

    started = time.time()
    written = 0
    for name, width, crop in SIZES:
        image = ImageOps.exif_transpose(Image.open(path))
        if crop:
            image = ImageOps.fit(image, (width, width), Image.Resampling.LANCZOS)
        else:
            height = round(image.height * width / image.width)
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        stem = Path(out_dir) / f"{Path(path).stem}-{name}"
        image.save(f"{stem}.jpg", "JPEG", quality=82)
        image.save(f"{stem}.webp", "WEBP", quality=80, **({"method": 2} if matched else {}))
        image.save(f"{stem}.avif", "AVIF", quality=50, **({"speed": 9} if matched else {}))
        written += 3
    client = redis.Redis.from_url(redis_url)
    client.rpush(TIMES_KEY, f"{started},{time.time()}")
    client.incr(DONE_KEY)
    return written


if __name__ == TASK_MODULE:
    # Registered where workers import it, not again when this file runs as the script.
    shared_task(name=PILLOW_TASK)(pillow_variants)


# --- inputs ---------------------------------------------------------------------------------


def generate(directory: Path, count: int, width: int, height: int) -> list[Path]:
    """Photo-like JPEGs, made once and kept between runs."""
    import pyvips

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"photo-{width}x{height}-{index:03d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        xy = pyvips.Image.xyz(width, height)
        shift = index * 7 % 255
        red = (xy[0] * 255 / width + shift) % 256
        green = xy[1] * 255 / height
        blue = (xy[0] + xy[1]) * 255 / (width + height)
        blobs = pyvips.Image.gaussnoise(width // 16, height // 16, sigma=60, mean=0)
        blobs = blobs.resize(16, kernel="cubic")
        grain = pyvips.Image.gaussnoise(width, height, sigma=6, mean=0)
        image = (red.bandjoin([green, blue]) + blobs + grain).cast("uchar")
        image.copy(interpretation="srgb").jpegsave(str(path), Q=90)
    return paths


# --- processes ------------------------------------------------------------------------------


def start_worker(env: dict[str, str], concurrency: int, log: Path) -> subprocess.Popen[bytes]:
    """A worker started in the run's directory, which holds this file as TASK_MODULE."""
    argv = [
        PYTHON, "-m", "celery", "-A", "conveyor.worker", "worker", "-Q", "images,default",
        "-c", str(concurrency), "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def pool_children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def wait_ready(proc: subprocess.Popen[bytes], concurrency: int, log: Path) -> dict[int, int]:
    """Wait for the pool; each child's idle resident set (KiB), once it has settled."""
    from conveyor.core.celery_app import get_celery

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"worker exited:\n{log.read_text()[-3000:]}")
        if len(pool_children(proc.pid)) >= concurrency and get_celery().control.ping(timeout=0.5):
            time.sleep(1.0)  # children grow a little while they settle in
            return {pid: memory_kib(pid, "VmRSS") for pid in pool_children(proc.pid)}
        time.sleep(0.1)
    raise SystemExit(f"worker not ready:\n{log.read_text()[-3000:]}")


@dataclass
class Result:
    label: str
    images: int
    seconds: float
    peak_kib: int
    above_idle_kib: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def line(self) -> str:
        return (
            f"{self.label:<20} {self.rate:6.2f} images/s ({self.seconds:6.1f} s)   "
            f"peak {self.peak_kib / 1024:6.0f} MB per process, "
            f"{self.above_idle_kib / 1024:6.0f} MB above idle"
        )


def peak_of(children: dict[int, int]) -> tuple[int, int]:
    peaks = {pid: memory_kib(pid, "VmHWM") for pid in children}
    return max(peaks.values()), max(peaks[pid] - children[pid] for pid in peaks)


# --- the two runs ---------------------------------------------------------------------------


def run_conveyor(paths: list[Path], env: dict[str, str], work: Path, concurrency: int) -> Result:
    from sqlalchemy import func, select

    from conveyor.core import db
    from conveyor.core.migrate import upgrade
    from conveyor.core.models import Job, JobState
    from conveyor.core.settings import get_settings, section
    from conveyor.core.storage import get_storage
    from conveyor.workloads.images import pipeline, service, vips
    from conveyor.workloads.images.settings import ImagesSettings
    from conveyor.workloads.images.validation import inspect_upload

    settings = get_settings()
    images = section(ImagesSettings)
    upgrade(settings)
    vips.configure(images.image_vips_concurrency)
    preset = service.presets(images)["default"]
    storage = get_storage(settings)
    runs = []
    # Uploads first, as the API would take them; they are published once the worker idles.
    upload_started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        inspected = inspect_upload(data, service.limits(images), filename=path.name)
        with db.session_scope() as session:
            image = service.create_image(
                session, storage, owner="bench", preset_name="default", preset=preset,
                inspected=inspected, data=data, filename=path.name,
            )  # fmt: skip
            names = [variant.name for variant in image.variants]
            run = service.record_run(session, image, names)
            session.commit()
            runs.append((image.id, run))
    upload_seconds = time.perf_counter() - upload_started
    print(f"  uploads checked and queued: {upload_seconds / len(paths) * 1000:.0f} ms each")

    job_ids = [run.job_id for _, run in runs]
    log = work / "conveyor-worker.log"
    worker = start_worker(env, concurrency, log)
    try:
        idle = wait_ready(worker, concurrency, log)
        for image_id, run in runs:
            pipeline.publish(image_id, "bench", run)
        done = 0
        deadline = time.monotonic() + 1800
        while done < len(job_ids) and time.monotonic() < deadline:
            time.sleep(0.5)
            with db.session_scope() as session:
                done = (
                    session.scalar(
                        select(func.count()).where(
                            Job.id.in_(job_ids),
                            Job.state.in_([JobState.SUCCEEDED, JobState.FAILED]),
                        )
                    )
                    or 0
                )
        peak, above = peak_of(idle)
        with db.session_scope() as session:
            failed = session.scalar(
                select(func.count()).where(Job.id.in_(job_ids), Job.state != JobState.SUCCEEDED)
            )
            first = session.scalar(select(func.min(Job.started_at)).where(Job.root_id.in_(job_ids)))
            last = session.scalar(select(func.max(Job.finished_at)).where(Job.id.in_(job_ids)))
        if failed:
            raise SystemExit(f"{failed} images did not succeed; see {log}")
        assert first is not None
        assert last is not None
        seconds = (last - first).total_seconds()
    finally:
        stop_worker(worker)
    return Result("conveyor", len(paths), seconds, peak, above)


def run_pillow(
    paths: list[Path],
    env: dict[str, str],
    work: Path,
    concurrency: int,
    redis_url: str,
    matched: bool = False,
) -> Result:
    import redis

    from conveyor.core.celery_app import get_celery

    client = redis.Redis.from_url(redis_url)
    client.delete(DONE_KEY, TIMES_KEY)
    out_dir = work / ("pillow-matched-out" if matched else "pillow-out")
    out_dir.mkdir(exist_ok=True)
    app = get_celery()
    log = work / "pillow-worker.log"
    worker = start_worker(env, concurrency, log)
    try:
        idle = wait_ready(worker, concurrency, log)
        for path in paths:
            app.send_task(
                PILLOW_TASK, args=[str(path), str(out_dir), redis_url, matched], queue="images"
            )
        deadline = time.monotonic() + 3600
        while int(client.get(DONE_KEY) or 0) < len(paths) and time.monotonic() < deadline:
            time.sleep(0.5)
        peak, above = peak_of(idle)
    finally:
        stop_worker(worker)
    spans = [
        tuple(map(float, item.decode().split(","))) for item in client.lrange(TIMES_KEY, 0, -1)
    ]
    if len(spans) < len(paths):
        raise SystemExit(f"only {len(spans)} of {len(paths)} Pillow images finished; see {log}")
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return Result("pillow, same effort" if matched else "pillow", len(paths), seconds, peak, above)


def check_outputs(work: Path, env: dict[str, str]) -> None:
    """Both produced the same set of files, they decode, and what they weigh per format."""
    from PIL import Image

    pillow = sorted((work / "pillow-out").iterdir())
    conveyor = sorted((Path(env["CONVEYOR_DATA_DIR"]) / "files" / "images").glob("*/*.*"))
    variants = [path for path in conveyor if not path.name.startswith("original")]
    print(f"  files: conveyor {len(variants)}, pillow {len(pillow)}")
    for path in (variants[0], variants[-1], pillow[0], pillow[-1]):
        Image.open(io.BytesIO(path.read_bytes())).load()
    for ext in ("jpg", "webp", "avif"):
        ours = sum(p.stat().st_size for p in variants if p.suffix == f".{ext}")
        theirs = sum(p.stat().st_size for p in pillow if p.suffix == f".{ext}")
        print(f"  {ext:<4} bytes: conveyor {ours / 1e6:6.1f} MB, pillow {theirs / 1e6:6.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "conveyor-bench-images"
    )
    args = parser.parse_args()

    import redis

    paths = generate(args.cache, args.images, args.width, args.height)
    average = sum(path.stat().st_size for path in paths) / len(paths)
    print(f"{len(paths)} JPEGs of {args.width}x{args.height}, {average / 1e6:.1f} MB on average")
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-images-"))
    (work / f"{TASK_MODULE}.py").symlink_to(Path(__file__).resolve())
    sys.path.insert(0, str(work))  # the Celery app here loads the task modules too
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(BENCH_DIR.parent / "src"), str(work)]),
        CONVEYOR_REDIS_URL=args.redis_url,
        CONVEYOR_DATABASE_URL=f"sqlite:///{work / 'conveyor.db'}",
        CONVEYOR_DATA_DIR=str(work / "data"),
        CONVEYOR_LOG_LEVEL="WARNING",
        CONVEYOR_LOG_JSON="false",
        # Both workers load this module (the Pillow task), so their idle size is the same.
        CONVEYOR_TASK_MODULES=TASK_MODULE,
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONVEYOR_")})
    redis.Redis.from_url(args.redis_url).flushdb()
    try:
        print("conveyor (libvips, canvas):")
        conveyor = run_conveyor(paths, env, work, args.concurrency)
        redis.Redis.from_url(args.redis_url).flushdb()
        print("pillow (open, resize, save per variant):")
        pillow = run_pillow(paths, env, work, args.concurrency, args.redis_url)
        redis.Redis.from_url(args.redis_url).flushdb()
        print("pillow at Conveyor's encoder effort (AVIF speed 9, WebP method 2):")
        matched = run_pillow(paths, env, work, args.concurrency, args.redis_url, matched=True)
        check_outputs(work, env)
    finally:
        redis.Redis.from_url(args.redis_url).flushdb()
    print()
    print(f"worker concurrency {args.concurrency}, {os.cpu_count()} CPUs")
    print(conveyor.line())
    print(pillow.line())
    print(matched.line())
    print(
        f"against Pillow at the same encoder effort: throughput "
        f"{conveyor.rate / matched.rate:.2f}x, peak memory "
        f"{conveyor.peak_kib / matched.peak_kib:.2f}, above idle "
        f"{conveyor.above_idle_kib / max(matched.above_idle_kib, 1):.2f}"
    )
    print(
        f"throughput {conveyor.rate / pillow.rate:.2f}x Pillow's (target >= 3x); "
        f"peak memory {conveyor.peak_kib / pillow.peak_kib:.2f} of Pillow's, "
        f"above idle {conveyor.above_idle_kib / max(pillow.above_idle_kib, 1):.2f} "
        "(target <= 0.33)"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
