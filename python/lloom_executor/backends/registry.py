"""Backends by name: `create_backend(kind, **options)`.

Kinds:
  "openai"    OpenAICompatibleBackend(backend_type="openai"); base_url defaults to
              https://api.openai.com/v1 and api_key to $OPENAI_API_KEY.
  "lmstudio"  OpenAICompatibleBackend(backend_type="lmstudio"); base_url defaults to
              http://localhost:1234/v1.
  "echo"      EchoBackend(models=[], latency_ms=0, tokens_per_second=None).
  "pkg.module:Class"  any importable LlmBackend subclass (or factory returning one),
              called with **options. Its `complete` takes one
              `CompletionRequest` (see `LlmBackend` in base.py).
  other names registered with `register_backend` or published by an installed
              distribution under the entry-point group "lloom_executor.backends"
              (name = kind, value = "module:Class").

Options named like the `[llm_client]` table (base_url, api_key, timeout_secs,
max_retries) pass straight through; a `backend` key is ignored (it is the kind).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from .base import LlmBackend
from .echo import EchoBackend

ENTRY_POINT_GROUP = "lloom_executor.backends"

BackendFactory = Callable[..., LlmBackend]
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "lmstudio": "http://localhost:1234/v1"}
"""Where a built-in kind talks to when no base_url is given."""


def _openai(**options: Any) -> LlmBackend:
    from .openai_compat import OpenAICompatibleBackend

    options.setdefault("base_url", DEFAULT_BASE_URLS["openai"])
    if options.get("api_key") is None:
        options["api_key"] = os.environ.get("OPENAI_API_KEY") or None
    return OpenAICompatibleBackend(backend_type="openai", **options)


def _lmstudio(**options: Any) -> LlmBackend:
    from .openai_compat import OpenAICompatibleBackend

    options.setdefault("base_url", DEFAULT_BASE_URLS["lmstudio"])
    return OpenAICompatibleBackend(backend_type="lmstudio", **options)


def _echo(**options: Any) -> LlmBackend:
    options.setdefault("models", [])
    return EchoBackend(**options)


_BUILTIN: dict[str, BackendFactory] = {"openai": _openai, "lmstudio": _lmstudio, "echo": _echo}
_registered: dict[str, BackendFactory] = {}


def register_backend(kind: str, factory: BackendFactory) -> None:
    """Make `kind` available to `create_backend` (overrides entry points, not built-ins)."""
    if kind in _BUILTIN:
        raise ValueError(f"{kind!r} is a built-in backend kind")
    if ":" in kind:
        raise ValueError("backend kind names may not contain ':'")
    _registered[kind] = factory


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_kinds() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered) | set(_entry_points()))


def load_object(spec: str) -> Any:
    """'package.module:Attr.Sub' -> the object."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"backend spec must look like 'package.module:Class', got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import backend module {module_name!r} for {spec!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"{module_name!r} has no attribute {attr!r} (backend spec {spec!r})") from exc
    return obj


def _instantiate(factory: Any, spec: str, options: dict[str, Any]) -> LlmBackend:
    if not callable(factory):
        raise TypeError(f"backend {spec!r} is not a class or factory")
    backend = factory(**options)
    if not isinstance(backend, LlmBackend):
        raise TypeError(f"backend {spec!r} produced {type(backend).__name__}, not an LlmBackend")
    return backend


def create_backend(kind: str, **options: Any) -> LlmBackend:
    """Build the backend named `kind` with `options`: ValueError for an unknown kind or a spec
    that does not import, TypeError for one that is not a factory of `LlmBackend`s."""
    options.pop("backend", None)
    kind = kind.strip()
    if kind in _BUILTIN:
        return _BUILTIN[kind](**options)
    if kind in _registered:
        return _instantiate(_registered[kind], kind, options)
    if ":" in kind:
        return _instantiate(load_object(kind), kind, options)
    eps = _entry_points()
    if kind in eps:
        try:
            factory = eps[kind].load()
        except Exception as exc:
            raise ValueError(f"backend entry point {kind!r} ({eps[kind].value}) failed to load: {exc}") from exc
        return _instantiate(factory, kind, options)
    raise ValueError(
        f"unknown backend kind {kind!r}; known kinds: {', '.join(known_kinds())}, "
        f"or a 'package.module:Class' implementing LlmBackend"
    )
