use super::tx::{contended, retrying};
use super::{DynamoStore, key, s, store_err};
use crate::domain::{CacheEntry, CacheKey, EntryStatus};
use crate::ports::{AdminKeys, CacheStore, PurgeFilter, StoreError};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::types::AttributeValue;

#[async_trait]
impl CacheStore for DynamoStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.entry_item(entry)));
        retrying("write", || put.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn purge_entry(&self, key: &CacheKey) -> Result<bool, StoreError> {
        self.delete_ready(key.to_string()).await
    }

    async fn purge_entries(&self, filter: &PurgeFilter) -> Result<u64, StoreError> {
        // Entries have no index of their own: scan for READY results, delete what matches.
        let mut deleted = 0;
        let mut start = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(PK, :cache) AND SK = :result AND #status = :ready")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":cache", s("CACHE#"))
                .expression_attribute_values(":result", s("RESULT"))
                .expression_attribute_values(":ready", s(EntryStatus::Ready.as_str()))
                .set_exclusive_start_key(start);
            let out = retrying("scan", || page.clone().send(), contended)
                .await
                .map_err(store_err)?;
            for item in out.items() {
                let Some(entry) = self.parse_entry(item) else {
                    continue;
                };
                if filter.matches(&entry) && self.delete_ready(entry.cache_key.to_string()).await? {
                    deleted += 1;
                }
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(deleted),
            }
        }
    }
}

impl DynamoStore {
    /// Deletes the entry item `pk` if it is READY; false when it was not there or pending.
    async fn delete_ready(&self, pk: String) -> Result<bool, StoreError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, "RESULT")))
            .condition_expression("#status = :ready")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":ready", s(EntryStatus::Ready.as_str()));
        match retrying("write", || delete.clone().send(), contended).await {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(DeleteItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_err(e)),
        }
    }
}

#[async_trait]
impl AdminKeys for DynamoStore {
    async fn make_admin(&self, api_key_digest: &str) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("APIKEY#{api_key_digest}"), "LOOKUP")))
            .update_expression("SET admin = :yes")
            .condition_expression("attribute_exists(PK)")
            .expression_attribute_values(":yes", AttributeValue::Bool(true));
        retrying("write", || update.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn is_admin(&self, api_key_digest: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("APIKEY#{api_key_digest}"), "LOOKUP")))
            .consistent_read(true)
            .projection_expression("admin")
            .send()
            .await
            .map_err(store_err)?;
        Ok(out
            .item()
            .and_then(|i| i.get("admin"))
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false))
    }
}
