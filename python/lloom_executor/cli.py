"""The `lloom-executor` command line (click)."""
from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lloom-executor")
def main() -> None:
    """Run a Lloom executor node: sell LLM inference on the Lloom P2P network."""
