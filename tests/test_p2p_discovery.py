"""Discovery subsystems, py to py on loopback: bootstrap, Kademlia, gossipsub, announcements, mDNS,
AutoNAT, ping latency, circuit relay, and that each `enable_*` switch really removes its subsystem.

Two of our executors (P2PNode + default_services + RequestHandler +
EchoBackend) and plain py-libp2p hosts as clients/relays, all real
connections; timings are shortened through `default_services` keywords only.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

import interop
from conftest import INBOUND_PRICE_WEI, MODEL, OUTBOUND_PRICE_WEI
from interop import wait_until

EXECUTOR_KEY = b"lloom/executor"
MODEL_TOPIC = "lloom/model-announcements"
HEARTBEAT_SECS = 2.0


def network(*, bootstrap: tuple[str, ...] = (), relays: tuple[str, ...] = (), **switches: bool):
    from lloom_executor.config import NetworkConfig, ProtocolsConfig

    defaults = dict(enable_mdns=False, enable_kad=True, enable_gossipsub=True, enable_autonat=False, enable_relay=False)
    defaults.update(switches)
    return NetworkConfig(
        bootstrap_peers=bootstrap,
        relay_addresses=relays,
        announce_interval_secs=300,
        protocols=ProtocolsConfig(**defaults),
    )


def services_factory(*, fingerprint: str | None = None, **kw: Any) -> Callable[..., list]:
    """default_services with a catalog from the handler's models (prices in wei)."""
    from lloom_executor.p2p.announcements import ModelCatalog
    from lloom_executor.p2p.services import default_services

    def make(net, handler) -> list:
        catalog = ModelCatalog(list(handler.registry.models.values()), backend_type="echo")
        return default_services(
            net,
            catalog,
            heartbeat_secs=HEARTBEAT_SECS,
            ping_interval_secs=5.0,
            autonat_confirmations=1,
            mdns_fingerprint=fingerprint,
            **kw,
        )

    return make


def service(node: interop.ExecutorNode, name: str) -> Any:
    """A running service object of the node (read-only peeks from the test thread are fine for ints/dicts)."""

    async def get(rt):
        return rt.services.get(name)

    return node.call(get)


def peers_of(node: interop.ExecutorNode) -> dict[str, dict[str, Any]]:
    async def snap(rt):
        return {p["peer_id"]: p for p in rt.peers.snapshot()}

    return node.call(snap)


def handlers_of(node: interop.ExecutorNode) -> set[str]:
    async def get(rt):
        return {str(p) for p in rt.host.get_mux().handlers}

    return node.call(get)


def in_mesh(pubsub: Any, topic: str, peer_id: str) -> bool:
    """Whether a py-libp2p gossipsub client has `peer_id` in its mesh for `topic` (a read-only
    peek at the router's sets from the test thread), i.e. whether its next publish reaches that peer."""
    from libp2p.peer.id import ID

    return ID.from_base58(peer_id) in pubsub.router.mesh.get(topic, set())


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    assert wait_until(predicate, timeout, interval=0.1), f"timed out after {timeout}s waiting for: {what}"


@pytest.fixture
def pair(executor_node) -> tuple[interop.ExecutorNode, interop.ExecutorNode]:
    """Executor A, and executor B bootstrapped to A; both with kad, gossip, AutoNAT, ping."""
    a = executor_node(network=network(enable_autonat=True), services_factory=services_factory())
    b = executor_node(
        network=network(bootstrap=(a.addr,), enable_autonat=True),
        services_factory=services_factory(),
        models=(MODEL, "llama-3"),
    )
    poll(lambda: b.peer_id in peers_of(a) and a.peer_id in peers_of(b), 15, "bootstrap connection")
    return a, b


@pytest.fixture
def client() -> Iterator[interop.TrioHost]:
    with interop.trio_host() as host:
        yield host


async def _connect(host, addr: str) -> str:
    from lloom_executor.p2p.node import dial

    with trio.fail_after(10):
        return await dial(host, addr)


