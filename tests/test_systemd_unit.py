"""`deploy/systemd/lloom-executor.service`: verified by systemd's own tools, hardened, and its stop
timeout honoured by a real `lloom-executor start` draining requests in flight.

systemd cannot run as PID 1 in this sandbox or in CI, so the unit is not started by systemd;
instead:
1. `systemd-analyze verify` (Debian's systemd) accepts it with no warning at all (an unknown or
   misspelled key is only a warning there, so the test also shows that such a warning is seen),
   with and without the failover drop-in. ExecStart must name an existing executable for
   `verify`, so the copy under test points it at this venv's `lloom-executor`; nothing else changes.
2. `systemd-analyze security --offline=true` rates the unit's exposure "OK" (at most 2.5 of 10),
   and only the failover drop-in grants CAP_NET_ADMIN.
3. The keys an operator relies on, parsed from the file: a dedicated user, ProtectSystem=strict,
   NoNewPrivileges, LimitNOFILE, restart policy, no capability, the install writable for
   `update apply`, journald output, no ExecReload (the executor cannot reload its config).
4. SIGTERM to `lloom-executor start` with requests in flight on a slow backend: every request is
   answered and the process exits 0 well inside TimeoutStopSec.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import interop
from lloom_executor.config import RequestHandlingConfig
from openai_server import OpenAIServer
from prometheus_rig import require_binary, wait_for

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "systemd" / "lloom-executor.service"
FAILOVER = REPO / "deploy" / "systemd" / "lloom-executor-failover.conf"
INSTALLED_EXEC = "/opt/lloom-executor/venv/bin/lloom-executor"
MODEL = "gpt-3.5-turbo"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; systemd keys may repeat, so values are lists."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def unit_under_test(directory: Path) -> Path:
    """The unit with ExecStart pointing at this venv's `lloom-executor` (verify checks it exists)."""
    here = Path(sys.executable).parent / "lloom-executor"
    assert here.is_file(), here
    units = directory / "units"
    units.mkdir(exist_ok=True)
    path = units / "lloom-executor.service"
    text = UNIT.read_text()
    assert text.count(INSTALLED_EXEC) == 1
    path.write_text(text.replace(INSTALLED_EXEC, str(here)))
    return path


