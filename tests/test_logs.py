"""`[logging]`: level filtering and size-based rotation with gzip-compressed backups."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from lloom_executor.config import LoggingConfig
from lloom_executor.logs import setup_logging


@pytest.fixture(autouse=True)
def restore_logging():
    """setup_logging configures process-wide loggers: put them back for the tests that follow."""
    names = ["", "lloom_executor", "libp2p"]
    saved = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for n, (level, propagate, handlers) in saved.items():
        logger = logging.getLogger(n)
        logger.setLevel(level)
        logger.propagate = propagate
        logger.handlers[:] = handlers


def test_rotating_compressed_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "executor.log"
    handlers = setup_logging(
        LoggingConfig(level="debug", file=str(log_file), max_size_mb=1, max_backups=2, compress=True), stderr=False
    )
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


def _libp2p_lines(tmp_path: Path, level: str) -> str:
    log_file = tmp_path / f"{level}.log"
    handlers = setup_logging(LoggingConfig(level=level, file=str(log_file)), stderr=False)
    try:
        logging.getLogger("libp2p.kad_dht.kad_dht").warning("Failed to read DHT message from stream: %s", "")
        logging.getLogger("libp2p.host.basic_host").error("Failed to open stream to peer X:\n  Error: protocols not supported")
        logging.getLogger("libp2p.network.swarm").warning("a real problem: %s", "listener died")
        chatty = logging.getLogger("libp2p.network.auto_connector")
        chatty.setLevel(logging.INFO)  # as py-libp2p itself does for some modules
        chatty.info("initiating 200 new dials")
    finally:
        for handler in handlers:
            handler.close()
            logging.getLogger().removeHandler(handler)
    return log_file.read_text()


def test_libp2p_records_go_through_our_handlers_without_expected_noise(tmp_path: Path) -> None:
    text = _libp2p_lines(tmp_path, "info")
    assert "WARNING libp2p.network.swarm: a real problem: listener died" in text
    assert "DHT message" not in text and "protocols not supported" not in text and "new dials" not in text
    verbose = _libp2p_lines(tmp_path, "debug")
    assert "Failed to read DHT message from stream" in verbose and "protocols not supported" in verbose


def test_http_client_traces_never_reach_the_log_even_at_debug(tmp_path: Path) -> None:
    """httpcore's debug trace quotes request headers (the backend's API key) and httpx logs every
    call's URL at info: both stay at warning at every configured level."""
    log_file = tmp_path / "debug.log"
    handlers = setup_logging(LoggingConfig(level="debug", file=str(log_file)), stderr=False)
    try:
        logging.getLogger("httpcore.http11").debug("send_request_headers.started request=<Authorization: Bearer sk-secret>")
        logging.getLogger("httpx").info("HTTP Request: POST http://10.0.0.5:8000/v1/chat/completions 200 OK")
        logging.getLogger("lloom_executor.test").debug("our own debug line")
    finally:
        for handler in handlers:
            handler.close()
            logging.getLogger().removeHandler(handler)
    text = log_file.read_text()
    assert "our own debug line" in text
    assert "sk-secret" not in text and "10.0.0.5" not in text
