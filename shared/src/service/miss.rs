//! The one miss path, for every media type. A miss sends its job's settlement message, then
//! claims the `PENDING` entry, charges the full price and writes the job in one transaction, and
//! only then calls a provider: wherever this request stops after the charge, the completion
//! worker finishes the job or refunds it. (Sent first, the message cannot be lost between the
//! charge and the send; one whose transaction never committed finds no job and is dropped.) Speech and images are generated inline by the request that
//! claimed the entry, within its deadline; music and video submit a provider task. Identical
//! requests meanwhile join the job in flight for the hit price and wait on it within their wait
//! budget (single flight: one provider call per distinct request).

use super::{
    Answer, CacheOutcome, CallContext, Generation, Generator, MediaJob, MediaService, Seen,
    ServiceError,
};
use crate::domain::LedgerReason;
use crate::domain::{CACHE_TTL, CacheEntry, EntryStatus, Job, JobFailure, JobMessage, JobStatus};
use crate::ports::{JobStart, Lookup, ProviderError};
use crate::telemetry;
use std::time::Duration;
use tokio::time::Instant;

/// What the client's `Prefer` header asks for (RFC 7240).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prefer {
    /// `respond-async`: answer with the job at once.
    pub respond_async: bool,
    /// `wait=N`: wait at most this long for the result before answering with the job.
    pub wait: Option<Duration>,
}

/// How a miss spends its time.
#[derive(Debug, Clone)]
pub struct MissPolicy {
    /// A request's budget when its runtime gives no deadline (`serve`; API Gateway gives up
    /// after 30 s, so stay under it).
    pub request_budget: Duration,
    /// How long after a request's deadline its settlement message is delivered: the worker
    /// takes over only once the request can no longer be working on the job.
    pub settle_margin: Duration,
    /// How long the worker's own generation attempt may take.
    pub worker_budget: Duration,
    /// Generations known to be slower than a request's budget go to the worker from the start:
    /// `type:model` or `type:model:quality` (e.g. `image:gpt-image-1:high`).
    pub async_models: Vec<String>,
}

impl Default for MissPolicy {
    fn default() -> Self {
        Self {
            request_budget: Duration::from_secs(25),
            // Past the request's deadline the request is answered; on Lambda it is stopped 2 s
            // later (DEADLINE_MARGIN_MS): nothing of it can still be working on the job.
            settle_margin: Duration::from_secs(3),
            // Under the completion function's 120 s timeout and serve's 120 s visibility timeout.
            worker_budget: Duration::from_secs(90),
            // gpt-image-1 at high quality often takes longer than API Gateway waits.
            async_models: vec!["image:gpt-image-1:high".into()],
        }
    }
}

impl MissPolicy {
    /// Parses a comma-separated list of slow-model rules.
    pub fn parse_async_models(list: &str) -> Vec<String> {
        list.split(',')
            .map(|r| r.trim().to_ascii_lowercase())
            .filter(|r| !r.is_empty())
            .collect()
    }

    /// Whether `generator`'s generation goes to the worker from the start.
    fn is_slow(&self, generator: &Generator) -> bool {
        let key = generator.rule_key().to_ascii_lowercase();
        self.async_models
            .iter()
            .any(|rule| key == *rule || key.starts_with(&format!("{rule}:")))
    }
}

/// When a request must answer, and until when it may wait for a result.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// The answer must be sent by then.
    deadline: Instant,
    /// Waiting for a result (generating inline, or on a joined job) stops then.
    wait_until: Instant,
}

impl Budget {
    fn of(call: &CallContext, policy: &MissPolicy, inline: bool) -> Self {
        let now = Instant::now();
        let deadline = call.deadline.unwrap_or(now + policy.request_budget);
        let wait_until = if call.prefer.respond_async {
            now
        } else {
            match call.prefer.wait {
                Some(wait) => (now + wait).min(deadline),
                // Speech and images wait for their result; music and video answer with the job.
                None if inline => deadline,
                None => now,
            }
        };
        Self {
            deadline,
            wait_until,
        }
    }
}