def analyze(*args: str, unit_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = require_binary("systemd-analyze")
    env = dict(os.environ, SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0")
    if unit_path is not None:
        env["SYSTEMD_UNIT_PATH"] = f"{unit_path}:"  # trailing colon: the default search path after it
    return subprocess.run([binary, *args], capture_output=True, text=True, env=env, timeout=60)


def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path: Path) -> None:
    unit = unit_under_test(tmp_path)
    run = analyze("verify", str(unit))
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run.stdout + run.stderr

    # with the failover drop-in beside it, as /etc/systemd/system/lloom-executor.service.d/ would hold it
    dropins = unit.parent / "lloom-executor.service.d"
    dropins.mkdir()
    shutil.copy(FAILOVER, dropins / "failover.conf")
    run = analyze("verify", str(unit), unit_path=unit.parent)
    assert run.returncode == 0 and run.stdout == "" and run.stderr == "", run.stdout + run.stderr


def test_verify_reports_a_misspelled_key(tmp_path: Path) -> None:
    """Why the test above asserts empty output: systemd only warns about an unknown key."""
    unit = unit_under_test(tmp_path)
    unit.write_text(unit.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    run = analyze("verify", str(unit))
    assert "Unknown key 'NoNewPrivilege'" in run.stderr, run.stdout + run.stderr


def exposure(run: subprocess.CompletedProcess[str]) -> float:
    match = re.search(r"Overall exposure level for lloom-executor\.service: (\d+\.\d+) (\w+)", run.stdout + run.stderr)
    assert match, run.stdout + run.stderr
    return float(match.group(1))


def test_security_exposure_is_ok_and_only_failover_has_net_admin(tmp_path: Path) -> None:
    unit = unit_under_test(tmp_path)
    primary = analyze("security", "--offline=true", "--no-pager", str(unit))
    assert exposure(primary) <= 2.5, primary.stdout
    assert re.search(r"✓ CapabilityBoundingSet=~CAP_NET_ADMIN", primary.stdout), primary.stdout
    dropins = unit.parent / "lloom-executor.service.d"
    dropins.mkdir()
    shutil.copy(FAILOVER, dropins / "failover.conf")
    backup = analyze("security", "--offline=true", "--no-pager", str(unit), unit_path=unit.parent)
    assert re.search(r"✗ CapabilityBoundingSet=~CAP_NET_ADMIN", backup.stdout), backup.stdout
    assert exposure(backup) <= 2.5, backup.stdout
    failover = parse_unit(FAILOVER.read_text())["Service"]
    assert failover["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"] and failover["AmbientCapabilities"] == ["CAP_NET_ADMIN"]


def test_the_keys_operators_rely_on() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]

    def one(key: str) -> str:
        assert len(service.get(key, [])) == 1, (key, service.get(key))
        return service[key][0]

    assert one("User") == one("Group") == "lloom"
    assert one("NoNewPrivileges") == "yes" and one("ProtectSystem") == "strict" and one("ProtectHome") == "yes"
    assert one("CapabilityBoundingSet") == "" and one("AmbientCapabilities") == ""
    assert int(one("LimitNOFILE")) >= 4096  # README: give the node ulimit -n 4096 or more
    assert one("Restart") == "on-failure" and seconds(one("RestartSec")) > 0
    assert int(unit["Unit"]["StartLimitBurst"][0]) >= 1
    # `update apply` replaces the package inside the venv ExecStart runs from: that prefix is writable
    exec_start = one("ExecStart").split()
    assert exec_start[:2] == [INSTALLED_EXEC, "start"]
    writable = service["ReadWritePaths"][0].split()
    assert any(INSTALLED_EXEC.startswith(path.rstrip("/") + "/") for path in writable), writable
    assert one("StateDirectory") == "lloom-executor" and one("UMask") == "0077"
    # SIGTERM drains for drain_timeout_secs; systemd waits longer before it kills
    assert one("KillSignal") == "SIGTERM" and one("KillMode") == "mixed"
    assert seconds(one("TimeoutStopSec")) >= RequestHandlingConfig().drain_timeout_secs + 10
    # logs to the journal; no reload (the config is read at start only)
    assert one("StandardOutput") == one("StandardError") == "journal"
    assert "ExecReload" not in service
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_sigterm_drains_in_flight_requests_within_the_stop_timeout(tmp_path: Path, interop_peer: Path) -> None:
    stop_timeout = seconds(parse_unit(UNIT.read_text())["Service"]["TimeoutStopSec"][0])
    requests = 6
    backend = OpenAIServer([{"id": MODEL, "object": "model", "state": "loaded"}], strict_models=False, latency=2.0)
    with backend:
        llm = f'backend = "lmstudio"\nbase_url = "{backend.base_url}"\ntimeout_secs = 30\nmax_retries = 0'
        config = interop.write_operator_config(tmp_path, llm=llm, models=[MODEL])
        log = tmp_path / "executor.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LLOOM_", "OPENAI_", "RUST_LOG"))}
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "lloom_executor", "start", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        client: subprocess.Popen[str] | None = None
        try:
            found = wait_for(
                lambda: re.search(r"listening on (/ip4/127\.0\.0\.1/\S+/p2p/\S+)", log.read_text()) or proc.poll() is not None,
                "the executor to listen",
                60,
            )
            assert isinstance(found, re.Match), log.read_text()
            args = interop.client_args(
                found.group(1),
                "--count",
                str(requests),
                "--concurrency",
                str(requests),
                "--inbound-price",
                str(10**12),
                "--outbound-price",
                str(2 * 10**12),
                timeout_secs=60,
            )
            client = subprocess.Popen(
                [str(interop_peer), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            wait_for(lambda: len(backend.chat_requests) == requests, "every request at the backend", 30)
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            returncode = proc.wait(timeout=stop_timeout)
            took = time.monotonic() - signalled
            out, err = client.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            if client is not None and client.poll() is None:
                client.kill()
                client.wait(10)
    assert returncode == 0, log.read_text()[-3000:]
    assert took < stop_timeout
    lines, _ = interop.parse_lines(out)
    answers = [line for line in lines if line.get("event") == "response"]
    assert len(answers) == requests and all(a["error"] is None for a in answers), (out, err)
