"""`[[plugins]]` (plugins/) and custom metrics (metrics.register_*): real plugin files on disk.

The plugins are a `.py` file, a package directory and a Cython extension module compiled
here (skipped, saying why, only where Cython or a C compiler is missing). They run in a
started ExecutorService with the echo backend, asked by the real signed client over
libp2p; the refusals come back as signed errors, the custom metrics from the real
/metrics endpoint and a real push. Waits are bounded polls; the time bounds under test
are short but nothing asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from lloom_executor import _native
from lloom_executor import metrics as metrics_module
from lloom_executor.cli import main as cli_main
from lloom_executor.client import LloomClient
from lloom_executor.config import Config, ConfigError, inactive_features, load_config
from lloom_executor.identity import load_identity
from lloom_executor.ledger import Ledger
from lloom_executor.metrics import register_counter, register_gauge, register_histogram, unregister_metric
from lloom_executor.plugins import PluginError
from lloom_executor.service import ExecutorService
from service_rig import CHAIN_ID, CONTRACT, echo_service_config, samples, until

PRICE_IN, PRICE_OUT = 10**12, 2 * 10**12
WEBHOOK_KEYS_COMPLETED = {
    "model",
    "requested_model",
    "client",
    "peer_id",
    "inbound_tokens",
    "outbound_tokens",
    "total_cost_wei",
    "latency_ms",
    "queued_ms",
    "backend_ms",
    "cached",
    "request_digest",
    "receipt_digest",
}
WEBHOOK_KEYS_ERROR = {"model", "requested_model", "client", "peer_id", "code", "reason", "request_digest"}

# -- the plugins ------------------------------------------------------------------------------------

KEYWORD_FILTER = '''
"""A single-file plugin: refuses prompts holding a configured word `threshold` times or more."""
import threading
from dataclasses import FrozenInstanceError


def create_plugin(config, context):
    return KeywordFilter(config, context)


class KeywordFilter:
    def __init__(self, config, context):
        self.words = [w.lower() for w in config["words"]]
        self.threshold = int(config["threshold"])
        self.context = context
        self.refused = context.register_counter(
            "test_keyword_refusals_total", "Prompts refused by the keyword filter", labels=("word",)
        )
        self.sizes = context.register_histogram("test_prompt_tokens", "Prompt tokens seen by the filter", buckets=(1, 5, 10, 100))
        self.lock = threading.Lock()
        self.seen = []
        self.read_only = False

    def check_request(self, request):  # plain: runs in one of the plugin's worker threads
        with self.lock:
            self.seen.append(request)
        try:
            request.prompt = "something else"
        except (FrozenInstanceError, AttributeError):
            self.read_only = True
        self.sizes.observe(request.prompt_tokens)
        text = request.prompt.lower()
        for word in self.words:
            hits = text.count(word)
            if hits >= self.threshold:
                self.refused.labels(word=word).inc()
                return f"prompt refused: {hits} x {word!r} (threshold {self.threshold})"
        return None
'''

WATCHER_INIT = '''
"""A package plugin: its class lives in a submodule, imported relatively."""
from .recorder import Recorder


def create_plugin(config, context):
    return Recorder(config["deny"], context)
'''

WATCHER_RECORDER = """
import asyncio


class Recorder:
    def __init__(self, deny, context):
        self.deny = deny
        self.context = context
        self.events = []
        self.started = False
        self.stopped = False

    async def on_start(self):
        await asyncio.sleep(0)
        self.started = True
        self.context.logger.info("watching for %s on %s", self.deny, self.context.peer_id)

    async def check_response(self, request, content):
        if self.deny in content:
            return f"answer withheld by watcher (model {request.model})"
        return None

    async def on_request_finished(self, event):
        self.events.append(event)

    async def on_stop(self):
        self.stopped = True
"""

CYTHON_FILTER = '''
# cython: language_level=3
"""A compiled plugin: what the manual's `.so` plugins are for a Python executor."""


def create_plugin(config, context):
    return CyFilter(config["marker"], context.name)


class CyFilter:
    def __init__(self, marker, name):
        self.marker = marker
        self.name = name

    def check_request(self, request):
        if self.marker in request.prompt:
            return "refused by compiled plugin " + self.name
        return None
