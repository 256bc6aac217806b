//! Users, API keys and credit grants (the admin side, used by `mediactl`).

use crate::domain::{Account, LedgerLine, api_key_digest};
use crate::ports::{AccountStore, ChargeError, StoreError};
use chrono::{DateTime, Utc};
use rand::Rng;

/// A freshly created user and the only copy of its API key.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The user's id.
    pub user_id: String,
    /// The API key in clear; the store keeps only its digest.
    pub api_key: String,
    /// The starting balance.
    pub credits: u64,
}

/// A new random API key: `mc_` and 160 random bits in hex.
pub fn generate_api_key() -> String {
    format!("mc_{}", hex::encode(rand::rng().random::<[u8; 20]>()))
}

/// A new random request id (also used for admin operations' ledger lines).
pub fn generate_request_id() -> String {
    // Time-ordered (UUIDv7): ledger lines keyed by request land side by side in the store's
    // indexes, so a batch of charges rewrites a few pages, not one page per charge. The random
    // part comes from the thread's generator, not a system call per request.
    let millis = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &rand::random()).into_uuid();
    format!("req_{}", id.simple())
}

/// Creates a user with a new random API key and an initial grant of `credits`.
pub async fn create_user(
    store: &dyn AccountStore,
    credits: u64,
    now: DateTime<Utc>,
) -> Result<NewUser, ChargeError> {
    create_user_with_key(store, credits, generate_api_key(), now).await
}

/// Creates a user with the given API key (e.g. the one the sample events carry) and an initial
/// grant of `credits`.
pub async fn create_user_with_key(
    store: &dyn AccountStore,
    credits: u64,
    api_key: String,
    now: DateTime<Utc>,
) -> Result<NewUser, ChargeError> {
    let user_id = format!("usr_{}", hex::encode(rand::rng().random::<[u8; 8]>()));
    store.create_user(&user_id, now).await?;
    store
        .add_api_key(&api_key_digest(&api_key), &user_id)
        .await?;
    if credits > 0 {
        store
            .grant(&user_id, credits, &generate_request_id(), now)
            .await?;
    }
    Ok(NewUser {
        user_id,
        api_key,
        credits,
    })
}

/// Creates another API key for an existing user.
pub async fn add_key(store: &dyn AccountStore, user_id: &str) -> Result<String, ChargeError> {
    if store.account(user_id).await?.is_none() {
        return Err(ChargeError::UnknownUser);
    }
    let api_key = generate_api_key();
    store
        .add_api_key(&api_key_digest(&api_key), user_id)
        .await?;
    Ok(api_key)
}

/// A user's balance with the latest ledger lines.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The balance.
    pub account: Account,
    /// Newest first.
    pub ledger: Vec<LedgerLine>,
}

/// The balance and latest `limit` ledger lines of a user.
pub async fn statement(
    store: &dyn AccountStore,
    user_id: &str,
    limit: usize,
) -> Result<Option<Statement>, StoreError> {
    let Some(account) = store.account(user_id).await? else {
        return Ok(None);
    };
    let ledger = store.ledger(user_id, limit).await?;
    Ok(Some(Statement { account, ledger }))
}