/// How many times a request tries to start or join before giving up (each failed try means
/// another request changed the entry in between).
const START_ATTEMPTS: usize = 4;
/// First and longest pause between two looks at a joined job.
const FIRST_LOOK: Duration = Duration::from_millis(20);
const LONGEST_LOOK: Duration = Duration::from_millis(250);
/// The shortest settlement delay: its job's transaction commits first (SQS counts delays in
/// whole seconds).
const SOON: Duration = Duration::from_secs(1);

impl MediaService {
    /// A miss of any media type: join the identical job in flight, or start one and lead it.
    pub(super) async fn miss(
        &self,
        call: &CallContext,
        user_id: &str,
        lookup: Lookup,
        job: &MediaJob,
    ) -> Result<Answer, ServiceError> {
        let parts = self.job_parts()?;
        let budget = Budget::of(call, &parts.miss, job.generator.is_inline());
        // Inline only when the request may wait until its deadline: a generation cut short by a
        // shorter wait would be paid for twice (the worker starts again).
        let inline = job.generator.is_inline()
            && budget.wait_until >= budget.deadline
            && !parts.miss.is_slow(&job.generator);
        // One job id and one settlement for the request, whatever the tries below find.
        let mut leader = self.new_job(call, user_id, job, None, self.clock.now())?;
        leader.credits_charged = job.price;
        let mut settlement_sent = false;
        let mut profile = Seen::of(&lookup);
        let mut seen = lookup.entry;
        for _ in 0..START_ATTEMPTS {
            let now = self.clock.now();
            if let Some(entry) = &seen {
                if let Some(leader) = entry.joinable_job(now) {
                    if let Some((follower, remaining)) =
                        self.join(call, user_id, job, leader, profile).await?
                    {
                        return self
                            .await_job(follower, remaining, CacheOutcome::Coalesced, budget)
                            .await;
                    }
                } else if call.cache_control.serves(entry, now) && !call.cache_control.no_cache {
                    let generation = self.hit(call, user_id, entry.clone(), job, profile).await?;
                    return Ok(Answer::Ready(generation));
                }
            }
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
            if !settlement_sent {
                self.send_settlement(call, &leader, job, inline, budget)
                    .await?;
                settlement_sent = true;
            }
            // `no-cache`, or a servable entry older than `max-age`: generate beside it; it stays
            // served to others until the new result replaces it.
            let replace =
                call.cache_control.no_cache || seen.as_ref().is_some_and(|e| e.is_servable(now));
            let charge = job.charge(call, user_id, job.price, LedgerReason::Miss, profile, now);
            let started = self
                .store
                .start_job(&leader, &pending, replace, &charge)
                .await?;
            match started {
                JobStart::Started { balance } => {
                    let media_type = job.cache_key.media_type();
                    telemetry::charged(media_type, job.price);
                    telemetry::job(media_type, "started", None);
                    return self.lead(call, leader, job, balance, inline, budget).await;
                }
                JobStart::EntryTaken(entry) => {
                    seen = Some(*entry);
                    profile = Seen::default();
                }
            }
        }
        Err(ServiceError::Storage(
            "the cache entry kept changing; try again".into(),
        ))
    }

    /// Joins `leader_id`'s job for the hit price: the follower job and the balance after the
    /// charge, or None when that job stopped being pending (nothing charged).
    async fn join(
        &self,
        call: &CallContext,
        user_id: &str,
        job: &MediaJob,
        leader_id: &str,
        seen: Seen,
    ) -> Result<Option<(Job, u64)>, ServiceError> {
        let now = self.clock.now();
        let mut follower = self.new_job(call, user_id, job, Some(leader_id.to_owned()), now)?;
        let price = self.pricing.hit(job.price);
        follower.credits_charged = price;
        let charge = job.charge(call, user_id, price, LedgerReason::Hit, seen, now);
        let joined = self.store.join_job(&follower, &charge).await?;
        if joined.is_some() {
            telemetry::charged(job.cache_key.media_type(), price);
        }
        Ok(joined.map(|remaining| (follower, remaining)))
    }

