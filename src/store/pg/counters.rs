//! Throttle and lockout counters.

use super::*;

/// The counter at `key`, created if missing, locked to this transaction.
pub(super) async fn lock_counter(tx: &Transaction<'_>, key: &str) -> StoreResult<Counter> {
    // An upsert that changes nothing still locks the row, in one trip.
    let row = tx
        .query_one(
            "INSERT INTO counters (key, record) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET key = EXCLUDED.key
             RETURNING record",
            &[&key, &enc(&Counter::default())],
        )
        .await
        .map_err(pg)?;
    dec(row.get(0))
}

pub(super) async fn save_counter(tx: &Transaction<'_>, key: &str, c: &Counter) -> StoreResult<()> {
    tx.execute(
        "UPDATE counters SET record = $2 WHERE key = $1",
        &[&key, &enc(&Counter { pending: 0, ..*c })],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn op_hit_counter(
        &self,
        key: &str,
        limit: u32,
        window: u64,
        now: i64,
    ) -> StoreResult<Result<(), u64>> {
        if limit == 0 {
            return Ok(Ok(()));
        }
        let key = key.to_string();
        self.write(tx!(|tx| {
            let mut c = lock_counter(tx, &key).await?;
            let verdict = c.hit(now, limit, window);
            if verdict.is_ok() {
                save_counter(tx, &key, &c).await?;
            }
            Ok(verdict)
        }))
        .await
    }

    pub(super) async fn op_reserve_attempt(
        &self,
        key: &str,
        policy: LockoutPolicy,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Result<Lease, u64>> {
        let key = key.to_string();
        self.write(tx!(|tx| {
            let mut c = lock_counter(tx, &key).await?;
            // In flight: the live leases of every gateway. Lapsed ones
            // (their holder died unsettled) go.
            let live: i64 = tx
                .query_one(
                    "WITH lapsed AS (
                         DELETE FROM counter_leases WHERE key = $1 AND until <= $2)
                     SELECT count(*) FROM counter_leases WHERE key = $1 AND until > $2",
                    &[&key, &now],
                )
                .await
                .map_err(pg)?
                .get(0);
            c.pending = u32::try_from(live).unwrap_or(u32::MAX);
            if let Err(retry_after) = c.reserve(now, &policy) {
                return Ok(Err(retry_after));
            }
            let lease = Lease {
                key: key.clone(),
                id: Uuid::new_v4(),
                until: now.saturating_add(lease_secs as i64),
            };
            tx.execute(
                "INSERT INTO counter_leases (id, key, until) VALUES ($1, $2, $3)",
                &[&lease.id, &lease.key, &lease.until],
            )
            .await
            .map_err(pg)?;
            save_counter(tx, &key, &c).await?;
            Ok(Ok(lease))
        }))
        .await
    }

    pub(super) async fn op_settle_attempt(
        &self,
        lease: &Lease,
        policy: LockoutPolicy,
        failed: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let lease = lease.clone();
        self.write(tx!(|tx| {
            // A success only gives its reservation back; a failure counts
            // even if its lease lapsed meanwhile.
            let mut c = if failed {
                lock_counter(tx, &lease.key).await?
            } else {
                Counter::default()
            };
            tx.execute("DELETE FROM counter_leases WHERE id = $1", &[&lease.id])
                .await
                .map_err(pg)?;
            if !failed {
                return Ok(false);
            }
            c.pending = 1;
            let locked = c.settle(now, &policy, true);
            save_counter(tx, &lease.key, &c).await?;
            Ok(locked)
        }))
        .await
    }

    pub(super) async fn op_clear_counter(&self, key: &str) -> StoreResult<()> {
        let key = key.to_string();
        self.write(tx!(|tx| {
            lock_counter(tx, &key).await?;
            save_counter(tx, &key, &Counter::default()).await
        }))
        .await
    }
}
