//! The schema: migrations and running them.

use super::*;

/// Forward-only, idempotent migrations, applied in order at start under an
/// advisory lock (so instances starting together do not race).
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email_key text NOT NULL UNIQUE,
    created_at bigint NOT NULL,
    record jsonb NOT NULL
);
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX sessions_by_user ON sessions (user_id);
CREATE SEQUENCE revocation_seq;
CREATE TABLE revocations (
    kind "char" NOT NULL,
    id uuid NOT NULL,
    at bigint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_by_seq ON revocations (seq);
CREATE TABLE one_time (
    hash text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE one_time_seq (
    user_id uuid NOT NULL,
    kind smallint NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (user_id, kind)
);
CREATE TABLE counters (
    key text PRIMARY KEY,
    record jsonb NOT NULL
);
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    created_at bigint NOT NULL,
    record jsonb NOT NULL
);
"#,
    ),
    (
        2,
        r#"
CREATE TABLE counter_leases (
    id uuid PRIMARY KEY,
    key text NOT NULL,
    until bigint NOT NULL
);
CREATE INDEX counter_leases_by_key ON counter_leases (key);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE token_horizon (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    secs bigint NOT NULL
);
CREATE INDEX revocations_by_at ON revocations (at);
CREATE INDEX sessions_by_expiry ON sessions (((record->>'expires_at')::bigint));
CREATE INDEX sessions_by_last_use ON sessions (((record->>'last_used_at')::bigint));
CREATE INDEX one_time_by_expiry ON one_time (((record->>'expires_at')::bigint));
CREATE INDEX outbox_failed_by_time ON outbox ((COALESCE((record->>'failed_at')::bigint, created_at)))
    WHERE (record->>'failed')::boolean;
CREATE INDEX counters_by_window ON counters (((record->>'window_start')::bigint));
"#,
    ),
    (
        4,
        r#"
CREATE TABLE audit_log (
    seq bigint PRIMARY KEY,
    at bigint NOT NULL,
    user_id uuid,
    record jsonb NOT NULL
);
CREATE INDEX audit_log_by_user ON audit_log (user_id, seq) WHERE user_id IS NOT NULL;
CREATE INDEX audit_log_by_at ON audit_log (at, seq);
CREATE TABLE audit_head (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    seq bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO audit_head (seq, hash)
    VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TABLE audit_checkpoint (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    record jsonb NOT NULL
);
"#,
    ),
    // Linked identities at outside providers (CONTRACT 8.1).
    (
        5,
        r#"
CREATE TABLE linked_identities (
    provider text NOT NULL,
    subject text NOT NULL,
    user_id uuid NOT NULL,
    record jsonb NOT NULL,
    PRIMARY KEY (provider, subject)
);
CREATE UNIQUE INDEX linked_identities_by_user ON linked_identities (user_id, provider);
"#,
    ),
    // The console's search by email prefix (`search_users_by_email`): the
    // addresses in byte order. Numbered apart from the migrations other
    // work of this round adds, which may come before it.
    (
        20,
        r#"
CREATE INDEX users_by_email_c ON users ((email_key COLLATE "C"));
"#,
    ),
];

/// Arbitrary, fixed: the advisory lock migrations run under.
pub(super) const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;

impl PgStore {
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        let mut c = self.pool.get().await.map_err(backend)?;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let result = async {
            c.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (
                    version int PRIMARY KEY,
                    applied_at timestamptz NOT NULL DEFAULT now())",
                &[],
            )
            .await
            .map_err(pg)?;
            for (version, sql) in MIGRATIONS {
                let tx = c.transaction().await.map_err(pg)?;
                let done = tx
                    .query_opt(
                        "SELECT 1 FROM schema_migrations WHERE version = $1",
                        &[version],
                    )
                    .await
                    .map_err(pg)?
                    .is_some();
                if !done {
                    tx.batch_execute(sql).await.map_err(pg)?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version) VALUES ($1)",
                        &[version],
                    )
                    .await
                    .map_err(pg)?;
                }
                tx.commit().await.map_err(pg)?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }
}
