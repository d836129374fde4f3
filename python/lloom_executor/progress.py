"""A one-line progress display for long commands (`benchmark`, `maintenance backup`) on stderr.

Why stderr and why only when asked or on a terminal: the commands' results go to stdout
(tables, `--json`), which scripts and tests read; a progress line there would corrupt them,
and carriage-return redraws in a log file or a pipe are noise. So `Progress` draws only when
`enabled` (the commands pass `--progress` / `--no-progress`, default: stderr is a TTY and the
output is not JSON), redraws at most every `min_interval` seconds, and ends with a newline.
A leaf module: it imports nothing of the package.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def human_bytes(size: float) -> str:
    """1536 -> "1.5 KiB" (binary units, as `ls -h`)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def wanted(option: bool | None, *, as_json: bool = False, stream: TextIO | None = None) -> bool:
    """Whether to draw: the command's `--progress/--no-progress` when given, else a TTY and not `--json`."""
    if option is not None:
        return option
    stream = stream if stream is not None else sys.stderr
    return not as_json and stream.isatty()


class Progress:
    """`label: 12/50 requests  8.3/s` style lines, redrawn in place with a carriage return.

    `update(done)` is cheap when it does not redraw (a clock read), so it may be called per
    item. `unit="bytes"` shows sizes in binary units; `rate=True` adds items per second since
    the first update (for `benchmark`: live requests per second).
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        unit: str = "",
        rate: bool = False,
        enabled: bool = True,
        stream: TextIO | None = None,
        min_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.rate = rate
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = min_interval
        self.clock = clock
        self.done = 0
        self.started: float | None = None
        self._drawn_at: float | None = None
        self._width = 0

    def _amount(self, n: int) -> str:
        return human_bytes(n) if self.unit == "bytes" else str(n)

    def line(self) -> str:
        """The text of the current state (no carriage return, no newline)."""
        text = f"{self.label}: {self._amount(self.done)}"
        if self.total is not None:
            text += f"/{self._amount(self.total)}"
        if self.unit and self.unit != "bytes":
            text += f" {self.unit}"
        if self.rate and self.started is not None:
            elapsed = self.clock() - self.started
            if elapsed > 0:
                text += f"  {self.done / elapsed:.1f}/s"
        return text

    def update(self, done: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
        self.done = done
        if not self.enabled:
            return
        finished = self.total is not None and done >= self.total
        if self._drawn_at is not None and now - self._drawn_at < self.min_interval and not finished:
            return
        self._draw()
        self._drawn_at = now

    def _draw(self) -> None:
        text = self.line()
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width = len(text)

    def finish(self) -> None:
        """The final state, then a newline so that what follows starts on its own line."""
        if not self.enabled or self.started is None:
            return
        self._draw()
        self.stream.write("\n")
        self.stream.flush()
