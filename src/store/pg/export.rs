//! Export (pages and snapshots), import and counts.

use super::*;

/// A page of `kind` (see [`Store::export`]), on any client or transaction.
pub(super) async fn export_page(
    c: &impl GenericClient,
    kind: RecordKind,
    cursor: Option<String>,
    limit: usize,
) -> StoreResult<Page> {
    let limit = limit.max(1) as i64;
    let after_id = || -> StoreResult<Uuid> {
        cursor
            .as_deref()
            .map_or(Ok(Uuid::nil()), |s| Uuid::parse_str(s).map_err(|_| bad()))
    };
    let after_text = || cursor.clone().unwrap_or_default();
    let query = |sql: &'static str, p: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>>| async move {
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            p.iter().map(|b| &**b as _).collect();
        c.query(sql, &refs).await.map_err(pg)
    };
    let mut records = Vec::new();
    let mut last: Option<String> = None;
    match kind {
        RecordKind::Users | RecordKind::Sessions | RecordKind::Mail => {
            let sql = match kind {
                RecordKind::Users => {
                    "SELECT id, record FROM users WHERE id > $1 ORDER BY id LIMIT $2"
                }
                RecordKind::Sessions => {
                    "SELECT id, record FROM sessions WHERE id > $1 ORDER BY id LIMIT $2"
                }
                _ => "SELECT id, record FROM outbox WHERE id > $1 ORDER BY id LIMIT $2",
            };
            for row in query(sql, vec![Box::new(after_id()?), Box::new(limit)]).await? {
                let id: Uuid = row.get(0);
                let v = row.get(1);
                records.push(match kind {
                    RecordKind::Users => Record::User(dec(v)?),
                    RecordKind::Sessions => Record::Session(dec(v)?),
                    _ => Record::Mail(dec(v)?),
                });
                last = Some(id.to_string());
            }
        }
        RecordKind::Revocations => {
            let after: i64 = match &cursor {
                Some(s) => s.parse().map_err(|_| bad())?,
                None => 0,
            };
            let sql = "SELECT kind, id, at, seq FROM revocations WHERE seq > $1
                       ORDER BY seq LIMIT $2";
            for row in query(sql, vec![Box::new(after), Box::new(limit)]).await? {
                records.push(Record::Revocation(revocation_from(
                    row.get(0),
                    row.get(1),
                    row.get(2),
                )?));
                last = Some(row.get::<_, i64>(3).to_string());
            }
        }
        RecordKind::OneTimeTokens | RecordKind::Counters => {
            let sql = if kind == RecordKind::Counters {
                "SELECT key, record FROM counters WHERE key > $1 ORDER BY key LIMIT $2"
            } else {
                "SELECT hash, record FROM one_time WHERE hash > $1 ORDER BY hash LIMIT $2"
            };
            for row in query(sql, vec![Box::new(after_text()), Box::new(limit)]).await? {
                let key: String = row.get(0);
                records.push(if kind == RecordKind::Counters {
                    Record::Counter {
                        key: key.clone(),
                        counter: dec(row.get(1))?,
                    }
                } else {
                    Record::OneTimeToken {
                        hash: key.clone(),
                        token: dec(row.get(1))?,
                    }
                });
                last = Some(key);
            }
        }
        RecordKind::Identities => {
            let (provider, subject) = identity_cursor(cursor.as_deref())?;
            let sql = "SELECT provider, subject, record FROM linked_identities
                       WHERE (provider, subject) > ($1, $2)
                       ORDER BY provider, subject LIMIT $3";
            for row in query(
                sql,
                vec![Box::new(provider), Box::new(subject), Box::new(limit)],
            )
            .await?
            {
                let (p, sub): (String, String) = (row.get(0), row.get(1));
                records.push(Record::Identity(dec(row.get(2))?));
                last = Some(format!("{p}/{sub}"));
            }
        }
        RecordKind::Audit => {
            // The checkpoint (if any) first, then the records by sequence.
            let after: i64 = match &cursor {
                Some(s) => s.parse().map_err(|_| bad())?,
                None => {
                    let sql = "SELECT record FROM audit_checkpoint";
                    for row in query(sql, vec![]).await? {
                        records.push(Record::AuditCheckpoint(dec(row.get(0))?));
                        last = Some("0".into());
                    }
                    0
                }
            };
            let room = limit - records.len() as i64;
            let sql = "SELECT seq, record FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";
            for row in query(sql, vec![Box::new(after), Box::new(room)]).await? {
                records.push(Record::Audit(dec(row.get(1))?));
                last = Some(row.get::<_, i64>(0).to_string());
            }
        }
        RecordKind::OneTimeSeqs => {
            let (user, k) = one_time_seq_cursor(cursor.as_deref())?;
            let sql = "SELECT user_id, kind, seq FROM one_time_seq
                       WHERE (user_id, kind) > ($1, $2) ORDER BY user_id, kind LIMIT $3";
            for row in query(sql, vec![Box::new(user), Box::new(k), Box::new(limit)]).await? {
                let (user_id, code): (Uuid, i16) = (row.get(0), row.get(1));
                let kind = one_time_kind(code)?;
                records.push(Record::OneTimeSeq {
                    user_id,
                    kind,
                    seq: row.get::<_, i64>(2) as u64,
                });
                last = Some(format!("{user_id}/{code}"));
            }
        }
    }
    let next = if records.len() as i64 == limit {
        last
    } else {
        None
    };
    Ok(Page { records, next })
}

