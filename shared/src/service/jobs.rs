//! Long jobs (music, video): starting one on a miss or joining an identical one in flight
//! (single flight), the job's status for its owner, provider callbacks, and the completion step
//! the queue consumer runs.

use super::{
    Answer, CacheOutcome, CallContext, CallbackSigner, Generator, MediaJob, MediaService,
    ServiceError,
};
use crate::domain::job::poll_delay;
use crate::domain::{
    CACHE_TTL, CacheEntry, EntryStatus, Job, JobFailure, JobMessage, JobStatus, LedgerReason,
    MediaType,
};
use crate::ports::{
    JobQueue, JobStart, Lookup, MusicProvider, ProviderError, TaskProvider, TaskState,
    VideoProvider,
};
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// How jobs are polled and how long they may take.
#[derive(Debug, Clone, Copy)]
pub struct JobPolicy {
    /// Delay of the first poll; doubles per poll.
    pub first_poll: Duration,
    /// Longest delay between polls (SQS caps delays at 15 minutes).
    pub max_poll_delay: Duration,
    /// How long a provider task may take before the job fails as timed out (and is refunded).
    pub timeout: Duration,
}

impl Default for JobPolicy {
    fn default() -> Self {
        // Suno: a download URL in 2 to 3 minutes; Kling: 30 s to 5 minutes.
        Self {
            first_poll: Duration::from_secs(10),
            max_poll_delay: Duration::from_secs(60),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// What music and video need besides the sync parts.
#[derive(Clone)]
pub struct JobParts {
    /// Carries jobs to the completion step.
    pub queue: Arc<dyn JobQueue>,
    /// Makes callback URLs and checks them.
    pub callbacks: CallbackSigner,
    /// Polling and timeout.
    pub policy: JobPolicy,
    /// Suno, when configured.
    pub music: Option<Arc<dyn MusicProvider>>,
    /// Kling, when configured.
    pub video: Option<Arc<dyn VideoProvider>>,
}

impl JobParts {
    pub(crate) fn music_provider(&self) -> Result<&Arc<dyn MusicProvider>, ServiceError> {
        self.music.as_ref().ok_or(ServiceError::NotConfigured(
            "music is not configured on this deployment",
        ))
    }

    pub(crate) fn video_provider(&self) -> Result<&Arc<dyn VideoProvider>, ServiceError> {
        self.video.as_ref().ok_or(ServiceError::NotConfigured(
            "video is not configured on this deployment",
        ))
    }

    fn task_provider(&self, media_type: MediaType) -> Result<&dyn TaskProvider, ServiceError> {
        match media_type {
            MediaType::Music => Ok(self.music_provider()?.as_ref()),
            MediaType::Video => Ok(self.video_provider()?.as_ref()),
            _ => Err(ServiceError::NotConfigured("only music and video are jobs")),
        }
    }
}

/// The answer to a request that started or joined a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobTicket {
    /// The caller's job.
    pub job_id: String,
    /// The request that made it.
    pub request_id: String,
    /// Music or video.
    pub media_type: MediaType,
    /// Where it is.
    pub status: JobStatus,
    /// `CACHE#{type}#{hash}`.
    pub cache_key: String,
    /// Miss, bypass, or coalesced onto an identical job.
    pub outcome: CacheOutcome,
    /// Provider.
    pub provider: String,
    /// Model.
    pub model: String,
    /// Credits this call cost (refunded if the job fails).
    pub credits_charged: u64,
    /// Balance after this call.
    pub credits_remaining: u64,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// Whether this is a stored answer replayed for an idempotent retry.
    #[serde(default, skip_serializing)]
    pub replayed: bool,
}

/// What a provider callback did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// The job will be checked now.
    Accepted,
    /// The job is already finished: nothing to do.
    AlreadyFinished,
}

/// How many times a request tries to start or join before giving up (each failed try means
/// another request changed the entry in between).
const START_ATTEMPTS: usize = 4;

impl MediaService {
    pub(crate) fn job_parts(&self) -> Result<&JobParts, ServiceError> {
        self.jobs.as_ref().ok_or(ServiceError::NotConfigured(
            "music and video are not configured on this deployment",
        ))
    }

