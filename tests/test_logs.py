"""`[logging]`: level filtering and size-based rotation with gzip-compressed backups."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

from lloom_executor.config import LoggingConfig
from lloom_executor.logs import setup_logging


def test_rotating_compressed_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "executor.log"
    handlers = setup_logging(LoggingConfig(level="debug", file=str(log_file), max_size_mb=1, max_backups=2, compress=True), stderr=False)
    try:
        log = logging.getLogger("lloom_executor.test")
        line = "x" * 1000
        for i in range(3000):  # ~3 MB: two rotations at 1 MB, third would exceed max_backups
            log.debug("%05d %s", i, line)
        log.debug("last line")
    finally:
        for handler in handlers:
            handler.close()
            logging.getLogger().removeHandler(handler)
    backups = sorted(p.name for p in log_file.parent.iterdir())
    assert backups == ["executor.log", "executor.log.1.gz", "executor.log.2.gz"]
    assert log_file.read_text().rstrip().endswith("last line")
    with gzip.open(log_file.parent / "executor.log.1.gz", "rt") as fh:
        assert "DEBUG lloom_executor.test:" in fh.readline()
    assert log_file.stat().st_size <= 1024 * 1024


def test_level_filters(tmp_path: Path) -> None:
    log_file = tmp_path / "executor.log"
    handlers = setup_logging(LoggingConfig(level="warn", file=str(log_file)), stderr=False)
    try:
        log = logging.getLogger("lloom_executor.test")
        log.info("hidden")
        log.warning("shown")
    finally:
        for handler in handlers:
            handler.close()
            logging.getLogger().removeHandler(handler)
    text = log_file.read_text()
    assert "shown" in text and "hidden" not in text
