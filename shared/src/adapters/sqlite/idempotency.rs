use super::{SqliteStore, db_err};
use crate::domain::{ClaimOutcome, IDEMPOTENCY_LEASE, IDEMPOTENCY_TTL, IdempotencyClaim};
use crate::ports::{IdempotencyStore, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(&self, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
        let c = claim.clone();
        self.write(move |tx| {
            let now = c.at.timestamp();
            let existing: Option<(String, String, Option<String>, i64, i64)> = tx
                .query_row(
                    "SELECT fingerprint, state, answer, lease_until, ttl FROM idempotency
                     WHERE user_id = ?1 AND key = ?2",
                    params![c.user_id, c.key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .map_err(db_err)?;
            let outcome = match existing {
                Some((_, _, _, _, ttl)) if ttl <= now => None,
                Some((fp, _, _, _, _)) if fp != c.fingerprint => Some(ClaimOutcome::Conflict),
                Some((_, state, Some(answer), _, _)) if state == "done" => {
                    Some(ClaimOutcome::Replay(answer))
                }
                Some((_, _, _, lease, _)) if lease > now => Some(ClaimOutcome::InProgress),
                _ => None,
            };
            if let Some(outcome) = outcome {
                return Ok(outcome);
            }
            tx.execute(
                "INSERT OR REPLACE INTO idempotency
                    (user_id, key, fingerprint, state, answer, lease_until, ttl)
                 VALUES (?1, ?2, ?3, 'pending', NULL, ?4, ?5)",
                params![
                    c.user_id,
                    c.key,
                    c.fingerprint,
                    (c.at + IDEMPOTENCY_LEASE).timestamp(),
                    (c.at + IDEMPOTENCY_TTL).timestamp()
                ],
            )
            .map_err(db_err)?;
            Ok(ClaimOutcome::Claimed)
        })
        .await
    }

    async fn complete(
        &self,
        user_id: &str,
        key: &str,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (user_id, key, answer) = (user_id.to_owned(), key.to_owned(), answer.to_owned());
        self.write(move |conn| {
            conn.execute(
                "UPDATE idempotency SET state = 'done', answer = ?3, ttl = ?4
                 WHERE user_id = ?1 AND key = ?2",
                params![user_id, key, answer, (now + IDEMPOTENCY_TTL).timestamp()],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn release(&self, user_id: &str, key: &str) -> Result<(), StoreError> {
        let (user_id, key) = (user_id.to_owned(), key.to_owned());
        self.write(move |conn| {
            conn.execute(
                "DELETE FROM idempotency WHERE user_id = ?1 AND key = ?2 AND state = 'pending'",
                params![user_id, key],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }
}
