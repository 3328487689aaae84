//! The session operations, and ending sessions (with their revocations)
//! inside a transaction.

use super::*;

/// End sessions of a user inside `tx` (the user row is locked first, so
/// this serializes with `create_session`).
pub(super) async fn end_sessions_tx(
    tx: &Transaction<'_>,
    user: Uuid,
    which: Sessions,
    cutoff: bool,
    stamp: Stamp,
) -> StoreResult<Vec<Revocation>> {
    tx.query_opt("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user])
        .await
        .map_err(pg)?;
    let ids: Vec<(Uuid, Option<OutboxMessage>)> = match which {
        Sessions::One(sid) => tx
            .query(
                "DELETE FROM sessions WHERE id = $1 AND user_id = $2 RETURNING id, record",
                &[&sid, &user],
            )
            .await
            .map_err(pg)?,
        Sessions::AllBut(keep) => tx
            .query(
                "DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id, record",
                &[&user, &keep],
            )
            .await
            .map_err(pg)?,
        Sessions::All => tx
            .query(
                "DELETE FROM sessions WHERE user_id = $1 RETURNING id, record",
                &[&user],
            )
            .await
            .map_err(pg)?,
    }
    .iter()
    .map(|r| (r.get::<_, Uuid>(0), r.get::<_, serde_json::Value>(1)))
    .filter(|(id, _)| domain::selects(which, id))
    .map(|(id, record)| {
        let notice = dec::<SessionRecord>(record)
            .ok()
            .and_then(|s| domain::backchannel_notice(&s, stamp.now));
        (id, notice)
    })
    .collect();
    // A client session's back-channel logout is queued with its end.
    for (_, notice) in &ids {
        if let Some(m) = notice {
            put_mail(tx, m).await?;
        }
    }
    let ids: Vec<Uuid> = ids.into_iter().map(|(id, _)| id).collect();
    let revs = domain::revocations_for(user, &ids, cutoff, stamp);
    write_revocations(tx, &revs).await?;
    Ok(revs)
}

pub(super) async fn apply_cascade(
    tx: &Transaction<'_>,
    user: &User,
    cascade: domain::Cascade,
    stamp: Stamp,
) -> StoreResult<Vec<Revocation>> {
    let mut revs = match cascade.end {
        Some(which) => end_sessions_tx(tx, user.id, which, cascade.cutoff, stamp).await?,
        None if cascade.cutoff => {
            let revs = domain::revocations_for(user.id, &[], true, stamp);
            write_revocations(tx, &revs).await?;
            revs
        }
        None => Vec::new(),
    };
    if let Some(notice) = domain::keys_notice(user.id, cascade, stamp) {
        write_revocations(tx, &[notice]).await?;
        revs.push(notice);
    }
    Ok(revs)
}

impl PgStore {
    pub(super) async fn op_create_session(
        &self,
        session: SessionRecord,
        expect_password_version: u64,
        effects: Effects,
    ) -> StoreResult<User> {
        self.write(tx!(|tx| {
            // FOR SHARE: a concurrent disable or password change (FOR
            // UPDATE) waits for this session to exist, or this waits for it.
            let user: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR SHARE",
                &[&session.user_id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            domain::check_session_start(&user, expect_password_version)?;
            tx.execute(
                "INSERT INTO sessions (id, user_id, record) VALUES ($1, $2, $3)",
                &[&session.id, &session.user_id, &enc(&session)],
            )
            .await
            .map_err(pg)?;
            apply_effects(tx, &effects).await?;
            Ok(user)
        }))
        .await
    }

    pub(super) async fn op_find_session(&self, id: Uuid) -> StoreResult<Option<SessionRecord>> {
        let c = self.client().await?;
        one(&**c, "SELECT record FROM sessions WHERE id = $1", &[&id]).await
    }

    pub(super) async fn op_list_sessions(&self, user_id: Uuid) -> StoreResult<Vec<SessionRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM sessions WHERE user_id = $1",
                &[&user_id],
            )
            .await
            .map_err(pg)?;
        let mut out: Vec<SessionRecord> = rows
            .into_iter()
            .map(|r| dec(r.get(0)))
            .collect::<StoreResult<_>>()?;
        out.sort_by_key(|s| s.created_at);
        Ok(out)
    }

    pub(super) async fn op_rotate_refresh(
        &self,
        id: Uuid,
        presented: u64,
        policy: RefreshPolicy,
        effects: Effects,
    ) -> StoreResult<RotateOutcome> {
        self.write(tx!(|tx| {
            let Some(current) = one::<SessionRecord>(
                tx,
                "SELECT record FROM sessions WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            else {
                return Ok(RotateOutcome::Invalid);
            };
            let (next, outcome) = domain::rotate(&current, presented, &policy);
            match next {
                Some(s) if s != current => {
                    tx.execute(
                        "UPDATE sessions SET record = $2 WHERE id = $1",
                        &[&id, &enc(&s)],
                    )
                    .await
                    .map_err(pg)?;
                }
                Some(_) => {}
                None => {
                    tx.execute("DELETE FROM sessions WHERE id = $1", &[&id])
                        .await
                        .map_err(pg)?;
                }
            }
            if let RotateOutcome::Reused(_, revs) = &outcome {
                write_revocations(tx, revs).await?;
                if let Some(m) = domain::backchannel_notice(&current, policy.now) {
                    put_mail(tx, &m).await?;
                }
            }
            apply_effects(tx, &domain::refresh_effects(&outcome, effects)).await?;
            Ok(outcome)
        }))
        .await
    }

    pub(super) async fn op_end_sessions(
        &self,
        user_id: Uuid,
        which: Sessions,
        cutoff: bool,
        stamp: Stamp,
        effects: Effects,
    ) -> StoreResult<Vec<Revocation>> {
        self.write(tx!(|tx| {
            let revs = end_sessions_tx(tx, user_id, which, cutoff, stamp).await?;
            if !revs.is_empty() {
                apply_effects(tx, &effects).await?;
            }
            Ok(revs)
        }))
        .await
    }
}