    fn new_job(
        &self,
        call: &CallContext,
        user_id: &str,
        job: &MediaJob<'_>,
        leader: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Job, ServiceError> {
        let policy = self.job_parts()?.policy;
        let timeout = chrono::Duration::from_std(policy.timeout)
            .unwrap_or_else(|_| chrono::Duration::minutes(30));
        let now = now.trunc_subsecs(6);
        Ok(Job {
            id: format!("job_{}", uuid::Uuid::new_v4().simple()),
            owner: user_id.to_owned(),
            media_type: job.cache_key.media_type(),
            cache_key: job.cache_key.clone(),
            leader,
            request_id: call.request_id.clone(),
            credits_charged: 0,
            provider: job.provider.clone(),
            model: job.model.clone(),
            provider_task: None,
            status: JobStatus::Queued,
            attempts: 0,
            result_keys: Vec::new(),
            content_type: job.content_type.to_owned(),
            failure: None,
            request_params: job.params.clone(),
            save_entry: !call.cache_control.no_store,
            created_at: now,
            updated_at: now,
            deadline: (now + timeout).trunc_subsecs(0),
        })
    }

    fn ticket(&self, job: &Job, outcome: CacheOutcome, remaining: u64) -> JobTicket {
        JobTicket {
            job_id: job.id.clone(),
            request_id: job.request_id.clone(),
            media_type: job.media_type,
            status: job.status,
            cache_key: job.cache_key.to_string(),
            outcome,
            provider: job.provider.clone(),
            model: job.model.clone(),
            credits_charged: job.credits_charged,
            credits_remaining: remaining,
            created_at: job.created_at,
            replayed: false,
        }
    }

    /// A music or video miss: join the identical job in flight, or start one (charge, queue,
    /// submit the provider task) and answer with it.
    pub(super) async fn start_or_join(
        &self,
        call: &CallContext,
        user_id: &str,
        lookup: Lookup,
        job: &MediaJob<'_>,
    ) -> Result<Answer, ServiceError> {
        let parts = self.job_parts()?;
        let mut seen = lookup.entry;
        let mut balance = lookup.balance;
        for _ in 0..START_ATTEMPTS {
            let now = self.clock.now();
            if let Some(entry) = &seen {
                if let Some(leader) = entry.joinable_job(now) {
                    if let Some(answer) = self.join(call, user_id, job, leader, balance).await? {
                        return Ok(answer);
                    }
                } else if entry.is_servable(now) && !call.cache_control.no_cache {
                    let generation = self.hit(call, user_id, entry.clone(), job, balance).await?;
                    return Ok(Answer::Ready(generation));
                }
            }
            let mut leader = self.new_job(call, user_id, job, None, now)?;
            leader.credits_charged = job.price;
            let pending = CacheEntry {
                cache_key: job.cache_key.clone(),
                status: EntryStatus::Pending,
                result_keys: Vec::new(),
                content_type: job.content_type.to_owned(),
                provider: job.provider.clone(),
                model: job.model.clone(),
                credits_used: job.price,
                created_at: leader.created_at,
                hit_count: 0,
                expires_at: leader.deadline,
                request_params: job.params.clone(),
                job_id: Some(leader.id.clone()),
                lease_until: Some(leader.deadline),
            };
            let charge = job.charge(call, user_id, job.price, LedgerReason::Miss, balance, now);
            let started = self
                .store
                .start_job(&leader, &pending, call.cache_control.no_cache, &charge)
                .await?;
            match started {
                JobStart::Started { balance } => {
                    return self.submit(call, parts, leader, job, balance).await;
                }
                JobStart::EntryTaken(entry) => {
                    seen = Some(*entry);
                    balance = None;
                }
            }
        }
        Err(ServiceError::Storage(
            "the cache entry kept changing; try again".into(),
        ))
    }

    /// Joins `leader_id`'s job for the hit price. None when that job stopped being pending.
    async fn join(
        &self,
        call: &CallContext,
        user_id: &str,
        job: &MediaJob<'_>,
        leader_id: &str,
        seen_balance: Option<u64>,
    ) -> Result<Option<Answer>, ServiceError> {
        let now = self.clock.now();
        let mut follower = self.new_job(call, user_id, job, Some(leader_id.to_owned()), now)?;
        let price = self.pricing.hit(job.price);
        follower.credits_charged = price;
        let charge = job.charge(call, user_id, price, LedgerReason::Hit, seen_balance, now);
        let Some(remaining) = self.store.join_job(&follower, &charge).await? else {
            return Ok(None);
        };
        // Answered as queued: the leader's progress is one poll away, not worth a read here.
        Ok(Some(Answer::Job(self.ticket(
            &follower,
            CacheOutcome::Coalesced,
            remaining,
        ))))
    }

    /// Queues the new job's polling, submits the provider task and records it.
    async fn submit(
        &self,
        call: &CallContext,
        parts: &JobParts,
        mut leader: Job,
        job: &MediaJob<'_>,
        balance: u64,
    ) -> Result<Answer, ServiceError> {
        // Queued before the submit, so that a crash after the charge still ends in a poll that
        // settles the job (done or timed out, and refunded).
        let message = JobMessage {
            job_id: leader.id.clone(),
            poll: true,
        };
        if let Err(e) = parts.queue.send(&message, parts.policy.first_poll).await {
            let failure = JobFailure::new("queue_unavailable", e.to_string());
            self.fail_job(leader, failure).await?;
            return Err(ServiceError::Queue(e.0));
        }
        let callback = parts
            .callbacks
            .url(&job.provider, &leader.id, call.origin.as_deref());
        let submitted = match job.generator {
            Generator::Music(req) => parts.music_provider()?.submit_music(req, &callback).await,
            Generator::Video(req) => parts.video_provider()?.submit_video(req, &callback).await,
            Generator::Speech(_) | Generator::Image(_) => Err(ProviderError::BadResponse {
                message: "speech and images are not jobs".into(),
            }),
        };
        let task = match submitted {
            Ok(task) => task,
            Err(e) => {
                tracing::info!(request_id = %call.request_id, job_id = %leader.id, error = %e, "provider task not submitted");
                self.fail_job(leader, JobFailure::new(e.code(), e.to_string()))
                    .await?;
                return Err(ServiceError::Provider(e));
            }
        };
        leader.provider_task = Some(task);
        leader.updated_at = self.clock.now().trunc_subsecs(6);
        if let Err(e) = self.store.update_job(&leader).await {
            // The job exists and is paid for, so the client still gets it; without its task the
            // polls cannot see it finish, and it fails as timed out, refunded. Logged with the
            // task so an operator can finish it by hand.
            tracing::error!(job_id = %leader.id, task = ?leader.provider_task, error = %e, "provider task not recorded");
        }
        let outcome = if call.cache_control.no_cache {
            CacheOutcome::Bypass
        } else {
            CacheOutcome::Miss
        };
        Ok(Answer::Job(self.ticket(&leader, outcome, balance)))
    }

    /// The caller's job (never another user's: that is "not found" too), moving with the job it
    /// joined.
    pub async fn job_status(&self, call: &CallContext, job_id: &str) -> Result<Job, ServiceError> {
        let user_id = self.authenticate(call).await?;
        let not_found = ServiceError::NotFound("no such job");
        // Only our own shape reaches the store (a 3 KB id would be a store error, not a 404).
        let well_formed = job_id.len() <= 64
            && job_id
                .strip_prefix("job_")
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !well_formed {
            return Err(not_found);
        }
        let job = self
            .store
            .job(job_id)
            .await?
            .filter(|j| j.owner == user_id)
            .ok_or(not_found)?;
        let Some(leader_id) = job.leader.clone().filter(|_| !job.status.is_terminal()) else {
            return Ok(job);
        };
        let Some(leader) = self.store.job(&leader_id).await? else {
            return Ok(job);
        };
        Ok(Job {
            status: leader.status,
            provider_task: leader.provider_task,
            attempts: leader.attempts,
            result_keys: leader.result_keys,
            failure: leader.failure,
            updated_at: leader.updated_at,
            ..job
        })
    }

    /// A provider says a job moved: check it now. The callback's body is not trusted; the
    /// provider is asked, so a replayed or late callback changes nothing.
    pub async fn callback(
        &self,
        provider: &str,
        token: &str,
    ) -> Result<CallbackOutcome, ServiceError> {
        let parts = self.job_parts()?;
        let not_found = || ServiceError::NotFound("no such callback");
        let job_id = parts
            .callbacks
            .verify(provider, token)
            .ok_or_else(not_found)?;
        let job = self
            .store
            .job(job_id)
            .await?
            .filter(|j| j.provider == provider && j.leader.is_none())
            .ok_or_else(not_found)?;
        if job.status.is_terminal() {
            return Ok(CallbackOutcome::AlreadyFinished);
        }
        let nudge = JobMessage {
            job_id: job.id,
            poll: false,
        };
        parts
            .queue
            .send(&nudge, Duration::ZERO)
            .await
            .map_err(|e| ServiceError::Queue(e.0))?;
        Ok(CallbackOutcome::Accepted)
    }

    /// The completion step for one queue message. Ok means the message is done (delete it);
    /// an error leaves it to be delivered again.
    pub async fn process_job(&self, message: &JobMessage) -> Result<(), ServiceError> {
        let parts = self.job_parts()?;
        let Some(job) = self.store.job(&message.job_id).await? else {
            tracing::warn!(job_id = %message.job_id, "message for an unknown job dropped");
            return Ok(());
        };
        if job.leader.is_some() {
            return Ok(());
        }
        if job.status.is_terminal() {
            // Redelivered after the work: only finish what a crash may have left undone.
            return self.settle_followers(&job).await;
        }
        let now = self.clock.now();
        if now >= job.deadline {
            let failure = JobFailure::new(
                "timed_out",
                format!(
                    "the provider did not finish within {} s",
                    parts.policy.timeout.as_secs()
                ),
            );
            return self.fail_job(job, failure).await;
        }
        let Some(task) = job.provider_task.clone() else {
            // The request is still submitting (or died doing so): look again later.
            return self.poll_again(parts, message, &job).await;
        };
        let provider = parts.task_provider(job.media_type)?;
        let mut job = Job {
            attempts: job.attempts + 1,
            updated_at: now.trunc_subsecs(6),
            ..job
        };
        match provider.task_state(&task).await {
            Ok(TaskState::Running { stage }) => {
                tracing::info!(job_id = %job.id, stage, attempts = job.attempts, "job running");
                job.status = JobStatus::Processing;
                self.store.update_job(&job).await?;
                self.poll_again(parts, message, &job).await
            }
            Ok(TaskState::Succeeded { urls }) => {
                self.complete_job(parts, message, job, provider, &urls)
                    .await
            }
            Ok(TaskState::Failed(e)) => {
                self.fail_job(job, JobFailure::new(e.code(), e.to_string()))
                    .await
            }
            Err(e) if matches!(e, ProviderError::Rejected { .. }) => {
                // The provider does not know the task or refuses to say: it will never finish.
                self.fail_job(job, JobFailure::new(e.code(), e.to_string()))
                    .await
            }
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "provider status unavailable; polling again");
                self.store.update_job(&job).await?;
                self.poll_again(parts, message, &job).await
            }
        }
    }

