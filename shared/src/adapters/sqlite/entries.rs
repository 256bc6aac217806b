use super::schema::{ENTRY_COLUMNS, entry_from_row, write_entry};
use super::{SqliteStore, db_err};
use crate::domain::{CacheEntry, CacheKey};
use crate::ports::{AdminKeys, CacheStore, PurgeFilter, StoreError};
use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::sync::Arc;

#[async_trait]
impl CacheStore for SqliteStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.write_entry(e.cache_key.to_string(), move |conn| {
            write_entry(conn, &e).map_err(db_err)
        })
        .await
    }

    async fn purge_entry(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let pk = key.to_string();
        self.write_entry(pk.clone(), move |conn| {
            conn.execute(
                "DELETE FROM cache_entries WHERE pk = ?1 AND status = 'READY'",
                [&pk],
            )
            .map(|deleted| deleted > 0)
            .map_err(db_err)
        })
        .await
    }

    async fn purge_entries(&self, filter: &PurgeFilter) -> Result<u64, StoreError> {
        let filter = filter.clone();
        let memo = Arc::clone(&self.inner.memo);
        self.inner
            .writer
            .write(
                move |conn| {
                    // The filter is domain code: read the READY entries, delete those it matches.
                    let doomed: Vec<String> = conn
                        .prepare(&format!(
                            "SELECT {ENTRY_COLUMNS} FROM cache_entries WHERE status = 'READY'"
                        ))
                        .map_err(db_err)?
                        .query_map([], entry_from_row)
                        .map_err(db_err)?
                        .filter_map(Result::ok)
                        .filter(|e| filter.matches(e))
                        .map(|e| e.cache_key.to_string())
                        .collect();
                    let mut delete = conn
                        .prepare_cached(
                            "DELETE FROM cache_entries WHERE pk = ?1 AND status = 'READY'",
                        )
                        .map_err(db_err)?;
                    let mut deleted = 0;
                    for pk in doomed {
                        deleted += delete.execute(params![pk]).map_err(db_err)? as u64;
                    }
                    Ok::<_, StoreError>(deleted)
                },
                move |_| memo.forget_entries(),
            )
            .await
    }
}

#[async_trait]
impl AdminKeys for SqliteStore {
    async fn make_admin(&self, api_key_digest: &str) -> Result<(), StoreError> {
        let digest = api_key_digest.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO admin_keys (digest)
                 SELECT digest FROM api_keys WHERE digest = ?1",
                [&digest],
            )
            .map_err(db_err)
            .and_then(|n| match n {
                1 => Ok(()),
                _ => conn
                    .query_row(
                        "SELECT 1 FROM admin_keys WHERE digest = ?1",
                        [&digest],
                        |_| Ok(()),
                    )
                    .optional()
                    .map_err(db_err)?
                    .ok_or_else(|| StoreError("no such API key".into())),
            })
        })
        .await
    }

    async fn is_admin(&self, api_key_digest: &str) -> Result<bool, StoreError> {
        let digest = api_key_digest.to_owned();
        self.read(move |conn| {
            conn.query_row(
                "SELECT 1 FROM admin_keys WHERE digest = ?1",
                [&digest],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(db_err)
        })
        .await
    }
}
