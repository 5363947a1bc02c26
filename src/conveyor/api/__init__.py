"""The HTTP API. Metrics are shared across processes, so their directory is chosen first."""

from conveyor.core.metrics_setup import prepare_multiprocess_dir

prepare_multiprocess_dir()
