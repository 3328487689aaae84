//! Linked identities on sled: the `identities` tree (provider NUL subject
//! → the link) and its index `user_identities` (user id ++ provider → the
//! identity's key). Every decision is taken by the writer on the current
//! records, so of racing links of one identity exactly one wins.

use super::*;
use crate::store::identities::{identity_key, judge_link, may_unlink};

impl SledStore {
    pub(super) async fn op_link_identity(
        &self,
        link: LinkedIdentity,
        new_user: Option<User>,
        effects: Effects,
    ) -> StoreResult<LinkOutcome> {
        self.write(move |tx| {
            let key = identity_key(&link.provider, &link.subject);
            let existing: Option<LinkedIdentity> = tx.get_json(T::Identities, &key)?;
            let ukey = user_identity_key(&link.user_id, &link.provider);
            let same_provider: Option<LinkedIdentity> = match tx.get(T::UserIdentities, &ukey)? {
                Some(k) => tx.get_json(T::Identities, &k)?,
                None => None,
            };
            let user: Option<User> = match &new_user {
                Some(u) => {
                    if existing.is_none() && tx.get(T::Emails, &email_key(&u.email))?.is_some() {
                        return Ok(LinkOutcome::EmailTaken);
                    }
                    Some(u.clone())
                }
                None => tx.get_json(T::Users, link.user_id.as_bytes())?,
            };
            if let Err(outcome) = judge_link(
                &link,
                existing.as_ref(),
                user.as_ref(),
                same_provider.as_ref(),
            ) {
                return Ok(outcome);
            }
            if let Some(u) = &new_user {
                tx.put(T::Emails, email_key(&u.email), u.id.as_bytes().to_vec());
                tx.put_user(u);
            }
            tx.put(T::UserIdentities, ukey, key.clone());
            tx.put_json(T::Identities, key, &link);
            tx.apply_effects(effects)?;
            Ok(LinkOutcome::Linked)
        })
        .await
    }

    pub(super) async fn op_find_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> StoreResult<Option<LinkedIdentity>> {
        let key = identity_key(provider, subject);
        self.read(move |t| t.get_json(T::Identities, &key)).await
    }

    pub(super) async fn op_list_identities(
        &self,
        user_id: Uuid,
    ) -> StoreResult<Vec<LinkedIdentity>> {
        self.read(move |t| {
            let mut out = Vec::new();
            for kv in t.tree(T::UserIdentities).scan_prefix(user_id.as_bytes()) {
                let (_, key) = kv.map_err(backend)?;
                if let Some(l) = t.get_json::<LinkedIdentity>(T::Identities, &key)? {
                    if l.user_id == user_id {
                        out.push(l);
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn op_unlink_identity(
        &self,
        user_id: Uuid,
        provider: String,
        effects: Effects,
    ) -> StoreResult<UnlinkOutcome> {
        self.write(move |tx| {
            let ukey = user_identity_key(&user_id, &provider);
            let Some(key) = tx.get(T::UserIdentities, &ukey)? else {
                return Ok(UnlinkOutcome::NotLinked);
            };
            let Some(link) = tx.get_json::<LinkedIdentity>(T::Identities, &key)? else {
                return Ok(UnlinkOutcome::NotLinked);
            };
            let user: User = tx
                .get_json(T::Users, user_id.as_bytes())?
                .ok_or(StoreError::Conflict)?;
            let remaining = tx
                .scan_prefix(T::UserIdentities, user_id.as_bytes())?
                .len()
                .saturating_sub(1);
            if !may_unlink(&user, remaining) {
                return Ok(UnlinkOutcome::LastMethod);
            }
            tx.remove(T::UserIdentities, ukey);
            tx.remove(T::Identities, key);
            tx.apply_effects(effects)?;
            Ok(UnlinkOutcome::Unlinked(link))
        })
        .await
    }
}
