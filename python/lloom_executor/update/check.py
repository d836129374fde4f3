"""`update check`: the installed version against the newest release installable here.

Read-only: it asks the index and lists what is already downloaded, so it is
safe to run from cron; its exit code (0 up to date, 10 update available)
is the scriptable answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .index_url import redact, resolve_index_url
from .installed import installed
from .release import Selection, select_release
from .simple_api import IndexPage, query_index
from .store import Downloaded, downloaded_updates
from .versions import Version


@dataclass
class CheckResult:
    installed: Version
    index_url: str
    index_source: str
    page: IndexPage
    selection: Selection
    downloaded: list[Downloaded]

    @property
    def update_available(self) -> bool:
        return self.selection.version is not None and self.selection.version > self.installed

    def to_json(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "installed": str(self.installed),
            "latest": str(sel.version) if sel.version is not None else None,
            "update_available": self.update_available,
            "index_url": redact(self.index_url),
            "index_url_source": self.index_source,
            "index_api": self.page.api,
            "files": [f.to_json() for f in sel.files],
            "newer_without_installable_wheel": [{"version": str(v), "reason": r} for v, r in sel.skipped],
            "downloaded": [str(d.version) for d in self.downloaded],
            "warnings": sel.warnings,
        }


def run_check(
    index_option: str | None, pre: bool, timeout: float, data_dir: Path | None, version: str | None = None
) -> CheckResult:
    inst = installed()
    index_url, source = resolve_index_url(index_option)
    page = query_index(index_url, timeout)
    selection = select_release(page.files, version=version, pre=pre)
    return CheckResult(inst.version, index_url, source, page, selection, downloaded_updates(data_dir))