    /// Schedules the next poll of the polling chain (a callback's nudge starts none).
    async fn poll_again(
        &self,
        parts: &JobParts,
        message: &JobMessage,
        job: &Job,
    ) -> Result<(), ServiceError> {
        if !message.poll {
            return Ok(());
        }
        let delay = poll_delay(
            parts.policy.first_poll,
            parts.policy.max_poll_delay,
            job.attempts,
        );
        parts
            .queue
            .send(message, delay)
            .await
            .map_err(|e| ServiceError::Queue(e.0))
    }

    /// Copies the task's media into our storage, turns the entry READY and completes the job and
    /// its followers.
    async fn complete_job(
        &self,
        parts: &JobParts,
        message: &JobMessage,
        mut job: Job,
        provider: &dyn TaskProvider,
        urls: &[String],
    ) -> Result<(), ServiceError> {
        let mut media = Vec::with_capacity(urls.len());
        for url in urls {
            match provider.download(url).await {
                Ok(m) => media.push(m),
                Err(e) if e.is_transient() => {
                    tracing::warn!(job_id = %job.id, error = %e, "result download failed; polling again");
                    self.store.update_job(&job).await?;
                    return self.poll_again(parts, message, &job).await;
                }
                Err(e) => {
                    let failure = JobFailure::new(
                        "result_unavailable",
                        format!("the provider's result could not be downloaded: {e}"),
                    );
                    return self.fail_job(job, failure).await;
                }
            }
        }
        if media.is_empty() {
            let failure = JobFailure::new("generation_failed", "the task finished without media");
            return self.fail_job(job, failure).await;
        }
        job.result_keys = self.store_media(job.media_type, media).await?;
        job.status = JobStatus::Completed;
        let created_at = self.clock.now().trunc_subsecs(6);
        let ready = job.save_entry.then(|| CacheEntry {
            cache_key: job.cache_key.clone(),
            status: EntryStatus::Ready,
            result_keys: job.result_keys.clone(),
            content_type: job.content_type.clone(),
            provider: job.provider.clone(),
            model: job.model.clone(),
            credits_used: job.credits_charged,
            created_at,
            hit_count: 0,
            expires_at: (created_at + CACHE_TTL).trunc_subsecs(0),
            request_params: job.request_params.clone(),
            job_id: None,
            lease_until: None,
        });
        if self.store.finish_job(&job, ready.as_ref()).await? {
            tracing::info!(job_id = %job.id, media_type = %job.media_type, attempts = job.attempts, "job completed");
        }
        self.settle_followers(&job).await
    }

