use super::schema::write_entry;
use super::{SqliteStore, db_err};
use crate::domain::CacheEntry;
use crate::ports::{CacheStore, StoreError};
use async_trait::async_trait;

#[async_trait]
impl CacheStore for SqliteStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.write_entry(e.cache_key.to_string(), move |conn| {
            write_entry(conn, &e).map_err(db_err)
        })
        .await
    }
}
