//! The store on DynamoDB: one table, `PK`/`SK`, the records of the data model. A charge is one
//! TransactWriteItems (balance condition, ledger put) touching only the payer's items; a hit's
//! count is a plain ADD beside it. Refunds and idempotency records are conditional writes; a read
//! treats `ttl <= now` as a miss (the service checks expiry). Writes met by contention (an item
//! inside another transaction, throttling) are sent again with jittered backoff, transactions
//! with their client request token.

use crate::domain::{
    Account, CacheEntry, CacheKey, Charge, ClaimOutcome, EntryStatus, IDEMPOTENCY_LEASE,
    IDEMPOTENCY_TTL, IdempotencyClaim, Job, JobFailure, JobStatus, LedgerLine, LedgerReason,
    MediaType, Refund,
};
use crate::ports::{
    AccountStore, CacheStore, ChargeError, CreditStore, IdempotencyStore, JobStart, JobStore,
    Lookup, LookupStore, StoreError,
};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, KeysAndAttributes, Put,
    ReturnValuesOnConditionCheckFailure, Select, TransactWriteItem, Update,
};
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

type Item = HashMap<String, AttributeValue>;

/// Remembered API key digests (a key never changes owner), so a warm lookup can read the balance
/// in the same batch. Bounded: cleared when full.
const KEY_CACHE_LIMIT: usize = 10_000;

/// How long a write met by contention (an item inside another transaction, throttling) is
/// tried again: well inside any request's deadline.
const RETRY_BUDGET: Duration = Duration::from_secs(5);
/// First and longest pause between two tries (full jitter below them).
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_LONGEST: Duration = Duration::from_millis(250);

/// Writes sent again after contention, by every store of this process (for measurements).
static CONTENTION_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The error codes of contention: the same write succeeds when sent again a little later.
fn is_contention_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "TransactionConflictException"
                | "TransactionInProgressException"
                | "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "InternalServerError"
        )
    )
}

/// A pause before try `attempt + 1`: full jitter under a doubling bound.
fn retry_pause(attempt: u32) -> Duration {
    let bound = RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.min(8)))
        .min(RETRY_LONGEST);
    bound.mul_f64(rand::random::<f64>())
}

