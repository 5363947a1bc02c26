"""The reliability layer's benchmark: limiter, unique dispatch and idempotency overhead.

    .venv/bin/python bench/reliability.py

Runs, one after the other (they share the machine's two cores, never at once):
  bench/reliability_limits.py       acquire() cost vs a Redis PING, achieved vs configured rate
                                    at 50/s, 200/s, 1000/s, unique vs plain dispatch
  bench/reliability_idempotency.py  POST latency with and without an Idempotency-Key
Each prints its own figures and ratios; arguments after `--` go to both unchanged.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = ("reliability_limits.py", "reliability_idempotency.py")


def main() -> int:
    ours = sys.argv[1 : sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
    if "-h" in ours or "--help" in ours:
        print(__doc__)
        return 0
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    status = 0
    for part in PARTS:
        print(f"\n=== {part} ===", flush=True)
        result = subprocess.run([sys.executable, str(HERE / part), *extra], check=False)
        status = status or result.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
