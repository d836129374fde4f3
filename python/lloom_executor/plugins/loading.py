"""Importing a `[[plugins]]` entry's module from its path: a `.py` file, a package, an extension.

Each module is imported under a private name (`lloom_executor_plugins.<name>`, `-`
read as `_`) so plugins never shadow, or are shadowed by, installed packages. An
extension module lives one level deeper (`lloom_executor_plugins.<name>.<module>`)
because its `PyInit_<module>` fixes its last name, and it is cached per process:
CPython cannot unload one, so a second start reuses it. docs/plugins.md has the
operator's view.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

from ..config.rules import plugin_location

NAMESPACE = "lloom_executor_plugins"
FACTORY = "create_plugin"

_extensions: dict[str, types.ModuleType] = {}  # real path -> module: CPython loads an extension once per process


class PluginError(RuntimeError):
    """A [[plugins]] entry could not be loaded or started; the message names it and its path."""


def module_name(plugin_name: str) -> str:
    """The private module name of plugin `plugin_name`."""
    return f"{NAMESPACE}.{plugin_name.replace('-', '_')}"


def _namespace() -> None:
    if NAMESPACE not in sys.modules:
        package = types.ModuleType(NAMESPACE, "Modules of the [[plugins]] entries (lloom_executor.plugins).")
        package.__path__ = []  # nothing is found under it on disk
        sys.modules[NAMESPACE] = package


def unload(name: str) -> None:
    """Forget module `name` and its submodules (an extension module stays cached in `_extensions`)."""
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def load_module(plugin_name: str, path: str) -> types.ModuleType:
    """Import the plugin at `path` under its private name; raises what the import raised
    (ImportError for a location `plugin_location` rejects)."""
    kind, problem = plugin_location(path)
    if problem is not None:
        raise ImportError(problem)
    name = module_name(plugin_name)
    location = os.path.abspath(path)
    _namespace()
    unload(name)
    if kind == "extension":
        holder = types.ModuleType(name, f"Namespace of plugin {plugin_name}.")
        holder.__path__ = []
        sys.modules[name] = holder
        real = os.path.realpath(location)
        cached = _extensions.get(real)
        if cached is not None:
            sys.modules[cached.__name__] = cached
            return cached
        full = f"{name}.{os.path.basename(location).partition('.')[0]}"
        spec = importlib.util.spec_from_file_location(
            full, location, loader=importlib.machinery.ExtensionFileLoader(full, location)
        )
    elif kind == "package":
        full = name
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(location, "__init__.py"), submodule_search_locations=[location]
        )
    else:
        full = name
        spec = importlib.util.spec_from_file_location(name, location, loader=importlib.machinery.SourceFileLoader(name, location))
    if spec is None or spec.loader is None:  # pragma: no cover - plugin_location accepted it
        raise ImportError(f"cannot import {location}")
    try:
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    except BaseException:
        unload(name)
        raise
    if kind == "extension":
        _extensions[os.path.realpath(location)] = module
    return module
