//! API keys for machine access, checked at the edge by an in-memory lookup.
//!
//! A key is `pk_` followed by 43 URL-safe base64 characters (256 random
//! bits). Only its SHA-256 is stored (in the owner's user record, so a
//! key change is one atomic change of that record on either backend, and
//! backups and `storage migrate` carry keys with their users). A key of
//! that entropy needs no slow hash.
//!
//! The proxy's check is a hash-map lookup in [`KeyIndex`], which holds
//! every usable key: loaded from the store at start, updated by this
//! gateway right after each change it commits, and by the other gateways
//! on a shared database through the revocation feed (every change of a
//! user's keys, roles or disabled state writes a `Revocation::Keys(user)`
//! entry in the same transaction; each gateway then replaces that user's keys
//! with what the store holds). Expiry is judged at each check against
//! the clock.
//!
//! `last_used_at` is recorded in memory at each use and written to the
//! store in one change per user every [`USE_FLUSH_SECS`] seconds (and at
//! shutdown); the listing on the gateway that saw the use includes the
//! unwritten uses, so it lags only on other gateways, by at most that.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::store::{ApiKey, User};

/// What every key starts with (documented; lets secret scanners find them).
pub const PREFIX: &str = "pk_";
/// The random part, in URL-safe base64 without padding (32 bytes).
const BODY_LEN: usize = 43;
/// At most this many keys per user.
pub const MAX_KEYS_PER_USER: usize = 50;
/// At most this many scopes per key.
pub const MAX_SCOPES: usize = 32;
/// Seconds between writes of `last_used_at`.
pub const USE_FLUSH_SECS: u64 = 10;

pub use crate::names::valid_scope;

/// A fresh key.
pub fn new_key(rng: &dyn super::Entropy) -> String {
    format!("{PREFIX}{}", rng.token(32))
}