/// Sends a request again while `contended` says the failure was contention, for at most
/// `RETRY_BUDGET`. Each try is the same request, so a write applies at most once.
async fn retrying<T, E, Fut>(
    mut send: impl FnMut() -> Fut,
    contended: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match send().await {
            Err(e) if contended(&e) && started.elapsed() < RETRY_BUDGET => {
                CONTENTION_RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(retry_pause(attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a plain request failed on contention.
fn contended<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    is_contention_code(e.code())
}

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

fn ledger_item(
    user_id: &str,
    at: DateTime<Utc>,
    request_id: &str,
    amount: i64,
    reason: LedgerReason,
    cache_key: Option<&str>,
) -> Item {
    let at = iso(at);
    let mut item = key(
        user_pk(user_id),
        &format!("LEDGER#{at}#{request_id}#{}", reason.as_str()),
    );
    item.insert("at".into(), s(&at));
    item.insert("request_id".into(), s(request_id));
    item.insert("amount".into(), n(amount));
    item.insert("reason".into(), s(reason.as_str()));
    if let Some(cache_key) = cache_key {
        item.insert("cache_key".into(), s(cache_key));
    }
    item
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
        retrying(|| put.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
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

    fn entry_item(&self, e: &CacheEntry) -> Item {
        let mut item = key(e.cache_key.to_string(), "RESULT");
        let locations: Vec<String> = e
            .result_keys
            .iter()
            .map(|k| format!("{}{k}", self.location_prefix))
            .collect();
        if let Some(first) = locations.first() {
            item.insert("result_url".into(), s(first));
        }
        if locations.len() > 1 {
            // Several images: all locations, in order (`result_url` holds the first).
            item.insert(
                "result_urls".into(),
                AttributeValue::L(locations.into_iter().map(s).collect()),
            );
        }
        item.insert("provider".into(), s(&e.provider));
        item.insert("credits_used".into(), n(e.credits_used));
        item.insert("created_at".into(), s(iso(e.created_at)));
        item.insert("hit_count".into(), n(e.hit_count));
        item.insert("ttl".into(), n(e.expires_at.timestamp()));
        item.insert("request_params".into(), s(&e.request_params));
        item.insert("status".into(), s(e.status.as_str()));
        item.insert("content_type".into(), s(&e.content_type));
        if let Some(job) = &e.job_id {
            item.insert("job_id".into(), s(job));
        }
        if let Some(lease) = e.lease_until {
            item.insert("lease_until".into(), n(lease.timestamp()));
        }
        item
    }

    /// Reads an entry item; None when it is not of the expected shape (treated as a miss).
    fn parse_entry(&self, item: &Item) -> Option<CacheEntry> {
        let locations: Vec<&str> = match item.get("result_urls").and_then(|v| v.as_l().ok()) {
            Some(list) => list
                .iter()
                .filter_map(|v| v.as_s().ok().map(String::as_str))
                .collect(),
            None => get_s(item, "result_url").into_iter().collect(),
        };
        let result_keys = locations
            .iter()
            .map(|l| l.strip_prefix(&self.location_prefix).map(str::to_owned))
            .collect::<Option<Vec<_>>>()?;
        let request_params = get_s(item, "request_params")?.to_owned();
        let model = serde_json::from_str::<serde_json::Value>(&request_params)
            .ok()
            .and_then(|v| v.get("model")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        Some(CacheEntry {
            cache_key: CacheKey::parse(get_s(item, "PK")?)?,
            status: EntryStatus::parse(get_s(item, "status")?)?,
            result_keys,
            content_type: get_s(item, "content_type")?.to_owned(),
            provider: get_s(item, "provider")?.to_owned(),
            model,
            credits_used: get_n(item, "credits_used")?,
            created_at: DateTime::parse_from_rfc3339(get_s(item, "created_at")?)
                .ok()?
                .with_timezone(&Utc),
            hit_count: get_n(item, "hit_count").unwrap_or(0),
            expires_at: DateTime::from_timestamp(get_n(item, "ttl")?, 0)?,
            request_params,
            job_id: get_s(item, "job_id").map(str::to_owned),
            lease_until: get_n(item, "lease_until").and_then(|t| DateTime::from_timestamp(t, 0)),
        })
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

    /// A charge (debit and ledger line) in one transaction with `extra` items, which follow them
    /// from index 2. The balance condition is `= seen` while the caller's read is fresh, so the
    /// new balance is known without another read; a balance moved meanwhile retries without it.
    async fn charge_with(
        &self,
        c: &Charge,
        extra: &[TransactWriteItem],
    ) -> Result<Charged, ChargeError> {
        let mut exact = c.seen_balance.filter(|b| *b >= c.amount);
        // At most: the exact attempt and a plain one.
        for _ in 0..2 {
            let mut items = self.charge_items(c, exact)?;
            items.extend_from_slice(extra);
            match transact(&self.client, items).await {
                Ok(()) => {
                    let balance = match exact {
                        Some(seen) => seen - c.amount,
                        // The write cannot return the balance: read it (only off the warm path).
                        None => self.balance(&c.user_id).await?.unwrap_or(0),
                    };
                    return Ok(Charged::Done(balance));
                }
                Err(TransactFailure::Condition { index: 0, old }) => {
                    let available = match old {
                        Some(old) => get_n(&old, "credits_remaining").unwrap_or(0),
                        // No profile came back: it may not exist, or the store did not say.
                        None => self
                            .balance(&c.user_id)
                            .await?
                            .ok_or(ChargeError::UnknownUser)?,
                    };
                    if available < c.amount {
                        return Err(ChargeError::InsufficientCredits {
                            available,
                            required: c.amount,
                        });
                    }
                    // Another request moved the balance since we read it: charge without `= seen`.
                    exact = None;
                }
                Err(TransactFailure::Condition { index: 1, .. }) => {
                    return Err(
                        StoreError(format!("request {} already charged", c.request_id)).into(),
                    );
                }
                Err(TransactFailure::Condition { index, old }) => {
                    return Ok(Charged::ExtraFailed {
                        index: index - 2,
                        old,
                    });
                }
                Err(TransactFailure::Store(e)) => return Err(e.into()),
            }
        }
        Err(StoreError("charge did not settle after retries".into()).into())
    }

    /// A charge with nothing else in its transaction.
    async fn charge_alone(&self, c: &Charge) -> Result<u64, ChargeError> {
        match self.charge_with(c, &[]).await? {
            Charged::Done(balance) => Ok(balance),
            Charged::ExtraFailed { .. } => Err(StoreError("charge did not settle".into()).into()),
        }
    }

    /// The debit (balance condition first) and the ledger put of a charge: items 0 and 1 of its
    /// transaction. `exact` makes the condition `= seen` so the new balance is known.
    fn charge_items(
        &self,
        c: &Charge,
        exact: Option<u64>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let cache_key = c.cache_key.to_string();
        let mut debit = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(&c.user_id), "PROFILE")))
            .update_expression(
                "SET credits_remaining = credits_remaining - :a, credits_used = credits_used + :a",
            )
            .expression_attribute_values(":a", n(c.amount))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        debit = match exact {
            Some(seen) => debit
                .condition_expression("credits_remaining = :seen AND credits_remaining >= :a")
                .expression_attribute_values(":seen", n(seen)),
            None => debit.condition_expression("credits_remaining >= :a"),
        };
        Ok(vec![
            TransactWriteItem::builder()
                .update(debit.build().map_err(build_err)?)
                .build(),
            self.put_new_item(ledger_item(
                &c.user_id,
                c.at,
                &c.request_id,
                -(c.amount as i64),
                c.reason,
                Some(&cache_key),
            ))?,
        ])
    }
}

/// What a charge with extra items did.
enum Charged {
    /// Committed; the new balance.
    Done(u64),
    /// Extra item `index` (0 = the first extra) failed its condition; nothing was written.
    ExtraFailed { index: usize, old: Option<Item> },
}

/// Why a transaction did not commit.
enum TransactFailure {
    /// Item `index`'s condition failed; `old` is that item before, when the store returned it.
    Condition { index: usize, old: Option<Item> },
    /// Anything else.
    Store(StoreError),
}

/// Runs one transaction; a cancellation by contention alone (another transaction on one of its
/// items, throttling) is tried again with the same client request token, so it applies once.
async fn transact(client: &Client, items: Vec<TransactWriteItem>) -> Result<(), TransactFailure> {
    let token = uuid::Uuid::new_v4().to_string();
    let request = client
        .transact_write_items()
        .set_transact_items(Some(items))
        .client_request_token(token);
    let result = retrying(
        || request.clone().send(),
        |e: &SdkError<TransactWriteItemsError, _>| match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancel)) => {
                let codes: Vec<_> = cancel
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code())
                    .collect();
                !codes.contains(&"ConditionalCheckFailed")
                    && codes.iter().any(|c| {
                        matches!(
                            *c,
                            "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded"
                        )
                    })
            }
            _ => is_contention_code(e.code()),
        },
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                e.as_service_error()
                && let Some((index, reason)) = cancel
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
            {
                return Err(TransactFailure::Condition {
                    index,
                    old: reason.item().cloned(),
                });
            }
            Err(TransactFailure::Store(store_err(e)))
        }
    }
}

