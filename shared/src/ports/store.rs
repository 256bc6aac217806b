//! The store: one trait per operation group, so each caller asks only for what it needs.

use crate::domain::usage::{ReadCost, UsageRecords};
use crate::domain::{
    Account, CacheEntry, CacheKey, Charge, ClaimOutcome, DailyLimitExceeded, DailySpend,
    IdempotencyClaim, Job, LedgerLine, MediaType, Refund, UserId,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// The store could not do what was asked (unreachable, corrupt data...).
#[derive(Debug, Clone, thiserror::Error)]
#[error("store error: {0}")]
pub struct StoreError(pub String);

/// Why a charge did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    /// The balance is smaller than the price; nothing changed.
    #[error("not enough credits: {available} available, {required} required")]
    InsufficientCredits {
        /// Balance at the time of the attempt (best known).
        available: u64,
        /// The price.
        required: u64,
    },
    /// The charge would take the day's spend over the user's daily limit; nothing changed.
    #[error(transparent)]
    DailyLimitExceeded(#[from] DailyLimitExceeded),
    /// The user does not exist.
    #[error("unknown user")]
    UnknownUser,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the hot path needs from one read: the caller's key record and the cache entry.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    /// The user owning the API key, if the key is known.
    pub user_id: Option<UserId>,
    /// The cache entry, if one is stored (possibly expired: the caller checks).
    pub entry: Option<CacheEntry>,
    /// The user's balance, when the store could read it in the same round trip.
    pub balance: Option<u64>,
    /// The user's daily limit and spend, read with `balance` (None when it is).
    pub spend: Option<DailySpend>,
}

/// One batch read of an API key record and a cache entry (the first of the hit path's two round
/// trips).
#[async_trait]
pub trait LookupStore: Send + Sync {
    /// Reads the key record of `api_key_digest` and, when given, the entry of `cache_key`.
    async fn lookup(
        &self,
        api_key_digest: &str,
        cache_key: Option<&CacheKey>,
    ) -> Result<Lookup, StoreError>;
}

/// Credit movements, each in one transaction with its ledger line.
#[async_trait]
pub trait CreditStore: Send + Sync {
    /// Debits the charge unless the balance would go below zero or the day's spend over the
    /// user's daily limit, and counts it in the day's spend; returns the new balance.
    /// With `count_hit`, the entry's `hit_count` grows by one, never in a write that another
    /// user's charge also makes (see each adapter for how exact the count is).
    async fn charge(&self, charge: &Charge) -> Result<u64, ChargeError>;

    /// Credits the refund once per request id (giving the day's spend back when the charge was
    /// made the same UTC day); returns the new balance, or None if that request was already
    /// refunded.
    async fn refund(&self, refund: &Refund) -> Result<Option<u64>, StoreError>;
}

/// Writes and purges cache entries.
#[async_trait]
pub trait CacheStore: Send + Sync {
    /// Saves `entry`, replacing any entry under the same key.
    async fn put_entry(&self, entry: &CacheEntry) -> Result<(), StoreError>;

    /// Deletes the READY entry of `key` (a pending one belongs to a job in flight and stays);
    /// false when there was none.
    async fn purge_entry(&self, key: &CacheKey) -> Result<bool, StoreError>;

    /// Deletes every READY entry that `filter` matches; how many.
    async fn purge_entries(&self, filter: &PurgeFilter) -> Result<u64, StoreError>;
}

/// Which entries a purge deletes: those matching every condition given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeFilter {
    /// Of this media type.
    pub media_type: Option<MediaType>,
    /// Made before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Private to this account (see `CacheKey::private_to`).
    pub owner: Option<UserId>,
}

impl PurgeFilter {
    /// Whether `entry` is one to delete.
    pub fn matches(&self, entry: &CacheEntry) -> bool {
        self.media_type
            .is_none_or(|t| entry.cache_key.media_type() == t)
            && self.created_before.is_none_or(|t| entry.created_at < t)
            && self.owner.as_deref().is_none_or(|user| {
                entry
                    .cache_key
                    .hash()
                    .starts_with(&CacheKey::owner_tag(user))
            })
    }
}

/// API keys allowed to administer the cache (purge).
#[async_trait]
pub trait AdminKeys: Send + Sync {
    /// Makes the key of `api_key_digest` an admin key.
    async fn make_admin(&self, api_key_digest: &str) -> Result<(), StoreError>;

    /// Whether the key of `api_key_digest` is an admin key.
    async fn is_admin(&self, api_key_digest: &str) -> Result<bool, StoreError>;
}

