"""Type stubs for lloom_executor._fast.scheduler (see the .pyx for the rationale)."""

from collections.abc import Callable, Hashable, Mapping
from typing import Any, Final, Literal, final

__all__ = [
    "Scheduler",
    "Handle",
    "SchedulerRefusal",
    "QueueFull",
    "DeadlinePassed",
    "LOW",
    "NORMAL",
    "HIGH",
    "PRIORITY_NAMES",
    "monotonic",
]

LOW: Final[int]
NORMAL: Final[int]
HIGH: Final[int]
PRIORITY_NAMES: Final[tuple[str, str, str]]

# stub-only (no runtime name): what every priority argument accepts
_PriorityLike = int | Literal["low", "normal", "high"]

def monotonic() -> float:
    """CLOCK_MONOTONIC seconds read from C (the scheduler's default clock)."""

class SchedulerRefusal(Exception):
    reason: str
    def __init__(self, reason: str) -> None: ...

class QueueFull(SchedulerRefusal):
    """``"<priority> queue full (<size>/<capacity>)"``, with ``": <reserved> waiting for
    their model's max_tokens_per_second"`` inside the brackets when places are reserved."""

    priority: str
    size: int
    capacity: int
    reserved: int
    def __init__(self, priority: str, size: int, capacity: int, reserved: int = 0) -> None: ...

class DeadlinePassed(SchedulerRefusal):
    deadline: float
    now: float
    def __init__(self, deadline: float, now: float) -> None: ...

@final  # Cython cdef classes: not subclassable at runtime; only Scheduler.push makes Handles
class Handle:
    """A queued entry, returned by ``Scheduler.push``; pass it to ``remove`` to cancel."""
    @property
    def item(self) -> Any: ...
    @property
    def model(self) -> Hashable: ...
    @property
    def priority(self) -> int: ...
    @property
    def deadline(self) -> float: ...
    @property
    def enqueued_at(self) -> float: ...
    @property
    def seq(self) -> int: ...
    @property
    def state(self) -> Literal["queued", "dispatched", "cancelled", "expired"]: ...

@final
class Scheduler:
    def __init__(
        self,
        max_batch_size: int = 8,
        batch_timeout_ms: float = 100.0,
        group_by_model: bool = True,
        queue_sizes: Mapping[Any, int] | None = None,
        fill_from_lower: bool = True,
        clock: Callable[[], float] | None = None,
        model_batch_sizes: Mapping[Any, int] | None = None,
    ) -> None: ...
    def push(
        self,
        item: Any,
        model: Hashable,
        priority: _PriorityLike = 1,
        deadline: float | None = None,
        now: float | None = None,
    ) -> Handle:
        """Raises QueueFull / DeadlinePassed (both SchedulerRefusal)."""
    def pop_batch(self, now: float | None = None) -> tuple[Hashable | None, list[Any]] | None: ...
    def pop_expired(self, now: float | None = None) -> list[Any]: ...
    def next_ready_in(self, now: float | None = None) -> float | None: ...
    def next_expiry_in(self, now: float | None = None) -> float | None: ...
    def remove(self, handle: Handle) -> bool: ...
    def size(self, priority: _PriorityLike) -> int: ...
    def sizes(self) -> dict[str, int]: ...
    def capacity(self, priority: _PriorityLike) -> int: ...
    def reserve(self, priority: _PriorityLike) -> None: ...
    def release(self, priority: _PriorityLike) -> None:
        """Raises ValueError when no place is reserved at that priority."""
    def reserved(self, priority: _PriorityLike) -> int: ...
    def __len__(self) -> int: ...
    def __bool__(self) -> bool: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def model_batch_sizes(self) -> dict[Hashable, int]: ...
    def batch_size_for(self, model: Hashable) -> int:
        """min(max_batch_size, the model's cap) when grouping by model, else max_batch_size."""
    @property
    def batch_timeout_ms(self) -> float: ...
    @property
    def group_by_model(self) -> bool: ...
    @property
    def fill_from_lower(self) -> bool: ...