#[async_trait]
impl LookupStore for DynamoStore {
    async fn lookup(
        &self,
        api_key_digest: &str,
        cache_key: Option<&CacheKey>,
    ) -> Result<Lookup, StoreError> {
        let known = self.known_owner(api_key_digest);
        let mut keys = vec![key(format!("APIKEY#{api_key_digest}"), "LOOKUP")];
        if let Some(cache_key) = cache_key {
            keys.push(key(cache_key.to_string(), "RESULT"));
        }
        if let Some(user) = &known {
            keys.push(key(user_pk(user), "PROFILE"));
        }
        let mut request = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .consistent_read(true)
            .build()
            .map_err(build_err)?;
        let mut items = Vec::new();
        // BatchGetItem may return some keys unprocessed under throttling: ask again for those.
        for _ in 0..5 {
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request.clone())
                .send()
                .await
                .map_err(store_err)?;
            if let Some(found) = out.responses().and_then(|r| r.get(&self.table)) {
                items.extend(found.iter().cloned());
            }
            match out.unprocessed_keys().and_then(|u| u.get(&self.table)) {
                Some(rest) if !rest.keys().is_empty() => request = rest.clone(),
                _ => break,
            }
        }
        let find = |pk_prefix: &str, sk: &str| {
            items.iter().find(|i| {
                get_s(i, "SK") == Some(sk)
                    && get_s(i, "PK").is_some_and(|pk| pk.starts_with(pk_prefix))
            })
        };
        let user_id = find("APIKEY#", "LOOKUP")
            .and_then(|i| get_s(i, "user_id"))
            .map(str::to_owned);
        self.remember_owner(api_key_digest, user_id.as_deref());
        let balance = match (&user_id, &known) {
            (Some(user), Some(k)) if user == k => {
                find(&user_pk(user), "PROFILE").and_then(|i| get_n(i, "credits_remaining"))
            }
            _ => None,
        };
        let entry = find("CACHE#", "RESULT").and_then(|item| {
            let parsed = self.parse_entry(item);
            if parsed.is_none() {
                tracing::warn!(
                    pk = get_s(item, "PK").unwrap_or_default(),
                    "unreadable cache entry"
                );
            }
            parsed
        });
        Ok(Lookup {
            user_id,
            entry,
            balance,
        })
    }
}

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
            retrying(|| count.clone().send(), contended)
        );
        match (&charged, counted) {
            (Err(_), Ok(_)) => {
                // Not charged, so not a hit: take the count back (off the served path).
                let undo = count.expression_attribute_values(":n", n(-1));
                if let Err(e) = retrying(|| undo.clone().send(), contended).await {
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

#[async_trait]
impl CacheStore for DynamoStore {
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError> {
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(self.entry_item(entry)));
        retrying(|| put.clone().send(), contended)
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

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
        let result = retrying(|| put.clone().send(), contended).await;
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
        retrying(|| update.clone().send(), contended)
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
        let result = retrying(|| delete.clone().send(), contended).await;
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
                let line = (|| {
                    Some(LedgerLine {
                        user_id: user_id.to_owned(),
                        at: DateTime::parse_from_rfc3339(get_s(item, "at")?)
                            .ok()?
                            .with_timezone(&Utc),
                        request_id: get_s(item, "request_id")?.to_owned(),
                        amount: get_n(item, "amount")?,
                        reason: LedgerReason::parse(get_s(item, "reason")?)?,
                        cache_key: get_s(item, "cache_key").map(str::to_owned),
                    })
                })()
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

fn job_key(job_id: &str) -> Item {
    key(format!("JOB#{job_id}"), "METADATA")
}

fn job_item(j: &Job) -> Item {
    let mut item = job_key(&j.id);
    item.insert("owner".into(), s(&j.owner));
    item.insert("media_type".into(), s(j.media_type.as_str()));
    item.insert("cache_key".into(), s(j.cache_key.to_string()));
    if let Some(leader) = &j.leader {
        item.insert("leader".into(), s(leader));
    }
    item.insert("request_id".into(), s(&j.request_id));
    item.insert("credits_charged".into(), n(j.credits_charged));
    item.insert("provider".into(), s(&j.provider));
    item.insert("model".into(), s(&j.model));
    if let Some(task) = &j.provider_task {
        item.insert("provider_task".into(), s(task));
    }
    item.insert("status".into(), s(j.status.as_str()));
    item.insert("attempts".into(), n(j.attempts));
    item.insert(
        "result_keys".into(),
        AttributeValue::L(j.result_keys.iter().map(s).collect()),
    );
    item.insert("content_type".into(), s(&j.content_type));
    if let Some(failure) = &j.failure {
        item.insert("failure_code".into(), s(&failure.code));
        item.insert("failure_message".into(), s(&failure.message));
    }
    item.insert("request_params".into(), s(&j.request_params));
    item.insert("save_entry".into(), AttributeValue::Bool(j.save_entry));
    item.insert("created_at".into(), s(iso(j.created_at)));
    item.insert("updated_at".into(), s(iso(j.updated_at)));
    item.insert("deadline".into(), s(iso(j.deadline)));
    item.insert("ttl".into(), n(j.expires_at().timestamp()));
    item
}

fn parse_job(item: &Item) -> Option<Job> {
    let time = |name: &str| {
        DateTime::parse_from_rfc3339(get_s(item, name)?)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let failure = match (get_s(item, "failure_code"), get_s(item, "failure_message")) {
        (Some(code), message) => Some(JobFailure::new(code, message.unwrap_or_default())),
        _ => None,
    };
    Some(Job {
        id: get_s(item, "PK")?.strip_prefix("JOB#")?.to_owned(),
        owner: get_s(item, "owner")?.to_owned(),
        media_type: MediaType::parse(get_s(item, "media_type")?)?,
        cache_key: CacheKey::parse(get_s(item, "cache_key")?)?,
        leader: get_s(item, "leader").map(str::to_owned),
        request_id: get_s(item, "request_id")?.to_owned(),
        credits_charged: get_n(item, "credits_charged")?,
        provider: get_s(item, "provider")?.to_owned(),
        model: get_s(item, "model")?.to_owned(),
        provider_task: get_s(item, "provider_task").map(str::to_owned),
        status: JobStatus::parse(get_s(item, "status")?)?,
        attempts: get_n(item, "attempts").unwrap_or(0),
        result_keys: item
            .get("result_keys")
            .and_then(|v| v.as_l().ok())
            .map(|l| {
                l.iter()
                    .filter_map(|v| v.as_s().ok().cloned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
        content_type: get_s(item, "content_type")?.to_owned(),
        failure,
        request_params: get_s(item, "request_params")?.to_owned(),
        save_entry: item
            .get("save_entry")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(true),
        created_at: time("created_at")?,
        updated_at: time("updated_at")?,
        deadline: time("deadline")?,
    })
}

/// The condition that a stored job is not finished.
const JOB_OPEN: &str = "attribute_exists(PK) AND NOT (#status IN (:completed, :failed))";

impl DynamoStore {
    /// A put of `job` that holds only while the stored job is open.
    fn put_open_job(&self, job: &Job) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(job_item(job)))
            .condition_expression(JOB_OPEN)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":completed", s(JobStatus::Completed.as_str()))
            .expression_attribute_values(":failed", s(JobStatus::Failed.as_str()))
            .build()
            .map_err(build_err)
    }

    /// The entry's item as stored, read consistently.
    async fn read_entry_item(&self, cache_key: &CacheKey) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(cache_key.to_string(), "RESULT")))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_err)?;
        Ok(out.item)
    }
}

/// A condition that holds while an item is exactly `old` (every attribute equal): a
/// compare-and-swap for items too broken to reason about.
fn unchanged(
    old: &Item,
) -> (
    String,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
) {
    let mut clauses = Vec::with_capacity(old.len());
    let mut names = HashMap::new();
    let mut values = HashMap::new();
    for (i, (name, value)) in old.iter().enumerate() {
        clauses.push(format!("#u{i} = :u{i}"));
        names.insert(format!("#u{i}"), name.clone());
        values.insert(format!(":u{i}"), value.clone());
    }
    (clauses.join(" AND "), names, values)
}

impl DynamoStore {}

/// The condition of an entry that belongs to the pending job `:job`.
const PENDING_ON_JOB: &str = "#status = :pending AND job_id = :job";

#[async_trait]
impl JobStore for DynamoStore {
    async fn start_job(
        &self,
        job: &Job,
        pending: &CacheEntry,
        bypass_ready: bool,
        charge: &Charge,
    ) -> Result<JobStart, ChargeError> {
        let now = charge.at;
        let free = Put::builder()
            .table_name(&self.table)
            .set_item(Some(self.entry_item(pending)))
            .condition_expression(
                "attribute_not_exists(PK) OR #ttl <= :now \
                 OR (#status = :pending AND lease_until <= :now)",
            )
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":pending", s(EntryStatus::Pending.as_str()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build_err)?;
        let claim = |entry: Put| -> Result<[TransactWriteItem; 2], StoreError> {
            Ok([
                self.put_new_item(job_item(job))?,
                TransactWriteItem::builder().put(entry).build(),
            ])
        };
        let old = match self.charge_with(charge, &claim(free)?).await? {
            Charged::Done(balance) => return Ok(JobStart::Started { balance }),
            Charged::ExtraFailed { index: 1, old } => old,
            Charged::ExtraFailed { .. } => {
                return Err(StoreError(format!("job {} already exists", job.id)).into());
            }
        };
        let old = match old {
            Some(old) => old,
            None => match self.read_entry_item(&pending.cache_key).await? {
                Some(old) => old,
                // Gone in between: the caller tries again.
                None => return Err(StoreError("the cache entry changed; try again".into()).into()),
            },
        };
        match self.parse_entry(&old) {
            Some(entry) if entry.joinable_job(now).is_some() => {
                Ok(JobStart::EntryTaken(Box::new(entry)))
            }
            Some(entry) if entry.is_servable(now) && !bypass_ready => {
                Ok(JobStart::EntryTaken(Box::new(entry)))
            }
            Some(entry) if entry.is_servable(now) => {
                // `no-cache`: the entry stays served to others; only the job and its charge.
                match self
                    .charge_with(charge, &[self.put_new_item(job_item(job))?])
                    .await?
                {
                    Charged::Done(balance) => Ok(JobStart::Started { balance }),
                    Charged::ExtraFailed { .. } => {
                        Err(StoreError(format!("job {} already exists", job.id)).into())
                    }
                }
            }
            // Unreadable, or neither servable nor pending: overwrite it, if still as read.
            parsed => {
                if parsed.is_none() {
                    tracing::warn!(cache_key = %pending.cache_key, "unreadable cache entry overwritten");
                }
                let (condition, names, values) = unchanged(&old);
                let overwrite = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(self.entry_item(pending)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build_err)?;
                match self.charge_with(charge, &claim(overwrite)?).await? {
                    Charged::Done(balance) => Ok(JobStart::Started { balance }),
                    Charged::ExtraFailed { index: 1, .. } => {
                        Err(StoreError("the cache entry changed; try again".into()).into())
                    }
                    Charged::ExtraFailed { .. } => {
                        Err(StoreError(format!("job {} already exists", job.id)).into())
                    }
                }
            }
        }
    }

    async fn join_job(&self, job: &Job, charge: &Charge) -> Result<Option<u64>, ChargeError> {
        let Some(leader) = &job.leader else {
            return Err(StoreError("a joining job needs its leader".into()).into());
        };
        let mut link = key(format!("JOB#{leader}"), &format!("FOLLOWER#{}", job.id));
        link.insert("job_id".into(), s(&job.id));
        link.insert("ttl".into(), n(job.expires_at().timestamp()));
        let still_pending = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(key(job.cache_key.to_string(), "RESULT")))
            .condition_expression(format!("{PENDING_ON_JOB} AND lease_until > :now"))
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pending", s(EntryStatus::Pending.as_str()))
            .expression_attribute_values(":job", s(leader))
            .expression_attribute_values(":now", n(charge.at.timestamp()))
            .build()
            .map_err(build_err)?;
        let extra = [
            self.put_new_item(job_item(job))?,
            self.put_new_item(link)?,
            TransactWriteItem::builder()
                .condition_check(still_pending)
                .build(),
        ];
        match self.charge_with(charge, &extra).await? {
            Charged::Done(balance) => Ok(Some(balance)),
            Charged::ExtraFailed { index: 2, .. } => Ok(None),
            Charged::ExtraFailed { .. } => {
                Err(StoreError(format!("job {} already exists", job.id)).into())
            }
        }
    }

    async fn job(&self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(job_key(job_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(store_err)?;
        match out.item {
            None => Ok(None),
            Some(item) => parse_job(&item)
                .map(Some)
                .ok_or_else(|| StoreError(format!("unreadable job {job_id}"))),
        }
    }

    async fn update_job(&self, job: &Job) -> Result<bool, StoreError> {
        let put = self.put_open_job(job)?;
        let request = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(put.item().clone()))
            .condition_expression(JOB_OPEN)
            .set_expression_attribute_names(put.expression_attribute_names().cloned())
            .set_expression_attribute_values(put.expression_attribute_values().cloned());
        let result = retrying(|| request.clone().send(), contended).await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    async fn finish_job(&self, job: &Job, ready: Option<&CacheEntry>) -> Result<bool, StoreError> {
        // A result replaces the entry unless another job's live claim holds it; a failure
        // deletes the entry only while it is pending on this job (never a READY one).
        let mut names = HashMap::from([("#status".to_owned(), "status".to_owned())]);
        let mut values = HashMap::from([
            (":pending".to_owned(), s(EntryStatus::Pending.as_str())),
            (":job".to_owned(), s(&job.id)),
        ]);
        let entry_item = match ready {
            Some(entry) => {
                names.insert("#ttl".into(), "ttl".into());
                values.insert(":now".into(), n(job.updated_at.timestamp()));
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(self.entry_item(entry)))
                            .condition_expression(format!(
                                "({PENDING_ON_JOB}) OR attribute_not_exists(PK) OR #status <> :pending \
                                 OR lease_until <= :now OR #ttl <= :now"
                            ))
                            .set_expression_attribute_names(Some(names))
                            .set_expression_attribute_values(Some(values))
                            .build()
                            .map_err(build_err)?,
                    )
                    .build()
            }
            None => TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.table)
                        .set_key(Some(key(job.cache_key.to_string(), "RESULT")))
                        .condition_expression(PENDING_ON_JOB)
                        .set_expression_attribute_names(Some(names))
                        .set_expression_attribute_values(Some(values))
                        .build()
                        .map_err(build_err)?,
                )
                .build(),
        };
        let items = vec![
            TransactWriteItem::builder()
                .put(self.put_open_job(job)?)
                .build(),
            entry_item,
        ];
        match transact(&self.client, items).await {
            Ok(()) => Ok(true),
            Err(TransactFailure::Condition { index: 0, .. }) => Ok(false),
            // The entry is no longer this job's (expired and taken over): finish the job alone.
            Err(TransactFailure::Condition { .. }) => self.update_job(job).await,
            Err(TransactFailure::Store(e)) => Err(e),
        }
    }

    async fn followers(&self, leader_id: &str) -> Result<Vec<Job>, StoreError> {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("PK = :pk AND begins_with(SK, :follower)")
                .expression_attribute_values(":pk", s(format!("JOB#{leader_id}")))
                .expression_attribute_values(":follower", s("FOLLOWER#"))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(store_err)?;
            ids.extend(
                out.items()
                    .iter()
                    .filter_map(|i| get_s(i, "job_id").map(str::to_owned)),
            );
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(job) = self.job(&id).await? {
                jobs.push(job);
            }
        }
        jobs.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(jobs)
    }
}
