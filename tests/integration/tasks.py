"""Tasks that exist only for the integration tests; workers load them via CONVEYOR_TASK_MODULES.

Each group of tests adds its own tasks in a section below.
"""

from __future__ import annotations
