//! The libp2p stack of a reference Lloom node (rust-libp2p 0.56): TCP + Noise +
//! Yamux; Kademlia (/ipfs/kad/1.0.0, server mode, 60 s queries); gossipsub
//! (signed, strict validation, 10 s heartbeat); request-response CBOR on
//! /lloom/llm/1.0.0 with a 300 s timeout. Ping and identify exist only when
//! asked for, because reference peers run neither.

use crate::sign::Identity;
use crate::types::{RequestMessage, ResponseMessage, KAD_PROTOCOL, LLM_PROTOCOL, TOPICS};
use libp2p::{
    gossipsub, identify, kad, noise, ping, request_response, swarm::behaviour::toggle::Toggle,
    swarm::NetworkBehaviour, tcp, yamux, StreamProtocol, Swarm, SwarmBuilder,
};
use std::io::Write;
use std::time::Duration;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kademlia: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub request_response: request_response::cbor::Behaviour<RequestMessage, ResponseMessage>,
    pub ping: Toggle<ping::Behaviour>,
    pub identify: Toggle<identify::Behaviour>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct NetOpts {
    /// 32-byte hex secp256k1 key (libp2p identity and EVM key); random if unset
    #[arg(long, env = "LLOOM_PRIVATE_KEY")]
    pub key: Option<String>,
    /// Serve and use identify (/ipfs/id/1.0.0); reference peers do not
    #[arg(long)]
    pub identify: bool,
    /// Serve and use ping (/ipfs/ping/1.0.0); reference peers do not
    #[arg(long)]
    pub ping: bool,
    /// Swarm idle-connection timeout (rust-libp2p 0.56 default: 10 s)
    #[arg(long, default_value_t = 10)]
    pub idle_timeout_secs: u64,
    /// Overall time limit of this run
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

pub fn build_swarm(id: &Identity, opts: &NetOpts) -> Result<Swarm<Behaviour>, String> {
    let mut kad_cfg = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
    kad_cfg.set_query_timeout(Duration::from_secs(60));
    let mut kademlia = kad::Behaviour::with_config(id.peer_id, kad::store::MemoryStore::new(id.peer_id), kad_cfg);
    kademlia.set_mode(Some(kad::Mode::Server));

    let gs_cfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(10))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))?;
    let mut gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(id.keypair.clone()), gs_cfg)
        .map_err(|e| format!("gossipsub: {e}"))?;
    for t in TOPICS {
        gossipsub.subscribe(&gossipsub::IdentTopic::new(t)).map_err(|e| format!("subscribe {t}: {e}"))?;
    }

    let request_response = request_response::cbor::Behaviour::new(
        [(StreamProtocol::new(LLM_PROTOCOL), request_response::ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(300)),
    );
    let ping = Toggle::from(opts.ping.then(|| ping::Behaviour::new(ping::Config::new())));
    let identify = Toggle::from(
        opts.identify
            .then(|| identify::Behaviour::new(identify::Config::new("/lloom/1.0.0".into(), id.keypair.public()))),
    );
    let behaviour = Behaviour { kademlia, gossipsub, request_response, ping, identify };
    let idle = Duration::from_secs(opts.idle_timeout_secs);
    Ok(SwarmBuilder::with_existing_identity(id.keypair.clone())
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .map_err(|e| format!("transport: {e}"))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| format!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build())
}

/// One JSON object per line on stdout, flushed at once (the test harness reads it live).
pub fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}
