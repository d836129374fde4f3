"""`[[plugins]]`: operator-written Python extensions of the request path, loaded at start.

The hook API for plugin authors (configuration, `create_plugin`, the hooks and what
they return, `RequestView`'s fields, threads and time bounds, failure semantics,
custom metrics, trust) is docs/plugins.md. Here: `loading` (importing a plugin from
its path), `calls` (worker threads and time bounds of one hook call), `context`
(`PluginContext`), `host` (`PluginHost`, what the node calls).
"""

from __future__ import annotations

from ..events import RequestView
from .calls import HookFailed, WorkerThreads
from .context import PluginContext
from .host import (
    CHECK_HOOKS,
    EVENT_QUEUE_SIZE,
    FLUSH_TIMEOUT_SECS,
    HOOKS,
    LIFECYCLE_TIMEOUT_SECS,
    LOG_INTERVAL_SECS,
    MAX_REASON_CHARS,
    WORKER_THREADS,
    PluginHost,
)
from .loading import FACTORY, NAMESPACE, PluginError, load_module, module_name, unload

__all__ = [
    "CHECK_HOOKS",
    "EVENT_QUEUE_SIZE",
    "FACTORY",
    "FLUSH_TIMEOUT_SECS",
    "HOOKS",
    "LIFECYCLE_TIMEOUT_SECS",
    "LOG_INTERVAL_SECS",
    "MAX_REASON_CHARS",
    "NAMESPACE",
    "WORKER_THREADS",
    "HookFailed",
    "PluginContext",
    "PluginError",
    "PluginHost",
    "RequestView",
    "WorkerThreads",
    "load_module",
    "module_name",
    "unload",
]
