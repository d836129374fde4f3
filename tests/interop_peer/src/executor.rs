//! `executor` mode: a minimal reference-style executor. It provides
//! b"lloom/executor" in Kademlia (provider + record), announces itself on
//! gossip when a peer subscribes, and answers every LLM request with a signed
//! "echo: <prompt>" response, or a signed error response when the request is
//! invalid (PROTOCOL.md §5).

use crate::net::{build_swarm, emit, BehaviourEvent, NetOpts};
use crate::sign::{addr_hex, check_timestamp, now, verify_signature, Identity};
use crate::types::*;
use alloy_primitives::{Address, U256};
use futures::StreamExt;
use libp2p::{gossipsub, kad, request_response as rr, swarm::SwarmEvent, Multiaddr, PeerId, Swarm};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub net: NetOpts,
    #[arg(long, default_value = "/ip4/127.0.0.1/tcp/0")]
    pub listen: Multiaddr,
    /// Delay before each answer
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Model id put in the model announcements
    #[arg(long, default_value = "gpt-3.5-turbo")]
    pub model: String,
    /// Re-provide, re-put and re-announce this often (reference default 300 s)
    #[arg(long, default_value_t = 300)]
    pub announce_interval_secs: u64,
}

type Swm = Swarm<crate::net::Behaviour>;
type Reply = (rr::ResponseChannel<ResponseMessage>, ResponseMessage);

