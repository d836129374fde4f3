//! `client` mode: a reference-style Lloom client. It dials a bootstrap peer,
//! discovers the executor (Kademlia, gossip or not at all), sends signed LLM
//! requests (optionally malformed on purpose) and reports every answer and
//! every model announcement it hears as one JSON line.

use crate::net::{build_swarm, emit, BehaviourEvent, NetOpts};
use crate::sign::{addr_hex, check_timestamp, now, verify_signature, Identity};
use crate::types::*;
use alloy_primitives::Address;
use futures::StreamExt;
use libp2p::{
    gossipsub, kad, multiaddr::Protocol, request_response as rr, swarm::SwarmEvent, Multiaddr, PeerId,
};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum Discover {
    Kad,
    Gossip,
    None,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum AddrMode {
    #[value(name = "peer_id", alias = "peer-id")]
    PeerId,
    Evm,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    pub net: NetOpts,
    /// Bootstrap multiaddr, ending in /p2p/<PeerId>
    #[arg(long)]
    pub bootstrap: Multiaddr,
    #[arg(long, value_enum, default_value = "none")]
    pub discover: Discover,
    /// Do not put the bootstrap peer into the Kademlia routing table by hand: with
    /// `--discover kad` the executor is then found only if it makes a Kademlia
    /// request to us first (FIND_NODE on connect, PROTOCOL.md §6 (a)), as for a
    /// reference client that runs no identify
    #[arg(long)]
    pub no_add_address: bool,
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub model: String,
    #[arg(long, default_value = "Hello from interop-peer")]
    pub prompt: String,
    #[arg(long)]
    pub system_prompt: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Send every request with the same prompt (identical digests: a replay test);
    /// otherwise prompt i gets " [i]" appended when --count > 1
    #[arg(long)]
    pub same_prompt: bool,
    /// Send LlmRequest instead of SignedLlmRequest
    #[arg(long)]
    pub unsigned: bool,
    /// Sign with a timestamp 400 s in the past
    #[arg(long)]
    pub stale_timestamp: bool,
    /// Corrupt the signature after signing
    #[arg(long)]
    pub bad_signature: bool,
    /// Address the request to some other peer
    #[arg(long)]
    pub wrong_executor: bool,
    /// Pad the prompt so that the request's CBOR exceeds N bytes
    #[arg(long)]
    pub oversize_bytes: Option<usize>,
    /// Keep listening to gossip this long after the last answer
    #[arg(long, default_value_t = 0)]
    pub listen_gossip_secs: u64,
    #[arg(long, value_enum, default_value = "peer_id")]
    pub executor_address_mode: AddrMode,
    #[arg(long, default_value = "500000000000000")]
    pub inbound_price: String,
    #[arg(long, default_value = "1000000000000000")]
    pub outbound_price: String,
    #[arg(long)]
    pub max_tokens: Option<u32>,
    #[arg(long)]
    pub temperature: Option<f32>,
}

/// How long to wait for an announcement that tells the executor's EVM address
/// (the reference heartbeat period is 30 s).
const EVM_WAIT: Duration = Duration::from_secs(35);

struct Run {
    executor: Option<PeerId>,
    evm: HashMap<String, Address>,
    seen: HashSet<(String, PeerId)>,
    kad_pending: HashSet<kad::QueryId>,
    first_found: Option<Instant>,
    next_index: usize,
    in_flight: HashMap<rr::OutboundRequestId, (usize, Instant)>,
    ok: usize,
    failed: usize,
    all_good: bool,
    started: Option<Instant>,
    done_at: Option<Instant>,
}

pub async fn run(a: ClientArgs) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(a.net.timeout_secs);
    let id = match Identity::new(a.net.key.as_deref()) {
        Ok(i) => i,
        Err(e) => return fail(2, &e),
    };
    let Some(Protocol::P2p(boot_peer)) = a.bootstrap.iter().last() else {
        return fail(2, "--bootstrap must end in /p2p/<PeerId>");
    };
    let mut boot_addr = a.bootstrap.clone();
    boot_addr.pop();
    let mut swarm = match build_swarm(&id, &a.net) {
        Ok(s) => s,
        Err(e) => return fail(2, &e),
    };
    emit(json!({"event":"identity","peer_id":id.peer_id.to_string(),"address":addr_hex(&id.address)}));
    if !a.no_add_address {
        swarm.behaviour_mut().kademlia.add_address(&boot_peer, boot_addr);
    }
    if let Err(e) = swarm.dial(a.bootstrap.clone()) {
        return fail(2, &format!("dial {}: {e}", a.bootstrap));
    }

    let mut st = Run {
        executor: None,
        evm: HashMap::new(),
        seen: HashSet::new(),
        kad_pending: HashSet::new(),
        first_found: None,
        next_index: 0,
        in_flight: HashMap::new(),
        ok: 0,
        failed: 0,
        all_good: true,
        started: None,
        done_at: None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut connected = false;
    let mut kad_retry_at: Option<Instant> = None;
    let mut evm_wait_until: Option<Instant> = None;

    loop {
        let event = tokio::select! {
            ev = swarm.select_next_some() => Some(ev),
            _ = tick.tick() => None,
        };
        let now_i = Instant::now();
        if now_i > deadline {
            emit(json!({"event":"timeout","after_secs":a.net.timeout_secs}));
            summary(&st, &a);
            return 2;
        }
        if let Some(ev) = event {
            match ev {
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    emit(json!({"event":"connected","peer":peer_id.to_string(),"addr":endpoint.get_remote_address().to_string()}));
                    if peer_id == boot_peer && !connected {
                        connected = true;
                        match a.discover {
                            Discover::None => found(&mut st, "bootstrap", boot_peer),
                            Discover::Kad => kad_query(&mut swarm, &mut st),
                            Discover::Gossip => {}
                        }
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    emit(json!({"event":"disconnected","peer":peer_id.to_string(),"cause":format!("{cause:?}")}));
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    emit(json!({"event":"dial_failed","peer":peer_id.map(|p| p.to_string()),"error":error.to_string()}));
                    if peer_id == Some(boot_peer) && !connected {
                        summary(&st, &a);
                        return 2;
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kademlia(ev)) => on_kad(ev, &mut st, &a),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    on_gossip(message, &mut st, &a)
                }
                SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(ev)) => on_rr(ev, &mut st),
                _ => {}
            }
        }

        // Kademlia discovery: proceed once both queries ended, or 3 s after a first hit;
        // with nothing found, ask again every 2 s (as reference clients do).
        if a.discover == Discover::Kad && connected && st.started.is_none() {
            if st.executor.is_none() && st.kad_pending.is_empty() {
                match kad_retry_at {
                    None => kad_retry_at = Some(now_i + Duration::from_secs(2)),
                    Some(t) if now_i >= t => {
                        kad_retry_at = None;
                        kad_query(&mut swarm, &mut st);
                    }
                    _ => {}
                }
            }
        }
        let discovery_done = match a.discover {
            Discover::Kad => {
                st.executor.is_some()
                    && (st.kad_pending.is_empty()
                        || st.first_found.is_some_and(|t| now_i.duration_since(t) > Duration::from_secs(3)))
            }
            _ => st.executor.is_some(),
        };
        if st.started.is_none() && discovery_done {
            let exec = st.executor.unwrap();
            if a.executor_address_mode == AddrMode::Evm && !st.evm.contains_key(&exec.to_string()) {
                let until = *evm_wait_until.get_or_insert(now_i + EVM_WAIT);
                if now_i < until {
                    continue;
                }
                emit(json!({"event":"error","error":format!("EVM address of executor {exec} unknown: no model announcement heard")}));
                summary(&st, &a);
                return 2;
            }
            st.started = Some(now_i);
        }

        if st.started.is_some() && st.done_at.is_none() {
            let exec = st.executor.unwrap();
            while st.next_index < a.count && st.in_flight.len() < a.concurrency.max(1) {
                let i = st.next_index;
                st.next_index += 1;
                let msg = build_request(&a, &id, i, exec, st.evm.get(&exec.to_string()).copied());
                let rid = swarm.behaviour_mut().request_response.send_request(&exec, msg);
                st.in_flight.insert(rid, (i, Instant::now()));
            }
            if st.next_index >= a.count && st.in_flight.is_empty() {
                summary(&st, &a);
                st.done_at = Some(now_i);
            }
        }
        if let Some(t) = st.done_at {
            if now_i.duration_since(t) >= Duration::from_secs(a.listen_gossip_secs) {
                return if st.all_good && st.failed == 0 { 0 } else { 1 };
            }
        }
    }
}

