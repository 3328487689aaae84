//! The audit chain on PostgreSQL: ONE chain for the whole cluster. Its head
//! is one row (`audit_head`), locked `FOR UPDATE` by the transaction that
//! appends, as the last thing it does before its commit: every gateway's
//! appends are serialized by that lock and linked in commit order, in the
//! same transaction as the change they record.

use super::*;
use crate::audit::chain;

/// Write everything a change causes (see [`Effects`]) inside `tx`.
pub(super) async fn apply_effects(tx: &Transaction<'_>, effects: &Effects) -> StoreResult<()> {
    for m in &effects.outbox {
        put_mail(tx, m).await?;
    }
    append_audit(tx, &effects.audit).await
}

/// Link `events` after the cluster's head, under the head's row lock.
pub(super) async fn append_audit(tx: &Transaction<'_>, events: &[AuditEvent]) -> StoreResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let row = tx
        .query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[])
        .await
        .map_err(pg)?;
    let mut head = AuditHead {
        seq: row.get::<_, i64>(0) as u64,
        hash: row.get(1),
    };
    let mut seqs = Vec::with_capacity(events.len());
    let mut ats = Vec::with_capacity(events.len());
    let mut users: Vec<Option<Uuid>> = Vec::with_capacity(events.len());
    let mut records = Vec::with_capacity(events.len());
    for e in events {
        let r = chain::link(&head, e.clone());
        head = r.head();
        seqs.push(r.seq as i64);
        ats.push(r.event.at);
        users.push(r.event.user_id);
        records.push(enc(&r));
    }
    tx.execute(
        "INSERT INTO audit_log (seq, at, user_id, record)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::uuid[], $4::jsonb[])",
        &[&seqs, &ats, &users, &records],
    )
    .await
    .map_err(pg)?;
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2",
        &[&(head.seq as i64), &head.hash],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Write one stored record as it is (an import), raising the head to it.
pub(super) async fn import_audit(tx: &Transaction<'_>, r: &AuditRecord) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO audit_log (seq, at, user_id, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (seq) DO UPDATE SET at = EXCLUDED.at, user_id = EXCLUDED.user_id,
             record = EXCLUDED.record",
        &[&(r.seq as i64), &r.event.at, &r.event.user_id, &enc(r)],
    )
    .await
    .map_err(pg)?;
    raise_head(tx, r.seq, &r.hash).await
}

async fn raise_head(tx: &Transaction<'_>, seq: u64, hash: &str) -> StoreResult<()> {
    tx.execute(
        "UPDATE audit_head SET seq = $1, hash = $2 WHERE seq < $1",
        &[&(seq as i64), &hash],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

pub(super) async fn import_checkpoint(
    tx: &Transaction<'_>,
    c: &AuditCheckpoint,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO audit_checkpoint (record) VALUES ($1)
         ON CONFLICT (one) DO UPDATE SET record = EXCLUDED.record
         WHERE (audit_checkpoint.record->>'seq')::bigint <= (EXCLUDED.record->>'seq')::bigint",
        &[&enc(c)],
    )
    .await
    .map_err(pg)?;
    raise_head(tx, c.seq, &c.hash).await
}

fn records(rows: Vec<tokio_postgres::Row>) -> StoreResult<Vec<AuditRecord>> {
    rows.into_iter().map(|r| dec(r.get(0))).collect()
}

impl PgStore {
    pub(super) async fn op_append_audit(&self, events: Vec<AuditEvent>) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.write(tx!(|tx| append_audit(tx, &events).await)).await
    }

    pub(super) async fn op_audit_page(
        &self,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&(after.min(i64::MAX as u64) as i64), &(limit as i64)],
            )
            .await
            .map_err(pg)?;
        records(rows)
    }

    pub(super) async fn op_audit_since(
        &self,
        since: i64,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM (SELECT seq, record FROM audit_log WHERE at >= $1
                     ORDER BY at, seq LIMIT $2) r ORDER BY seq",
                &[&since, &(limit as i64)],
            )
            .await
            .map_err(pg)?;
        records(rows)
    }

    pub(super) async fn op_audit_for_user(
        &self,
        user: Uuid,
        limit: usize,
    ) -> StoreResult<Vec<AuditRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT record FROM audit_log WHERE user_id = $1 ORDER BY seq DESC LIMIT $2",
                &[&user, &(limit as i64)],
            )
            .await
            .map_err(pg)?;
        records(rows)
    }

    pub(super) async fn op_audit_state(&self) -> StoreResult<AuditState> {
        let c = self.client().await?;
        let row = c
            .query_one("SELECT seq, hash FROM audit_head", &[])
            .await
            .map_err(pg)?;
        let checkpoint = one(&**c, "SELECT record FROM audit_checkpoint", &[]).await?;
        Ok(AuditState {
            head: AuditHead {
                seq: row.get::<_, i64>(0) as u64,
                hash: row.get(1),
            },
            checkpoint,
        })
    }

    pub(super) async fn op_audit_trim(&self, c: AuditCheckpoint) -> StoreResult<u64> {
        self.write(tx!(|tx| {
            tx.execute(
                "INSERT INTO audit_checkpoint (record) VALUES ($1)
                 ON CONFLICT (one) DO UPDATE SET record = EXCLUDED.record
                 WHERE (audit_checkpoint.record->>'seq')::bigint < (EXCLUDED.record->>'seq')::bigint",
                &[&enc(&c)],
            )
            .await
            .map_err(pg)?;
            let n = tx
                .execute(
                    "DELETE FROM audit_log WHERE seq <= $1",
                    &[&(c.seq as i64)],
                )
                .await
                .map_err(pg)?;
            Ok(n)
        }))
        .await
    }
}
