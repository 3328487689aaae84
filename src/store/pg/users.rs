//! The user operations: create, find, list, change.

use super::*;

impl PgStore {
    pub(super) async fn op_create_user(&self, user: User, effects: Effects) -> StoreResult<()> {
        self.write(tx!(|tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO users (id, email_key, created_at, record) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (email_key) DO NOTHING",
                    &[
                        &user.id,
                        &email_key(&user.email),
                        &user.created_at,
                        &enc(&user),
                    ],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(StoreError::Conflict);
            }
            apply_effects(tx, &effects).await
        }))
        .await
    }

    pub(super) async fn op_find_user(&self, id: Uuid) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        one(&**c, "SELECT record FROM users WHERE id = $1", &[&id]).await
    }

    pub(super) async fn op_find_user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let c = self.client().await?;
        one(
            &**c,
            "SELECT record FROM users WHERE email_key = $1",
            &[&email_key(email)],
        )
        .await
    }

    pub(super) async fn op_list_users(&self) -> StoreResult<Vec<User>> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT record FROM users ORDER BY created_at, id", &[])
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    /// A range of the `users_by_email_c` index (byte order, so the
    /// addresses under a prefix are one range whatever the database's
    /// collation), at most `limit` rows.
    pub(super) async fn op_search_users_by_email(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<User>> {
        let prefix = email_key(prefix);
        // Past every address under the prefix: the highest code point.
        let upper = format!("{prefix}\u{10FFFF}");
        let after = after.map(email_key).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let rows = c
            .query(
                r#"SELECT record FROM users
                   WHERE email_key COLLATE "C" >= $1 AND email_key COLLATE "C" < $2
                     AND email_key COLLATE "C" > $3
                   ORDER BY email_key COLLATE "C" LIMIT $4"#,
                &[&prefix, &upper, &after, &limit],
            )
            .await
            .map_err(pg)?;
        rows.into_iter().map(|r| dec(r.get(0))).collect()
    }

    pub(super) async fn op_change_user(
        &self,
        id: Uuid,
        change: UserChange,
        effects: Effects,
        stamp: Stamp,
    ) -> StoreResult<Changed> {
        self.write(tx!(|tx| {
            let current: User = one(
                tx,
                "SELECT record FROM users WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or(StoreError::Conflict)?;
            let (user, cascade) = domain::apply_user_change(&current, &change)?;
            if user != current {
                tx.execute(
                    "UPDATE users SET record = $2 WHERE id = $1",
                    &[&id, &enc(&user)],
                )
                .await
                .map_err(pg)?;
            }
            let revoked = apply_cascade(tx, &user, cascade, stamp).await?;
            apply_effects(tx, &effects).await?;
            Ok(Changed { user, revoked })
        }))
        .await
    }
}
