//! The mail outbox: enqueue, claim, renew, record deliveries.

use super::*;

/// The outbox message `id`, its row locked for the rest of `tx`.
pub(super) async fn lock_mail(
    tx: &Transaction<'_>,
    id: Uuid,
) -> StoreResult<Option<OutboxMessage>> {
    one(
        tx,
        "SELECT record FROM outbox WHERE id = $1 FOR UPDATE",
        &[&id],
    )
    .await
}

pub(super) async fn put_mail(tx: &Transaction<'_>, m: &OutboxMessage) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO outbox (id, created_at, record) VALUES ($1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
        &[&m.id, &m.created_at, &enc(m)],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn op_enqueue_mail(&self, mail: OutboxMessage) -> StoreResult<()> {
        self.write(tx!(|tx| put_mail(tx, &mail).await)).await
    }

    pub(super) async fn op_list_mail(&self) -> StoreResult<Vec<OutboxMessage>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT record FROM outbox ORDER BY created_at, id", &[])
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    pub(super) async fn op_claim_mail(
        &self,
        now: i64,
        lease_secs: u64,
        limit: usize,
    ) -> StoreResult<Vec<OutboxMessage>> {
        // Rows another sender holds are skipped, never waited for.
        let me = self.instance;
        self.write(tx!(|tx| {
            let rows = tx
                .query(
                    "SELECT id, record FROM outbox
                     WHERE NOT (record->>'failed')::boolean
                       AND (record->>'next_attempt_at')::bigint <= $1
                     ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&now, &(limit as i64)],
                )
                .await
                .map_err(pg)?;
            let mut out = Vec::new();
            for row in rows {
                let id: Uuid = row.get(0);
                let m: OutboxMessage = dec(row.get(1))?;
                if let Some(leased) = domain::claim_mail(&m, now, lease_secs, me, false) {
                    tx.execute(
                        "UPDATE outbox SET record = $2 WHERE id = $1",
                        &[&id, &enc(&leased)],
                    )
                    .await
                    .map_err(pg)?;
                    out.push(m);
                }
            }
            Ok(out)
        }))
        .await
    }

    pub(super) async fn op_renew_mail_claim(
        &self,
        id: Uuid,
        now: i64,
        lease_secs: u64,
    ) -> StoreResult<Option<OutboxMessage>> {
        let me = self.instance;
        self.write(tx!(|tx| {
            let Some(current) = lock_mail(tx, id).await? else {
                return Ok(None);
            };
            let renewed = domain::renew_mail_claim(&current, now, lease_secs, me);
            if let Some(m) = &renewed {
                tx.execute(
                    "UPDATE outbox SET record = $2 WHERE id = $1",
                    &[&id, &enc(m)],
                )
                .await
                .map_err(pg)?;
            }
            Ok(renewed)
        }))
        .await
    }

    pub(super) async fn op_record_delivery(&self, id: Uuid, delivery: Delivery) -> StoreResult<()> {
        let me = self.instance;
        self.write(tx!(|tx| {
            let Some(current) = lock_mail(tx, id).await? else {
                return Ok(());
            };
            if !domain::delivery_applies(&current, &delivery, me) {
                return Ok(());
            }
            match domain::apply_delivery(&current, &delivery) {
                Some(m) => {
                    tx.execute(
                        "UPDATE outbox SET record = $2 WHERE id = $1",
                        &[&id, &enc(&m)],
                    )
                    .await
                    .map_err(pg)?;
                }
                None => {
                    tx.execute("DELETE FROM outbox WHERE id = $1", &[&id])
                        .await
                        .map_err(pg)?;
                }
            }
            Ok(())
        }))
        .await
    }
}
