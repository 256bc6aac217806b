//! Jobs: every miss has one (see `miss`). Here: the job's status for its owner, provider task
//! submission and callbacks, and the completion step the queue consumer runs, which finishes
//! what a request did not (polls a provider task, or generates speech and images itself) and
//! settles every charge: completed with its result, or refunded, exactly once.

use super::{
    Answer, CacheOutcome, CallContext, CallbackSigner, Generator, MediaJob, MediaService,
    MissPolicy, ServiceError,
};
use crate::domain::GeneratedMedia;
use crate::domain::job::poll_delay;
use crate::domain::{
    CACHE_TTL, CacheEntry, EntryStatus, Job, JobFailure, JobMessage, JobStatus, MediaType,
};
use crate::ports::{
    JobQueue, MusicProvider, ProviderError, TaskProvider, TaskState, VideoProvider,
};
use crate::telemetry;
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

/// What jobs need: the queue that settles them, the long-task providers, callbacks, policies.
#[derive(Clone)]
pub struct JobParts {
    /// Carries jobs to the completion step.
    pub queue: Arc<dyn JobQueue>,
    /// Makes callback URLs and checks them.
    pub callbacks: CallbackSigner,
    /// Polling and timeout.
    pub policy: JobPolicy,
    /// Deadlines of requests and of the worker, slow models.
    pub miss: MissPolicy,
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

impl MediaService {
    pub(crate) fn job_parts(&self) -> Result<&JobParts, ServiceError> {
        self.jobs.as_ref().ok_or(ServiceError::NotConfigured(
            "music and video are not configured on this deployment",
        ))
    }

