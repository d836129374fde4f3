"""Key files and `init`: permissions, refusal to overwrite, one key two faces, clear errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from lloom_executor._native import PrivateKey
from lloom_executor.config import IdentityConfig, load_config
from lloom_executor.identity import IdentityError, create_identity, load_identity


def cfg(tmp_path: Path, eth_name: str = "eth_key") -> IdentityConfig:
    return IdentityConfig(
        private_key_path=str(tmp_path / "keys" / "identity_key"), ethereum_private_key_path=str(tmp_path / "keys" / eth_name)
    )


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_create_and_load_one_key_two_faces(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    created = create_identity(config)
    assert mode(config.private_key_path) == 0o600
    assert mode(config.ethereum_private_key_path) == 0o600
    assert mode(tmp_path / "keys") == 0o700
    loaded = load_identity(config, environ={})
    assert loaded.peer_id == created.peer_id and loaded.address == created.address
    secret = Path(config.private_key_path).read_text().strip()
    assert Account.from_key(bytes.fromhex(secret)).address == loaded.address
    assert Path(config.ethereum_private_key_path).read_text() == Path(config.private_key_path).read_text()


def test_separate_keys(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    created = create_identity(config, separate_keys=True)
    loaded = load_identity(config, environ={})
    assert loaded.p2p_key.address != loaded.eth_key.address
    assert loaded.peer_id == created.peer_id


def test_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    first = create_identity(config)
    with pytest.raises(IdentityError, match="already exists; use --force"):
        create_identity(config)
    assert load_identity(config, environ={}).address == first.address
    second = create_identity(config, force=True)
    assert second.address != first.address
    assert load_identity(config, environ={}).address == second.address


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    config = cfg(tmp_path)
    create_identity(config)
    os.chmod(config.private_key_path, 0o644)
    with pytest.raises(IdentityError, match=r"accessible by group or others \(mode 0644\); run `chmod 600"):
        load_identity(config, environ={})


@pytest.mark.parametrize("content", ["not hex at all", "00" * 32, "ab" * 31, "\xff\xfe"])
def test_corrupt_key_file_is_a_clear_error_without_the_content(tmp_path: Path, content: str) -> None:
    config = cfg(tmp_path)
    create_identity(config)
    Path(config.private_key_path).write_text(content, encoding="latin-1")
    os.chmod(config.private_key_path, 0o600)
    with pytest.raises(IdentityError) as info:
        load_identity(config, environ={})
    assert "does not hold a valid key" in str(info.value) or "cannot be read as hex" in str(info.value)
    assert content not in str(info.value)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="not found; create it with `lloom-executor init`"):
        load_identity(cfg(tmp_path), environ={})


def test_environment_key_wins(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    loaded = load_identity(cfg(tmp_path), environ={"LLOOM_PRIVATE_KEY": "0x" + key.to_hex()})
    assert loaded.address == key.address and loaded.peer_id == key.peer_id
    with pytest.raises(IdentityError, match="LLOOM_PRIVATE_KEY does not hold a valid key"):
        load_identity(cfg(tmp_path), environ={"LLOOM_PRIVATE_KEY": "zz"})


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(home)}
    env.pop("LLOOM_PRIVATE_KEY", None)
    return subprocess.run([sys.executable, "-m", "lloom_executor", *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_init_then_validate(tmp_path: Path) -> None:
    out = run_cli("init", home=tmp_path)
    assert out.returncode == 0, out.stderr
    config_path = tmp_path / ".lloom" / "executor" / "config.toml"
    assert mode(config_path) == 0o600
    loaded = load_config(config_path, environ={})
    identity = load_identity(loaded.config.identity, environ={})
    assert f"peer id:     {identity.peer_id}" in out.stdout
    assert f"EVM address: {identity.address}" in out.stdout
    assert identity.p2p_key.to_hex() not in out.stdout + out.stderr
    again = run_cli("init", home=tmp_path)
    assert again.returncode != 0 and "already exists; use --force" in again.stderr
    valid = run_cli("config", "validate", home=tmp_path)
    assert valid.returncode == 0 and "valid (0 warning(s))" in valid.stdout


def test_cli_validate_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[network]\nlisten_address = "nope"\nlisten_adress = "x"\n[request_handling]\nmax_request_size_bytes = 0\n')
    out = run_cli("config", "validate", "--config", str(path), home=tmp_path)
    assert out.returncode == 1
    assert "error: network.listen_address (line 2): not a valid multiaddr" in out.stderr
    assert "error: request_handling.max_request_size_bytes (line 5): must be >= 1, got 0" in out.stderr
    assert "warning: network.listen_adress (line 3): unknown key; did you mean 'listen_address'?" in out.stderr
    assert "2 error(s)" in out.stderr