'''

RAISER = """
def create_plugin(config, context):
    return Raiser()


class Raiser:
    def check_request(self, request):
        if "boom" in request.prompt:
            raise RuntimeError("the raiser plugin blew up")
        if "number" in request.prompt:
            return 42  # neither None nor a reason
        return None

    def on_request_finished(self, event):
        raise ValueError("observer bug")
"""

HANGER = """
import asyncio
import threading


def create_plugin(config, context):
    return Hanger()


class Hanger:
    def __init__(self):
        self.release = threading.Event()

    def check_request(self, request):  # plain: holds a worker thread until on_stop releases it
        if "hang" in request.prompt:
            self.release.wait(60)
        return None

    async def check_response(self, request, content):
        if "stall" in content:
            await asyncio.sleep(3600)
        return None

    def on_stop(self):
        self.release.set()
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def keyword_filter(tmp_path: Path) -> Path:
    return write(tmp_path / "plugins" / "keyword_filter.py", KEYWORD_FILTER)


def watcher(tmp_path: Path) -> Path:
    package = tmp_path / "plugins" / "watcher"
    write(package / "__init__.py", WATCHER_INIT)
    write(package / "recorder.py", WATCHER_RECORDER)
    return package


# -- a running executor -------------------------------------------------------------------------------


def config_for(tmp_path: Path, plugins: list[dict[str, Any]], **sections: Any) -> Config:
    return echo_service_config(tmp_path, **{"model_aliases": {"alias": "m"}, "plugins": plugins, **sections})


def service_for(config: Config, **plugin_options: Any) -> ExecutorService:
    return ExecutorService(config, load_identity(config.identity, environ={}), plugin_options=plugin_options or None)


def client_for(addr: str) -> LloomClient:
    return LloomClient(
        bootstrap=[addr], enable_kad=False, enable_gossip=False, eip712_domain=_native.Eip712Domain(CHAIN_ID, CONTRACT)
    )


def ask(client: LloomClient, peer: str, prompt: str, model: str = "m", **kw: Any):
    return client.request(peer, model, prompt, inbound_price=str(PRICE_IN), outbound_price=str(PRICE_OUT), **kw)


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


def ledger_rows(tmp_path: Path) -> list[dict[str, Any]]:
    ledger = Ledger.in_directory(tmp_path / "data")
    try:
        return ledger.entries()
    finally:
        ledger.close()


class Gateway:
    """A minimal Pushgateway recording the bodies PUT to /metrics/job/...."""

    def __init__(self) -> None:
        self.pushes: list[str] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                gateway.pushes.append(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- filters, observers and custom metrics in a running executor -------------------------------------------


def test_plugins_filter_observe_and_export_metrics(tmp_path: Path) -> None:
    gateway = Gateway()
    config = config_for(
        tmp_path,
        [
            {
                "name": "keyword-filter",
                "path": str(keyword_filter(tmp_path)),
                "config": {"words": ["forbidden"], "threshold": 2},
                "timeout_secs": 10,  # generous: a slow CI must not fail closed
            },
            {"name": "watcher", "path": str(watcher(tmp_path)), "config": {"deny": "classified"}, "timeout_secs": 10},
        ],
        metrics={"enabled": True, "endpoint": "127.0.0.1:0", "push_gateway": gateway.url, "push_interval_secs": 3600},
    )
    assert not [f for f in inactive_features(config) if "plugins" in f]

    async def scenario() -> dict[str, Any]:
        service = service_for(config)
        addrs = await service.start()
        watcher_plugin = service.plugins.get("watcher")
        keyword = service.plugins.get("keyword-filter")
        try:
            assert watcher_plugin.started and service.plugins.names == ["keyword-filter", "watcher"]
            peer = service.identity.peer_id
            async with client_for(addrs[0]) as client:
                served = await ask(client, peer, "one forbidden word is fine", model="alias", max_tokens=50)
                refused = await ask(client, peer, "forbidden, twice FORBIDDEN")
                withheld = await ask(client, peer, "please echo the classified plan")
                client_address = client.key.address
            await until(lambda: len(watcher_plugin.events) >= 3, "three on_request_finished events")
            async with httpx.AsyncClient(trust_env=False) as http:
                scraped = (await http.get(service.metrics_server.url)).text
        finally:
            await service.stop()
        return {
            "served": served,
            "refused": refused,
            "withheld": withheld,
            "client": client_address,
            "scraped": scraped,
            "events": list(watcher_plugin.events),
            "watcher": watcher_plugin,
            "keyword": keyword,
            "executor": service.identity.address.lower(),
            "peer": service.identity.peer_id,
        }

    try:
        r = asyncio.run(scenario())
    finally:
        gateway.close()
    served, refused, withheld = r["served"], r["refused"], r["withheld"]

    # check_request: the threshold comes from the plugin's config table; the refusal is a signed error
    assert served.error is None and served.content == "echo: one forbidden word is fine"
    assert refused.error == "prompt refused: 2 x 'forbidden' (threshold 2)"
    assert refused.signature_valid and refused.signer == r["executor"] and refused.total_cost == "0"
    assert refused.receipt is None  # refused in admission
    # check_response: the content is withheld, nothing charged
    assert withheld.error == "answer withheld by watcher (model m)" and withheld.content == ""
    assert withheld.signature_valid and withheld.total_cost == "0" and withheld.receipt.valid

    # what check_request saw: read-only, the served model, the request and its sender, never a key
    keyword = r["keyword"]
    assert keyword.read_only
    first = keyword.seen[0]
    assert (first.model, first.requested_model, first.prompt) == ("m", "alias", "one forbidden word is fine")
    assert (first.max_tokens, first.requested_max_tokens, first.system_prompt) == (50, 50, None)
    assert first.client == r["client"] and first.peer_id and first.remote_ip == "127.0.0.1"
    assert (first.inbound_price_wei, first.outbound_price_wei) == (PRICE_IN, PRICE_OUT)
    assert first.request_digest == "0x" + served.request_digest.hex()
    assert not any("key" in name for name in type(first).__dataclass_fields__)

    # on_request_finished: the webhook events' payload, one per answered request, in order
    watcher_plugin = r["watcher"]
    assert watcher_plugin.stopped
    events = r["events"]
    assert [e["event"] for e in events] == ["request_completed", "error", "error"]
    completed, refused_event, withheld_event = (e["data"] for e in events)
    assert set(completed) == WEBHOOK_KEYS_COMPLETED and set(refused_event) == WEBHOOK_KEYS_ERROR
    assert completed["model"] == "m" and completed["requested_model"] == "alias" and completed["client"] == r["client"]
    assert (
        completed["total_cost_wei"] == served.total_cost
        and completed["receipt_digest"] == "0x" + bytes(served.receipt.digest).hex()
    )
    assert (refused_event["code"], refused_event["reason"]) == ("plugin_refused", refused.error)
    assert (withheld_event["code"], withheld_event["reason"]) == ("plugin_refused", withheld.error)
    assert all(abs(e["timestamp"] - time.time()) < 600 for e in events)

    # the ledger records both refusals
    rows = ledger_rows(tmp_path)
    assert sorted((row["status"], row["reason"]) for row in rows) == [
        ("refused", "answer withheld by watcher (model m)"),
        ("refused", "prompt refused: 2 x 'forbidden' (threshold 2)"),
        ("served", None),
    ]

    # custom metrics and the plugin metrics, on the real /metrics endpoint ...
    text = r["scraped"]
    assert value(text, "lloom_executor_test_keyword_refusals_total", word="forbidden") == 1
    assert value(text, "lloom_executor_test_prompt_tokens_count") == 3
    assert value(text, "lloom_executor_test_prompt_tokens_bucket", le="+Inf") == 3
    assert value(text, "lloom_executor_requests_total", model="m", status="plugin_refused") == 2
    assert value(text, "lloom_executor_plugin_calls_total", plugin="keyword-filter", hook="check_request") == 3
    assert value(text, "lloom_executor_plugin_refusals_total", plugin="keyword-filter", hook="check_request") == 1
    assert value(text, "lloom_executor_plugin_calls_total", plugin="watcher", hook="check_response") == 2
    assert value(text, "lloom_executor_plugin_refusals_total", plugin="watcher", hook="check_response") == 1
    assert value(text, "lloom_executor_plugin_calls_total", plugin="watcher", hook="on_start") == 1
    assert "lloom_executor_plugin_errors_total" not in text
    # ... and in the push made when the node stopped
    assert gateway.pushes, "no push reached the gateway"
    assert value(gateway.pushes[-1], "lloom_executor_test_keyword_refusals_total", word="forbidden") == 1


def _cython_unavailable() -> str | None:
    missing = [name for name in ("Cython", "setuptools") if importlib.util.find_spec(name) is None]
    if missing:
        return f"{' and '.join(missing)} needed to build the extension plugin: not installed"
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler}) to build the extension plugin"
    if not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        return "no Python.h for this interpreter to build the extension plugin"
    return None


@pytest.fixture(scope="module")
def compiled_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cyfilter.pyx compiled by Cython into an extension module for this interpreter."""
    if reason := _cython_unavailable():
        pytest.skip(reason)
    build = tmp_path_factory.mktemp("cython-plugin")
    write(build / "cyfilter.pyx", CYTHON_FILTER)
    script = (
        "from setuptools import setup\n"
        "from Cython.Build import cythonize\n"
        "setup(name='cyfilter', ext_modules=cythonize(['cyfilter.pyx'], quiet=True),"
        " script_args=['build_ext', '--inplace'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=build, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    built = [p for p in build.iterdir() if p.name.startswith("cyfilter.") and p.suffix in (".so", ".pyd")]
    assert len(built) == 1, list(build.iterdir())
    return built[0]


def test_compiled_extension_plugin(tmp_path: Path, compiled_plugin: Path) -> None:
    config = config_for(
        tmp_path, [{"name": "native-filter", "path": str(compiled_plugin), "config": {"marker": "xyzzy"}, "timeout_secs": 10}]
    )
    assert load_config_errors(config_toml(tmp_path, [{"name": "native-filter", "path": str(compiled_plugin)}])) == []

    async def scenario() -> tuple[Any, Any]:
        service = service_for(config)
        addrs = await service.start()
        try:
            async with client_for(addrs[0]) as client:
                refused = await ask(client, service.identity.peer_id, "say xyzzy")
                served = await ask(client, service.identity.peer_id, "say hello")
        finally:
            await service.stop()
        return refused, served

    refused, served = asyncio.run(scenario())
    assert refused.error == "refused by compiled plugin native-filter" and refused.signature_valid
    assert served.error is None and served.content == "echo: say hello"
    module = sys.modules.get("lloom_executor_plugins.native_filter.cyfilter")
    assert module is None  # unloaded at stop (CPython keeps the extension itself for a later start)


# -- failures: fail closed, keep serving -------------------------------------------------------------------


def test_raising_and_hanging_hooks_fail_closed_and_the_node_keeps_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="lloom_executor.plugins")
    config = config_for(
        tmp_path,
        [
            {"name": "raiser", "path": str(write(tmp_path / "raiser.py", RAISER)), "timeout_secs": 10},
            {"name": "hanger", "path": str(write(tmp_path / "hanger.py", HANGER)), "timeout_secs": 1},
        ],
    )

    async def scenario() -> dict[str, Any]:
        service = service_for(config, log_interval_secs=3600)
        addrs = await service.start()
        try:
            peer = service.identity.peer_id
            async with client_for(addrs[0]) as client:
                boom = await ask(client, peer, "boom")
                boom_again = await ask(client, peer, "boom again")
                number = await ask(client, peer, "a number please")
                hang = await ask(client, peer, "hang on")
                stall = await ask(client, peer, "stall now")
                fine = await ask(client, peer, "all good")
            async with httpx.AsyncClient(trust_env=False) as http:
                scraped = (await http.get(service.metrics_server.url)).text
        finally:
            await service.stop()
        return {**locals(), "after_stop": generate_latest(service.metrics.registry).decode()}

    r = asyncio.run(scenario())
    for name in ("boom", "boom_again", "number"):
        assert r[name].error == "plugin raiser failed" and r[name].signature_valid, name
    assert r["hang"].error == "plugin hanger failed: no verdict within its time bound"
    assert r["stall"].error == "plugin hanger failed: no verdict within its time bound" and r["stall"].content == ""
    assert r["fine"].error is None and r["fine"].content == "echo: all good"

    text = r["scraped"]
    assert value(text, "lloom_executor_plugin_errors_total", plugin="raiser", hook="check_request", kind="exception") == 2
    assert value(text, "lloom_executor_plugin_errors_total", plugin="raiser", hook="check_request", kind="bad_result") == 1
    assert value(text, "lloom_executor_plugin_errors_total", plugin="hanger", hook="check_request", kind="timeout") == 1
    assert value(text, "lloom_executor_plugin_errors_total", plugin="hanger", hook="check_response", kind="timeout") == 1
    assert value(text, "lloom_executor_requests_total", model="m", status="plugin_error") == 5
    # the observer raised on each of the 6 events: counted, logged once (rate-limited), delivered until stop
    after = r["after_stop"]
    assert value(after, "lloom_executor_plugin_errors_total", plugin="raiser", hook="on_request_finished", kind="exception") == 6
    warnings = [rec for rec in caplog.records if rec.name == "lloom_executor.plugins" and rec.levelname == "WARNING"]
    observer = [rec for rec in warnings if "on_request_finished failed" in rec.getMessage()]
    assert len(observer) == 1 and "ValueError: observer bug" in observer[0].getMessage() and observer[0].exc_info
    raised = [rec for rec in warnings if "raiser: check_request failed (exception)" in rec.getMessage()]
    assert len(raised) == 1  # the second exception within the interval is held back
    assert sorted(row["reason"] for row in ledger_rows(tmp_path) if row["status"] == "refused") == [
        "plugin hanger failed: no verdict within its time bound",
        "plugin hanger failed: no verdict within its time bound",
        "plugin raiser failed",
        "plugin raiser failed",
        "plugin raiser failed",
    ]


STARTS_FINE = """
from pathlib import Path


def create_plugin(config, context):
    return Marker(Path(config["marker"]))


class Marker:
    def __init__(self, marker):
        self.marker = marker

    def on_stop(self):
        self.marker.write_text("stopped")
"""


@pytest.mark.parametrize(
    "source, problem",
    [
        (
            "import a_module_that_does_not_exist_anywhere\n",
            "failed to load: ModuleNotFoundError: No module named 'a_module_that_does_not_exist_anywhere'",
        ),
        ("def create_plugin(config, context)\n    pass\n", "failed to load: SyntaxError"),
        ("factory = None\n", "the module defines no create_plugin(config, context) function"),
        (
            "def create_plugin(config, context):\n    raise ValueError('needs a licence key')\n",
            "create_plugin failed: ValueError: needs a licence key",
        ),
        (
            (
                "class P:\n    async def on_start(self):\n        raise OSError('database unreachable')\n\n"
                "def create_plugin(config, context):\n    return P()\n"
            ),
            "on_start failed: OSError: database unreachable",
        ),
    ],
    ids=["import-error", "syntax-error", "no-factory", "factory-raises", "on-start-raises"],
)
def test_a_plugin_that_fails_to_load_stops_start(tmp_path: Path, source: str, problem: str) -> None:
    marker = tmp_path / "marker"
    broken = write(tmp_path / "broken.py", source)
    config = config_for(
        tmp_path,
        [
            {"name": "fine", "path": str(write(tmp_path / "fine.py", STARTS_FINE)), "config": {"marker": str(marker)}},
            {"name": "broken", "path": str(broken)},
        ],
    )

    async def scenario() -> ExecutorService:
        service = service_for(config)
        with pytest.raises(PluginError) as info:
            await service.start()
        assert f"plugins[1] 'broken' ({broken}): " in str(info.value)
        assert problem in str(info.value)
        return service

    service = asyncio.run(scenario())
    assert service.started_at is None and service.metrics_server is None  # nothing was served
    assert marker.read_text() == "stopped"  # the plugin started before it was stopped again
    assert not [name for name in sys.modules if name.startswith("lloom_executor_plugins.")]


def test_start_command_names_the_plugin_that_fails_to_load(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.py", "raise RuntimeError('not today')\n")
    path = config_toml(tmp_path, [{"name": "broken", "path": str(broken)}], identity=True)
    out = subprocess.run(
        [sys.executable, "-m", "lloom_executor", "start", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"Error: plugins[0] 'broken' ({broken}): failed to load: RuntimeError: not today" in out.stderr
    assert "Traceback" not in out.stderr


# -- config validate --------------------------------------------------------------------------------------


def config_toml(tmp_path: Path, plugins: list[dict[str, Any]], identity: bool = False) -> Path:
    lines = []
    if identity:
        key = _native.PrivateKey.generate().to_hex()
        for name in ("identity_key", "eth_key"):
            (tmp_path / name).write_text(key)
            (tmp_path / name).chmod(0o600)
        lines += [
            "[network]",
            'listen_address = "/ip4/127.0.0.1/tcp/0"',
            "[network.protocols]",
            "enable_mdns = false",
            "enable_autonat = false",
            "enable_relay = false",
            "[identity]",
            f'private_key_path = "{tmp_path / "identity_key"}"',
            f'ethereum_private_key_path = "{tmp_path / "eth_key"}"',
            "[llm_client]",
            'backend = "echo"',
            "[metrics]",
            "enabled = false",
            "[api]",
            "enabled = false",
            "[storage]",
            f'data_dir = "{tmp_path / "data"}"',
        ]
    for plugin in plugins:
        lines.append("[[plugins]]")
        lines += [f"{key} = {toml_value(value)}" for key, value in plugin.items()]
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"


def load_config_errors(path: Path) -> list[str]:
    try:
        load_config(path, environ={})
    except ConfigError as exc:
        return exc.problems
    return []


def test_config_validate_checks_plugin_entries(tmp_path: Path) -> None:
    ok = keyword_filter(tmp_path)
    (tmp_path / "no_init").mkdir()
    write(tmp_path / "notes.txt", "not a plugin")
    write(tmp_path / "old.cpython-310-x86_64-linux-gnu.so", "")
    path = config_toml(
        tmp_path,
        [
            {"name": "dup", "path": str(ok)},
            {"name": "dup", "path": str(ok)},
            {"name": "missing", "path": str(tmp_path / "nowhere.py")},
            {"name": "text", "path": str(tmp_path / "notes.txt")},
            {"name": "no-init", "path": str(tmp_path / "no_init")},
            {"name": "old-python", "path": str(tmp_path / "old.cpython-310-x86_64-linux-gnu.so")},
            {"name": "a-b", "path": str(ok)},
            {"name": "a_b", "path": str(ok)},
            {"name": "bad name!", "path": str(ok)},
            {"path": str(ok)},
            {"name": "no-path"},
            {"name": "slow", "path": str(ok), "timeout_secs": 0},
        ],
    )
    problems = load_config_errors(path)

    def has(where: str, message: str) -> bool:
        return any(p.startswith(where + " (line ") and p.endswith(message) for p in problems)

    assert has("plugins[1].name", "duplicate plugin name 'dup', also plugins[0]"), problems
    assert has("plugins[2].path", f"not found: {tmp_path / 'nowhere.py'}"), problems
    suffixes = ", ".join(importlib.machinery.EXTENSION_SUFFIXES)
    assert has(
        "plugins[3].path",
        f"expected a .py file, a package directory or a compiled extension module ({suffixes}), got 'notes.txt'",
    ), problems
    assert has("plugins[4].path", "is a directory without __init__.py (a plugin package needs one)"), problems
    assert has("plugins[5].path", "rebuild the plugin for this interpreter"), problems
    assert has("plugins[7].name", "duplicate plugin name 'a_b', also plugins[6] ('a-b' and 'a_b' name the same module)"), problems
    assert has(
        "plugins[8].name", "must start with a letter and hold only letters, digits, '-' and '_' (at most 64), got 'bad name!'"
    ), problems
    assert has("plugins[9].name", "required"), problems
    assert has("plugins[10].path", "required"), problems
    assert has("plugins[11].timeout_secs", "must be >= 0.001, got 0.0"), problems
    assert len(problems) == 10, problems

    result = CliRunner().invoke(cli_main, ["config", "validate", "--config", str(path)])
    assert result.exit_code == 1
    assert "duplicate plugin name 'dup'" in result.output and "10 error(s)" in result.output

    good = config_toml(tmp_path, [{"name": "keyword-filter", "path": str(ok), "config": {"threshold": 2}}])
    assert load_config_errors(good) == []


# -- custom metrics ------------------------------------------------------------------------------------------


def test_custom_metrics_names_types_and_clashes() -> None:
    counter = register_counter("test_api_events_total", "Events", labels=("kind",))
    gauge = register_gauge("lloom_executor_test_api_level", "Level")
    histogram = register_histogram("test_api_latency_seconds", "Latency", buckets=(0.1, 1.0))
    try:
        assert counter.name == "lloom_executor_test_api_events"  # prefixed; the counter's _total is its sample's
        assert register_counter("test_api_events", "Events", labels=("kind",)) is counter  # same definition: same metric
        with pytest.raises(ValueError, match="already registered as a counter"):
            register_counter("test_api_events_total", "Other help", labels=("kind",))
        with pytest.raises(
            ValueError,
            match="metric lloom_executor_requests collides with the executor.s built-in metric lloom_executor_requests",
        ):
            register_counter("requests_total", "Mine")
        with pytest.raises(ValueError, match="built-in metric lloom_executor_request_duration_seconds_count"):
            register_gauge("request_duration_seconds_count", "Mine")
        with pytest.raises(ValueError, match="collides with the custom counter lloom_executor_test_api_events"):
            register_gauge("test_api_events_total", "Mine")
        with pytest.raises(ValueError, match="collides with the custom histogram"):
            register_gauge("test_api_latency_seconds_bucket", "Mine")
        for bad in ("has:colon", "9starts_with_digit", "spa ce", ""):
            with pytest.raises(ValueError, match="must match"):
                register_gauge(bad, "Bad")
        with pytest.raises(ValueError, match="reserved for histogram buckets"):
            register_histogram("test_api_h2", "H", labels=("le",))
        with pytest.raises(ValueError, match="must not|must match"):
            register_counter("test_api_c2", "C", labels=("__internal",))
        with pytest.raises(ValueError, match="increasing"):
            register_histogram("test_api_h3", "H", buckets=(1.0, 0.5))
        with pytest.raises(ValueError, match="labels"):
            counter.inc()  # it has labels
        with pytest.raises(ValueError, match="counter only goes up"):
            counter.labels(kind="x").inc(-1)

        # thread-safe: concurrent updates all count
        def work() -> None:
            for _ in range(2000):
                counter.labels("threaded").inc()
                histogram.observe(0.5)
                gauge.inc(2)
                gauge.dec()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        counter.labels(kind="one").inc(2.5)
        histogram.observe(0.05)
        histogram.observe(5)

        text = generate_latest(metrics_module.Metrics(gpus=_NoGpus()).registry).decode()
        assert value(text, "lloom_executor_test_api_events_total", kind="threaded") == 8000
        assert value(text, "lloom_executor_test_api_events_total", kind="one") == 2.5
        assert value(text, "lloom_executor_test_api_level") == 8000
        assert value(text, "lloom_executor_test_api_latency_seconds_bucket", le="0.1") == 1
        assert value(text, "lloom_executor_test_api_latency_seconds_bucket", le="1.0") == 8001
        assert value(text, "lloom_executor_test_api_latency_seconds_bucket", le="+Inf") == 8002
        assert value(text, "lloom_executor_test_api_latency_seconds_count") == 8002
        assert value(text, "lloom_executor_test_api_latency_seconds_sum") == pytest.approx(4000 + 5.05)
        assert (
            "# TYPE lloom_executor_test_api_events counter" in text
            or "# TYPE lloom_executor_test_api_events_total counter" in text
        )
    finally:
        for metric in (counter, gauge, histogram):
            unregister_metric(metric)
    text = generate_latest(metrics_module.Metrics(gpus=_NoGpus()).registry).decode()
    assert "test_api_" not in text


def test_custom_metric_label_sets_are_bounded(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_module.custom, "MAX_CUSTOM_SERIES", 3)  # read where the bound is applied
    counter = register_counter("test_bounded_total", "Bounded", labels=("peer",))
    try:
        for i in range(5):
            counter.labels(peer=str(i)).inc()
        counter.labels(peer="0").inc()  # an existing series still counts
        text = generate_latest(metrics_module.Metrics(gpus=_NoGpus()).registry).decode()
        assert [value(text, "lloom_executor_test_bounded_total", peer=str(i)) for i in range(5)] == [2, 1, 1, None, None]
        assert sum("more than 3 label sets" in r.getMessage() for r in caplog.records) == 1
    finally:
        unregister_metric(counter)


class _NoGpus:
    available = False

    def sample(self) -> dict[str, float]:
        return {}
