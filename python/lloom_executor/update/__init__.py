"""`lloom-executor update check|download|apply`: update a pip-installed executor safely.

The manual's commands (written for the Rust reference node), implemented for
this package as pip installs it: the `lloom-executor` distribution in the
environment of the interpreter that runs the command (`sys.executable`).

    lloom-executor update check                 # is there a newer release?
    lloom-executor update download              # fetch and verify its wheel
    lloom-executor update apply --backup        # install it; roll back on failure

then restart the running executor (`apply` never stops or signals it).

One module per job, each documenting its part of the behaviour:

    index_url     which index (pip's own order), CA bundle, credentials kept out of messages and argv
    simple_api    the index's files, through PEP 691 JSON or PEP 503 HTML
    release       which release is offered, and why newer ones are not
    versions      packaging (or pip's copy), this interpreter's tags and Python version
    installed     the installed distribution, whether it can be replaced, its dependencies
    wheels        a wheel file's hashes and metadata
    store         the updates directory: manifests, lock, what is downloaded
    subprocesses  pip and fresh interpreters, always this interpreter's
    verify        does the installation work, as a restart would find it
    backup        the installed version rebuilt as a wheel from its RECORD
    check, download, apply   the three commands' work
    commands      the click commands; errors: exit codes

The package imports only the standard library, click and `packaging`, never
the rest of lloom_executor, and this module imports every submodule at once:
`apply` replaces the package's files on disk while it runs, so nothing may be
imported from them after it starts.
"""

from __future__ import annotations

from .commands import UpdatePaths, build_update_group
from .errors import UpdateError
from .index_url import redact
from .release import select_release
from .simple_api import parse_html_page
from .versions import python_version

__all__ = ["UpdateError", "UpdatePaths", "build_update_group", "parse_html_page", "python_version", "redact", "select_release"]
