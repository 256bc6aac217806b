//! The records the store keeps (DESIGN.md's data model), independent of any database.

use super::budget::DailySpend;
use super::cache_key::CacheKey;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a generated result is served from the cache.
pub const CACHE_TTL: Duration = Duration::days(7);
/// How long an idempotency record answers retries.
pub const IDEMPOTENCY_TTL: Duration = Duration::hours(24);
/// How long an in-flight idempotent request holds its key before a retry may take it over.
pub const IDEMPOTENCY_LEASE: Duration = Duration::minutes(10);

/// Whether an entry holds a finished result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntryStatus {
    /// The media is stored and can be served.
    Ready,
    /// A long job is still producing it.
    Pending,
}

impl EntryStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryStatus::Ready => "READY",
            EntryStatus::Pending => "PENDING",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "READY" => Some(EntryStatus::Ready),
            "PENDING" => Some(EntryStatus::Pending),
            _ => None,
        }
    }
}

/// A cached result: `CACHE#{type}#{hash}` / `RESULT`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    /// The key.
    pub cache_key: CacheKey,
    /// READY or PENDING.
    pub status: EntryStatus,
    /// Content-addressed object keys of the media, in order (one per image).
    pub result_keys: Vec<String>,
    /// MIME type of the media.
    pub content_type: String,
    /// Provider that made it.
    pub provider: String,
    /// Model that made it.
    pub model: String,
    /// The full price charged when it was made.
    pub credits_used: u64,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// How many hits it has served.
    pub hit_count: u64,
    /// When it stops being served (the table's `ttl`).
    pub expires_at: DateTime<Utc>,
    /// The normalised parameters, as canonical JSON.
    pub request_params: String,
    /// While pending: the job whose provider task will produce the result.
    pub job_id: Option<String>,
    /// While pending: until when that job holds the entry; past it a new request may take over.
    pub lease_until: Option<DateTime<Utc>>,
}

impl CacheEntry {
    /// Whether the entry can answer a request at `now`. Expired items may linger in the store
    /// (DynamoDB deletes them up to days late), so the read side decides.
    pub fn is_servable(&self, now: DateTime<Utc>) -> bool {
        self.status == EntryStatus::Ready && self.expires_at > now && !self.result_keys.is_empty()
    }

    /// The job a request for this entry can join at `now`: pending, and its lease not run out.
    pub fn joinable_job(&self, now: DateTime<Utc>) -> Option<&str> {
        match (&self.job_id, self.lease_until) {
            (Some(job), Some(lease)) if self.status == EntryStatus::Pending && lease > now => {
                Some(job)
            }
            _ => None,
        }
    }
}

/// A user's identifier, e.g. `usr_3f2a...`.
pub type UserId = String;

/// The SHA-256 hex digest under which an API key is stored.
pub fn api_key_digest(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))
}

/// A user's balance: `USER#{id}` / `PROFILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The user.
    pub user_id: UserId,
    /// Credits left.
    pub credits_remaining: u64,
    /// Credits spent so far (charges less refunds).
    pub credits_used: u64,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// The daily limit and the spend of the last day charged.
    pub spend: DailySpend,
}

/// Why credits moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerReason {
    /// A cache hit.
    Hit,
    /// A generation.
    Miss,
    /// Money back for a generation that failed.
    Refund,
    /// Credits given by an operator.
    Grant,
}

impl LedgerReason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerReason::Hit => "hit",
            LedgerReason::Miss => "miss",
            LedgerReason::Refund => "refund",
            LedgerReason::Grant => "grant",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hit" => Some(LedgerReason::Hit),
            "miss" => Some(LedgerReason::Miss),
            "refund" => Some(LedgerReason::Refund),
            "grant" => Some(LedgerReason::Grant),
            _ => None,
        }
    }
}

/// One credit movement: `USER#{id}` / `LEDGER#{time}#{request id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerLine {
    /// Whose credits moved.
    #[serde(skip)]
    pub user_id: UserId,
    /// When.
    pub at: DateTime<Utc>,
    /// The request that moved them.
    pub request_id: String,
    /// Signed amount: negative for charges, positive for refunds and grants.
    pub amount: i64,
    /// Why.
    pub reason: LedgerReason,
    /// The result concerned, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

/// A debit to make atomically with its ledger line.
#[derive(Debug, Clone)]
pub struct Charge {
    /// Who pays.
    pub user_id: UserId,
    /// How much (positive).
    pub amount: u64,
    /// Hit or miss.
    pub reason: LedgerReason,
    /// The request, unique per charge.
    pub request_id: String,
    /// The result paid for.
    pub cache_key: CacheKey,
    /// Also add one to this entry's `hit_count`, in the same transaction.
    pub count_hit: bool,
    /// The balance the caller read before charging, if any: lets a store that cannot return the
    /// new balance from its write compute it without another read.
    pub seen_balance: Option<u64>,
    /// The daily spend the caller read with that balance, if any: lets a store that checks the
    /// limit with a condition on the stored spend (DynamoDB) write it without reading it first.
    pub seen_spend: Option<DailySpend>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Money back for a charge; applied at most once per request.
#[derive(Debug, Clone)]
pub struct Refund {
    /// Who is refunded.
    pub user_id: UserId,
    /// How much (positive).
    pub amount: u64,
    /// The request whose charge is undone.
    pub request_id: String,
    /// The result that was not delivered.
    pub cache_key: CacheKey,
    /// When the refunded charge was made (or a moment before it): a refund on the same UTC day
    /// gives that day's spend back (`DailySpend::refund`).
    pub charged_at: DateTime<Utc>,
    /// When.
    pub at: DateTime<Utc>,
}

/// An attempt to take an idempotency key: `IDEMPOTENCY#{user}#{key}` / `REQUEST`.
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    /// Whose key.
    pub user_id: UserId,
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// Digest of what the request asks for; a retry must match it.
    pub fingerprint: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The key is ours: go ahead.
    Claimed,
    /// The key already answered: here is the stored answer.
    Replay(String),
    /// The key was used with another request.
    Conflict,
    /// The first request with this key is still running.
    InProgress,
}
