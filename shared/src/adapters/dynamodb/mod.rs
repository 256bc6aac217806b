//! The store on DynamoDB: one table, `PK`/`SK`, the records of the data model. A charge is one
//! TransactWriteItems (balance condition, ledger put) touching only the payer's items; a hit's
//! count is a plain ADD beside it. Refunds and idempotency records are conditional writes; a read
//! treats `ttl <= now` as a miss (the service checks expiry). Writes met by contention (an item
//! inside another transaction, throttling) are sent again with jittered backoff, transactions
//! with their client request token.

use crate::ports::StoreError;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use tx::{CONTENTION_RETRIES, contended, retrying};

mod accounts;
mod credits;
mod entries;
mod idempotency;
mod item;
mod jobs;
mod lookup;
mod tx;
mod usage;

type Item = HashMap<String, AttributeValue>;

/// Remembered API key digests (a key never changes owner), so a warm lookup can read the balance
/// in the same batch. Bounded: cleared when full.
const KEY_CACHE_LIMIT: usize = 10_000;

/// The DynamoDB store.
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Prefix of durable result locations, e.g. `s3://bucket/`.
    location_prefix: String,
    key_owners: Mutex<HashMap<String, String>>,
}

fn store_err<E: std::error::Error + 'static>(
    e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> StoreError {
    StoreError(aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())
}

fn build_err(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("request: {e}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Option<T> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn user_pk(user_id: &str) -> String {
    format!("USER#{user_id}")
}

impl DynamoStore {
    /// A store on `table`; result locations are written as `{location_prefix}{object key}`.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        location_prefix: impl Into<String>,
    ) -> Self {
        Self {
            client,
            table: table.into(),
            location_prefix: location_prefix.into(),
            key_owners: Mutex::new(HashMap::new()),
        }
    }

    /// A transaction item writing an item that must not exist yet.
    fn put_new_item(&self, item: Item) -> Result<TransactWriteItem, StoreError> {
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .build()
            .map_err(build_err)?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    /// Writes an item that must not exist yet.
    async fn put_new(&self, item: Item) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)");
        retrying("write", || put.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
    }

    /// The table's item count and size as DynamoDB last published them (about every six
    /// hours): what a full scan will read, known before scanning.
    pub async fn table_size(&self) -> Result<(u64, u64), StoreError> {
        let out = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
            .map_err(store_err)?;
        let table = out.table();
        Ok((
            table.and_then(|t| t.item_count()).unwrap_or(0).max(0) as u64,
            table.and_then(|t| t.table_size_bytes()).unwrap_or(0).max(0) as u64,
        ))
    }

    /// Writes sent again after contention by every store of this process so far.
    pub fn contention_retries() -> u64 {
        CONTENTION_RETRIES.load(Ordering::Relaxed)
    }

    /// A store on `table` with a client built from an SDK configuration.
    pub fn from_sdk(
        sdk: &aws_config::SdkConfig,
        table: impl Into<String>,
        location_prefix: impl Into<String>,
    ) -> Self {
        Self::new(Client::new(sdk), table, location_prefix)
    }

    fn known_owner(&self, digest: &str) -> Option<String> {
        self.key_owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
            .cloned()
    }

    fn remember_owner(&self, digest: &str, user_id: Option<&str>) {
        let mut owners = self.key_owners.lock().unwrap_or_else(|e| e.into_inner());
        match user_id {
            Some(user) => {
                if owners.len() >= KEY_CACHE_LIMIT {
                    owners.clear();
                }
                owners.insert(digest.to_owned(), user.to_owned());
            }
            None => {
                owners.remove(digest);
            }
        }
    }

    /// The user's profile item, read consistently.
    async fn profile(&self, user_id: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(user_id), "PROFILE")))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_err)?;
        Ok(out.item)
    }

    async fn balance(&self, user_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(self
            .profile(user_id)
            .await?
            .and_then(|i| get_n(&i, "credits_remaining")))
    }
}
