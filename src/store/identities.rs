//! Linked identities (CONTRACT 8.1): an identity at an outside provider,
//! `(provider, subject)`, belongs to at most one local user, and a user has
//! at most one identity per provider. The records and the rules every
//! backend applies to the current state inside its own atomic step.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::User;

/// One identity at an outside provider, linked to a local user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedIdentity {
    /// The provider's `id` in `[[identity_providers]]`.
    pub provider: String,
    /// The provider's stable identifier of the person (`sub`, or the
    /// configured `subject_claim`).
    pub subject: String,
    pub user_id: Uuid,
    /// The email the provider gave at link time (for display only).
    #[serde(default)]
    pub email: Option<String>,
    pub linked_at: i64,
}

/// What [`super::Store::link_identity`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// The identity is now linked (and the new user, when one was given,
    /// created in the same step).
    Linked,
    /// This identity was already linked to this user: nothing changed.
    AlreadyLinked,
    /// The identity belongs to another user (`identity_taken`).
    Taken,
    /// The user already has another identity at this provider.
    ProviderInUse,
    /// The user does not exist or is disabled.
    NoUser,
    /// The new user's email is taken (a first sign-in that races another
    /// account's creation).
    EmailTaken,
}

/// What [`super::Store::unlink_identity`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlinkOutcome {
    Unlinked(LinkedIdentity),
    /// The user has no identity at that provider.
    NotLinked,
    /// It is the user's last way to sign in (`last_sign_in_method`).
    LastMethod,
}

/// The sled key of an identity: provider, a NUL, subject (provider ids are
/// `[a-z0-9-]`, so the split is unambiguous).
pub fn identity_key(provider: &str, subject: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(provider.len() + 1 + subject.len());
    k.extend_from_slice(provider.as_bytes());
    k.push(0);
    k.extend_from_slice(subject.as_bytes());
    k
}

/// Whether the account can sign in without any linked identity: a
/// password (accounts created by a federated sign-in have none until one
/// is set through a reset) or a passkey.
pub fn has_local_sign_in(user: &User) -> bool {
    !user.password_hash.is_empty() || !user.passkeys.is_empty()
}

/// The link rule, on the current state: `existing` is the identity's
/// current owner record (if any), `user` the target as it is now (`None`
/// when it does not exist), `same_provider` whether the user already has an
/// identity at this provider.
pub fn judge_link(
    link: &LinkedIdentity,
    existing: Option<&LinkedIdentity>,
    user: Option<&User>,
    same_provider: Option<&LinkedIdentity>,
) -> Result<(), LinkOutcome> {
    if let Some(e) = existing {
        return Err(if e.user_id == link.user_id {
            LinkOutcome::AlreadyLinked
        } else {
            LinkOutcome::Taken
        });
    }
    match user {
        Some(u) if !u.disabled => {}
        _ => return Err(LinkOutcome::NoUser),
    }
    if same_provider.is_some() {
        return Err(LinkOutcome::ProviderInUse);
    }
    Ok(())
}

/// The unlink rule: `remaining` is how many identities the user keeps.
pub fn may_unlink(user: &User, remaining: usize) -> bool {
    remaining > 0 || has_local_sign_in(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(user: Uuid) -> LinkedIdentity {
        LinkedIdentity {
            provider: "corp".into(),
            subject: "s1".into(),
            user_id: user,
            email: None,
            linked_at: 1,
        }
    }

    #[test]
    fn an_identity_links_once_to_an_enabled_user_once_per_provider() {
        let u = User::new(Uuid::new_v4(), "a@x.org", "h", 0);
        let l = link(u.id);
        assert_eq!(judge_link(&l, None, Some(&u), None), Ok(()));
        assert_eq!(
            judge_link(&l, Some(&l), Some(&u), None),
            Err(LinkOutcome::AlreadyLinked)
        );
        let other = link(Uuid::new_v4());
        assert_eq!(
            judge_link(&l, Some(&other), Some(&u), None),
            Err(LinkOutcome::Taken)
        );
        assert_eq!(judge_link(&l, None, None, None), Err(LinkOutcome::NoUser));
        let disabled = User {
            disabled: true,
            ..u.clone()
        };
        assert_eq!(
            judge_link(&l, None, Some(&disabled), None),
            Err(LinkOutcome::NoUser)
        );
        let prior = LinkedIdentity {
            subject: "s0".into(),
            ..l.clone()
        };
        assert_eq!(
            judge_link(&l, None, Some(&u), Some(&prior)),
            Err(LinkOutcome::ProviderInUse)
        );
    }

    #[test]
    fn the_last_way_to_sign_in_stays() {
        let with_password = User::new(Uuid::new_v4(), "a@x.org", "h", 0);
        let federated_only = User::new(Uuid::new_v4(), "b@x.org", "", 0);
        assert!(may_unlink(&with_password, 0));
        assert!(!may_unlink(&federated_only, 0));
        assert!(may_unlink(&federated_only, 1));
    }
}
