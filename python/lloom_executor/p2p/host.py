"""Builds the py-libp2p host: one secp256k1 key as identity, TCP + Noise + Yamux (Mplex second).

The same key is the node's Ethereum key, so the PeerId (`16Uiu2…`) and the EVM
address name the same node (docs/PROTOCOL.md §1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import cast

import libp2p
import multiaddr
from libp2p.abc import IHost, IMuxedConn
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from .._native import PrivateKey
from .admission import InboundAdmission
from .inbound_fix import bound_inbound_handlers
from .inbound_gate import install_inbound_gate
from .lean_multiselect import install as install_fast_negotiation
from .lean_noise import BufferedNoiseTransport
from .lean_yamux import install as install_yamux_window_policy
from .lean_yamux import use_coalescing_yamux


def build_host(
    key: PrivateKey,
    *,
    announce_addrs: Sequence[str] = (),
    enable_mdns: bool = False,
    admission: InboundAdmission | None = None,
) -> IHost:
    """A host that speaks exactly the reference stack.

    py-libp2p runs identify against every new peer by default; reference peers
    do not serve identify, so every connection would log an error and nothing
    may depend on it (docs/PROTOCOL.md §2). We keep serving identify and ping, but do
    not ask for it.

    `admission` (per-source connection caps, handshake deadline; inbound_gate.py) replaces
    py-libp2p's single shared inbound pool; without it the host keeps py-libp2p's own limits.
    """
    install_yamux_window_policy()  # lean_yamux.py: WINDOW_UPDATE at half the window, as go/rust-yamux
    key_pair = create_new_key_pair(key.to_bytes())
    security = {TProtocol(NOISE_PROTOCOL_ID): BufferedNoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)}
    muxers: OrderedDict[TProtocol, type[IMuxedConn]] = OrderedDict(
        [(TProtocol(YAMUX_PROTOCOL_ID), Yamux), (TProtocol(MPLEX_PROTOCOL_ID), Mplex)]
    )
    host = libp2p.new_host(
        key_pair=key_pair,
        sec_opt=security,
        muxer_opt=muxers,
        enable_mDNS=enable_mdns,
        addrs_factory=_with_external(announce_addrs) if announce_addrs else None,
    )
    # private API of py-libp2p 0.8.1, see docstring; new_host builds a BasicHost, and
    # replacing the method on this one instance is the point (hence the ignore)
    cast(BasicHost, host)._schedule_identify = _no_identify  # type: ignore[method-assign]
    install_fast_negotiation(cast(BasicHost, host).multiselect)  # lean_multiselect.py
    use_coalescing_yamux(host.get_network())  # lean_yamux.py: one send per tick, not per frame
    bound_inbound_handlers(host.get_network())  # py-libp2p 0.8.1 inbound leak, see inbound_fix.py
    if admission is not None:  # after inbound_fix: the gate calls its wrapper
        install_inbound_gate(host.get_network(), admission)
    if str(host.get_id()) != key.peer_id:
        raise RuntimeError(f"py-libp2p derived PeerId {host.get_id()} but the key's PeerId is {key.peer_id}")
    return host


def _with_external(external: Sequence[str]) -> Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]]:
    """Advertise the operator's external addresses before the bound ones."""
    extra = [multiaddr.Multiaddr(a) for a in external]

    def factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        seen = {str(a) for a in extra}
        return extra + [a for a in candidates if str(a) not in seen]

    return factory


def _no_identify(peer_id: object, *, reason: str = "") -> None:
    return None


def listen_multiaddrs(host: IHost) -> list[str]:
    """The bound listen addresses, each ending in /p2p/<PeerId>."""
    peer = str(host.get_id())
    out = []
    for addr in host.get_addrs():
        text = str(addr)
        out.append(text if "/p2p/" in text else f"{text}/p2p/{peer}")
    return out
