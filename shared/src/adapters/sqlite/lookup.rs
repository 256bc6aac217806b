use super::schema::{SPEND_COLUMNS, read_entry, spend_from_row};
use super::{SqliteStore, db_err};
use crate::domain::CacheKey;
use crate::ports::{Lookup, LookupStore, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use rusqlite::OptionalExtension;
use std::sync::Arc;

#[async_trait]
impl LookupStore for SqliteStore {
    /// From memory when the key's user and a servable entry are known there (the hit path
    /// then reads nothing); otherwise from a read connection, remembering what may be.
    async fn lookup(
        &self,
        api_key_digest: &str,
        cache_key: Option<&CacheKey>,
    ) -> Result<Lookup, StoreError> {
        let memo = Arc::clone(&self.inner.memo);
        let pk = cache_key.map(ToString::to_string);
        if let Some(user_id) = memo.user(api_key_digest) {
            let entry = pk.as_deref().and_then(|pk| memo.entry(pk));
            if pk.is_none() || entry.is_some() {
                // Nothing about the user's balance or limit comes from memory: the charge reads
                // and checks both in its own write.
                return Ok(Lookup {
                    user_id: Some(user_id),
                    entry,
                    balance: None,
                    spend: None,
                });
            }
        }
        let digest = api_key_digest.to_owned();
        let writes_before = memo.entry_writes();
        let lookup = self
            .read(move |conn| {
                let user_id: Option<String> = conn
                    .prepare_cached("SELECT user_id FROM api_keys WHERE digest = ?1")
                    .and_then(|mut stmt| stmt.query_row([&digest], |r| r.get(0)))
                    .optional()
                    .map_err(db_err)?;
                let profile = match &user_id {
                    Some(user) => conn
                        .prepare_cached(&format!(
                            "SELECT credits_remaining, {SPEND_COLUMNS} FROM users WHERE id = ?1"
                        ))
                        .and_then(|mut stmt| {
                            stmt.query_row([user], |r| {
                                Ok((r.get::<_, i64>(0)? as u64, spend_from_row(r, 1)?))
                            })
                        })
                        .optional()
                        .map_err(db_err)?,
                    None => None,
                };
                let (balance, spend) = profile.unzip();
                let entry = match pk {
                    Some(pk) => read_entry(conn, &pk).unwrap_or_else(|e| {
                        // An unreadable entry is a miss: the cache never fails a request by
                        // itself.
                        tracing::warn!(cache_key = %pk, error = %e, "unreadable cache entry");
                        None
                    }),
                    None => None,
                };
                Ok::<_, StoreError>(Lookup {
                    user_id,
                    entry,
                    balance,
                    spend,
                })
            })
            .await?;
        if let Some(user_id) = &lookup.user_id {
            memo.remember_user(api_key_digest, user_id);
        }
        if let Some(entry) = &lookup.entry {
            memo.remember_entry(entry, writes_before, Utc::now());
        }
        Ok(lookup)
    }
}
