"""Exit codes of `lloom-executor update` and the error that carries one.

Scripts branch on these codes, so each names one situation an operator must
handle differently (retry later, restart, recover by hand):

    0   check: up to date; download: the wheel is there and verified
        (or nothing newer to fetch); apply: installed and verified (or nothing
        newer to apply)
    1   an error; nothing was changed (bad input, a refused wheel or
        dependency, nothing downloaded, a hash mismatch, a pip failure
        before installing)
    2   usage error (unknown option, bad value; click's own code)
    3   the package index could not be reached (network, DNS, TLS) or answered
        with a server error (5xx): retry later
    10  check: an update is available
    20  apply: the update failed, and the previous version is installed and
        verified (rolled back)
    21  apply: the update failed and the installation could not be verified as
        working: no --backup (no rollback possible), or the rollback failed too;
        the message says how to recover by hand
"""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 3
EXIT_UPDATE_AVAILABLE = 10
EXIT_ROLLED_BACK = 20
EXIT_BROKEN = 21

EXIT_CODES_HELP = (
    "Exit codes: 0 done (check: up to date), 1 error (nothing changed), 2 usage error, "
    "3 index unreachable, 10 update available (check), 20 apply failed and rolled back (previous "
    "version verified), 21 apply failed with no working rollback."
)


class UpdateError(click.ClickException):
    """A failed update command. A ClickException so click prints the message and exits with our code, not 1."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar but reads it from the instance; one class for every code keeps callers simple
        self.exit_code = exit_code  # type: ignore[misc]
