use super::tx::{insert_ledger, refund_spend};
use super::{SqliteStore, db_err};
use crate::domain::{Charge, LedgerReason, Refund};
use crate::ports::{ChargeError, CreditStore, StoreError};
use async_trait::async_trait;
use rusqlite::params;
use std::sync::Arc;

#[async_trait]
impl CreditStore for SqliteStore {
    async fn charge(&self, charge: &Charge) -> Result<u64, ChargeError> {
        let c = charge.clone();
        let counted = c
            .count_hit
            .then(|| (Arc::clone(&self.inner.memo), c.cache_key.to_string()));
        self.inner
            .writer
            .charge(c, move |committed| {
                if let (true, Some((memo, pk))) = (committed, counted) {
                    memo.count_hit(&pk);
                }
            })
            .await
    }

    async fn refund(&self, refund: &Refund) -> Result<Option<u64>, StoreError> {
        let r = refund.clone();
        self.write(move |tx| {
            let key = r.cache_key.to_string();
            let inserted = insert_ledger(
                tx,
                &r.user_id,
                r.at,
                &r.request_id,
                r.amount as i64,
                LedgerReason::Refund,
                Some(&key),
            )
            .map_err(db_err)?;
            if inserted == 0 {
                return Ok(None);
            }
            let balance: i64 = tx
                .query_row(
                    "UPDATE users SET credits_remaining = credits_remaining + ?2,
                                      credits_used = MAX(credits_used - ?2, 0)
                     WHERE id = ?1 RETURNING credits_remaining",
                    params![r.user_id, r.amount as i64],
                    |row| row.get(0),
                )
                .map_err(db_err)?;
            refund_spend(tx, &r)?;
            Ok(Some(balance as u64))
        })
        .await
    }
}