    /// A request waits within its wait budget on the job that produces its result (a
    /// follower on its leader's, a leader handed to the worker on its own): the result (200), the
    /// job's failure (refunded), or its own job to poll once the budget is spent.
    async fn await_job(
        &self,
        own: Job,
        remaining: u64,
        outcome: CacheOutcome,
        budget: Budget,
    ) -> Result<Answer, ServiceError> {
        let ticket = |j: &Job| Ok(Answer::Job(self.ticket(j, outcome, remaining)));
        let watched = own.leader.clone().unwrap_or_else(|| own.id.clone());
        let mut pause = FIRST_LOOK;
        loop {
            if Instant::now() + pause > budget.wait_until {
                return ticket(&own);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_LOOK);
            // A store that cannot answer now leaves the request with its job: it is paid for
            // and settles on its own.
            let producer = match self.store.job(&watched).await {
                Ok(Some(job)) => job,
                Ok(None) => return ticket(&own),
                Err(e) => {
                    tracing::warn!(job_id = %own.id, error = %e, "job unreadable; answering with the job");
                    return ticket(&own);
                }
            };
            match producer.status {
                JobStatus::Completed => {
                    return Ok(Answer::Ready(Generation {
                        id: own.request_id.clone(),
                        media_type: own.media_type,
                        cache_key: own.cache_key.to_string(),
                        outcome,
                        object_keys: producer.result_keys,
                        content_type: producer.content_type,
                        provider: producer.provider,
                        model: producer.model,
                        credits_charged: own.credits_charged,
                        credits_remaining: remaining,
                        created_at: producer.updated_at,
                        cache_expires_at: producer
                            .save_entry
                            .then(|| producer.updated_at + CACHE_TTL),
                        age_seconds: None,
                        replayed: false,
                    }));
                }
                JobStatus::Failed => {
                    // Refunds everyone now rather than when the worker comes by; at most once.
                    if let Err(e) = self.settle_followers(&producer).await {
                        tracing::warn!(job_id = %producer.id, error = %e, "not settled yet; the worker will");
                        return ticket(&own);
                    }
                    let failure = producer.failure.unwrap_or_else(|| {
                        JobFailure::new("generation_failed", "the provider could not generate it")
                    });
                    return Err(ServiceError::Generation(failure));
                }
                JobStatus::Queued | JobStatus::Processing => {}
            }
        }
    }

    /// Queues the settlement of a job about to be started. An inline generation is handed over
    /// only once this request is past its deadline; a job for the worker starts a second later
    /// (after its transaction has committed); a provider task is polled from the first poll on.
    async fn send_settlement(
        &self,
        call: &CallContext,
        leader: &Job,
        job: &MediaJob,
        inline: bool,
        budget: Budget,
    ) -> Result<(), ServiceError> {
        let parts = self.job_parts()?;
        let delay = if inline {
            budget.deadline.saturating_duration_since(Instant::now()) + parts.miss.settle_margin
        } else if job.generator.is_inline() {
            SOON
        } else {
            parts.policy.first_poll.max(SOON)
        };
        let message = JobMessage::settle(&leader.id);
        parts.queue.send(&message, delay).await.map_err(|e| {
            // Nothing is charged yet: the request fails whole.
            tracing::error!(request_id = %call.request_id, job_id = %leader.id, error = %e, "settlement not queued");
            ServiceError::Queue(e.0)
        })
    }

