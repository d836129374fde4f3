"""The node's keys: hex key files (mode 0600 in a 0700 directory) or `LLOOM_PRIVATE_KEY`.

One secp256k1 key is both the libp2p identity and the Ethereum key, as the
reference network expects; separate files may hold separate keys. Key
material never appears in errors, logs or reprs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ._native import PrivateKey
from .config import IdentityConfig

ENV_KEY = "LLOOM_PRIVATE_KEY"


class IdentityError(RuntimeError):
    """A key could not be loaded or created; the message says which file and why."""


@dataclass(frozen=True)
class Identity:
    p2p_key: PrivateKey  # libp2p identity: the PeerId
    eth_key: PrivateKey  # signs answers and receipts: the EVM address
    source: str

    @property
    def peer_id(self) -> str:
        return self.p2p_key.peer_id

    @property
    def address(self) -> str:
        return self.eth_key.address


def read_key_file(path: str | Path) -> PrivateKey:
    path = Path(path).expanduser()
    try:
        info = path.stat()
    except FileNotFoundError:
        raise IdentityError(f"key file {path} not found; create it with `lloom-executor init`") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
        )
    try:
        text = path.read_text(encoding="ascii")
    except (UnicodeDecodeError, OSError) as exc:
        raise IdentityError(f"key file {path} cannot be read as hex text ({type(exc).__name__})") from None
    try:
        return PrivateKey.from_hex(text)
    except ValueError as exc:  # the message describes the shape, never the content
        raise IdentityError(f"key file {path} does not hold a valid key: {exc}") from None


def load_identity(config: IdentityConfig, environ: Mapping[str, str] | None = None) -> Identity:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_KEY):
        try:
            key = PrivateKey.from_hex(environ[ENV_KEY])
        except ValueError as exc:
            raise IdentityError(f"{ENV_KEY} does not hold a valid key: {exc}") from None
        return Identity(key, key, f"environment variable {ENV_KEY}")
    p2p_key = read_key_file(config.private_key_path)
    if Path(config.ethereum_private_key_path).expanduser() == Path(config.private_key_path).expanduser():
        eth_key = p2p_key
    else:
        eth_key = read_key_file(config.ethereum_private_key_path)
    return Identity(p2p_key, eth_key, f"key files {config.private_key_path}, {config.ethereum_private_key_path}")


def write_key_file(path: str | Path, key: PrivateKey, force: bool = False) -> Path:
    """Create `path` with mode 0600 (its directory 0700) holding the key as hex."""
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise IdentityError(f"key file {path} already exists; use --force to replace it") from None
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.to_hex() + "\n")
    os.chmod(path, 0o600)  # also when --force replaced a file with looser permissions
    return path


def create_identity(config: IdentityConfig, *, force: bool = False, separate_keys: bool = False) -> Identity:
    """New key files; by default both hold one key (one key, two faces)."""
    paths = [Path(config.private_key_path).expanduser(), Path(config.ethereum_private_key_path).expanduser()]
    if not force:
        for path in paths:
            if path.exists():
                raise IdentityError(f"key file {path} already exists; use --force to replace it")
    p2p_key = PrivateKey.generate()
    eth_key = PrivateKey.generate() if separate_keys else p2p_key
    write_key_file(paths[0], p2p_key, force=force)
    if paths[1] != paths[0]:
        write_key_file(paths[1], eth_key, force=force)
    return Identity(p2p_key, eth_key, "new key files")