/// Does this bearer value have the shape of one of our keys? (The exact
/// prefix, case included, and the exact length.)
pub fn looks_like_key(v: &str) -> bool {
    v.len() == PREFIX.len() + BODY_LEN
        && v.starts_with(PREFIX)
        && v[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The stored form of a key.
pub fn key_hash(key: &str) -> String {
    data_encoding::HEXLOWER.encode(&digest(key))
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let v = data_encoding::HEXLOWER_PERMISSIVE
        .decode(s.as_bytes())
        .ok()?;
    v.try_into().ok()
}

/// What the proxy needs of a usable key and its owner.
#[derive(Debug)]
pub struct KeyEntry {
    pub id: Uuid,
    pub id_str: String,
    pub user_id: Uuid,
    pub user_id_str: String,
    pub email: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub rate_per_minute: u32,
    /// The key's SHA-256 (its place in the index).
    hash: [u8; 32],
}

pub use crate::tokens::rejection::KeyRejection;

#[derive(Default)]
struct Inner {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
    /// Per user: the `keys_version` loaded, and the hashes it put in.
    by_user: HashMap<Uuid, (u64, Vec<[u8; 32]>)>,
}

#[derive(Default)]
pub struct KeyIndex {
    inner: RwLock<Inner>,
    /// Uses not yet written: key id -> (owner, last use).
    uses: Mutex<HashMap<Uuid, (Uuid, i64)>>,
}

impl KeyIndex {
    pub fn new(users: &[User]) -> Self {
        let idx = Self::default();
        for u in users {
            idx.load_user(u);
        }
        idx
    }

    /// Replace what the index holds for `u` with the record's keys, unless
    /// it already holds a newer version of them.
    pub fn load_user(&self, u: &User) {
        let mut inner = self.inner.write();
        if let Some((v, _)) = inner.by_user.get(&u.id) {
            if *v > u.keys_version {
                return;
            }
        }
        if let Some((_, old)) = inner.by_user.remove(&u.id) {
            for h in old {
                inner.by_hash.remove(&h);
            }
        }
        let mut hashes = Vec::new();
        if !u.disabled {
            for k in &u.api_keys {
                let Some(h) = unhex32(&k.hash) else { continue };
                inner.by_hash.insert(
                    h,
                    Arc::new(KeyEntry {
                        id: k.id,
                        id_str: k.id.to_string(),
                        user_id: u.id,
                        user_id_str: u.id.to_string(),
                        email: u.email.clone(),
                        roles: u.roles.clone(),
                        scopes: k.scopes.clone(),
                        expires_at: k.expires_at,
                        rate_per_minute: k.rate_per_minute,
                        hash: h,
                    }),
                );
                hashes.push(h);
            }
        }
        if u.keys_version > 0 || !hashes.is_empty() {
            inner.by_user.insert(u.id, (u.keys_version, hashes));
        }
    }

    /// Drop every key of a user (before reloading them: fail closed). The
    /// version is kept, so an older record still cannot come back.
    pub fn forget_user(&self, user: Uuid) {
        let mut inner = self.inner.write();
        if let Some((v, old)) = inner.by_user.remove(&user) {
            for h in &old {
                inner.by_hash.remove(h);
            }
            inner.by_user.insert(user, (v, Vec::new()));
        }
    }

    /// The usable key `key` names at `now`.
    pub fn check(&self, key: &str, now: i64) -> Result<Arc<KeyEntry>, KeyRejection> {
        if !looks_like_key(key) {
            return Err(KeyRejection::Invalid);
        }
        let e = self
            .inner
            .read()
            .by_hash
            .get(&digest(key))
            .cloned()
            .ok_or(KeyRejection::Invalid)?;
        if e.expires_at.is_some_and(|t| t <= now) {
            return Err(KeyRejection::Expired);
        }
        Ok(e)
    }

    /// Is the key `e` was checked as still usable at `now`: not deleted,
    /// its owner not disabled (both take it out of the index, on every
    /// gateway: the revocation feed reloads a user's keys on a shared
    /// database), and not expired? Supervised tunnels ask once a tick.
    pub fn is_current(&self, e: &KeyEntry, now: i64) -> bool {
        let live = self
            .inner
            .read()
            .by_hash
            .get(&e.hash)
            .is_some_and(|x| x.id == e.id && x.user_id == e.user_id);
        live && e.expires_at.is_none_or(|t| t > now)
    }

    /// Note a use; true when it is this key's first since the last write
    /// (the audit log records those: one line per key per interval).
    pub fn record_use(&self, e: &KeyEntry, now: i64) -> bool {
        self.uses.lock().insert(e.id, (e.user_id, now)).is_none()
    }

    /// Uses noted and not yet written, of one user's keys.
    pub fn pending_uses(&self, user: Uuid) -> HashMap<Uuid, i64> {
        self.uses
            .lock()
            .iter()
            .filter(|(_, (u, _))| *u == user)
            .map(|(k, (_, at))| (*k, *at))
            .collect()
    }

    /// Take every noted use, grouped by user.
    pub fn take_uses(&self) -> HashMap<Uuid, Vec<(Uuid, i64)>> {
        let taken = std::mem::take(&mut *self.uses.lock());
        let mut out: HashMap<Uuid, Vec<(Uuid, i64)>> = HashMap::new();
        for (key, (user, at)) in taken {
            out.entry(user).or_default().push((key, at));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.inner.read().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(keys: Vec<ApiKey>, version: u64) -> User {
        User {
            email_verified: true,
            roles: vec!["r".into()],
            api_keys: keys,
            keys_version: version,
            ..User::new(Uuid::from_u128(7), "a@x.org", "", 0)
        }
    }

    fn api_key(key: &str, expires_at: Option<i64>) -> ApiKey {
        ApiKey {
            id: Uuid::new_v4(),
            hash: key_hash(key),
            name: "k".into(),
            scopes: vec!["s".into()],
            created_at: 0,
            expires_at,
            rate_per_minute: 0,
            last_used_at: None,
        }
    }

    #[test]
    fn the_stored_hash_is_lower_case_hex_as_before() {
        // Hashes already in a store were written in this exact form: a
        // change of case or encoding would orphan every existing key.
        let h = key_hash("pk_example");
        assert_eq!(
            h,
            "814ac899eaf9c497ac05636e7651ad2a949326263cee0285d61a4fd961a612a8"
        );
        assert_eq!(unhex32(&h), Some(digest("pk_example")));
        assert_eq!(unhex32(&h.to_uppercase()), Some(digest("pk_example")));
        assert_eq!(unhex32(&h[..62]), None);
        assert_eq!(unhex32(&format!("{h}00")), None);
        assert_eq!(unhex32(&h.replacen('8', "g", 1)), None);
    }

    #[test]
    fn lookup_expiry_versions_and_disabled_owners() {
        let rng = crate::accounts::OsEntropy;
        let (k1, k2) = (new_key(&rng), new_key(&rng));
        assert!(looks_like_key(&k1));
        assert!(!looks_like_key(&k1.to_uppercase()));
        assert!(!looks_like_key(&k1[..k1.len() - 1]));
        let idx = KeyIndex::new(&[user(vec![api_key(&k1, None), api_key(&k2, Some(100))], 2)]);
        assert_eq!(idx.check(&k1, 0).unwrap().roles, ["r"]);
        assert!(idx.check(&k2, 99).is_ok());
        let e1 = idx.check(&k1, 0).unwrap();
        assert!(idx.is_current(&e1, 0));
        assert_eq!(idx.check(&k2, 100).err(), Some(KeyRejection::Expired));
        // An older record never replaces a newer one.
        idx.load_user(&user(vec![], 1));
        assert!(idx.check(&k1, 0).is_ok());
        idx.load_user(&user(vec![api_key(&k2, None)], 3));
        assert_eq!(idx.check(&k1, 0).err(), Some(KeyRejection::Invalid));
        assert!(!idx.is_current(&e1, 0), "deleted");
        let e2 = idx.check(&k2, 0).unwrap();
        assert!(idx.is_current(&e2, 0));
        let mut off = user(vec![api_key(&k2, None)], 4);
        off.disabled = true;
        idx.load_user(&off);
        assert!(idx.is_empty());
        assert!(!idx.is_current(&e2, 0), "owner disabled");
        idx.forget_user(off.id);
        idx.load_user(&user(vec![api_key(&k2, None)], 3));
        assert!(idx.is_empty(), "version 4 was seen");
    }
}

/// A key to create, its fields already checked.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_in_secs: Option<u64>,
    pub rate_per_minute: u32,
}

impl super::AuthService {
    /// Create an API key (a new way in: only from a recent sign-in). The
    /// key itself is returned once, beside its stored record.
    pub async fn create_api_key(
        &self,
        claims: &crate::tokens::AccessClaims,
        new: NewApiKey,
        client: &super::Client,
    ) -> super::AccountResult<(ApiKey, String)> {
        use super::AccountError;
        self.require_recent(claims)?;
        let user = self.current_user(claims).await?;
        let now = self.clock.now();
        let key = new_key(&*self.entropy);
        let record = ApiKey {
            id: self.entropy.uuid(),
            hash: key_hash(&key),
            name: new.name,
            scopes: new.scopes,
            created_at: now,
            expires_at: new.expires_in_secs.map(|s| now + s as i64),
            rate_per_minute: new.rate_per_minute,
            last_used_at: None,
        };
        let change = crate::store::UserChange::AddApiKey {
            key: record.clone(),
            max: MAX_KEYS_PER_USER,
        };
        let notice = crate::mail::api_key_created_mail(&user.email, now);
        let ev = self
            .audit_event(&client.audit(), "api_key.created", "success", Some(user.id))
            .with("api_key_id", record.id.to_string());
        let effects = crate::store::Effects::from(notice).audit(ev);
        match self.change_user_with(user.id, change, effects).await {
            Ok(u) if !u.disabled => {}
            Ok(_) => return Err(AccountError::NotSignedIn),
            Err(crate::store::StoreError::Conflict) => {
                return Err(AccountError::invalid(
                    "name",
                    format!("an account may hold at most {MAX_KEYS_PER_USER} API keys"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        let (ev, id) = ("api_key_created", record.id.to_string());
        crate::audit::key_event(&client.audit(), ev, &id, &claims.sub);
        Ok((record, key))
    }

    /// The user's keys, each with its last use (the record's, or a newer
    /// one this gateway saw but has not written yet).
    pub async fn api_key_list(
        &self,
        claims: &crate::tokens::AccessClaims,
    ) -> super::AccountResult<Vec<(ApiKey, Option<i64>)>> {
        let user = self.current_user(claims).await?;
        let pending = self.api_keys.pending_uses(user.id);
        Ok(user
            .api_keys
            .into_iter()
            .map(|k| {
                let used = match (k.last_used_at, pending.get(&k.id)) {
                    (Some(a), Some(b)) => Some(a.max(*b)),
                    (a, b) => a.or(b.copied()),
                };
                (k, used)
            })
            .collect())
    }

    /// Revoke one of the user's own keys, on every gateway at once.
    pub async fn revoke_api_key(
        &self,
        claims: &crate::tokens::AccessClaims,
        id: &str,
        client: &super::Client,
    ) -> super::AccountResult<()> {
        use super::AccountError;
        let user = self.current_user(claims).await?;
        let id = Uuid::parse_str(id).map_err(|_| AccountError::NotFound)?;
        // Only the caller's own keys can match.
        let ev = self
            .audit_event(&client.audit(), "api_key.revoked", "success", Some(user.id))
            .with("api_key_id", id.to_string());
        match self
            .change_user_with(
                user.id,
                crate::store::UserChange::RemoveApiKey(id),
                ev.into(),
            )
            .await
        {
            Ok(_) => {}
            Err(crate::store::StoreError::Conflict) => return Err(AccountError::NotFound),
            Err(e) => return Err(e.into()),
        }
        let id = id.to_string();
        crate::audit::key_event(&client.audit(), "api_key_revoked", &id, &claims.sub);
        Ok(())
    }
}