# -- bootstrap + Kademlia ---------------------------------------------------------------------
def test_bootstrap_and_kad_discovery_through_bootstrap_node(pair, client) -> None:
    import multiaddr
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.tools.anyio_service import background_trio_service

    a, b = pair
    kad_a, kad_b = service(a, "kad"), service(b, "kad")
    # B greeted A (FIND_NODE) and A greeted B: each routes to the other.
    poll(lambda: kad_a.find_node_ok >= 1 and kad_b.find_node_ok >= 1, 10, "FIND_NODE both ways")
    poll(lambda: kad_b.routing_table_size >= 1, 10, "A in B's routing table")
    poll(lambda: kad_b.announcements >= 2, 15, "B re-provided after reaching its bootstrap peer")

    state: dict[str, Any] = {}

    async def run_dht(host) -> None:
        dht = KadDHT(host, DHTMode.CLIENT)
        async with background_trio_service(dht):
            state["dht"] = dht
            await trio.sleep_forever()

    client.spawn(run_dht)
    poll(lambda: "dht" in state, 10, "client DHT")

    async def discover(host) -> tuple[set[str], bytes | None]:
        dht = state["dht"]
        await _connect(host, a.addr)
        info = info_from_p2p_addr(multiaddr.Multiaddr(a.addr))
        await dht.routing_table.add_peer(info, skip_server_mode_check=True)
        with trio.fail_after(20):
            providers = await dht.provider_store.find_providers(EXECUTOR_KEY, 20)
            value = await dht.get_value(EXECUTOR_KEY.decode())
        return {str(p.peer_id) for p in providers}, value

    providers, value = client.run(discover)
    assert a.peer_id in providers and b.peer_id in providers, providers
    assert value is not None and str(ID(value)) in {a.peer_id, b.peer_id}


# -- gossip: EXECUTOR_AVAILABLE and model announcements ---------------------------------------------
async def _pubsub_client(host, state: dict[str, Any]) -> None:
    from libp2p.pubsub.gossipsub import GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from lloom_executor.p2p.gossip import MESHSUB_PROTOCOLS, rust_msg_id

    router = GossipSub(protocols=MESHSUB_PROTOCOLS, degree=6, degree_low=4, degree_high=12, heartbeat_interval=1)
    ps = Pubsub(host, router, strict_signing=True, msg_id_constructor=rust_msg_id)
    async with background_trio_service(ps), background_trio_service(router):
        await ps.wait_until_ready()
        state["pubsub"] = ps
        await trio.sleep_forever()


def test_gossip_executor_available_on_subscribe(pair, client) -> None:
    a, _ = pair
    state: dict[str, Any] = {}
    client.spawn(_pubsub_client, state)
    poll(lambda: "pubsub" in state, 10, "client pubsub")

    async def listen(host) -> list[str]:
        ps = state["pubsub"]
        await _connect(host, a.addr)
        sub = await ps.subscribe("lloom/executor-announcements")
        got: list[str] = []
        with trio.move_on_after(8):
            while True:
                msg = await sub.get()
                got.append(msg.data.decode())
                if f"EXECUTOR_AVAILABLE:{a.peer_id}" in got:
                    break
        return got

    received = client.run(listen)
    assert f"EXECUTOR_AVAILABLE:{a.peer_id}" in received, received


def test_model_announcements_initial_update_removal(pair, client) -> None:
    from lloom_executor import _native
    from lloom_executor.config import ModelConfig
    from lloom_executor.p2p.announcements import ModelCatalog
    from lloom_executor.p2p.services import network_view, update_models

    a, b = pair
    gossip_a, gossip_b = service(a, "gossip"), service(b, "gossip")

    def view_of_b() -> dict[str, Any] | None:
        return a.loop.run(network_view(a.node)).get(b.peer_id)

    poll(lambda: view_of_b() is not None, 10, "B's announcement in A's view")
    first = view_of_b()
    assert first["address"] == "0x" + b.node.key.address_bytes.hex()
    assert first["prices"] == {MODEL: (INBOUND_PRICE_WEI, OUTBOUND_PRICE_WEI), "llama-3": (INBOUND_PRICE_WEI, OUTBOUND_PRICE_WEI)}
    assert gossip_a.view.received["Initial"] >= 1 and gossip_a.view.invalid == 0
    assert b.peer_id in peers_of(a) and "executor" in peers_of(a)[b.peer_id]["roles"]

    # Heartbeats keep coming (shortened period).
    poll(lambda: gossip_a.view.received["Heartbeat"] >= 1, 3 * HEARTBEAT_SECS + 2, "a heartbeat")

    # A price change is an Update; an identical model set announces nothing.
    catalog = gossip_b.catalog
    new_models = [ModelConfig(MODEL, inbound_price_wei=7, outbound_price_wei=9)]
    assert b.loop.run(update_models(b.node, catalog, new_models)) is True
    assert b.loop.run(update_models(b.node, catalog, new_models)) is False
    poll(lambda: (view_of_b() or {}).get("announcement_type") == "Update", 5, "Update in A's view")
    assert view_of_b()["prices"] == {MODEL: (7, 9)}
    assert gossip_b.published.get("Update") == 1

    # Forged and garbage announcements are counted and dropped.
    state: dict[str, Any] = {}
    client.spawn(_pubsub_client, state)
    poll(lambda: "pubsub" in state, 10, "client pubsub")
    other = _native.PrivateKey.generate()
    forged = ModelCatalog([ModelConfig("evil", inbound_price_wei=1)]).announcement(other, "Initial")
    forged["executor_peer_id"] = b.peer_id  # claims to be B, signed (validly) by someone else

    async def join(host: Any) -> None:
        await _connect(host, a.addr)
        await state["pubsub"].subscribe(MODEL_TOPIC)

    async def spam(host: Any) -> None:
        ps = state["pubsub"]
        await ps.publish(MODEL_TOPIC, b"{not json")
        await ps.publish(MODEL_TOPIC, bytes(_native.encode_model_announcement_json(other, forged, int(time.time()))))

    client.run(join)
    # a publish goes to the mesh peers of the topic: A must be in the client's mesh first
    poll(lambda: in_mesh(state["pubsub"], MODEL_TOPIC, a.peer_id), 10, "A in the client's mesh for the topic")
    client.run(spam)
    poll(lambda: gossip_a.view.invalid >= 2, 5, "two invalid announcements counted")
    assert view_of_b()["prices"] == {MODEL: (7, 9)}

    # Removal at shutdown.
    b.stop()
    poll(
        lambda: view_of_b() is None,
        5,
        f"B removed from A's view {gossip_a.view.received} {gossip_a.view.invalid} {gossip_b.published}",
    )
    assert gossip_a.view.received["Removal"] >= 1 and gossip_a.view.removed >= 1