/// Idempotency records for `Idempotency-Key`.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Takes the key for this request, or says why not.
    async fn claim(&self, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError>;

    /// Stores the answer that retries will get.
    async fn complete(
        &self,
        user_id: &str,
        key: &str,
        answer: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Lets the key go after a failure, so a retry runs the request again.
    async fn release(&self, user_id: &str, key: &str) -> Result<(), StoreError>;
}

/// Users, API keys and grants: the admin side.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user with no credits.
    async fn create_user(&self, user_id: &str, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Attaches an API key (by digest) to a user.
    async fn add_api_key(&self, api_key_digest: &str, user_id: &str) -> Result<(), StoreError>;

    /// Adds credits with a `grant` ledger line; returns the new balance.
    async fn grant(
        &self,
        user_id: &str,
        amount: u64,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, ChargeError>;

    /// Sets the user's daily spend limit in credits per UTC day (None removes it). Today's
    /// spend so far stays: a limit set below it refuses charges until the day turns.
    async fn set_daily_limit(&self, user_id: &str, limit: Option<u64>) -> Result<(), ChargeError>;

    /// The user's balance, if the user exists.
    async fn account(&self, user_id: &str) -> Result<Option<Account>, StoreError>;

    /// The user's ledger, newest first, at most `limit` lines.
    async fn ledger(&self, user_id: &str, limit: usize) -> Result<Vec<LedgerLine>, StoreError>;

    /// How many users exist.
    async fn user_count(&self) -> Result<u64, StoreError>;
}

/// What starting a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStart {
    /// The job, its PENDING entry and the charge are written: submit the provider task.
    Started {
        /// The balance after the charge.
        balance: u64,
    },
    /// Another entry is in the way (a pending job to join, or a ready result): nothing written.
    EntryTaken(Box<CacheEntry>),
}

/// Long jobs and their PENDING cache entries (single flight).
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Writes `job`, its `pending` entry and the `charge` (with its ledger line) in one
    /// transaction, unless a live entry is in the way: a pending one whose lease has not run out,
    /// or (without `bypass_ready`) a servable one. With `bypass_ready` (`no-cache`) a servable
    /// entry stays as it is, still served to others, and only the job and charge are written.
    /// A missing, expired or unreadable entry is overwritten. Nothing is written when it fails.
    async fn start_job(
        &self,
        job: &Job,
        pending: &CacheEntry,
        bypass_ready: bool,
        charge: &Charge,
    ) -> Result<JobStart, ChargeError>;

    /// Joins `job.leader`'s pending task: charges `charge` and writes `job`, in one transaction
    /// that holds only while the entry is still pending on that leader. Returns the new balance,
    /// or None when the entry moved on (nothing was charged).
    async fn join_job(&self, job: &Job, charge: &Charge) -> Result<Option<u64>, ChargeError>;

    /// A job by id.
    async fn job(&self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// Saves `job` (status, task, attempts, result, failure) unless the stored one is already
    /// terminal, or `job` is open and the stored one is at a later attempt (a late writer never
    /// takes a job back to an attempt before the running one); returns whether it was saved.
    async fn update_job(&self, job: &Job) -> Result<bool, StoreError>;

    /// Saves `job` as the next attempt at it: only while the stored job is open, its `attempts`
    /// is still one less than `job.attempts`, and no earlier attempt may still be running (the
    /// stored job is not `processing`, or that attempt began, `updated_at`, at or before
    /// `lapsed_at`). Of deliveries of one settlement, at once or while an attempt runs, one
    /// takes the attempt (and calls the provider); the others see false.
    async fn claim_attempt(
        &self,
        job: &Job,
        lapsed_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError>;

    /// Saves the finished leader `job` and settles its cache entry in one transaction: `ready`
    /// replaces the entry unless another job's live pending claim holds it; None deletes the
    /// entry only while it is pending on this job (a failed job, or `no-store`), so a READY
    /// entry others are served from is never lost. Returns false when the stored job was
    /// already terminal (nothing changed).
    async fn finish_job(&self, job: &Job, ready: Option<&CacheEntry>) -> Result<bool, StoreError>;

    /// The jobs that joined `leader_id`'s task.
    async fn followers(&self, leader_id: &str) -> Result<Vec<Job>, StoreError>;
}

/// Reads the whole store for usage reports (`mediactl stats`, the dashboard): an operator's
/// tool, never on a request path.
#[async_trait]
pub trait UsageScan: Send + Sync {
    /// Every ledger line, cache entry and job, with what reading them cost; `progress` hears the
    /// running total after each page.
    async fn usage_records(
        &self,
        progress: &(dyn Fn(ReadCost) + Send + Sync),
    ) -> Result<UsageRecords, StoreError>;
}

/// Everything the application needs from a store.
pub trait Store:
    LookupStore + CreditStore + CacheStore + IdempotencyStore + AccountStore + JobStore + AdminKeys
{
}

impl<
    T: LookupStore + CreditStore + CacheStore + IdempotencyStore + AccountStore + JobStore + AdminKeys,
> Store for T
{
}