fn fail(code: i32, msg: &str) -> i32 {
    emit(json!({"event":"error","error":msg}));
    code
}

fn summary(st: &Run, a: &ClientArgs) {
    let elapsed = st.started.map(|t| t.elapsed()).unwrap_or_default();
    let done = st.ok + st.failed;
    let rps = if elapsed.as_secs_f64() > 0.0 { done as f64 / elapsed.as_secs_f64() } else { 0.0 };
    emit(json!({"event":"summary","sent":st.next_index,"requested":a.count,"ok":st.ok,"failed":st.failed,
        "elapsed_ms":elapsed.as_millis() as u64,"requests_per_sec":(rps * 100.0).round() / 100.0}));
}

fn found(st: &mut Run, via: &str, peer: PeerId) {
    if st.seen.insert((via.to_string(), peer)) {
        emit(json!({"event":"discovered","via":via,"peer":peer.to_string()}));
    }
    if st.executor.is_none() {
        st.executor = Some(peer);
        st.first_found = Some(Instant::now());
    }
}

fn kad_query(swarm: &mut libp2p::Swarm<crate::net::Behaviour>, st: &mut Run) {
    let k = swarm.behaviour_mut();
    st.kad_pending.insert(k.kademlia.get_providers(kad::RecordKey::new(&EXECUTOR_KEY)));
    st.kad_pending.insert(k.kademlia.get_record(kad::RecordKey::new(&EXECUTOR_KEY)));
}