# -- AutoNAT and ping ---------------------------------------------------------------------------------
def test_autonat_public_and_ping_latency(pair) -> None:
    a, b = pair
    nat_b = service(b, "autonat")
    poll(lambda: nat_b.reachability == "public", 15, "B judged public by A (dial-back on loopback)")
    poll(lambda: peers_of(a).get(b.peer_id, {}).get("latency_ms") is not None, 10, "A measured latency to B")
    latency = peers_of(a)[b.peer_id]["latency_ms"]
    assert 0 <= latency < 1000


# -- mDNS -------------------------------------------------------------------------------------------
def test_mdns_discovery_without_bootstrap(executor_node) -> None:
    fingerprint = uuid.uuid4().hex[:8]  # a private service name: only this test's nodes
    only_mdns = dict(enable_mdns=True, enable_kad=False, enable_gossipsub=False)
    a = executor_node(network=network(**only_mdns), services_factory=services_factory(fingerprint=fingerprint))
    b = executor_node(network=network(**only_mdns), services_factory=services_factory(fingerprint=fingerprint))
    poll(lambda: b.peer_id in peers_of(a) or a.peer_id in peers_of(b), 25, "mDNS discovery and dial")
    mdns_a, mdns_b = service(a, "mdns"), service(b, "mdns")
    assert b.peer_id in mdns_a.discovered or a.peer_id in mdns_b.discovered


def _threads_started_since(before: set[int]) -> list[str]:
    """Threads alive now that were not before, less the worker pools that
    outlive a node by design: trio's thread cache (idle workers end after 10 s)
    and the test loop's default executor (`uvloop_N`, lives as long as the loop)."""
    return [t.name for t in threading.enumerate() if t.ident not in before and not t.name.startswith(("Trio thread", "uvloop_"))]


def test_stopped_node_leaves_no_threads(executor_node, loop_thread) -> None:
    """mDNS (zeroconf runs its own threads) and gossipsub (py-libp2p's seen-message
    cache has a sweeper thread) are stopped with the node: nothing is left running."""
    before = {t.ident for t in threading.enumerate()}
    node = executor_node(
        network=network(enable_mdns=True, enable_autonat=True),
        services_factory=services_factory(fingerprint=uuid.uuid4().hex[:8]),
    )
    assert {"mdns", "gossip"} <= set(node.call(_service_names))
    assert _threads_started_since(before), "the node runs threads of its own"
    node.stop()
    wait_until(lambda: not _threads_started_since(before), 15, interval=0.1)
    assert not _threads_started_since(before)


# -- switches ----------------------------------------------------------------------------------------
KAD = "/ipfs/kad/1.0.0"
MESHSUB = "/meshsub/1.1.0"
AUTONAT = "/libp2p/autonat/1.0.0"
RELAY_STOP = "/libp2p/circuit/relay/0.2.0/stop"


