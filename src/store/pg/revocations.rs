//! Revocations: their encoding, writing them with fresh sequence numbers
//! and a notification, and reading them back.

use super::*;

/// Revoking transactions take this (transaction-level) lock just before
/// they draw their sequence numbers, and hold it to commit: sequences are
/// then committed in order, so a reader that has seen `seq = n` has seen
/// every revocation up to `n`.
pub(super) const REVOCATION_LOCK: i64 = 0x706f_7274_7265_766b;

pub(super) fn kind_code(r: &Revocation) -> (i8, Uuid, i64) {
    match *r {
        Revocation::Token(id, at) => (b't' as i8, id, at),
        Revocation::Session(id, at) => (b's' as i8, id, at),
        Revocation::Cutoff(id, at) => (b'c' as i8, id, at),
        Revocation::Keys(id, at) => (b'k' as i8, id, at),
    }
}

pub(super) fn revocation_from(kind: i8, id: Uuid, at: i64) -> StoreResult<Revocation> {
    match kind as u8 {
        b't' => Ok(Revocation::Token(id, at)),
        b's' => Ok(Revocation::Session(id, at)),
        b'c' => Ok(Revocation::Cutoff(id, at)),
        b'k' => Ok(Revocation::Keys(id, at)),
        k => Err(StoreError::Corrupt(format!("revocation kind {k}"))),
    }
}

/// Write revocations with fresh sequence numbers and announce them, in one
/// statement: the lock that orders the sequences (see [`REVOCATION_LOCK`])
/// is then held for that statement and the commit only, not for a round
/// trip per entry.
pub(super) async fn write_revocations(
    tx: &Transaction<'_>,
    revs: &[Revocation],
) -> StoreResult<()> {
    if revs.is_empty() {
        return Ok(());
    }
    // One row per key (an upsert may not touch a row twice), the latest.
    let mut rows: Vec<(i8, Uuid, i64)> = revs.iter().map(kind_code).collect();
    rows.sort_unstable_by(|a, b| (a.0, a.1, b.2).cmp(&(b.0, b.1, a.2)));
    rows.dedup_by_key(|r| (r.0, r.1));
    let kinds: Vec<i8> = rows.iter().map(|r| r.0).collect();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let ats: Vec<i64> = rows.iter().map(|r| r.2).collect();
    // Every row joins the lock, so it is taken before any sequence is drawn.
    tx.execute(
        r#"WITH ordered AS (SELECT pg_advisory_xact_lock($1)),
                written AS (
                    INSERT INTO revocations (kind, id, at, seq)
                    SELECT r.kind, r.id, r.at, nextval('revocation_seq')
                    FROM ordered, unnest($2::"char"[], $3::uuid[], $4::bigint[]) AS r(kind, id, at)
                    ON CONFLICT (kind, id) DO UPDATE
                    SET at = GREATEST(revocations.at, EXCLUDED.at), seq = EXCLUDED.seq
                    RETURNING 1)
           SELECT pg_notify($5, '') WHERE EXISTS (SELECT 1 FROM written)"#,
        &[&REVOCATION_LOCK, &kinds, &ids, &ats, &CHANNEL],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

impl PgStore {
    pub(super) async fn op_revoke(&self, entries: Vec<Revocation>) -> StoreResult<()> {
        self.write(tx!(|tx| write_revocations(tx, &entries).await))
            .await
    }

    pub(super) async fn op_list_revocations(&self) -> StoreResult<Vec<Revocation>> {
        Ok(self
            .revocations_since(0)
            .await?
            .map(|(revs, _)| revs)
            .unwrap_or_default())
    }

    pub(super) async fn op_revocations_since(
        &self,
        after: i64,
    ) -> StoreResult<Option<(Vec<Revocation>, i64)>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT kind, id, at, seq FROM revocations WHERE seq > $1 ORDER BY seq",
                &[&after],
            )
            .await
            .map_err(pg)?;
        let mut last = after;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(revocation_from(r.get(0), r.get(1), r.get(2))?);
            last = last.max(r.get(3));
        }
        Ok(Some((out, last)))
    }
}
