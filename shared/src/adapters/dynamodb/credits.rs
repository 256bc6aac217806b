use super::item::ledger_item;
use super::tx::{TransactFailure, contended, retrying, transact};
use super::{DynamoStore, build_err, key, n, store_err, user_pk};
use crate::domain::{Charge, LedgerReason, Refund};
use crate::ports::{ChargeError, CreditStore, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

#[async_trait]
impl CreditStore for DynamoStore {
    async fn charge(&self, charge: &Charge) -> Result<u64, ChargeError> {
        if !charge.count_hit {
            return self.charge_alone(charge).await;
        }
        // The hit count is a plain ADD sent beside the charge, never inside its transaction:
        // a transaction on the entry would conflict with every other user's hit on it. Sent
        // together, a warm hit stays one write round trip after the batch read.
        let count = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(charge.cache_key.to_string(), "RESULT")))
            .update_expression("ADD hit_count :n")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":n", n(1));
        let (charged, counted) = tokio::join!(
            self.charge_alone(charge),
            retrying("write", || count.clone().send(), contended)
        );
        match (&charged, counted) {
            (Err(_), Ok(_)) => {
                // Not charged, so not a hit: take the count back (off the served path).
                let undo = count.expression_attribute_values(":n", n(-1));
                if let Err(e) = retrying("write", || undo.clone().send(), contended).await {
                    tracing::warn!(cache_key = %charge.cache_key, error = %store_err(e), "hit count left one too high");
                }
            }
            (_, Err(e))
                if !e
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                tracing::warn!(cache_key = %charge.cache_key, error = %store_err(e), "hit not counted");
            }
            _ => {}
        }
        charged
    }

    async fn refund(&self, r: &Refund) -> Result<Option<u64>, StoreError> {
        let marker = key(user_pk(&r.user_id), &format!("REFUND#{}", r.request_id));
        let cache_key = r.cache_key.to_string();
        let items = vec![
            self.put_new_item(marker)?,
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(ledger_item(&r.user_id, r.at, &r.request_id, r.amount as i64, LedgerReason::Refund, Some(&cache_key))))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(user_pk(&r.user_id), "PROFILE")))
                        .update_expression("SET credits_remaining = credits_remaining + :a, credits_used = credits_used - :a")
                        .condition_expression("attribute_exists(PK)")
                        .expression_attribute_values(":a", n(r.amount))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        ];
        match transact(&self.client, items).await {
            Ok(()) => self.balance(&r.user_id).await,
            Err(TransactFailure::Condition { index: 0, .. }) => Ok(None),
            Err(TransactFailure::Condition { .. }) => {
                Err(StoreError(format!("refund of unknown user {}", r.user_id)))
            }
            Err(TransactFailure::Store(e)) => Err(e),
        }
    }
}