    pub(super) fn new_job(
        &self,
        call: &CallContext,
        user_id: &str,
        job: &MediaJob,
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

    pub(super) fn ticket(&self, job: &Job, outcome: CacheOutcome, remaining: u64) -> JobTicket {
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

    /// A leader's provider refused or failed: the job fails, refunding everyone, and the client
    /// hears why. If the failure cannot be recorded now, the client gets the job instead, which
    /// its settlement ends (failed and refunded, or done after all).
    pub(super) async fn refused(
        &self,
        call: &CallContext,
        leader: Job,
        outcome: CacheOutcome,
        balance: u64,
        error: ProviderError,
    ) -> Result<Answer, ServiceError> {
        let ticket = self.ticket(&leader, outcome, balance);
        match self.fail_job(leader, failure_of(&error)).await {
            Ok(()) => Err(ServiceError::Provider(error)),
            Err(store) => {
                tracing::warn!(request_id = %call.request_id, error = %store, "failure not recorded; answering with the job");
                Ok(Answer::Job(ticket))
            }
        }
    }

    /// Submits the provider task of a music or video job and records it.
    pub(super) async fn submit(
        &self,
        call: &CallContext,
        parts: &JobParts,
        mut leader: Job,
        job: &MediaJob,
        balance: u64,
        outcome: CacheOutcome,
    ) -> Result<Answer, ServiceError> {
        let callback = parts
            .callbacks
            .url(&job.provider, &leader.id, call.origin.as_deref());
        let started = std::time::Instant::now();
        let submitted = match &job.generator {
            Generator::Music(req) => parts.music_provider()?.submit_music(req, &callback).await,
            Generator::Video(req) => parts.video_provider()?.submit_video(req, &callback).await,
            Generator::Speech(_) | Generator::Image(_) => Err(ProviderError::BadResponse {
                message: "speech and images are not jobs".into(),
            }),
        };
        telemetry::provider_call(&job.provider, &submitted, started.elapsed());
        let task = match submitted {
            Ok(task) => task,
            Err(e) => {
                tracing::info!(request_id = %call.request_id, job_id = %leader.id, error = %e, "provider task not submitted");
                return self.refused(call, leader, outcome, balance, e).await;
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
            sent_at: None,
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
            // Sent before its job's transaction (wall-clock age, as the queue's delays are).
            if let Some(delay) = message.early_retry(chrono::Utc::now()) {
                return parts
                    .queue
                    .send(message, delay)
                    .await
                    .map_err(|e| ServiceError::Queue(e.0));
            }
            // Its transaction never committed (the request joined, was refused, or failed): no
            // charge to settle.
            tracing::info!(job_id = %message.job_id, "settlement of a job never started dropped");
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
        if !job.media_type.is_async() {
            return self.generate_for_job(parts, message, job).await;
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
            Ok(TaskState::Failed(e)) => self.fail_job(job, failure_of(&e)).await,
            Err(e) if matches!(e, ProviderError::Rejected { .. }) => {
                // The provider does not know the task or refuses to say: it will never finish.
                self.fail_job(job, failure_of(&e)).await
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
        job: Job,
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
                    tracing::warn!(job_id = %job.id, error = %e, "result download refused or failed");
                    let failure = JobFailure::new(
                        "result_unavailable",
                        format!(
                            "the provider's result could not be downloaded: {}",
                            e.public_message()
                        ),
                    );
                    return self.fail_job(job, failure).await;
                }
            }
        }
        if media.is_empty() {
            let failure = JobFailure::new("generation_failed", "the task finished without media");
            return self.fail_job(job, failure).await;
        }
        self.settled(self.complete_with_media(job, media).await)
    }

    /// The worker's generation of a speech or image job whose request did not finish it (its
    /// deadline passed, it died, or it handed the job over at once).
    async fn generate_for_job(
        &self,
        parts: &JobParts,
        message: &JobMessage,
        job: Job,
    ) -> Result<(), ServiceError> {
        let Some(generator) = Generator::of_job(&job) else {
            let failure =
                JobFailure::new("generation_failed", "the request could not be read back");
            tracing::error!(job_id = %job.id, "stored parameters unreadable");
            return self.fail_job(job, failure).await;
        };
        // The attempt's budget starts before its claim: the lease others see counts from here.
        let started = tokio::time::Instant::now();
        let now = self.clock.now().trunc_subsecs(6);
        let job = Job {
            attempts: job.attempts + 1,
            status: JobStatus::Processing,
            updated_at: now,
            ..job
        };
        // An attempt is over by its budget and the margin after it (the worker stops it then);
        // before that, one still `processing` may be running in another delivery.
        let attempt_time = parts.miss.worker_budget + parts.miss.settle_margin;
        let lapsed_at = now
            - chrono::Duration::from_std(attempt_time)
                .unwrap_or_else(|_| chrono::Duration::days(1));
        if !self.store.claim_attempt(&job, lapsed_at).await? {
            // Finished meanwhile, or another delivery of this settlement took the attempt or is
            // still running it: one provider call per attempt. That delivery may still die, and
            // this one's success deletes the message they share: look again once its attempt
            // must be over.
            let still_open = self
                .store
                .job(&job.id)
                .await?
                .is_some_and(|j| !j.status.is_terminal());
            if still_open {
                parts
                    .queue
                    .send(
                        message,
                        attempt_time.min(std::time::Duration::from_secs(900)),
                    )
                    .await
                    .map_err(|e| ServiceError::Queue(e.0))?;
            }
            return Ok(());
        }
        let deadline = started + parts.miss.worker_budget;
        let generated =
            tokio::time::timeout_at(deadline, self.generate_now(&generator, deadline)).await;
        match generated {
            Ok(Ok(media)) => self.settled(self.complete_with_media(job, media).await),
            Ok(Err(e)) if !e.is_transient() => self.fail_job(job, failure_of(&e)).await,
            Ok(Err(e)) => {
                tracing::warn!(job_id = %job.id, attempts = job.attempts, error = %e, "generation failed; trying again later");
                self.attempt_over(parts, message, job).await
            }
            Err(_) => {
                tracing::warn!(job_id = %job.id, attempts = job.attempts, "generation ran out of time; trying again later");
                self.attempt_over(parts, message, job).await
            }
        }
    }

    /// An attempt that ended without a result lets go of the job (queued again), so the next
    /// delivery may take the next attempt at once, then asks for that delivery.
    async fn attempt_over(
        &self,
        parts: &JobParts,
        message: &JobMessage,
        job: Job,
    ) -> Result<(), ServiceError> {
        let job = Job {
            status: JobStatus::Queued,
            updated_at: self.clock.now().trunc_subsecs(6),
            ..job
        };
        self.store.update_job(&job).await?;
        self.poll_again(parts, message, &job).await
    }

    /// A completion step's outcome for its queue message: a job another delivery already
    /// failed (and refunded) is settled, not an error to redeliver.
    fn settled(&self, outcome: Result<Completed, ServiceError>) -> Result<(), ServiceError> {
        match outcome {
            Ok(_) | Err(ServiceError::Generation(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Copies a job's media into our storage, saves the READY entry (unless `no-store`) and
    /// completes the job, then its followers. The entry replaces what is there unless another
    /// job's live claim holds it.
    pub(super) async fn complete_with_media(
        &self,
        mut job: Job,
        media: Vec<GeneratedMedia>,
    ) -> Result<Completed, ServiceError> {
        job.result_keys = self.store_media(job.media_type, media).await?;
        job.status = JobStatus::Completed;
        // Stored precision: microseconds for times, whole seconds for the TTL.
        let created_at = self.clock.now().trunc_subsecs(6);
        job.updated_at = created_at;
        let expires_at = (created_at + CACHE_TTL).trunc_subsecs(0);
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
            expires_at,
            request_params: job.request_params.clone(),
            job_id: None,
            lease_until: None,
        });
        let mut cache_expires_at = ready.as_ref().map(|_| expires_at);
        // Not recorded, the result is not delivered either: the job stays open and its
        // settlement finishes it (completed, or failed and refunded), so a charge never ends in
        // both a result and a refund.
        if self.store.finish_job(&job, ready.as_ref()).await? {
            tracing::info!(job_id = %job.id, media_type = %job.media_type, attempts = job.attempts, "job completed");
            telemetry::job(job.media_type, "completed", job.ran_for());
        } else {
            // Finished meanwhile by another delivery: what is stored is the outcome.
            let stored = self
                .store
                .job(&job.id)
                .await?
                .ok_or_else(|| ServiceError::Storage(format!("job {} vanished", job.id)))?;
            if stored.status != JobStatus::Completed {
                let failure = stored.failure.clone().unwrap_or_else(|| {
                    JobFailure::new("generation_failed", "the provider could not generate it")
                });
                return Err(ServiceError::Generation(failure));
            }
            job = stored;
            cache_expires_at = None;
        }
        if let Err(e) = self.settle_followers(&job).await {
            // The leader's settlement message settles them when it comes.
            tracing::warn!(job_id = %job.id, error = %e, "followers not settled yet");
        }
        Ok(Completed {
            cache_expires_at,
            job,
            created_at,
        })
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
        } else {
            telemetry::job(job.media_type, "failed", job.ran_for());
        }
        self.settle_followers(&job).await
    }

    /// Brings a finished leader's followers (and, if it failed, its own charge) to its end:
    /// completed with its result, or failed and refunded. Safe to repeat.
    pub(super) async fn settle_followers(&self, leader: &Job) -> Result<(), ServiceError> {
        // A job is created just before its charge: its `created_at` is when it was charged
        // (the day's spend it gives back, `DailySpend::refund`).
        if leader.status == JobStatus::Failed {
            self.refund_request(
                &leader.owner,
                leader.credits_charged,
                &leader.request_id,
                &leader.cache_key,
                leader.created_at,
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
                    follower.created_at,
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
            if settled.status == JobStatus::Completed {
                // A join saves its owner the generation once its result is delivered.
                telemetry::saved(
                    settled.media_type,
                    leader.credits_charged,
                    settled.credits_charged,
                );
            }
        }
        Ok(())
    }
}

/// A completed job, as its leader request answers it.
pub(super) struct Completed {
    /// The job with its result.
    pub job: Job,
    /// When the media was stored.
    pub created_at: DateTime<Utc>,
    /// When the saved entry expires; None when none was saved.
    pub cache_expires_at: Option<DateTime<Utc>>,
}

/// A job's failure as its owner sees it: a stable code and a message safe to show (the
/// provider's words about the request, never transport or infrastructure detail).
pub(super) fn failure_of(e: &ProviderError) -> JobFailure {
    JobFailure::new(e.code(), e.public_message())
}
