use super::item::{ledger_item, spend_of};
use super::tx::{TransactFailure, contended, retrying, transact};
use super::{DynamoStore, build_err, key, n, s, store_err, user_pk};
use crate::domain::budget::{format_day, utc_day};
use crate::domain::{Charge, DailySpend, LedgerReason, Refund};
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
        // Only a refund on its charge's UTC day gives spend back (`DailySpend::refund`): the
        // profile is read for it then only. Spend given back is best effort beside the credits:
        // the last try refunds the credits alone rather than fail the refund.
        let same_day = utc_day(r.charged_at) == utc_day(r.at);
        for attempt in 0..REFUND_TRIES {
            let give_back = if same_day && attempt + 1 < REFUND_TRIES {
                match self.profile(&r.user_id).await? {
                    Some(profile) => spend_of(&profile).and_then(|before| {
                        Some((before, before.refund(r.amount, r.charged_at, r.at)?))
                    }),
                    None => None,
                }
            } else {
                None
            };
            let items = self.refund_items(r, give_back)?;
            match transact(&self.client, items).await {
                Ok(()) => return self.balance(&r.user_id).await,
                Err(TransactFailure::Condition { index: 0, .. }) => return Ok(None),
                // The day's spend moved since it was read: read it again.
                Err(TransactFailure::Condition { index: 2, .. }) if give_back.is_some() => {}
                Err(TransactFailure::Condition { .. }) => {
                    return Err(StoreError(format!("refund of unknown user {}", r.user_id)));
                }
                Err(TransactFailure::Store(e)) => return Err(e),
            }
        }
        Err(StoreError("refund did not settle after retries".into()))
    }
}

/// How many times a refund is sent when the day's spend it gives back keeps moving.
const REFUND_TRIES: usize = 4;

impl DynamoStore {
    /// The refund's marker (at most once per request), its ledger line and the credit, with
    /// `give_back` (the spend as read, and after the refund) while the stored spend is still
    /// the day read.
    fn refund_items(
        &self,
        r: &Refund,
        give_back: Option<(DailySpend, DailySpend)>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let marker = key(user_pk(&r.user_id), &format!("REFUND#{}", r.request_id));
        let cache_key = r.cache_key.to_string();
        let mut credit = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(&r.user_id), "PROFILE")))
            .expression_attribute_values(":a", n(r.amount));
        let mut set = String::from(
            "SET credits_remaining = credits_remaining + :a, credits_used = credits_used - :a",
        );
        let mut condition = String::from("attribute_exists(PK)");
        if let Some((before, after)) = give_back {
            let day = before.day.map(format_day).unwrap_or_default();
            credit = credit.expression_attribute_values(":day", s(day));
            condition.push_str(" AND spent_day = :day");
            if before.spent >= r.amount {
                // Concurrent charges may add to the spend meanwhile: take the amount off it.
                condition.push_str(" AND spent_today >= :a");
                set.push_str(", spent_today = spent_today - :a");
            } else {
                // Less spent than refunded (charges made before spends were counted): to zero.
                condition.push_str(" AND spent_today = :spent");
                set.push_str(", spent_today = :after");
                credit = credit
                    .expression_attribute_values(":spent", n(before.spent))
                    .expression_attribute_values(":after", n(after.spent));
            }
        }
        let credit = credit
            .update_expression(set)
            .condition_expression(condition)
            .build()
            .map_err(build_err)?;
        Ok(vec![
            self.put_new_item(marker)?,
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(ledger_item(
                            &r.user_id,
                            r.at,
                            &r.request_id,
                            r.amount as i64,
                            LedgerReason::Refund,
                            Some(&cache_key),
                        )))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            TransactWriteItem::builder().update(credit).build(),
        ])
    }
}
