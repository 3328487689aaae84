//! The stored audit trail (CONTRACT 8.5): every audit event the service
//! records is appended to the store, in the same atomic operation as the
//! change it describes, as a hash chain.
//!
//! **Canonical encoding.** A record's `hash` is the SHA-256 (hex) of its
//! canonical bytes: for each field, in this fixed order, the field's bytes
//! preceded by their length as a 4-byte big-endian number:
//! `"portcullis-audit-v1"`, `seq` (decimal), `prev_hash`, `type`, `at`
//! (decimal unix seconds), `user_id` (hyphenated, or empty), `actor`,
//! `ip`, `user_agent`, `request_id`, `outcome`, `data` (JSON with every
//! object's keys sorted, no whitespace). An optional field also carries a
//! presence byte (`0`/`1`) before it, so `None` and `Some("")` differ.
//! `prev_hash` is the previous record's `hash`; the first record's is
//! [`GENESIS`] (64 zeros), or the hash a [`Checkpoint`] names.
//!
//! **Checkpoints.** Retention (`log.audit_retention_days`) removes the
//! oldest records and keeps a checkpoint naming the last removed record's
//! sequence and hash, signed with HMAC-SHA-256 under a key derived from
//! the gateway's refresh-token MAC key (see `crate::tokens`): a chain that
//! starts after a checkpoint must link to it, and a forged checkpoint does
//! not verify.

use data_encoding::HEXLOWER;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The `prev_hash` of the first record of a chain that starts from nothing.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit event, as the service describes it (the store adds the
/// sequence number and the hashes). Never a password, token or hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEvent {
    /// `user.created`, `user.login`, … (CONTRACT 8.5's names where one
    /// applies, else the name of the tracing audit event).
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds (the gateway's clock).
    pub at: i64,
    pub user_id: Option<Uuid>,
    /// Who acted, when it was not the user: `cli`, `admin_api`, or an
    /// admin's user id.
    #[serde(default)]
    pub actor: Option<String>,
    pub ip: String,
    pub user_agent: String,
    pub request_id: String,
    pub outcome: String,
    /// Small details (a role, a key id); `{}` when none.
    #[serde(default = "empty_object")]
    pub data: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

impl AuditEvent {
    /// An event about `user_id` caused by the client behind `ctx`.
    pub fn new(
        ctx: &super::AuditCtx<'_>,
        kind: &str,
        outcome: &str,
        user_id: Option<Uuid>,
        at: i64,
    ) -> Self {
        Self {
            kind: kind.to_string(),
            at,
            user_id,
            actor: None,
            ip: ctx.ip.to_string(),
            user_agent: ctx.user_agent.to_string(),
            request_id: ctx.request_id.to_string(),
            outcome: outcome.to_string(),
            data: empty_object(),
        }
    }

    pub fn actor(mut self, actor: Option<String>) -> Self {
        self.actor = actor;
        self
    }

    /// Add one detail to `data`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        if !self.data.is_object() {
            self.data = empty_object();
        }
        if let Value::Object(m) = &mut self.data {
            m.insert(key.to_string(), value.into());
        }
        self
    }
}

/// A stored audit record: the event, its place in the chain and its hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// The newest record of a chain: its sequence and hash (seq 0 and
/// [`GENESIS`] for an empty chain).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// Where a chain cut by retention starts: the sequence and hash of the
/// last record removed, when, and an HMAC over those (see the module).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub at: i64,
    pub mac: String,
}

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn opt_field(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => {
            out.push(1);
            field(out, s.as_bytes());
        }
        None => out.push(0),
    }
}

/// JSON with every object's keys sorted and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        Value::String(k.clone()),
                        canonical_json(&m[k.as_str()])
                    )
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => {
            let parts: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", parts.join(","))
        }
        other => other.to_string(),
    }
}

/// The canonical bytes of a record (everything but its own hash).
pub fn canonical(seq: u64, prev_hash: &str, e: &AuditEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    field(&mut out, b"portcullis-audit-v1");
    field(&mut out, seq.to_string().as_bytes());
    field(&mut out, prev_hash.as_bytes());
    field(&mut out, e.kind.as_bytes());
    field(&mut out, e.at.to_string().as_bytes());
    opt_field(&mut out, e.user_id.map(|u| u.to_string()).as_deref());
    opt_field(&mut out, e.actor.as_deref());
    field(&mut out, e.ip.as_bytes());
    field(&mut out, e.user_agent.as_bytes());
    field(&mut out, e.request_id.as_bytes());
    field(&mut out, e.outcome.as_bytes());
    field(&mut out, canonical_json(&e.data).as_bytes());
    out
}

pub fn hash_of(seq: u64, prev_hash: &str, e: &AuditEvent) -> String {
    HEXLOWER.encode(&Sha256::digest(canonical(seq, prev_hash, e)))
}

/// Link `event` after `head`: the new record (and so the new head).
pub fn link(head: &Head, event: AuditEvent) -> AuditRecord {
    let seq = head.seq + 1;
    let hash = hash_of(seq, &head.hash, &event);
    AuditRecord {
        seq,
        prev_hash: head.hash.clone(),
        hash,
        event,
    }
}

