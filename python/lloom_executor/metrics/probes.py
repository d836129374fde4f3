"""What the collector reads from the host at scrape time: GPU utilisation (NVML) and this process's RSS.

Separate from the collector because these are the only parts that touch the
machine (a driver library, /proc); they are read only when /metrics is
scraped or pushed, never on the request path.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


class NvmlGpus:
    """GPU utilisation via NVML (`pynvml`, from the nvidia-ml-py package), if importable and a GPU exists.

    `available` is decided once, at construction; when NVML is missing or sees
    no device it is said once in the log and the metric is not exported.
    `nvml` lets a caller pass the module (tests without a GPU pass a stand-in).
    """

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self._failed_once = False
        self._nvml_error: type[Exception] = OSError
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            # every NVML failure (no driver, no library, no permission) is an NVMLError
            self._nvml_error = getattr(self._nvml, "NVMLError", OSError)
            self._nvml.nvmlInit()
            count = self._nvml.nvmlDeviceGetCount()
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        except (ImportError, OSError, self._nvml_error) as exc:
            log.info("gpu metrics off: NVML unavailable (%s: %s)", type(exc).__name__, exc)
            self._handles = []
            return
        if not self._handles:
            log.info("gpu metrics off: NVML sees no GPU")

    @property
    def available(self) -> bool:
        return bool(self._handles)

    def sample(self) -> dict[str, float]:
        """{device index: utilisation percent}; empty on an NVML error (logged once)."""
        out: dict[str, float] = {}
        for index, handle in enumerate(self._handles):
            try:
                out[str(index)] = float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except (OSError, self._nvml_error) as exc:
                if not self._failed_once:
                    log.warning("gpu metrics: NVML read failed (%s: %s)", type(exc).__name__, exc)
                    self._failed_once = True
        return out


def process_rss() -> int:
    """Resident set size of this process in bytes (psutil; /proc/self/statm where psutil is missing)."""
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:  # pragma: no cover - psutil comes with libp2p
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
