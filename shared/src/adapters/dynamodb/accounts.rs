use super::item::{ledger_item, parse_ledger_line, spend_of};
use super::tx::{TransactFailure, contended, retrying, transact};
use super::{DynamoStore, build_err, get_n, get_s, iso, key, n, s, store_err, user_pk};
use crate::domain::{Account, LedgerLine, LedgerReason};
use crate::ports::{AccountStore, ChargeError, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Select, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

#[async_trait]
impl AccountStore for DynamoStore {
    async fn create_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let mut item = key(user_pk(user_id), "PROFILE");
        item.insert("credits_remaining".into(), n(0));
        item.insert("credits_used".into(), n(0));
        item.insert("created_at".into(), s(iso(now)));
        self.put_new(item).await
    }

    async fn add_api_key(&self, api_key_digest: &str, user_id: &str) -> Result<(), StoreError> {
        let mut item = key(format!("APIKEY#{api_key_digest}"), "LOOKUP");
        item.insert("user_id".into(), s(user_id));
        self.put_new(item).await
    }

    async fn grant(
        &self,
        user_id: &str,
        amount: u64,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, ChargeError> {
        let items = vec![
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(user_pk(user_id), "PROFILE")))
                        .update_expression("SET credits_remaining = credits_remaining + :a")
                        .condition_expression("attribute_exists(PK)")
                        .expression_attribute_values(":a", n(amount))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
            self.put_new_item(ledger_item(
                user_id,
                now,
                request_id,
                amount as i64,
                LedgerReason::Grant,
                None,
            ))?,
        ];
        match transact(&self.client, items).await {
            Ok(()) => Ok(self.balance(user_id).await?.unwrap_or(0)),
            Err(TransactFailure::Condition { index: 0, .. }) => Err(ChargeError::UnknownUser),
            Err(TransactFailure::Condition { .. }) => {
                Err(StoreError(format!("grant {request_id} already applied")).into())
            }
            Err(TransactFailure::Store(e)) => Err(e.into()),
        }
    }

    async fn set_daily_limit(&self, user_id: &str, limit: Option<u64>) -> Result<(), ChargeError> {
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user_id), "PROFILE")))
            .condition_expression("attribute_exists(PK)");
        update = match limit {
            Some(limit) => update
                .update_expression("SET daily_limit = :limit")
                .expression_attribute_values(":limit", n(limit)),
            None => update.update_expression("REMOVE daily_limit"),
        };
        match retrying("write", || update.clone().send(), contended).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Err(ChargeError::UnknownUser)
            }
            Err(e) => Err(store_err(e).into()),
        }
    }

    async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError> {
        let Some(item) = self.profile(user_id).await? else {
            return Ok(None);
        };
        let item = &item;
        let created_at = get_s(item, "created_at")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| StoreError(format!("user {user_id}: bad created_at")))?;
        Ok(Some(Account {
            user_id: user_id.to_owned(),
            credits_remaining: get_n(item, "credits_remaining").unwrap_or(0),
            credits_used: get_n(item, "credits_used").unwrap_or(0),
            created_at,
            spend: spend_of(item)
                .ok_or_else(|| StoreError(format!("user {user_id}: bad spent_day")))?,
        }))
    }

    async fn ledger(&self, user_id: &str, limit: usize) -> Result<Vec<LedgerLine>, StoreError> {
        let mut lines = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :ledger)")
                .expression_attribute_values(":pk", s(user_pk(user_id)))
                .expression_attribute_values(":ledger", s("LEDGER#"))
                .scan_index_forward(false)
                .consistent_read(true)
                .limit(limit.clamp(1, 1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_err)?;
            for item in out.items() {
                let line = parse_ledger_line(user_id, item)
                    .ok_or_else(|| StoreError(format!("unreadable ledger line of {user_id}")))?;
                lines.push(line);
                if lines.len() == limit {
                    return Ok(lines);
                }
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(lines),
            }
        }
    }

    async fn user_count(&self) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("SK = :profile")
                .expression_attribute_values(":profile", s("PROFILE"))
                .select(Select::Count)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_err)?;
            count += out.count().max(0) as u64;
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(count),
            }
        }
    }
}