impl AuditRecord {
    pub fn head(&self) -> Head {
        Head {
            seq: self.seq,
            hash: self.hash.clone(),
        }
    }
}

/// The key a checkpoint is signed with, derived from a gateway secret.
pub fn checkpoint_key(secret: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"portcullis audit checkpoint v1");
    mac.finalize().into_bytes().to_vec()
}

fn checkpoint_bytes(seq: u64, hash: &str, at: i64) -> Vec<u8> {
    let mut out = Vec::new();
    field(&mut out, b"portcullis-audit-checkpoint-v1");
    field(&mut out, seq.to_string().as_bytes());
    field(&mut out, hash.as_bytes());
    field(&mut out, at.to_string().as_bytes());
    out
}

impl Checkpoint {
    pub fn sign(key: &[u8], seq: u64, hash: &str, at: i64) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&checkpoint_bytes(seq, hash, at));
        Checkpoint {
            seq,
            hash: hash.to_string(),
            at,
            mac: HEXLOWER.encode(&mac.finalize().into_bytes()),
        }
    }

    /// Constant-time check of the signature.
    pub fn is_signed_by(&self, key: &[u8]) -> bool {
        let Ok(given) = HEXLOWER.decode(self.mac.as_bytes()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
        mac.update(&checkpoint_bytes(self.seq, &self.hash, self.at));
        mac.verify_slice(&given).is_ok()
    }
}

/// Why a chain is not whole: the first record that does not fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The sequence number of the record (as stored, or where one is missing).
    pub seq: u64,
    pub reason: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit record {}: {}", self.seq, self.reason)
    }
}

/// Checks records one by one, in stored order (by sequence).
pub struct Verifier {
    expect: Head,
    pub checked: u64,
}

impl Verifier {
    /// Start from nothing, or from a checkpoint (already checked for its
    /// signature by the caller).
    pub fn new(from: Option<&Checkpoint>) -> Self {
        Verifier {
            expect: match from {
                Some(c) => Head {
                    seq: c.seq,
                    hash: c.hash.clone(),
                },
                None => Head::default(),
            },
            checked: 0,
        }
    }

    pub fn check(&mut self, r: &AuditRecord) -> Result<(), Break> {
        let want = self.expect.seq + 1;
        if r.seq != want {
            let reason = if r.seq > want {
                format!("expected record {want} next, found {} (removed?)", r.seq)
            } else {
                format!("out of order after record {}", self.expect.seq)
            };
            return Err(Break {
                seq: r.seq.min(want),
                reason,
            });
        }
        if r.prev_hash != self.expect.hash {
            return Err(Break {
                seq: r.seq,
                reason: "prev_hash does not match the previous record (removed or reordered?)"
                    .into(),
            });
        }
        if hash_of(r.seq, &r.prev_hash, &r.event) != r.hash {
            return Err(Break {
                seq: r.seq,
                reason: "hash does not match the record's content (edited?)".into(),
            });
        }
        self.expect = r.head();
        self.checked += 1;
        Ok(())
    }

    /// The chain's end must be the stored head (when the store has one).
    pub fn finish(&self, head: Option<&Head>) -> Result<Head, Break> {
        if let Some(h) = head {
            if h.seq != self.expect.seq || h.hash != self.expect.hash {
                return Err(Break {
                    seq: self.expect.seq + 1,
                    reason: format!(
                        "the chain ends at record {} but the head names record {} (records removed at the end?)",
                        self.expect.seq, h.seq
                    ),
                });
            }
        }
        Ok(self.expect.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str) -> AuditEvent {
        AuditEvent {
            kind: kind.into(),
            at: 1,
            user_id: None,
            actor: None,
            ip: "127.0.0.1".into(),
            user_agent: "t".into(),
            request_id: "r".into(),
            outcome: "success".into(),
            data: serde_json::json!({"b": 1, "a": [true, {"d": 1, "c": 2}]}),
        }
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&ev("x").data),
            r#"{"a":[true,{"c":2,"d":1}],"b":1}"#
        );
    }

    #[test]
    fn a_chain_verifies_and_an_edit_is_found() {
        let a = link(&Head::default(), ev("a"));
        let b = link(&a.head(), ev("b"));
        let c = link(&b.head(), ev("c"));
        let mut v = Verifier::new(None);
        for r in [&a, &b, &c] {
            v.check(r).unwrap();
        }
        assert_eq!(v.finish(Some(&c.head())).unwrap(), c.head());
        let mut edited = b.clone();
        edited.event.outcome = "failure".into();
        let mut v = Verifier::new(None);
        v.check(&a).unwrap();
        assert_eq!(v.check(&edited).unwrap_err().seq, 2);
        let mut v = Verifier::new(None);
        v.check(&a).unwrap();
        assert_eq!(v.check(&c).unwrap_err().seq, 2);
    }

    #[test]
    fn checkpoints_are_signed() {
        let key = checkpoint_key(b"secret");
        let c = Checkpoint::sign(&key, 5, GENESIS, 9);
        assert!(c.is_signed_by(&key));
        assert!(!c.is_signed_by(&checkpoint_key(b"other")));
        let forged = Checkpoint { seq: 6, ..c };
        assert!(!forged.is_signed_by(&key));
    }
}
