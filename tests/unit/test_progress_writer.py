"""Progress written behind the job: coalesced within the interval, taken by the ending,
flushed before any other write, and never lost to a failed write or a fork."""

from __future__ import annotations

import os
import threading
import time

import pytest

from conveyor.core.progress import Progress, ProgressWriter


class Recorder:
    def __init__(self, fail_first: int = 0) -> None:
        self.writes: list[tuple[str, Progress, int]] = []
        self.fail_first = fail_first
        self.written = threading.Event()

    def __call__(self, job_id: str, progress: Progress) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("the database is away")
        self.writes.append((job_id, progress, threading.get_ident()))
        self.written.set()


def _wait_written(recorder: Recorder, count: int, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while len(recorder.writes) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(recorder.writes) >= count, recorder.writes


def test_reports_within_the_interval_are_written_once_with_the_latest() -> None:
    recorder = Recorder()
    writer = ProgressWriter(recorder, lambda: 0.2)
    reported_at = time.monotonic()
    for current in range(1, 101):
        writer.report("job-1", Progress(current, 100, f"{current} of 100"))
    assert recorder.writes == []  # the job did not wait for any of them
    _wait_written(recorder, 1)
    waited = time.monotonic() - reported_at
    time.sleep(0.3)
    assert [(job, p.current, p.message) for job, p, _ in recorder.writes] == [
        ("job-1", 100, "100 of 100")
    ]
    assert recorder.writes[0][2] != threading.get_ident()  # written by the writer's thread
    assert 0.15 <= waited < 2.0


def test_each_job_is_written_on_its_own() -> None:
    recorder = Recorder()
    writer = ProgressWriter(recorder, lambda: 0.05)
    writer.report("a", Progress(1, 2, None))
    writer.report("b", Progress(5, None, "five"))
    _wait_written(recorder, 2)
    assert sorted((job, p.current) for job, p, _ in recorder.writes) == [("a", 1), ("b", 5)]


def test_the_ending_takes_what_was_not_written_and_nothing_is_written_after() -> None:
    recorder = Recorder()
    writer = ProgressWriter(recorder, lambda: 0.1)
    writer.report("job-1", Progress(1, 3, "one"))
    writer.report("job-1", Progress(2, 3, "two"))
    assert writer.take("job-1") == Progress(2, 3, "two")
    assert writer.take("job-1") is None
    time.sleep(0.3)
    assert recorder.writes == []


def test_flush_writes_now_in_the_callers_thread() -> None:
    recorder = Recorder()
    writer = ProgressWriter(recorder, lambda: 30.0)
    writer.report("job-1", Progress(7, None, None))
    writer.flush("job-1")
    assert [(job, p.current, thread) for job, p, thread in recorder.writes] == [
        ("job-1", 7, threading.get_ident())
    ]
    writer.flush("job-1")  # nothing left
    assert len(recorder.writes) == 1


def test_an_interval_of_zero_writes_each_report_at_once() -> None:
    recorder = Recorder()
    writer = ProgressWriter(recorder, lambda: 0.0)
    writer.report("job-1", Progress(1, 2, None))
    writer.report("job-1", Progress(2, 2, None))
    assert [p.current for _, p, _ in recorder.writes] == [1, 2]


def test_a_failed_write_is_logged_and_the_next_report_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(fail_first=1)
    writer = ProgressWriter(recorder, lambda: 0.05)
    writer.report("job-1", Progress(1, None, None))
    deadline = time.monotonic() + 5
    while "progress not written" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "job job-1: progress not written: the database is away" in caplog.text
    writer.report("job-1", Progress(2, None, None))
    _wait_written(recorder, 1)
    assert recorder.writes[0][1].current == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_process_starts_with_no_pending_progress_and_its_own_thread() -> None:
    recorder = Recorder()
    interval = [30.0]
    writer = ProgressWriter(recorder, lambda: interval[0])
    writer.report("parents-job", Progress(1, None, None))  # pending in the parent
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through its own thread, then say what it saw
        try:
            inherited = writer.take("parents-job")
            interval[0] = 0.05
            writer.report("childs-job", Progress(3, None, None))  # by the child's own thread
            recorder.written.wait(5)
            threads = {thread for _, _, thread in recorder.writes}
            by_thread = threading.get_ident() not in threads
            seen = f"{inherited is None}:{[p.current for _, p, _ in recorder.writes]}:{by_thread}"
            os.write(write, seen.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = pipe.read()
    os.waitpid(pid, 0)
    assert seen == "True:[3]:True"
    assert writer.take("parents-job") == Progress(1, None, None)  # the parent's is its own


def test_an_ending_during_the_threads_write_waits_for_it_and_carries_its_progress() -> None:
    writing = threading.Event()
    release = threading.Event()
    written: list[int] = []

    def slow(job_id: str, progress: Progress) -> None:
        writing.set()
        release.wait(5)
        written.append(progress.current)

    writer = ProgressWriter(slow, lambda: 0.01)
    writer.report("job-1", Progress(4, 4, None))
    assert writing.wait(5)
    threading.Timer(0.2, release.set).start()
    started = time.monotonic()
    assert writer.take("job-1") == Progress(4, 4, None)  # the ending writes it again: harmless
    assert time.monotonic() - started >= 0.15  # it waited for the write under way
    assert written == [4]  # ... which ended before the ending went on