def test_each_switch_removes_its_subsystem(executor_node) -> None:
    on = executor_node(
        network=network(enable_mdns=True, enable_autonat=True, enable_relay=True),
        services_factory=services_factory(fingerprint=uuid.uuid4().hex[:8]),
    )
    names_on = set(on.call(_service_names))
    assert {"bootstrap", "kad", "gossip", "mdns", "autonat", "relay", "ping"} <= names_on
    assert {KAD, MESHSUB, AUTONAT, RELAY_STOP} <= handlers_of(on)

    off = executor_node(
        network=network(enable_mdns=False, enable_kad=False, enable_gossipsub=False, enable_autonat=False, enable_relay=False),
        services_factory=services_factory(),
    )
    assert set(off.call(_service_names)) == {"bootstrap", "ping"}
    assert not {KAD, MESHSUB, AUTONAT, RELAY_STOP} & handlers_of(off)

    for switch, name, proto in (
        ("enable_kad", "kad", KAD),
        ("enable_gossipsub", "gossip", MESHSUB),
        ("enable_autonat", "autonat", AUTONAT),
        ("enable_relay", "relay", RELAY_STOP),
    ):
        node = executor_node(
            network=network(**{"enable_mdns": False, "enable_autonat": True, "enable_relay": True, switch: False}),
            services_factory=services_factory(),
        )
        assert name not in node.call(_service_names), switch
        assert proto not in handlers_of(node), switch
        node.stop()


async def _service_names(rt) -> list[str]:
    return list(rt.services)


# -- circuit relay v2 ----------------------------------------------------------------------------------
async def _run_relay(host, state: dict[str, Any]) -> None:
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.tools.anyio_service import background_trio_service

    relay = CircuitV2Protocol(host, allow_hop=True)
    async with background_trio_service(relay):
        await relay.event_started.wait()
        state["relay"] = relay
        await trio.sleep_forever()


def test_relay_reservation_and_request_through_relay(executor_node) -> None:
    from lloom_executor import _native

    with interop.trio_host() as relay, interop.trio_host() as dialer:
        rstate: dict[str, Any] = {}
        relay.spawn(_run_relay, rstate)
        poll(lambda: "relay" in rstate, 10, "relay up")
        relay_addr = relay.run(_first_addr)
        e = executor_node(
            network=network(enable_kad=False, enable_gossipsub=False, enable_relay=True, relays=(relay_addr,)),
            services_factory=services_factory(),
        )
        relay_service = service(e, "relay")
        poll(lambda: bool(relay_service.reserved), 15, "reservation on the relay")
        circuit = f"{relay_addr}/p2p-circuit/p2p/{e.peer_id}"
        assert relay_service.circuit_addrs == [f"{relay_addr}/p2p-circuit"]
        advertised = e.call(_advertised)
        assert circuit in advertised, advertised

        now = int(time.time())
        frame = bytes(
            _native.encode_signed_request(
                dialer.key,
                MODEL,
                "through the relay",
                None,
                None,
                None,
                e.peer_id,
                str(INBOUND_PRICE_WEI),
                str(OUTBOUND_PRICE_WEI),
                1,
                now + 300,
                now,
            )
        )
        answer = dialer.run(_request_via_circuit, circuit, e.peer_id, frame)
        decoded = _native.decode_response(answer)
        assert decoded.signature_valid and decoded.error is None
        assert decoded.content and "through the relay" in decoded.content
        assert bytes(decoded.signer) == bytes(e.node.key.address_bytes)
        poll(lambda: e.stats.served >= 1, 5, "the node counted the relayed request as served")


async def _first_addr(host) -> str:
    from lloom_executor.p2p.host import listen_multiaddrs

    return listen_multiaddrs(host)[0]


async def _advertised(rt) -> list[str]:
    return [str(a) for a in rt.host.get_addrs()]


async def _request_via_circuit(host, circuit: str, peer_id: str, frame: bytes) -> bytes:
    import multiaddr
    from libp2p.network.stream.exceptions import StreamEOF
    from libp2p.peer.id import ID
    from libp2p.relay.circuit_v2.config import RelayConfig
    from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
    from libp2p.relay.circuit_v2.transport import CircuitV2Transport

    from lloom_executor.p2p.llm_protocol import LLM_PROTOCOL

    transport = CircuitV2Transport(host, CircuitV2Protocol(host, allow_hop=False), RelayConfig())
    with trio.fail_after(20):
        await transport.dial(multiaddr.Multiaddr(circuit))
        stream = await host.new_stream(ID.from_base58(peer_id), [LLM_PROTOCOL])
        await stream.write(frame)
        await stream.close()
        buf = bytearray()
        while True:
            try:
                chunk = await stream.read(65536)
            except StreamEOF:
                break
            if not chunk:
                break
            buf += chunk
    return bytes(buf)
