"""`python -m conveyor.workloads.payments.sandbox`: run the sandbox gateway."""

from __future__ import annotations

from conveyor.workloads.payments.sandbox.server import serve

if __name__ == "__main__":
    serve()