pub async fn run(a: ExecutorArgs) -> i32 {
    let id = match Identity::new(a.net.key.as_deref()) {
        Ok(i) => i,
        Err(e) => return fail(&e),
    };
    let mut swarm = match build_swarm(&id, &a.net) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    if let Err(e) = swarm.listen_on(a.listen.clone()) {
        return fail(&format!("listen on {}: {e}", a.listen));
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let stop = tokio::time::sleep(Duration::from_secs(a.net.timeout_secs));
    tokio::pin!(stop);
    let mut announce = tokio::time::interval(Duration::from_secs(a.announce_interval_secs.max(1)));
    let mut listening = false;
    let mut nonce = 0u64;

    loop {
        tokio::select! {
            _ = &mut stop => { emit(json!({"event":"stopped","reason":"timeout"})); return 0; }
            _ = tokio::signal::ctrl_c() => { emit(json!({"event":"stopped","reason":"signal"})); return 0; }
            Some((ch, resp)) = rx.recv() => { let _ = swarm.behaviour_mut().request_response.send_response(ch, resp); }
            _ = announce.tick() => {
                advertise(&mut swarm, &id);
                if listening {
                    publish_available(&mut swarm, &id);
                    nonce += 1;
                    publish_models(&mut swarm, &id, &a.model, AnnouncementType::Heartbeat, nonce);
                }
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::NewListenAddr { address, .. } if !listening => {
                    listening = true;
                    let full = address.with_p2p(id.peer_id).unwrap();
                    emit(json!({"event":"listening","addr":full.to_string(),"peer_id":id.peer_id.to_string(),
                        "address":addr_hex(&id.address)}));
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    emit(json!({"event":"connected","peer":peer_id.to_string(),"addr":endpoint.get_remote_address().to_string()}));
                }
                SwarmEvent::ConnectionClosed { peer_id, cause, .. } => {
                    emit(json!({"event":"disconnected","peer":peer_id.to_string(),"cause":format!("{cause:?}")}));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic })) => {
                    emit(json!({"event":"peer_subscribed","peer":peer_id.to_string(),"topic":topic.as_str()}));
                    if topic.as_str() == TOPIC_EXECUTOR_ANN {
                        publish_available(&mut swarm, &id);
                    } else if topic.as_str() == TOPIC_MODEL_ANN {
                        nonce += 1;
                        publish_models(&mut swarm, &id, &a.model, AnnouncementType::Initial, nonce);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
                    emit(json!({"event":"gossip","topic":message.topic.as_str(),
                        "source":message.source.map(|p| p.to_string()),
                        "data":String::from_utf8_lossy(&message.data).chars().take(500).collect::<String>()}));
                }
                SwarmEvent::Behaviour(BehaviourEvent::Kademlia(kad::Event::InboundRequest { request })) => {
                    emit(json!({"event":"kad_inbound","request":format!("{request:?}")}));
                }
                SwarmEvent::Behaviour(BehaviourEvent::RequestResponse(ev)) => match ev {
                    rr::Event::Message { peer, message: rr::Message::Request { request, channel, .. }, .. } => {
                        let resp = answer(&id, peer, request);
                        if a.latency_ms == 0 {
                            let _ = swarm.behaviour_mut().request_response.send_response(channel, resp);
                        } else {
                            let (tx, ms) = (tx.clone(), a.latency_ms);
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                let _ = tx.send((channel, resp));
                            });
                        }
                    }
                    rr::Event::InboundFailure { peer, error, .. } => {
                        emit(json!({"event":"inbound_failure","peer":peer.to_string(),"error":error.to_string(),
                            "debug":format!("{error:?}")}));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

fn fail(msg: &str) -> i32 {
    emit(json!({"event":"error","error":msg}));
    2
}

/// Kademlia: provider record plus a value record holding our PeerId bytes.
fn advertise(swarm: &mut Swm, id: &Identity) {
    let k = &mut swarm.behaviour_mut().kademlia;
    let key = kad::RecordKey::new(&EXECUTOR_KEY);
    let _ = k.start_providing(key.clone());
    let _ = k.put_record(kad::Record::new(key, id.peer_id.to_bytes()), kad::Quorum::One);
}

fn publish_available(swarm: &mut Swm, id: &Identity) {
    let data = format!("EXECUTOR_AVAILABLE:{}", id.peer_id);
    let r = swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(TOPIC_EXECUTOR_ANN), data);
    emit(json!({"event":"published","topic":TOPIC_EXECUTOR_ANN,"error":r.err().map(|e| e.to_string())}));
}

fn publish_models(swarm: &mut Swm, id: &Identity, model: &str, kind: AnnouncementType, nonce: u64) {
    let mut metadata = serde_json::Map::new();
    metadata.insert("backend_type".into(), json!("interop"));
    let ann = ModelAnnouncement {
        executor_peer_id: id.peer_id.to_string(),
        executor_address: id.address,
        models: vec![ModelDescriptor {
            model_id: model.to_string(),
            backend_type: "interop".into(),
            capabilities: ModelCapabilities {
                max_context_length: 4096,
                features: vec!["chat".into()],
                architecture: None,
                model_size: None,
                performance: None,
                metadata,
            },
            is_available: true,
            pricing: Some(ModelPricing {
                input_token_price: "500000000000000".into(),
                output_token_price: "1000000000000000".into(),
                minimum_fee: None,
            }),
        }],
        announcement_type: kind,
        timestamp: now(),
        nonce,
        protocol_version: 1,
    };
    let data = serde_json::to_vec(&id.sign(ann, now())).unwrap();
    let r = swarm.behaviour_mut().gossipsub.publish(gossipsub::IdentTopic::new(TOPIC_MODEL_ANN), data);
    emit(json!({"event":"published","topic":TOPIC_MODEL_ANN,"announcement_type":kind,
        "error":r.err().map(|e| e.to_string())}));
}

fn answer(id: &Identity, peer: PeerId, req: RequestMessage) -> ResponseMessage {
    let ack = |ok: bool, msg: &str| {
        ResponseMessage::AcknowledgmentResponse(id.sign(
            AcknowledgmentResponse { request_id: String::new(), success: ok, message: Some(msg.into()), timestamp: now() },
            now(),
        ))
    };
    let (variant, sig, r) = match req {
        RequestMessage::SignedLlmRequest(sm) => {
            let checked = verify_signature(&sm).map_err(|e| format!("invalid signature: {e}"));
            let valid = checked.is_ok();
            let checked = checked.and_then(|_| check_timestamp(sm.timestamp));
            ("SignedLlmRequest", Some(valid), serve(id, &sm.payload, checked))
        }
        RequestMessage::LlmRequest(r) => ("LlmRequest", None, serve(id, &r, Ok(()))),
        RequestMessage::ModelAnnouncement(sm) => {
            let v = verify_signature(&sm);
            emit(json!({"event":"request","peer":peer.to_string(),"variant":"ModelAnnouncement","signature_valid":v.is_ok()}));
            return ack(v.is_ok(), "announcement received");
        }
        RequestMessage::ModelQuery(sm) | RequestMessage::ModelUpdate(sm) => {
            let v = verify_signature(&sm);
            emit(json!({"event":"request","peer":peer.to_string(),"variant":"ModelQuery/ModelUpdate","signature_valid":v.is_ok()}));
            return ack(false, "not supported by interop-peer");
        }
    };
    emit(json!({"event":"request","peer":peer.to_string(),"variant":variant,"signature_valid":sig,
        "model":r.model_used,"error":r.error}));
    ResponseMessage::SignedLlmResponse(id.sign(r, now()))
}

/// Echo the prompt, or an error answer (empty content, zero tokens, cost "0").
fn serve(id: &Identity, req: &LlmRequest, checked: Result<(), String>) -> LlmResponse {
    let result = checked
        .and_then(|_| addressed_to_us(id, &req.executor_address))
        .and_then(|_| if req.deadline < now() { Err(format!("deadline {} has passed", req.deadline)) } else { Ok(()) })
        .and_then(|_| {
            let content = format!("echo: {}", req.prompt);
            let (tin, tout) = (req.prompt.split_whitespace().count() as u64, content.split_whitespace().count() as u64);
            let price = |s: &str| U256::from_str_radix(s, 10).map_err(|e| format!("bad price {s:?}: {e}"));
            let (pin, pout) = (price(&req.inbound_price)?, price(&req.outbound_price)?);
            let cost = U256::from(tin)
                .checked_mul(pin)
                .zip(U256::from(tout).checked_mul(pout))
                .and_then(|(x, y)| x.checked_add(y))
                .ok_or("cost overflows uint256")?;
            Ok((content, tin, tout, cost))
        });
    match result {
        Ok((content, inbound_tokens, outbound_tokens, cost)) => LlmResponse {
            content,
            inbound_tokens,
            outbound_tokens,
            total_cost: cost.to_string(),
            model_used: req.model.clone(),
            error: None,
        },
        Err(e) => LlmResponse {
            content: String::new(),
            inbound_tokens: 0,
            outbound_tokens: 0,
            total_cost: "0".into(),
            model_used: req.model.clone(),
            error: Some(e),
        },
    }
}

fn addressed_to_us(id: &Identity, to: &str) -> Result<(), String> {
    let us = to == id.peer_id.to_string() || to.parse::<Address>().is_ok_and(|a| a == id.address);
    if us {
        Ok(())
    } else {
        Err(format!("request is addressed to {to}, not to this executor ({})", id.peer_id))
    }
}
