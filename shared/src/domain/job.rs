//! Long jobs (music, video): their states and allowed transitions, the job record, the queue
//! message, and how long a job may take.

use super::cache_key::{CacheKey, MediaType};
use super::records::UserId;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long job records are kept (the table's `ttl`).
pub const JOB_TTL: Duration = Duration::days(7);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted; the provider task is submitted but has not reported progress.
    Queued,
    /// The provider is working on it.
    Processing,
    /// The media is stored; the job has its result.
    Completed,
    /// It will never complete; every charge for it was refunded.
    Failed,
}

impl JobStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(JobStatus::Queued),
            "processing" => Some(JobStatus::Processing),
            "completed" => Some(JobStatus::Completed),
            "failed" => Some(JobStatus::Failed),
            _ => None,
        }
    }

    /// Completed or failed: nothing changes it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }

    /// Whether a job in this state may move to `next` (staying put counts while not terminal).
    /// A worker's attempt that ends without a result puts its job back in the queue.
    pub fn can_move_to(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (
                Queued | Processing,
                Queued | Processing | Completed | Failed
            )
        )
    }
}

/// Why a job failed: a stable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Machine-readable: `provider_rejected`, `generation_failed`, `timed_out`...
    pub code: String,
    /// What happened.
    pub message: String,
}

impl JobFailure {
    /// A failure with `code` and `message`.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A job: `JOB#{id}` / `METADATA`. A request that joined another's pending task has its own job
/// (its owner, its charge) whose `leader` is the job that owns the provider task.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `job_...`.
    pub id: String,
    /// The user who asked; only they can see it.
    pub owner: UserId,
    /// Music or video.
    pub media_type: MediaType,
    /// The result it produces.
    pub cache_key: CacheKey,
    /// The job whose provider task this one waits on (None: this job owns its task).
    pub leader: Option<String>,
    /// The request that created it; its charge's ledger line carries this id.
    pub request_id: String,
    /// What that request was charged (refunded if the job fails).
    pub credits_charged: u64,
    /// Provider name.
    pub provider: String,
    /// Model.
    pub model: String,
    /// The provider's task reference, once submitted.
    pub provider_task: Option<String>,
    /// Where it is.
    pub status: JobStatus,
    /// How many times the provider was asked for the task's state.
    pub attempts: u32,
    /// Object keys of the media, once completed.
    pub result_keys: Vec<String>,
    /// MIME type of the media.
    pub content_type: String,
    /// Why it failed.
    pub failure: Option<JobFailure>,
    /// The normalised parameters, as canonical JSON.
    pub request_params: String,
    /// Save the result as a cache entry (false with `Cache-Control: no-store`).
    pub save_entry: bool,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When the provider must have finished; past it the job fails as timed out.
    pub deadline: DateTime<Utc>,
}

impl Job {
    /// How long it ran: from its start to its last change.
    pub fn ran_for(&self) -> Option<std::time::Duration> {
        (self.updated_at - self.created_at).to_std().ok()
    }

    /// When the record may be deleted.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.created_at + JOB_TTL
    }

    /// The job with `status`, if the transition is allowed.
    pub fn moved_to(&self, status: JobStatus, now: DateTime<Utc>) -> Option<Job> {
        self.status.can_move_to(status).then(|| Job {
            status,
            updated_at: now,
            ..self.clone()
        })
    }
}

/// What the queue carries to the completion function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job (always a leader: followers finish with it).
    pub job_id: String,
    /// True for the polling chain (an unfinished task schedules the next poll); false for a
    /// one-off nudge from a provider callback, which must not start a second chain.
    #[serde(default = "yes")]
    pub poll: bool,
    /// When a settlement was sent: it goes out before its job's transaction, so a young one that
    /// finds no job may be early (wall-clock time, as the queue's delays are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
}

impl JobMessage {
    /// The settlement of job `job_id`, sent now: the polling chain that finishes or refunds it.
    pub fn settle(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            poll: true,
            sent_at: Some(Utc::now()),
        }
    }

    /// When to look again for the job of a settlement that found none: while the message is
    /// young enough that its job's transaction may still be committing (a start retried on
    /// contention takes at most about 40 s), after a pause that grows with its age; None once it
    /// can only be an orphan (the transaction never committed: nothing to settle).
    pub fn early_retry(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        let age = (now - self.sent_at?).to_std().unwrap_or_default();
        (age < std::time::Duration::from_secs(60)).then(|| {
            age.clamp(
                std::time::Duration::from_secs(1),
                std::time::Duration::from_secs(30),
            )
        })
    }
}

fn yes() -> bool {
    true
}

/// When to ask the provider again after `attempts` polls: doubling from `first`, at most `max`,
/// and never past SQS's 15-minute delay limit.
pub fn poll_delay(
    first: std::time::Duration,
    max: std::time::Duration,
    attempts: u32,
) -> std::time::Duration {
    let limit = max.min(std::time::Duration::from_secs(900));
    first
        .saturating_mul(2u32.saturating_pow(attempts.min(16)))
        .min(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as StdDuration;

    #[test]
    fn terminal_states_never_move_and_others_only_forward() {
        use JobStatus::*;
        for terminal in [Completed, Failed] {
            for next in [Queued, Processing, Completed, Failed] {
                assert!(!terminal.can_move_to(next), "{terminal:?} -> {next:?}");
            }
        }
        assert!(Queued.can_move_to(Processing));
        assert!(Processing.can_move_to(Completed));
        assert!(Processing.can_move_to(Failed));
        assert!(Processing.can_move_to(Queued), "an attempt let go");
        for s in [Queued, Processing, Completed, Failed] {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn poll_delay_doubles_up_to_the_cap_and_the_sqs_limit() {
        let s = StdDuration::from_secs;
        assert_eq!(poll_delay(s(5), s(60), 0), s(5));
        assert_eq!(poll_delay(s(5), s(60), 2), s(20));
        assert_eq!(poll_delay(s(5), s(60), 10), s(60));
        assert_eq!(poll_delay(s(5), s(3600), 30), s(900));
    }

    #[test]
    fn messages_default_to_the_polling_chain() {
        let m: JobMessage = serde_json::from_str(r#"{"job_id":"job_1"}"#).unwrap();
        assert!(m.poll);
    }

    #[test]
    fn a_young_settlement_without_its_job_looks_again_later_and_an_old_one_gives_up() {
        let m = JobMessage::settle("job_1");
        let sent = m.sent_at.unwrap();
        let at = |secs: i64| sent + Duration::seconds(secs);
        assert_eq!(m.early_retry(at(0)), Some(StdDuration::from_secs(1)));
        assert_eq!(m.early_retry(at(8)), Some(StdDuration::from_secs(8)));
        assert_eq!(m.early_retry(at(45)), Some(StdDuration::from_secs(30)));
        assert_eq!(m.early_retry(at(61)), None, "an orphan");
        let old: JobMessage = serde_json::from_str(r#"{"job_id":"job_1"}"#).unwrap();
        assert_eq!(old.early_retry(at(0)), None, "unknown age: not early");
    }
}