    /// The leader of a new job, charged and settled: generates inline (speech, images), hands it
    /// to the worker (`Prefer: respond-async`, slow models) or submits the provider task (music,
    /// video).
    async fn lead(
        &self,
        call: &CallContext,
        leader: Job,
        job: &MediaJob,
        balance: u64,
        inline: bool,
        budget: Budget,
    ) -> Result<Answer, ServiceError> {
        let parts = self.job_parts()?;
        let outcome = if call.cache_control.no_cache {
            CacheOutcome::Bypass
        } else {
            CacheOutcome::Miss
        };
        if !job.generator.is_inline() {
            return self
                .submit(call, parts, leader, job, balance, outcome)
                .await;
        }
        if !inline {
            // The worker generates it; the request waits for it within its budget.
            return self.await_job(leader, balance, outcome, budget).await;
        }
        let started = std::time::Instant::now();
        let generated = tokio::time::timeout_at(
            budget.wait_until,
            self.generate_now(&job.generator, budget.wait_until),
        )
        .await;
        tracing::info!(
            request_id = %call.request_id,
            job_id = %leader.id,
            media_type = %leader.media_type,
            provider = %job.provider,
            provider_latency_ms = started.elapsed().as_millis() as u64,
            ok = matches!(generated, Ok(Ok(_))),
            "provider call"
        );
        let media = match generated {
            Ok(Ok(media)) => media,
            // Out of time (the provider attempt was cut at the deadline): the worker finishes.
            Ok(Err(ProviderError::Timeout)) | Err(_) => {
                tracing::info!(request_id = %call.request_id, job_id = %leader.id, "wait budget spent; the worker finishes the job");
                return Ok(Answer::Job(self.ticket(&leader, outcome, balance)));
            }
            Ok(Err(e)) => {
                tracing::info!(request_id = %call.request_id, job_id = %leader.id, error = %e, "generation failed; refunding");
                return self.refused(call, leader, outcome, balance, e).await;
            }
        };
        match self.complete_with_media(leader.clone(), media).await {
            Ok(done) => Ok(Answer::Ready(Generation {
                id: call.request_id.clone(),
                media_type: done.job.media_type,
                cache_key: done.job.cache_key.to_string(),
                outcome,
                object_keys: done.job.result_keys,
                content_type: done.job.content_type,
                provider: done.job.provider,
                model: done.job.model,
                credits_charged: done.job.credits_charged,
                credits_remaining: balance,
                created_at: done.created_at,
                cache_expires_at: done.cache_expires_at,
                age_seconds: None,
                replayed: false,
            })),
            // Finished meanwhile by the worker, and failed (refunded): the client hears so.
            Err(e @ ServiceError::Generation(_)) => Err(e),
            Err(e) => {
                // The result could not be stored or recorded: the settlement finishes the job.
                tracing::warn!(request_id = %call.request_id, job_id = %leader.id, error = ?e, "result not recorded; the worker finishes the job");
                Ok(Answer::Job(self.ticket(&leader, outcome, balance)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ImageRequest;

    fn image(model: &str, quality: &str) -> Generator {
        let norm = ImageRequest {
            prompt: Some("a boat".into()),
            model: Some(model.into()),
            quality: Some(quality.into()),
            ..Default::default()
        }
        .normalize()
        .unwrap();
        Generator::Image(norm)
    }

    #[test]
    fn slow_model_rules_match_a_model_or_a_model_and_quality() {
        let policy = MissPolicy {
            async_models: MissPolicy::parse_async_models("image:gpt-image-1:HIGH, image:dall-e-3"),
            ..Default::default()
        };
        assert!(policy.is_slow(&image("gpt-image-1", "high")));
        assert!(!policy.is_slow(&image("gpt-image-1", "low")));
        assert!(policy.is_slow(&image("dall-e-3", "hd")), "every quality");
        assert!(!policy.is_slow(&image("dall-e-2", "standard")));
    }

    #[test]
    fn a_budget_waits_until_the_deadline_unless_the_client_prefers_less() {
        let policy = MissPolicy::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        let call = |prefer: Prefer| CallContext {
            deadline: Some(deadline),
            prefer,
            ..Default::default()
        };
        let inline = Budget::of(&call(Prefer::default()), &policy, true);
        assert_eq!((inline.deadline, inline.wait_until), (deadline, deadline));
        let task = Budget::of(&call(Prefer::default()), &policy, false);
        assert!(
            task.wait_until < deadline,
            "music and video answer with the job"
        );
        let short = Budget::of(
            &call(Prefer {
                wait: Some(Duration::from_secs(2)),
                ..Default::default()
            }),
            &policy,
            true,
        );
        assert!(short.wait_until < deadline - Duration::from_secs(7));
        let long = Budget::of(
            &call(Prefer {
                wait: Some(Duration::from_secs(60)),
                ..Default::default()
            }),
            &policy,
            true,
        );
        assert_eq!(long.wait_until, deadline, "never past the deadline");
        let now = Budget::of(
            &call(Prefer {
                respond_async: true,
                ..Default::default()
            }),
            &policy,
            true,
        );
        assert!(now.wait_until <= Instant::now());
    }
}
