//! The trees of the sled store and how keys and values are encoded in them.

use serde::{de::DeserializeOwned, Serialize};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(super) enum T {
    Users = 0,
    Emails,
    Sessions,
    UserSessions,
    Revoked,
    Cutoffs,
    OneTime,
    OneTimeSeq,
    Counters,
    Outbox,
    // Appended (an intent record names trees by their place).
    RevLog,
    LogState,
    KeyHolders,
    // The audit chain: records by sequence, the indexes by user and by
    // time, the head, and the checkpoint retention left.
    Audit,
    AuditByUser,
    AuditByTime,
    AuditHead,
    AuditCheckpoint,
    Identities,
    UserIdentities,
}

pub(super) const TREES: [(T, &str); 20] = [
    (T::Users, "users"),
    (T::Emails, "emails"),
    (T::Sessions, "sessions"),
    (T::UserSessions, "user_sessions"),
    (T::Revoked, "revoked"),
    (T::Cutoffs, "cutoffs"),
    (T::OneTime, "one_time"),
    (T::OneTimeSeq, "one_time_seq"),
    (T::Counters, "counters"),
    (T::Outbox, "outbox"),
    // Every revocation under a sequence number, until a snapshot holds it
    // (see `snapshot`), and that log's id, next number and trim point.
    (T::RevLog, "revocation_log"),
    (T::LogState, "revocation_log_state"),
    // The ids of the users who hold API keys (or held them): what the key
    // index loads at start, instead of every user.
    (T::KeyHolders, "api_key_holders"),
    (T::Audit, "audit"),
    (T::AuditByUser, "audit_by_user"),
    (T::AuditByTime, "audit_by_time"),
    (T::AuditHead, "audit_head"),
    (T::AuditCheckpoint, "audit_checkpoint"),
    // Linked identities (CONTRACT 8.1): provider NUL subject -> the link;
    // and the index user id ++ provider -> nothing.
    (T::Identities, "identities"),
    (T::UserIdentities, "user_identities"),
];

/// The one key of the `audit_head` and `audit_checkpoint` trees.
pub(super) const AUDIT_ONE: &[u8] = b"one";

pub(super) fn audit_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

pub(super) fn audit_user_key(user: &Uuid, seq: u64) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Time first (sign flipped so negative times sort first), then sequence.
pub(super) fn audit_time_key(at: i64, seq: u64) -> Vec<u8> {
    let mut k = ((at as u64) ^ (1 << 63)).to_be_bytes().to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) struct Trees {
    pub(super) db: ::sled::Db,
    pub(super) meta: ::sled::Tree,
    pub(super) trees: Vec<::sled::Tree>,
}

impl Trees {
    pub(super) fn tree(&self, t: T) -> &::sled::Tree {
        &self.trees[t as usize]
    }

    pub(super) fn get_json<V: DeserializeOwned>(&self, t: T, key: &[u8]) -> StoreResult<Option<V>> {
        match self.tree(t).get(key).map_err(backend)? {
            Some(v) => Ok(Some(dec(&v)?)),
            None => Ok(None),
        }
    }

    pub(super) fn list_json<V: DeserializeOwned>(&self, t: T) -> StoreResult<Vec<V>> {
        self.tree(t)
            .iter()
            .map(|kv| kv.map_err(backend).and_then(|(_, v)| dec(&v)))
            .collect()
    }
}

pub(super) fn backend(e: ::sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn enc<V: Serialize>(v: &V) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

pub(super) fn dec<V: DeserializeOwned>(b: &[u8]) -> StoreResult<V> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn decode_i64(v: &[u8], what: &str) -> StoreResult<i64> {
    v.try_into()
        .map(i64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt(what.into()))
}

pub(super) fn decode_uuid(v: &[u8]) -> StoreResult<Uuid> {
    Uuid::from_slice(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The unique-email index key: the whole (already normalized) address
/// case-folded, so `Ops@x.org` and `ops@x.org` are one account while the
/// record keeps the spelling the user chose.
pub(super) fn email_key(email: &str) -> Vec<u8> {
    email.to_lowercase().into_bytes()
}

pub(super) fn user_session_key(user: &Uuid, sid: &Uuid) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.extend_from_slice(sid.as_bytes());
    k
}

pub(super) fn seq_key(user: &Uuid, kind: OneTimeKind) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(kind as u8);
    k
}

/// Revocations live in two trees: `revoked` (`jti:<uuid>` / `sid:<uuid>`
/// to the time the entry may go) and `cutoffs` (user id to the cutoff).
pub(super) fn revocation_entry(r: &Revocation) -> (T, Vec<u8>, i64) {
    match *r {
        Revocation::Token(jti, until) => (T::Revoked, format!("jti:{jti}").into_bytes(), until),
        Revocation::Session(sid, until) => (T::Revoked, format!("sid:{sid}").into_bytes(), until),
        Revocation::Keys(user, until) => (T::Revoked, format!("keys:{user}").into_bytes(), until),
        Revocation::Cutoff(user, at) => (T::Cutoffs, user.as_bytes().to_vec(), at),
    }
}

pub(super) fn parse_revoked(k: &[u8], v: &[u8]) -> StoreResult<Revocation> {
    let until = decode_i64(v, "revocation")?;
    let k = std::str::from_utf8(k).map_err(|_| StoreError::Corrupt("revocation key".into()))?;
    let id = |s: &str| {
        Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("revocation key {k}")))
    };
    match k.split_once(':') {
        Some(("jti", s)) => Ok(Revocation::Token(id(s)?, until)),
        Some(("sid", s)) => Ok(Revocation::Session(id(s)?, until)),
        Some(("keys", s)) => Ok(Revocation::Keys(id(s)?, until)),
        _ => Err(StoreError::Corrupt(format!("revocation key {k}"))),
    }
}

/// `user_identities`: the user's id, then the provider.
pub(super) fn user_identity_key(user: &Uuid, provider: &str) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.extend_from_slice(provider.as_bytes());
    k
}
