use super::tx::{contended, retrying};
use super::{DynamoStore, store_err};
use crate::domain::CacheEntry;
use crate::ports::{CacheStore, StoreError};
use async_trait::async_trait;

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
}
