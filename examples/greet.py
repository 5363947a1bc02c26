"""Your own code submitting jobs to the Conveyor running here, with no URL to configure:
`python -m examples.greet Ada Grace`."""

from __future__ import annotations

import sys

from conveyor.core.jobs import Submission, submit
from examples.greetings import greet


def main(names: list[str]) -> None:
    for name in names:
        # submit(): the ledger row first, then the message; returns the job.
        job = submit(Submission(task_name="examples.greet", args=[name]))
        print(f"submitted {job.id} (submit)")
        # .delay(): plain Celery; the ledger records it as it is published.
        print(f"delayed   {greet.delay(name).id} (.delay)")


if __name__ == "__main__":
    main(sys.argv[1:] or ["Ada"])
