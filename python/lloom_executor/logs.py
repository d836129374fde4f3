"""Logging from `[logging]`: level (RUST_LOG-style override applied by config), optional
rotating file (`max_size_mb`, `max_backups`, gzip-compressed backups with `compress`)."""

from __future__ import annotations

import gzip
import logging
import logging.handlers
import os
import re
import shutil
from pathlib import Path

from .config import LoggingConfig

TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s"
# Under systemd (JOURNAL_STREAM set) journald stamps every line itself.
JOURNAL_FORMAT = "%(levelname)-5s %(name)s: %(message)s"


def _gzip_rotator(source: str, dest: str) -> None:
    with open(source, "rb") as src, gzip.open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.remove(source)


# py-libp2p logs these at WARNING/ERROR for every reference peer, which serves neither
# identify, ping nor AutoNAT and closes finished Kademlia streams: expected, not a fault.
HARMLESS_LIBP2P = re.compile(r"protocols? not supported|Failed to read DHT message from stream|Failed to open stream to peer")


class _QuietExpectedLibp2p(logging.Filter):
    """Drops py-libp2p's info chatter (some of its modules set their own levels) and its
    expected-noise records, unless the operator asked for debug output."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True
        return record.levelno >= logging.WARNING and not HARMLESS_LIBP2P.search(record.getMessage())


def setup_logging(config: LoggingConfig, *, stderr: bool = True) -> list[logging.Handler]:
    """Configure the `lloom_executor` logger tree (and py-libp2p's at warning or above)."""
    level = LEVELS[config.level]
    handlers: list[logging.Handler] = []
    if stderr:
        handlers.append(logging.StreamHandler())
    if config.file:
        path = Path(config.file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            path, maxBytes=config.max_size_mb * 1024 * 1024, backupCount=config.max_backups, encoding="utf-8"
        )
        if config.compress:
            rotating.namer = lambda name: name + ".gz"
            rotating.rotator = _gzip_rotator
        handlers.append(rotating)
    formatter = logging.Formatter(JOURNAL_FORMAT if os.environ.get("JOURNAL_STREAM") and not config.file else FORMAT)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        if level > logging.DEBUG:
            handler.addFilter(_QuietExpectedLibp2p())
        root.addHandler(handler)
    root.setLevel(min(level, logging.WARNING))
    logging.getLogger("lloom_executor").setLevel(level)
    # py-libp2p configures its logger tree when imported (no handlers, propagate off, so its
    # records reach stderr raw through logging's last resort): import it first, then route its
    # records through ours, at warning and above (it is chatty at info).
    import libp2p  # noqa: F401

    libp2p_root = logging.getLogger("libp2p")
    libp2p_root.handlers.clear()
    libp2p_root.propagate = True
    libp2p_root.setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
    # httpx logs one info line per backend call ("HTTP Request: POST <url> ..."): a formatted
    # record per request on the serving loop (12% of its samples at 100 req/s, measured with
    # py-spy) and the backend's URL in every line; httpcore's debug trace quotes request headers,
    # the API key among them. Our backend logs what fails, without secrets; these two stay at
    # warning whatever the configured level (secrets are never logged).
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(level, logging.WARNING))
    return handlers
