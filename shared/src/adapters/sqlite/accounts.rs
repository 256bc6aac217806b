use super::schema::{SPEND_COLUMNS, spend_from_row};
use super::tx::insert_ledger;
use super::{SqliteStore, db_err, iso, parse_iso};
use crate::domain::{Account, LedgerLine, LedgerReason};
use crate::ports::{AccountStore, ChargeError, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO users (id, credits_remaining, credits_used, created_at)
                 VALUES (?1, 0, 0, ?2)",
                params![user_id, iso(now)],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn add_api_key(&self, api_key_digest: &str, user_id: &str) -> Result<(), StoreError> {
        let (digest, user_id) = (api_key_digest.to_owned(), user_id.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO api_keys (digest, user_id) VALUES (?1, ?2)",
                params![digest, user_id],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn grant(
        &self,
        user_id: &str,
        amount: u64,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, ChargeError> {
        let (user_id, request_id) = (user_id.to_owned(), request_id.to_owned());
        self.write(move |tx| {
            let balance: Option<i64> = tx
                .query_row(
                    "UPDATE users SET credits_remaining = credits_remaining + ?2
                     WHERE id = ?1 RETURNING credits_remaining",
                    params![user_id, amount as i64],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db_err)?;
            let Some(balance) = balance else {
                return Err(ChargeError::UnknownUser);
            };
            let inserted = insert_ledger(
                tx,
                &user_id,
                now,
                &request_id,
                amount as i64,
                LedgerReason::Grant,
                None,
            )
            .map_err(db_err)?;
            if inserted == 0 {
                return Err(StoreError(format!("grant {request_id} already applied")).into());
            }
            Ok(balance as u64)
        })
        .await
    }

    async fn set_daily_limit(&self, user_id: &str, limit: Option<u64>) -> Result<(), ChargeError> {
        let user_id = user_id.to_owned();
        self.write(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE users SET daily_limit = ?2 WHERE id = ?1",
                    params![user_id, limit.map(|l| l.min(i64::MAX as u64) as i64)],
                )
                .map_err(db_err)?;
            if changed == 0 {
                return Err(ChargeError::UnknownUser);
            }
            Ok(())
        })
        .await
    }

    async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            conn.query_row(
                &format!(
                    "SELECT credits_remaining, credits_used, created_at, {SPEND_COLUMNS}
                     FROM users WHERE id = ?1"
                ),
                [&user_id],
                |r| {
                    let created_at: String = r.get(2)?;
                    Ok(Account {
                        user_id: user_id.clone(),
                        credits_remaining: r.get::<_, i64>(0)? as u64,
                        credits_used: r.get::<_, i64>(1)? as u64,
                        created_at: parse_iso(&created_at)?,
                        spend: spend_from_row(r, 3)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)
        })
        .await
    }

    async fn ledger(&self, user_id: &str, limit: usize) -> Result<Vec<LedgerLine>, StoreError> {
        let user_id = user_id.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT at, request_id, amount, reason, cache_key FROM ledger
                     WHERE user_id = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![user_id, limit as i64], |r| {
                    let at: String = r.get(0)?;
                    let reason: String = r.get(3)?;
                    Ok(LedgerLine {
                        user_id: user_id.clone(),
                        at: parse_iso(&at)?,
                        request_id: r.get(1)?,
                        amount: r.get(2)?,
                        reason: LedgerReason::parse(&reason)
                            .ok_or(rusqlite::Error::InvalidQuery)?,
                        cache_key: r.get(4)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
        .await
    }

    async fn user_count(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(db_err)
        })
        .await
    }
}
