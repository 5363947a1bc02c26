"""Load generator for the API part of the benchmark: a separate process from the server.

POSTs a bounded number of diagnostics jobs (or, with --path, the same body to another
route) over loopback with a fixed number of concurrent
clients (one keep-alive connection each) and prints latency figures as JSON on stdout.

    BENCH_API_KEY=... python bench/_loadgen.py URL --requests 1000 --concurrency 16 --warmup 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections import Counter

import httpx

from _common import percentile

PATH = "/api/v1/diagnostics/jobs"
BODY = {"steps": 1, "step_seconds": 0}


async def run(
    url: str, key: str, requests: int, concurrency: int, warmup: int, path: str = PATH
) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(30.0)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    errors: list[str] = []

    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=timeout
    ) as client:
        # Warm-up: open the connections and let the server build its pools; not measured.
        for _ in range(max(0, warmup) // concurrency or 1):
            await asyncio.gather(*(client.post(path, json=BODY) for _ in range(concurrency)))

        remaining = requests

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                try:
                    response = await client.post(path, json=BODY)
                except httpx.HTTPError as exc:
                    statuses["error"] += 1
                    if len(errors) < 5:
                        errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[str(response.status_code)] += 1
                if response.status_code != 202 and len(errors) < 5:
                    errors.append(f"{response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - started

    latencies.sort()
    return {
        "requests": requests,
        "concurrency": concurrency,
        "wall_seconds": wall,
        "requests_per_second": len(latencies) / wall if wall else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p90_ms": percentile(latencies, 0.90) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else float("nan"),
        "statuses": dict(statuses),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=32)
    parser.add_argument("--path", default=PATH, help="route to POST to")
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        raise SystemExit("the load generator only talks to loopback")
    result = asyncio.run(
        run(
            args.url,
            os.environ["BENCH_API_KEY"],
            args.requests,
            args.concurrency,
            args.warmup,
            args.path,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