    /// Fails a leader job: deletes its pending entry, refunds its charge, then its followers'.
    pub(crate) async fn fail_job(
        &self,
        mut job: Job,
        failure: JobFailure,
    ) -> Result<(), ServiceError> {
        tracing::info!(job_id = %job.id, code = %failure.code, reason = %failure.message, "job failed");
        job.status = JobStatus::Failed;
        job.failure = Some(failure);
        job.updated_at = self.clock.now().trunc_subsecs(6);
        if !self.store.finish_job(&job, None).await? {
            // Already finished by another delivery: settle from what is stored.
            if let Some(stored) = self.store.job(&job.id).await? {
                return self.settle_followers(&stored).await;
            }
        }
        self.settle_followers(&job).await
    }

    /// Brings a finished leader's followers (and, if it failed, its own charge) to its end:
    /// completed with its result, or failed and refunded. Safe to repeat.
    async fn settle_followers(&self, leader: &Job) -> Result<(), ServiceError> {
        if leader.status == JobStatus::Failed {
            self.refund_request(
                &leader.owner,
                leader.credits_charged,
                &leader.request_id,
                &leader.cache_key,
            )
            .await?;
        }
        for follower in self.store.followers(&leader.id).await? {
            if follower.status.is_terminal() {
                continue;
            }
            if leader.status == JobStatus::Failed {
                self.refund_request(
                    &follower.owner,
                    follower.credits_charged,
                    &follower.request_id,
                    &follower.cache_key,
                )
                .await?;
            }
            let settled = Job {
                status: leader.status,
                result_keys: leader.result_keys.clone(),
                failure: leader.failure.clone(),
                provider_task: leader.provider_task.clone(),
                updated_at: self.clock.now().trunc_subsecs(6),
                ..follower
            };
            self.store.update_job(&settled).await?;
        }
        Ok(())
    }
}
