//! The sweep of expired rows, and the token horizon.

use super::*;

/// Rows one sweep transaction deletes at most (each batch commits on its
/// own, so no row stays locked for long).
pub(super) const SWEEP_BATCH: i64 = 1000;

/// Batches one sweep runs per table at most (the rest waits for the next
/// sweep, which takes the oldest first again).
pub(super) const SWEEP_MAX_BATCHES: usize = 1000;

/// Delete, in batches of [`SWEEP_BATCH`] rows each committed on its own,
/// every row of `table` for which `cond` holds: the rule of [`domain`]
/// written over the expressions migration 3 indexes, so only expired rows
/// are ever read or locked (never the live ones a refresh may be waiting
/// for), and every expired row is reached whatever the table's size. Rows
/// locked by another transaction are skipped (the next sweep gets them).
/// `cond` is evaluated again on each locked row as it is deleted, and each
/// deleted row is judged once more by `judge` (`None`: not dead by the
/// domain rule, and the batch is rolled back: the SQL and the rule must
/// agree); `Some(i)` counts it in `counts[i]`. `table`, `cond` and
/// `returning` are our own constants.
pub(super) async fn sweep_rows(
    store: &PgStore,
    table: &'static str,
    cond: &'static str,
    returning: &'static str,
    params: &[i64],
    r: Retention,
    judge: fn(&tokio_postgres::Row, &Retention) -> StoreResult<Option<usize>>,
) -> StoreResult<[usize; 2]> {
    let sql = format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {table} WHERE {cond} LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED))
         AND ({cond}) RETURNING {returning}"
    );
    let params: Vec<i64> = params.to_vec();
    let mut counts = [0usize; 2];
    for _ in 0..SWEEP_MAX_BATCHES {
        let (sql, params) = (sql.clone(), params.clone());
        let (deleted, batch) = store
            .write(tx!(|tx| {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
                    params.iter().map(|p| p as _).collect();
                let rows = tx.query(&sql, &refs).await.map_err(pg)?;
                let mut batch = [0usize; 2];
                for row in &rows {
                    match judge(row, &r)? {
                        Some(i) => batch[i] += 1,
                        None => {
                            return Err(StoreError::Corrupt(format!(
                                "the sweep of {table} selected a row its rule keeps"
                            )))
                        }
                    }
                }
                Ok((rows.len(), batch))
            }))
            .await?;
        counts[0] += batch[0];
        counts[1] += batch[1];
        if (deleted as i64) < SWEEP_BATCH {
            break;
        }
    }
    Ok(counts)
}

/// A row the sweep deleted, judged by the domain rule: counted in the
/// first bucket when dead.
pub(super) fn judged(dead: bool) -> StoreResult<Option<usize>> {
    Ok(dead.then_some(0))
}

impl PgStore {
    pub(super) async fn op_sweep(&self, r: Retention) -> StoreResult<SweepReport> {
        let [sessions, _] = sweep_rows(
            self,
            "sessions",
            "(record->>'expires_at')::bigint <= $1::bigint OR (record->>'last_used_at')::bigint <= $1::bigint - $2::bigint",
            "record",
            &[r.now, r.idle_secs as i64],
            r,
            |row, r| judged(domain::session_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [one_time, _] = sweep_rows(
            self,
            "one_time",
            "(record->>'expires_at')::bigint <= $1::bigint",
            "record",
            &[r.now],
            r,
            |row, r| judged(domain::one_time_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [mail, _] = sweep_rows(
            self,
            "outbox",
            "(record->>'failed')::boolean
             AND COALESCE((record->>'failed_at')::bigint, created_at) <= $1::bigint - $2::bigint",
            "record",
            &[r.now, r.failed_mail_secs as i64],
            r,
            |row, r| judged(domain::mail_is_dead(&dec(row.get(0))?, r)),
        )
        .await?;
        let [counters, _] = sweep_rows(
            self,
            "counters",
            "(record->>'window_start')::bigint <= $1::bigint - $2::bigint
             AND (record->>'locked_until')::bigint <= $1::bigint",
            "record",
            &[r.now, r.counter_idle_secs as i64],
            r,
            |row, r| judged(dec::<Counter>(row.get(0))?.is_idle(r.now, r.counter_idle_secs)),
        )
        .await?;
        // Keys notices go at their time; the rest once older than the
        // revocation horizon (which is before now).
        let [revocations, cutoffs] = sweep_rows(
            self,
            "revocations",
            "at < $2::bigint OR (kind = 'k' AND at <= $1::bigint)",
            "kind, id, at",
            &[r.now, r.revocation_horizon],
            r,
            |row, r| {
                let rev = revocation_from(row.get(0), row.get(1), row.get(2))?;
                Ok(domain::revocation_is_dead(&rev, r)
                    .then_some(usize::from(matches!(rev, Revocation::Cutoff(..)))))
            },
        )
        .await?;
        self.write(tx!(|tx| {
            tx.execute(
                "DELETE FROM counter_leases WHERE until <= $1::bigint",
                &[&r.now],
            )
            .await
            .map_err(pg)?;
            Ok(())
        }))
        .await?;
        Ok(SweepReport {
            sessions,
            one_time,
            revocations,
            cutoffs,
            mail,
            counters,
        })
    }

    pub(super) async fn op_token_horizon(&self, at_least: u64) -> StoreResult<u64> {
        // Raised only when it grows (no write otherwise); autocommit, so
        // durable when this returns.
        let c = self.client().await?;
        let at_least = i64::try_from(at_least).unwrap_or(i64::MAX);
        let row = c
            .query_one(
                "WITH raised AS (
                     INSERT INTO token_horizon (one, secs) VALUES (true, $1)
                     ON CONFLICT (one) DO UPDATE SET secs = EXCLUDED.secs
                     WHERE token_horizon.secs < EXCLUDED.secs
                     RETURNING secs)
                 SELECT secs FROM raised
                 UNION ALL
                 SELECT secs FROM token_horizon WHERE NOT EXISTS (SELECT 1 FROM raised)",
                &[&at_least],
            )
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