fn on_kad(ev: kad::Event, st: &mut Run, a: &ClientArgs) {
    let kad::Event::OutboundQueryProgressed { id, result, step, .. } = ev else { return };
    if step.last {
        st.kad_pending.remove(&id);
    }
    match result {
        kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
            for p in providers {
                found(st, "kad_providers", p);
            }
        }
        kad::QueryResult::GetRecord(Ok(kad::GetRecordOk::FoundRecord(r))) => {
            if r.record.key.as_ref() == EXECUTOR_KEY {
                match PeerId::from_bytes(&r.record.value) {
                    Ok(p) => found(st, "kad_record", p),
                    Err(e) => emit(json!({"event":"kad_record_invalid","error":e.to_string()})),
                }
            }
        }
        kad::QueryResult::GetProviders(Err(e)) => emit(json!({"event":"kad_query","query":"get_providers","error":e.to_string()})),
        kad::QueryResult::GetRecord(Err(e)) if a.discover == Discover::Kad => {
            emit(json!({"event":"kad_query","query":"get_record","error":e.to_string()}))
        }
        _ => {}
    }
}

fn on_gossip(m: gossipsub::Message, st: &mut Run, a: &ClientArgs) {
    let topic = m.topic.as_str().to_string();
    let source = m.source.map(|p| p.to_string());
    if topic == TOPIC_MODEL_ANN {
        match serde_json::from_slice::<SignedMessage<ModelAnnouncement>>(&m.data) {
            Ok(sm) => {
                let valid = verify_signature(&sm);
                let p = &sm.payload;
                if valid.is_ok() {
                    st.evm.insert(p.executor_peer_id.clone(), p.executor_address);
                }
                emit(json!({"event":"model_announcement","announcement_type":p.announcement_type,
                    "executor_peer_id":p.executor_peer_id,"executor_address":addr_hex(&p.executor_address),
                    "models":p.models.iter().map(|d| d.model_id.clone()).collect::<Vec<_>>(),
                    "signature_valid":valid.is_ok(),"verify_error":valid.err(),"signer":addr_hex(&sm.signer),
                    "timestamp_ok":check_timestamp(sm.timestamp).is_ok(),"source":source}));
            }
            Err(e) => emit(json!({"event":"model_announcement_invalid","error":e.to_string(),"source":source,
                "data":String::from_utf8_lossy(&m.data)})),
        }
        return;
    }
    let text = String::from_utf8_lossy(&m.data).to_string();
    if topic == TOPIC_EXECUTOR_ANN {
        if let Some(p) = text.strip_prefix("EXECUTOR_AVAILABLE:").and_then(|s| s.trim().parse::<PeerId>().ok()) {
            emit(json!({"event":"executor_available","peer":p.to_string(),"source":source}));
            if a.discover == Discover::Gossip {
                found(st, "gossip", p);
            }
            return;
        }
    }
    let shown: String = text.chars().take(500).collect();
    emit(json!({"event":"gossip","topic":topic,"source":source,"data":shown}));
}

