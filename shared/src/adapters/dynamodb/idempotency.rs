use super::tx::{contended, retrying};
use super::{DynamoStore, Item, get_s, key, n, s, store_err};
use crate::domain::{ClaimOutcome, IDEMPOTENCY_LEASE, IDEMPOTENCY_TTL, IdempotencyClaim};
use crate::ports::{IdempotencyStore, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use chrono::{DateTime, Utc};

fn idempotency_key(user_id: &str, key_: &str) -> Item {
    key(format!("IDEMPOTENCY#{user_id}#{key_}"), "REQUEST")
}

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn claim(&self, c: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
        let now = c.at.timestamp();
        let mut item = idempotency_key(&c.user_id, &c.key);
        item.insert("fingerprint".into(), s(&c.fingerprint));
        item.insert("state".into(), s("pending"));
        item.insert(
            "lease_until".into(),
            n((c.at + IDEMPOTENCY_LEASE).timestamp()),
        );
        item.insert("ttl".into(), n((c.at + IDEMPOTENCY_TTL).timestamp()));
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(
                "attribute_not_exists(PK) OR #ttl <= :now OR (#state = :pending AND lease_until <= :now AND fingerprint = :fp)",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":pending", s("pending"))
            .expression_attribute_values(":fp", s(&c.fingerprint))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let result = retrying("write", || put.clone().send(), contended).await;
        let old = match result {
            Ok(_) => return Ok(ClaimOutcome::Claimed),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(failed)) => {
                    failed.item().cloned()
                }
                _ => return Err(store_err(e)),
            },
        };
        let old = match old {
            Some(old) => old,
            // The store did not return the item: read it.
            None => self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(idempotency_key(&c.user_id, &c.key)))
                .consistent_read(true)
                .send()
                .await
                .map_err(store_err)?
                .item
                .unwrap_or_default(),
        };
        Ok(
            if get_s(&old, "fingerprint") != Some(c.fingerprint.as_str()) {
                ClaimOutcome::Conflict
            } else if let (Some("done"), Some(answer)) =
                (get_s(&old, "state"), get_s(&old, "answer"))
            {
                ClaimOutcome::Replay(answer.to_owned())
            } else {
                ClaimOutcome::InProgress
            },
        )
    }

    async fn complete(
        &self,
        user_id: &str,
        key_: &str,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(idempotency_key(user_id, key_)))
            .update_expression("SET #state = :done, answer = :answer, #ttl = :ttl")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":done", s("done"))
            .expression_attribute_values(":answer", s(answer))
            .expression_attribute_values(":ttl", n((now + IDEMPOTENCY_TTL).timestamp()));
        retrying("write", || update.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn release(&self, user_id: &str, key_: &str) -> Result<(), StoreError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(idempotency_key(user_id, key_)))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s("pending"));
        let result = retrying("write", || delete.clone().send(), contended).await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(store_err(e)),
        }
    }
}
