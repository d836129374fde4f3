//! One secp256k1 key, two faces (PROTOCOL.md §1) and the SignedMessage
//! signature scheme (§4): keccak256 of the compact serde_json of the payload,
//! 65-byte r||s||v with v in {0,1}, verified by address recovery.

use crate::types::{SignedMessage, MAX_MESSAGE_AGE_SECS};
use alloy_primitives::{keccak256, Address, Signature, B256};
use k256::ecdsa::SigningKey;
use libp2p::{identity, PeerId};
use serde::Serialize;

pub struct Identity {
    pub keypair: identity::Keypair,
    pub signing: SigningKey,
    pub address: Address,
    pub peer_id: PeerId,
}

impl Identity {
    /// From 32-byte hex (with or without 0x); a random key when `None`.
    pub fn new(hex_key: Option<&str>) -> Result<Self, String> {
        let secret: [u8; 32] = match hex_key {
            Some(h) => hex::decode(h.trim().trim_start_matches("0x"))
                .map_err(|e| format!("private key is not hex: {e}"))?
                .try_into()
                .map_err(|_| "private key must be 32 bytes".to_string())?,
            None => loop {
                let b: [u8; 32] = rand::random();
                if SigningKey::from_slice(&b).is_ok() {
                    break b;
                }
            },
        };
        let signing = SigningKey::from_slice(&secret).map_err(|e| format!("bad private key: {e}"))?;
        let sk = identity::secp256k1::SecretKey::try_from_bytes(secret)
            .map_err(|e| format!("bad private key: {e}"))?;
        let keypair: identity::Keypair = identity::secp256k1::Keypair::from(sk).into();
        Ok(Self {
            peer_id: keypair.public().to_peer_id(),
            address: Address::from_private_key(&signing),
            keypair,
            signing,
        })
    }

    /// Signs `payload` as the reference does: envelope nonce `None`.
    pub fn sign<T: Serialize>(&self, payload: T, timestamp: u64) -> SignedMessage<T> {
        let (sig, recid) = self
            .signing
            .sign_prehash_recoverable(digest(&payload).as_slice())
            .expect("signing a 32-byte digest cannot fail");
        let mut bytes = sig.to_bytes().to_vec();
        bytes.push(recid.to_byte());
        SignedMessage { payload, signer: self.address, signature: bytes.into(), timestamp, nonce: None }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn digest<T: Serialize>(payload: &T) -> B256 {
    keccak256(serde_json::to_vec(payload).expect("payload serializes to JSON"))
}

/// The address that signed the payload, from the signature alone.
pub fn recover<T: Serialize>(msg: &SignedMessage<T>) -> Result<Address, String> {
    let sig = Signature::from_raw(&msg.signature).map_err(|e| format!("bad signature: {e}"))?;
    sig.recover_address_from_prehash(&digest(&msg.payload))
        .map_err(|e| format!("recovery failed: {e}"))
}

/// Signature check only: the recovered address must equal `signer`.
pub fn verify_signature<T: Serialize>(msg: &SignedMessage<T>) -> Result<(), String> {
    let got = recover(msg)?;
    if got == msg.signer {
        Ok(())
    } else {
        Err(format!("signature mismatch: signer {} but recovered {}", msg.signer, got))
    }
}

/// The reference window: at most 300 s in the future, at most 300 s old.
pub fn check_timestamp(ts: u64) -> Result<(), String> {
    let now = now();
    if ts > now + 300 {
        return Err(format!("timestamp {ts} is too far in the future"));
    }
    if now > ts && now - ts > MAX_MESSAGE_AGE_SECS {
        return Err(format!("message is too old: age {} s exceeds {} s", now - ts, MAX_MESSAGE_AGE_SECS));
    }
    Ok(())
}

/// Lowercase 0x-hex, the JSON form of `Address` on this network.
pub fn addr_hex(a: &Address) -> String {
    format!("0x{}", hex::encode(a.as_slice()))
}
