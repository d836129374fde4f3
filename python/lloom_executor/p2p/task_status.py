"""`TaskStatus`, the type of a `nursery.start` target's `task_status`, under one name for runtime and mypy.

py-libp2p 0.8.1 needs trio-typing at runtime, and trio-typing installs
`trio-stubs`, which mypy prefers to trio's own inline types. Those stubs define
`TaskStatus` in `trio_typing` and do not export it as `trio.TaskStatus`, so an
annotation `trio.TaskStatus` is an undefined name to mypy although it exists at
runtime. Services annotate with this alias instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trio_typing import TaskStatus as TaskStatus
else:
    from trio import TaskStatus as TaskStatus

__all__ = ["TaskStatus"]
