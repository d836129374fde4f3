"""Generic TOML -> dataclass reader driven by `schema.py`.

It collects every problem (with its key path and, where the file shows it,
its line) instead of stopping at the first, warns on unknown keys with the
closest known name, and expands `${VAR}` / `${VAR:-default}` in strings.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Union, cast

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    severity: str = "error"  # or "warning"
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path} (line {self.line})" if self.line else self.path
        return f"{where}: {self.message}"


class Report:
    """Problems found so far; `line_of` maps key paths to file lines when known."""

    def __init__(self, line_of: dict[str, int] | None = None) -> None:
        self.problems: list[Problem] = []
        self._lines = line_of or {}

    def _line(self, path: str) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"(\.|\[)", path) else ""
        return None

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, "error", self._line(path)))

    def warning(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, "warning", self._line(path)))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def expand_env(value: Any, path: str, report: Report, environ: typing.Mapping[str, str]) -> Any:
    """`${VAR}` in every string; an unset variable without `:-default` is an error naming both."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            report.error(path, f"environment variable {name} is not set (referenced as ${{{name}}})")
            return ""

        return _ENV_REF.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_env(v, join(path, str(k)), report, environ) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", report, environ) for i, v in enumerate(value)]
    return value


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    if tp in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "an array"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__
    )


_MISSING = object()


def _coerce(tp: Any, value: Any, path: str, meta: dict[str, Any], report: Report) -> Any:
    """The stored form of `value`, or _MISSING after reporting why it is unusable."""
    tp, optional = _unwrap_optional(tp)
    if tp is Any:
        return value
    if meta.get("raw"):
        return _check(value, path, meta, report)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            report.error(path, f"expected a table, got {_describe(value)}")
            return _MISSING
        return parse_dataclass(cast(type, tp), value, path, report)  # a type hint: a class, never an instance
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if meta.get("one_or_many") and not isinstance(value, list):
            single = _coerce(item_tp, value, path, meta, report)  # a lone value keeps the plain key path
            return () if single is _MISSING else (single,)
        if not isinstance(value, list):
            report.error(path, f"expected an array, got {_describe(value)}")
            return _MISSING
        items = [_coerce(item_tp, v, f"{path}[{i}]", meta, report) for i, v in enumerate(value)]
        return tuple(v for v in items if v is not _MISSING)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            report.error(path, f"expected a table, got {_describe(value)}")
            return _MISSING
        out = {}
        for k, v in value.items():
            item = _coerce(value_tp, v, join(path, str(k)), {}, report)
            if item is not _MISSING:
                out[k] = item
        return out
    if tp is bool and not isinstance(value, bool):
        report.error(path, f"expected true or false, got {_describe(value)}")
        return _MISSING
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        report.error(path, f"expected an integer, got {_describe(value)}")
        return _MISSING
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            report.error(path, f"expected a number, got {_describe(value)}")
            return _MISSING
        value = float(value)
    if tp is str and not isinstance(value, str):
        if meta.get("convert") is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # prices written as bare numbers
        else:
            report.error(path, f"expected a string, got {_describe(value)}")
            return _MISSING
    return _check(value, path, meta, report)


def _check(value: Any, path: str, meta: dict[str, Any], report: Report) -> Any:
    if meta.get("minimum") is not None and value < meta["minimum"]:
        report.error(path, f"must be >= {meta['minimum']}, got {value}")
        return _MISSING
    if meta.get("maximum") is not None and value > meta["maximum"]:
        report.error(path, f"must be <= {meta['maximum']}, got {value}")
        return _MISSING
    if meta.get("choices") and value not in meta["choices"]:
        report.error(path, f"must be one of {', '.join(meta['choices'])}; got {value!r}")
        return _MISSING
    if meta.get("convert") is not None:
        try:
            return meta["convert"](value)
        except ValueError as exc:
            report.error(path, str(exc))
            return _MISSING
    return value


def parse_dataclass(cls: type, table: dict[str, Any], path: str, report: Report) -> Any:
    """An instance of `cls` from `table`; bad values keep their defaults after being reported.
    A class may name keys it refuses in `__rejected_keys__` (key -> what to write instead):
    those are errors, where other unknown keys are warnings."""
    hints = typing.get_type_hints(cls)
    known: dict[str, dataclasses.Field[Any]] = {}
    for declared in dataclasses.fields(cls):
        known[declared.metadata.get("key") or declared.name] = declared
    values: dict[str, Any] = {}
    rejected: dict[str, str] = getattr(cls, "__rejected_keys__", {})
    for key, raw in table.items():
        f = known.get(key)
        if f is None and key in rejected:  # a key from another dialect: an error saying what to write instead
            report.error(join(path, key), f"{key!r} is {rejected[key]}")
            continue
        if f is None:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            report.warning(join(path, key), f"unknown key{hint}")
            continue
        value = _coerce(hints[f.name], raw, join(path, key), dict(f.metadata), report)
        if value is not _MISSING:
            values[f.name] = value
    return cls(**values)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEYLINE = re.compile(r"^\s*((?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)(?:\s*\.\s*(?:\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+))*)\s*=")


def locate_keys(text: str) -> dict[str, int]:
    """Key path -> line number, for pointing operators at the line of a problem."""
    lines: dict[str, int] = {}
    prefix = ""
    counters: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            name = ".".join(part.strip().strip("\"'") for part in header.group(2).split("."))
            if header.group(1) == "[[":
                index = counters.get(name, 0)
                counters[name] = index + 1
                prefix = f"{name}[{index}]"
            else:
                prefix = name
            lines.setdefault(prefix, number)
            continue
        key = _KEYLINE.match(line)
        if key:
            dotted = ".".join(part.strip().strip("\"'") for part in key.group(1).split("."))
            lines.setdefault(join(prefix, dotted), number)
    return lines