/// A cursor this store did not hand out.
fn bad() -> StoreError {
    StoreError::Corrupt("export cursor".into())
}

/// An identities page's cursor: the last provider and subject, a slash
/// between (provider ids have none).
fn identity_cursor(cursor: Option<&str>) -> StoreResult<(String, String)> {
    Ok(match cursor {
        Some(s) => {
            let (p, sub) = s.split_once('/').ok_or_else(bad)?;
            (p.to_string(), sub.to_string())
        }
        None => (String::new(), String::new()),
    })
}

/// A one-time sequences page's cursor: the last user id and kind code.
fn one_time_seq_cursor(cursor: Option<&str>) -> StoreResult<(Uuid, i16)> {
    Ok(match cursor {
        Some(s) => {
            let (u, k) = s.split_once('/').ok_or_else(bad)?;
            (
                Uuid::parse_str(u).map_err(|_| bad())?,
                k.parse().map_err(|_| bad())?,
            )
        }
        None => (Uuid::nil(), -1),
    })
}

/// The one-time kind stored as `code` in `one_time_seq`.
fn one_time_kind(code: i16) -> StoreResult<OneTimeKind> {
    Ok(match code {
        0 => OneTimeKind::EmailVerify,
        1 => OneTimeKind::PasswordReset,
        2 => OneTimeKind::MfaLogin,
        3 => OneTimeKind::AuthCode,
        4 => OneTimeKind::Consent,
        _ => return Err(StoreError::Corrupt(format!("one-time kind {code}"))),
    })
}

impl PgStore {
    pub(super) async fn op_export(
        &self,
        kind: RecordKind,
        cursor: Option<String>,
        limit: usize,
    ) -> StoreResult<Page> {
        let c = self.client().await?;
        export_page(&**c, kind, cursor, limit).await
    }