fn on_rr(ev: rr::Event<RequestMessage, ResponseMessage>, st: &mut Run) {
    match ev {
        rr::Event::Message { message: rr::Message::Response { request_id, response }, .. } => {
            let Some((i, t0)) = st.in_flight.remove(&request_id) else { return };
            let latency = t0.elapsed().as_millis() as u64;
            st.ok += 1;
            let mut line = json!({"event":"response","index":i,"variant":response.variant(),"latency_ms":latency});
            let (payload, good) = match &response {
                ResponseMessage::SignedLlmResponse(sm) => {
                    let v = verify_signature(sm);
                    line["signature_valid"] = json!(v.is_ok());
                    line["verify_error"] = json!(v.as_ref().err());
                    line["signer"] = json!(addr_hex(&sm.signer));
                    line["timestamp_ok"] = json!(check_timestamp(sm.timestamp).is_ok());
                    line["envelope_nonce"] = json!(sm.nonce);
                    (Some(&sm.payload), v.is_ok())
                }
                ResponseMessage::LlmResponse(r) => {
                    line["signature_valid"] = json!(null);
                    (Some(r), true)
                }
                other => {
                    line["body"] = serde_json::to_value(other).unwrap_or_default();
                    (None, false)
                }
            };
            if let Some(r) = payload {
                for (k, v) in serde_json::to_value(r).unwrap().as_object().unwrap() {
                    line[k] = v.clone();
                }
            }
            st.all_good &= good && payload.is_some_and(|r| r.error.is_none());
            emit(line);
        }
        rr::Event::OutboundFailure { request_id, error, .. } => {
            let Some((i, t0)) = st.in_flight.remove(&request_id) else { return };
            st.failed += 1;
            emit(json!({"event":"request_failed","index":i,"error":error.to_string(),"debug":format!("{error:?}"),
                "latency_ms":t0.elapsed().as_millis() as u64}));
        }
        rr::Event::Message { message: rr::Message::Request { .. }, peer, .. } => {
            emit(json!({"event":"unexpected_inbound_request","peer":peer.to_string()}));
        }
        _ => {}
    }
}

fn build_request(a: &ClientArgs, id: &Identity, i: usize, exec: PeerId, evm: Option<Address>) -> RequestMessage {
    let mut prompt = if a.count > 1 && !a.same_prompt { format!("{} [{i}]", a.prompt) } else { a.prompt.clone() };
    if let Some(n) = a.oversize_bytes {
        prompt.push(' ');
        prompt.push_str(&"x".repeat(n));
    }
    let executor_address = match (a.wrong_executor, a.executor_address_mode) {
        (true, AddrMode::PeerId) => PeerId::random().to_string(),
        (true, AddrMode::Evm) => Address::from(rand::random::<[u8; 20]>()).to_checksum(None),
        (false, AddrMode::PeerId) => exec.to_string(),
        (false, AddrMode::Evm) => evm.expect("checked before sending").to_checksum(None),
    };
    let req = LlmRequest {
        model: a.model.clone(),
        prompt,
        system_prompt: a.system_prompt.clone(),
        temperature: a.temperature,
        max_tokens: a.max_tokens,
        executor_address,
        inbound_price: a.inbound_price.clone(),
        outbound_price: a.outbound_price.clone(),
        nonce: 1,
        deadline: now() + 300,
    };
    let msg = if a.unsigned {
        RequestMessage::LlmRequest(req)
    } else {
        let ts = if a.stale_timestamp { now() - 400 } else { now() };
        let mut sm = id.sign(req, ts);
        if a.bad_signature {
            let mut b = sm.signature.to_vec();
            b[10] ^= 0xff;
            sm.signature = b.into();
        }
        RequestMessage::SignedLlmRequest(sm)
    };
    if a.oversize_bytes.is_some() {
        let size = cbor4ii::serde::to_vec(Vec::new(), &msg).map(|v| v.len()).unwrap_or(0);
        emit(json!({"event":"oversize_request","index":i,"cbor_bytes":size}));
    }
    msg
}
