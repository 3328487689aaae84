//! One-time tokens: issue, find, redeem, and their per-user sequences.

use super::*;

pub(super) async fn newest_seq(
    c: &impl GenericClient,
    user: Uuid,
    kind: OneTimeKind,
) -> StoreResult<u64> {
    let row = c
        .query_opt(
            "SELECT seq FROM one_time_seq WHERE user_id = $1 AND kind = $2",
            &[&user, &(kind as i16)],
        )
        .await
        .map_err(pg)?;
    Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
}

impl PgStore {
    pub(super) async fn op_issue_one_time(
        &self,
        hash: String,
        token: OneTimeToken,
        effects: Effects,
    ) -> StoreResult<u64> {
        self.write(tx!(|tx| {
            let row = tx
                .query_one(
                    "INSERT INTO one_time_seq (user_id, kind, seq) VALUES ($1, $2, 1)
                     ON CONFLICT (user_id, kind) DO UPDATE SET seq = one_time_seq.seq + 1
                     RETURNING seq",
                    &[&token.user_id, &(token.kind as i16)],
                )
                .await
                .map_err(pg)?;
            let next = row.get::<_, i64>(0) as u64;
            let t = OneTimeToken {
                issued_seq: next,
                ..token
            };
            tx.execute(
                "INSERT INTO one_time (hash, record) VALUES ($1, $2)
                 ON CONFLICT (hash) DO UPDATE SET record = EXCLUDED.record",
                &[&hash, &enc(&t)],
            )
            .await
            .map_err(pg)?;
            apply_effects(tx, &effects).await?;
            Ok(next)
        }))
        .await
    }

    pub(super) async fn op_find_one_time(&self, hash: &str) -> StoreResult<Option<OneTimeToken>> {
        let c = self.client().await?;
        one(
            &**c,
            "SELECT record FROM one_time WHERE hash = $1",
            &[&hash],
        )
        .await
    }

    pub(super) async fn op_latest_one_time_seq(
        &self,
        user_id: Uuid,
        kind: OneTimeKind,
    ) -> StoreResult<u64> {
        let c = self.client().await?;
        newest_seq(&**c, user_id, kind).await
    }

    pub(super) async fn op_redeem(
        &self,
        hash: String,
        redeem: Redeem,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(tx!(|tx| {
            let token: OneTimeToken = one(
                tx,
                "SELECT record FROM one_time WHERE hash = $1 FOR UPDATE",
                &[&hash],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let current: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                &[&token.user_id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let newest = newest_seq(tx, token.user_id, token.kind).await?;
            domain::check_redeem(&token, &redeem, &current, newest, stamp.now)?;
            let (user, cascade) = domain::apply_redeem(&current, &redeem)?;
            tx.execute("DELETE FROM one_time WHERE hash = $1", &[&hash])
                .await
                .map_err(pg)?;
            tx.execute(
                "UPDATE users SET record = $2 WHERE id = $1",
                &[&user.id, &enc(&user)],
            )
            .await
            .map_err(pg)?;
            let revoked = apply_cascade(tx, &user, cascade, stamp).await?;
            apply_effects(tx, &domain::for_user(effects, user.id)).await?;
            Ok(Changed { user, revoked })
        }))
        .await
    }
}
