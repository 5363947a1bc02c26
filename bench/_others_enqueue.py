"""Publish N no-op messages with huey, dramatiq or taskiq; print how long it took (JSON).

Run by bench/others.py (through throughput.run_scenario) with its virtualenv's Python:

    python bench/_others_enqueue.py {huey|dramatiq|taskiq} N
"""

from __future__ import annotations

import importlib
import json
import sys
import time


def main() -> None:
    library, count = sys.argv[1], int(sys.argv[2])
    if library not in ("huey", "dramatiq", "taskiq"):
        raise SystemExit(f"unknown library {library!r}")
    module = importlib.import_module(f"_others_{library}")
    started = time.perf_counter()
    module.enqueue(count)
    elapsed = time.perf_counter() - started
    print(json.dumps({"count": count, "seconds": elapsed}))


if __name__ == "__main__":
    main()
