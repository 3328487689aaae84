//! The index of API key holders: the ids of the users who hold API keys
//! (or once did), kept in step by every write of a user record
//! ([`Tx::put_user`]), so the gateway's key index loads those users at
//! start instead of reading every account (issue 26).

use super::*;

/// In `meta`: the index was built from the users tree (once, for a data
/// dir written before it existed).
const BUILT: &[u8] = b"api_key_holders_built";

fn is_holder(u: &User) -> bool {
    u.keys_version > 0 || !u.api_keys.is_empty()
}

/// Build the index from every user, once (at open, before the writer).
pub(super) fn ensure_holders(t: &Trees) -> StoreResult<()> {
    if t.meta.get(BUILT).map_err(backend)?.is_some() {
        return Ok(());
    }
    let holders = t.tree(T::KeyHolders);
    for kv in t.tree(T::Users).iter() {
        let (k, v) = kv.map_err(backend)?;
        if is_holder(&dec(&v)?) {
            holders.insert(k, &[]).map_err(backend)?;
        }
    }
    t.db.flush().map_err(backend)?;
    t.meta.insert(BUILT, &[1]).map_err(backend)?;
    t.db.flush().map_err(backend)?;
    Ok(())
}

impl Tx<'_> {
    /// Write a user record, and keep the index in step (a user who ever
    /// held a key stays in it: cheap, and never wrong).
    pub(super) fn put_user(&mut self, u: &User) {
        let id = u.id.as_bytes().to_vec();
        if is_holder(u) {
            self.put(T::KeyHolders, id.clone(), Vec::new());
        }
        self.put_json(T::Users, id, u);
    }
}

/// The holders' records.
pub(super) fn key_holders(t: &Trees) -> StoreResult<Vec<User>> {
    let mut out = Vec::new();
    for k in t.tree(T::KeyHolders).iter().keys() {
        if let Some(u) = t.get_json(T::Users, &k.map_err(backend)?)? {
            out.push(u);
        }
    }
    Ok(out)
}
