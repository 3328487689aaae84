//! Linked identities on PostgreSQL: the `linked_identities` table, primary
//! key `(provider, subject)`, unique `(user_id, provider)`. A link takes a
//! transaction-scoped advisory lock on its identity and locks the user's
//! row, so the rule is judged on the current state and of racing links of
//! one identity exactly one wins (the unique keys stay as a backstop).

use super::*;
use crate::store::identities::{judge_link, may_unlink};

/// The advisory lock key of an identity.
const LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1 || chr(1) || $2, 0))";

impl PgStore {
    pub(super) async fn op_link_identity(
        &self,
        link: LinkedIdentity,
        new_user: Option<User>,
        effects: Effects,
    ) -> StoreResult<LinkOutcome> {
        self.write(tx!(|tx| {
            tx.execute(LOCK_SQL, &[&link.provider, &link.subject])
                .await
                .map_err(pg)?;
            let existing: Option<LinkedIdentity> = one(
                tx,
                "SELECT record FROM linked_identities WHERE provider = $1 AND subject = $2",
                &[&link.provider, &link.subject],
            )
            .await?;
            if let Some(e) = &existing {
                return Ok(if e.user_id == link.user_id {
                    LinkOutcome::AlreadyLinked
                } else {
                    LinkOutcome::Taken
                });
            }
            let user: Option<User> = match &new_user {
                Some(u) => {
                    let inserted = tx
                        .execute(
                            "INSERT INTO users (id, email_key, created_at, record)
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&u.id, &email_key(&u.email), &u.created_at, &enc(u)],
                        )
                        .await
                        .map_err(pg)?;
                    if inserted == 0 {
                        return Ok(LinkOutcome::EmailTaken);
                    }
                    Some(u.clone())
                }
                None => {
                    one(
                        tx,
                        "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                        &[&link.user_id],
                    )
                    .await?
                }
            };
            let same_provider: Option<LinkedIdentity> = one(
                tx,
                "SELECT record FROM linked_identities WHERE user_id = $1 AND provider = $2",
                &[&link.user_id, &link.provider],
            )
            .await?;
            if let Err(outcome) = judge_link(&link, None, user.as_ref(), same_provider.as_ref()) {
                // Nothing was written: a new user is only inserted when
                // the link is certain (`judge_link` passes for a new user
                // with no identity at this provider).
                return Ok(outcome);
            }
            tx.execute(
                "INSERT INTO linked_identities (provider, subject, user_id, record)
                 VALUES ($1, $2, $3, $4)",
                &[&link.provider, &link.subject, &link.user_id, &enc(&link)],
            )
            .await
            .map_err(pg)?;
            apply_effects(tx, &effects).await?;
            Ok(LinkOutcome::Linked)
        }))
        .await
    }

    pub(super) async fn op_find_identity(
        &self,
        provider: &str,
        subject: &str,
    ) -> StoreResult<Option<LinkedIdentity>> {
        let c = self.client().await?;
        one(
            &**c,
            "SELECT record FROM linked_identities WHERE provider = $1 AND subject = $2",
            &[&provider, &subject],
        )
        .await
    }

    pub(super) async fn op_list_identities(
        &self,
        user_id: Uuid,
    ) -> StoreResult<Vec<LinkedIdentity>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM linked_identities WHERE user_id = $1 ORDER BY provider",
                &[&user_id],
            )
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    pub(super) async fn op_unlink_identity(
        &self,
        user_id: Uuid,
        provider: String,
        effects: Effects,
    ) -> StoreResult<UnlinkOutcome> {
        self.write(tx!(|tx| {
            let Some(user) = one::<User>(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                &[&user_id],
            )
            .await?
            else {
                return Ok(UnlinkOutcome::NotLinked);
            };
            let rows = tx
                .query(
                    "SELECT record FROM linked_identities WHERE user_id = $1",
                    &[&user_id],
                )
                .await
                .map_err(pg)?;
            let all: Vec<LinkedIdentity> = rows
                .into_iter()
                .map(|r| dec(r.get(0)))
                .collect::<StoreResult<_>>()?;
            let Some(link) = all.iter().find(|l| l.provider == provider).cloned() else {
                return Ok(UnlinkOutcome::NotLinked);
            };
            if !may_unlink(&user, all.len() - 1) {
                return Ok(UnlinkOutcome::LastMethod);
            }
            tx.execute(
                "DELETE FROM linked_identities WHERE provider = $1 AND subject = $2",
                &[&link.provider, &link.subject],
            )
            .await
            .map_err(pg)?;
            apply_effects(tx, &effects).await?;
            Ok(UnlinkOutcome::Unlinked(link))
        }))
        .await
    }
}