    pub(super) async fn op_snapshot(&self) -> StoreResult<Vec<Record>> {
        // One REPEATABLE READ transaction: every page sees the same moment.
        let mut c = self.client().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(pg)?;
        let mut out = Vec::new();
        for kind in RecordKind::ALL {
            let mut cursor = None;
            loop {
                let page = export_page(&*tx, kind, cursor, copy::PAGE).await?;
                out.extend(page.records);
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        tx.commit().await.map_err(pg)?;
        Ok(out)
    }

    /// [`Store::export_all`] as of one moment: one REPEATABLE READ
    /// transaction, a page at a time handed to `sink` (the transaction
    /// stays open while the sink writes, as long as the backup takes).
    pub(super) async fn op_export_all(
        &self,
        limit: usize,
        sink: &mut dyn copy::PageSink,
    ) -> Result<(), String> {
        let read = |kind: RecordKind| {
            move |e: StoreError| format!("reading the store ({}): {e}", kind.name())
        };
        let mut c = self
            .client()
            .await
            .map_err(|e| format!("reading the store: {e}"))?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| format!("reading the store: {}", pg(e)))?;
        for kind in RecordKind::ALL {
            let mut cursor = None;
            loop {
                let page = export_page(&*tx, kind, cursor, limit)
                    .await
                    .map_err(read(kind))?;
                sink.page(kind, page.records).await?;
                match page.next {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
        }
        tx.commit()
            .await
            .map_err(|e| format!("reading the store: {}", pg(e)))
    }

    pub(super) async fn op_import(&self, records: Vec<Record>) -> StoreResult<()> {
        self.write(tx!(|tx| {
            let mut revocations = Vec::new();
            for r in &records {
                match r {
                    Record::User(u) => {
                        tx.execute(
                            "INSERT INTO users (id, email_key, created_at, record)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (id) DO UPDATE
                             SET email_key = EXCLUDED.email_key, record = EXCLUDED.record",
                            &[&u.id, &email_key(&u.email), &u.created_at, &enc(u)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Session(s) => {
                        tx.execute(
                            "INSERT INTO sessions (id, user_id, record) VALUES ($1, $2, $3)
                             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                            &[&s.id, &s.user_id, &enc(s)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Revocation(r) => revocations.push(*r),
                    Record::OneTimeToken { hash, token } => {
                        tx.execute(
                            "INSERT INTO one_time (hash, record) VALUES ($1, $2)
                             ON CONFLICT (hash) DO UPDATE SET record = EXCLUDED.record",
                            &[hash, &enc(token)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::OneTimeSeq { user_id, kind, seq } => {
                        tx.execute(
                            "INSERT INTO one_time_seq (user_id, kind, seq) VALUES ($1, $2, $3)
                             ON CONFLICT (user_id, kind) DO UPDATE
                             SET seq = GREATEST(one_time_seq.seq, EXCLUDED.seq)",
                            &[user_id, &(*kind as i16), &(*seq as i64)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Counter { key, counter } => {
                        tx.execute(
                            "INSERT INTO counters (key, record) VALUES ($1, $2)
                             ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record",
                            &[
                                key,
                                &enc(&Counter {
                                    pending: 0,
                                    ..*counter
                                }),
                            ],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Mail(m) => put_mail(tx, m).await?,
                    Record::Identity(l) => {
                        tx.execute(
                            "INSERT INTO linked_identities (provider, subject, user_id, record)
                             VALUES ($1, $2, $3, $4)
                             ON CONFLICT (provider, subject) DO UPDATE
                             SET user_id = EXCLUDED.user_id, record = EXCLUDED.record",
                            &[&l.provider, &l.subject, &l.user_id, &enc(l)],
                        )
                        .await
                        .map_err(pg)?;
                    }
                    Record::Audit(a) => import_audit(tx, a).await?,
                    Record::AuditCheckpoint(c) => import_checkpoint(tx, c).await?,
                }
            }
            write_revocations(tx, &revocations).await?;
            Ok(())
        }))
        .await
    }

    pub(super) async fn op_count(&self, kind: RecordKind) -> StoreResult<u64> {
        let table = match kind {
            RecordKind::Users => "users",
            RecordKind::Sessions => "sessions",
            RecordKind::Revocations => "revocations",
            RecordKind::OneTimeTokens => "one_time",
            RecordKind::OneTimeSeqs => "one_time_seq",
            RecordKind::Counters => "counters",
            RecordKind::Mail => "outbox",
            RecordKind::Identities => "linked_identities",
            RecordKind::Audit => {
                "(SELECT seq FROM audit_log UNION ALL SELECT 0 FROM audit_checkpoint) AS a"
            }
        };
        let c = self.client().await?;
        let row = c
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(pg)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}
