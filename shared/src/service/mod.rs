//! The application service: the cache flows (auth, lookup, hit or miss, charge and refund,
//! idempotency) over the ports. No HTTP types here; `http` translates.

pub mod accounts;
pub mod callbacks;
pub mod error;
mod jobs;
mod miss;
mod prepared;
mod urls;

pub use callbacks::CallbackSigner;
pub use error::ServiceError;
pub use jobs::{CallbackOutcome, JobParts, JobPolicy, JobTicket};
pub use miss::{MissPolicy, Prefer};
pub use prepared::PreparedRequest;

use crate::clock::Clock;
use crate::domain::cache_key::canonical_json;
use crate::domain::media::extension_for;
use crate::domain::{
    CacheEntry, CacheKey, Charge, ClaimOutcome, DailySpend, GeneratedMedia, IdempotencyClaim,
    ImageRequest, LedgerReason, MediaType, MusicRequest, NormalizedImageRequest, NormalizedMedia,
    NormalizedMusicRequest, NormalizedTtsRequest, NormalizedVideoRequest, PriceTable, Refund,
    TtsRequest, VideoRequest, api_key_digest,
};
use crate::ports::{ImageProvider, Lookup, ObjectStore, ProviderError, SpeechProvider, Store};
use crate::telemetry;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The request's `Cache-Control` directives that the cache honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// Skip the lookup, generate, overwrite the entry.
    pub no_cache: bool,
    /// Do not save the result as a cache entry.
    pub no_store: bool,
    /// `max-age=N`: an entry older than this many seconds is a miss (regenerated, replacing it).
    pub max_age: Option<u64>,
    /// The entry belongs to the caller's account alone (its key includes the account).
    pub private: bool,
}

impl CacheControl {
    /// Whether `entry` may answer this request at `now`: servable, and young enough.
    pub(crate) fn serves(&self, entry: &CacheEntry, now: DateTime<Utc>) -> bool {
        entry.is_servable(now)
            && self
                .max_age
                .is_none_or(|max| age_seconds(entry.created_at, now) <= max)
    }
}

/// Whole seconds from `since` to `now` (0 if `since` is ahead).
fn age_seconds(since: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    (now - since).num_seconds().max(0) as u64
}

/// Who is calling and how: everything about a call that is not its body.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The bearer token, if any.
    pub api_key: Option<String>,
    /// This request's id (ledger lines and logs carry it).
    pub request_id: String,
    /// The client's `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// Cache directives.
    pub cache_control: CacheControl,
    /// `{scheme}://{host}` the request came in on (callback URLs default to it).
    pub origin: Option<String>,
    /// When the answer must be sent: the function's deadline less a margin on Lambda. None: the
    /// configured request budget from now (`MissPolicy::request_budget`).
    pub deadline: Option<tokio::time::Instant>,
    /// What the client's `Prefer` header asks for (RFC 7240).
    pub prefer: Prefer,
}

/// How a request was answered, as `X-Cache` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CacheOutcome {
    /// Served from the cache.
    Hit,
    /// Generated because nothing was cached.
    Miss,
    /// Generated because the client asked to skip the cache.
    Bypass,
    /// Joined an identical request's job in flight instead of generating again.
    Coalesced,
}

impl CacheOutcome {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "HIT",
            CacheOutcome::Miss => "MISS",
            CacheOutcome::Bypass => "BYPASS",
            CacheOutcome::Coalesced => "COALESCED",
        }
    }
}

/// A served result, before URLs are made for it. Stored as the answer of idempotent requests, so
/// a replay gets fresh URLs rather than stored ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The request id of the call that produced this answer.
    pub id: String,
    /// Media type.
    pub media_type: MediaType,
    /// `CACHE#{type}#{hash}`.
    pub cache_key: String,
    /// Hit, miss or bypass.
    pub outcome: CacheOutcome,
    /// Object keys of the media.
    pub object_keys: Vec<String>,
    /// MIME type of the media.
    pub content_type: String,
    /// Provider that made it.
    pub provider: String,
    /// Model that made it.
    pub model: String,
    /// Credits this call cost.
    pub credits_charged: u64,
    /// Balance after this call.
    pub credits_remaining: u64,
    /// When the media was generated.
    pub created_at: DateTime<Utc>,
    /// When the cache entry expires; None when it was not saved.
    pub cache_expires_at: Option<DateTime<Utc>>,
    /// A hit's age: seconds since its entry was made (the `Age` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// Whether this is a stored answer replayed for an idempotent retry.
    #[serde(default, skip_serializing)]
    pub replayed: bool,
}

/// How a request was answered: a result now, or a job to poll.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The result (a hit, or a speech or image generation).
    Ready(Generation),
    /// A music or video job: generating, or joined to an identical one in flight.
    Job(JobTicket),
}

impl Answer {
    /// The result, when the answer is one.
    pub fn ready(self) -> Option<Generation> {
        match self {
            Answer::Ready(g) => Some(g),
            Answer::Job(_) => None,
        }
    }

    fn mark_replayed(&mut self) {
        match self {
            Answer::Ready(g) => g.replayed = true,
            Answer::Job(t) => t.replayed = true,
        }
    }
}

/// The user of an API key, with their balance and latest ledger lines.
pub use accounts::Statement;

/// A request of any media type, as the client sent it.
#[derive(Debug, Clone)]
pub enum MediaRequest {
    /// Text to speech.
    Tts(TtsRequest),
    /// Image generation.
    Image(ImageRequest),
    /// Music generation (a long job).
    Music(MusicRequest),
    /// Video generation (a long job).
    Video(VideoRequest),
}

/// The normalised request, which says how a miss is generated.
#[derive(Debug, Clone)]
pub(crate) enum Generator {
    Speech(NormalizedTtsRequest),
    Image(NormalizedImageRequest),
    Music(NormalizedMusicRequest),
    Video(NormalizedVideoRequest),
}

impl Generator {
    /// Speech and images are generated by one provider call whose answer is the media.
    fn is_inline(&self) -> bool {
        matches!(self, Generator::Speech(_) | Generator::Image(_))
    }

    /// The request a speech or image job was started for, rebuilt from its stored parameters
    /// (the worker generates what a request could not finish).
    fn of_job(job: &crate::domain::Job) -> Option<Self> {
        match job.media_type {
            MediaType::Tts => serde_json::from_str(&job.request_params)
                .ok()
                .map(Generator::Speech),
            MediaType::Image => serde_json::from_str(&job.request_params)
                .ok()
                .map(Generator::Image),
            MediaType::Music | MediaType::Video => None,
        }
    }

    /// The model and quality a slow-model rule names, e.g. `image:gpt-image-1:high`.
    fn rule_key(&self) -> String {
        match self {
            Generator::Speech(r) => format!("tts:{}", r.model),
            Generator::Image(r) => format!("image:{}:{}", r.model, r.quality),
            Generator::Music(r) => format!("music:{}", r.model()),
            Generator::Video(r) => format!("video:{}:{}", r.model(), r.mode),
        }
    }
}

/// What one request contributes to the shared flow.
#[derive(Clone)]
struct MediaJob {
    cache_key: CacheKey,
    price: u64,
    params: String,
    content_type: &'static str,
    provider: String,
    model: String,
    generator: Generator,
}

/// What the caller's lookup read of its own profile, handed to its charge: a store that charges
/// with conditions on the balance and the day's spend (DynamoDB) then needs no read of its own.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    balance: Option<u64>,
    spend: Option<DailySpend>,
}

impl Seen {
    fn of(lookup: &Lookup) -> Self {
        Self {
            balance: lookup.balance,
            spend: lookup.spend,
        }
    }
}

impl MediaJob {
    /// The charge of `amount` for this request, counting no hit.
    fn charge(
        &self,
        call: &CallContext,
        user_id: &str,
        amount: u64,
        reason: LedgerReason,
        seen: Seen,
        at: DateTime<Utc>,
    ) -> Charge {
        Charge {
            user_id: user_id.to_owned(),
            amount,
            reason,
            request_id: call.request_id.clone(),
            cache_key: self.cache_key.clone(),
            count_hit: false,
            seen_balance: seen.balance,
            seen_spend: seen.spend,
            at,
        }
    }

    fn of<N: NormalizedMedia>(norm: &N, price: u64, provider: &str, generator: Generator) -> Self {
        // The canonical JSON is both stored and hashed: made once.
        let params = canonical_json(norm);
        Self {
            cache_key: CacheKey::of_canonical(N::MEDIA_TYPE, &params),
            price,
            params,
            content_type: norm.content_type(),
            provider: provider.to_owned(),
            model: norm.model().to_owned(),
            generator,
        }
    }
}

/// The media cache application.
pub struct MediaService {
    store: Arc<dyn Store>,
    objects: Arc<dyn ObjectStore>,
    speech: Arc<dyn SpeechProvider>,
    images: Arc<dyn ImageProvider>,
    pricing: PriceTable,
    clock: Arc<dyn Clock>,
    jobs: Option<JobParts>,
    /// Every entry private to its account, as if each request said `Cache-Control: private`.
    private_entries: bool,
    /// Request bodies already prepared.
    prepared: prepared::PreparedRequests,
    /// Result URLs signed this second.
    signed_urls: urls::SignedUrls,
}

impl MediaService {
    /// Wires the service to its adapters.
    pub fn new(
        store: Arc<dyn Store>,
        objects: Arc<dyn ObjectStore>,
        speech: Arc<dyn SpeechProvider>,
        images: Arc<dyn ImageProvider>,
        pricing: PriceTable,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            objects,
            speech,
            images,
            pricing,
            clock,
            jobs: None,
            private_entries: false,
            prepared: Default::default(),
            signed_urls: Default::default(),
        }
    }

    /// Makes every entry private to the account that asked for it (no sharing across accounts).
    pub fn with_private_entries(mut self, private: bool) -> Self {
        self.private_entries = private;
        self
    }

    /// Adds what music and video need: the queue, the providers, callbacks, the polling policy.
    pub fn with_jobs(mut self, jobs: JobParts) -> Self {
        self.jobs = Some(jobs);
        self
    }

    /// The object store, for making URLs of results.
    pub fn objects(&self) -> &dyn ObjectStore {
        self.objects.as_ref()
    }

    /// A URL that reads object `key` until `expires_at` (a whole second).
    pub async fn result_url(
        &self,
        key: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<String, crate::ports::ObjectError> {
        self.signed_urls
            .get(self.objects.as_ref(), key, expires_at)
            .await
    }

    /// The clock the service runs on.
    pub fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// A request of any media type: served from the cache, generated, or (music, video) started
    /// as a job or joined to an identical one in flight.
    pub async fn generate(
        &self,
        call: &CallContext,
        req: &MediaRequest,
    ) -> Result<Answer, ServiceError> {
        let prepared = self.prepare(req)?;
        self.serve_prepared(call, prepared).await
    }

    /// [`MediaService::generate`] of a request prepared before.
    pub async fn serve_prepared(
        &self,
        call: &CallContext,
        prepared: PreparedRequest,
    ) -> Result<Answer, ServiceError> {
        self.serve(call, prepared.0).await
    }

    /// The request of `media_type` whose JSON body is `body`, if the same bytes were prepared
    /// and served before (see [`MediaService::remember_body`]).
    pub fn prepared(&self, media_type: MediaType, body: &bytes::Bytes) -> Option<PreparedRequest> {
        self.prepared.get(media_type, body)
    }

    /// Remembers `prepared` as what `body` makes. Called once it was served, so that requests
    /// nobody may make (a wrong API key) cannot fill the memo.
    pub fn remember_body(&self, body: &bytes::Bytes, prepared: &PreparedRequest) {
        self.prepared
            .remember(prepared.0.cache_key.media_type(), body, prepared);
    }

    /// Normalises, prices and keys `req`.
    pub fn prepare(&self, req: &MediaRequest) -> Result<PreparedRequest, ServiceError> {
        let job = match req {
            MediaRequest::Tts(req) => {
                let norm = req.normalize()?;
                let price = self.pricing.tts(&norm);
                MediaJob::of(
                    &norm,
                    price,
                    self.speech.name(),
                    Generator::Speech(norm.clone()),
                )
            }
            MediaRequest::Image(req) => {
                let norm = req.normalize()?;
                let price = self.pricing.image(&norm).ok_or(ServiceError::Unpriced)?;
                MediaJob::of(
                    &norm,
                    price,
                    self.images.name(),
                    Generator::Image(norm.clone()),
                )
            }
            MediaRequest::Music(req) => {
                let norm = req.normalize()?;
                let price = self.pricing.music(&norm).ok_or(ServiceError::Unpriced)?;
                let provider = self.job_parts()?.music_provider()?.name().to_owned();
                MediaJob::of(&norm, price, &provider, Generator::Music(norm.clone()))
            }
            MediaRequest::Video(req) => {
                let norm = req.normalize()?;
                let price = self.pricing.video(&norm).ok_or(ServiceError::Unpriced)?;
                let provider = self.job_parts()?.video_provider()?.name().to_owned();
                MediaJob::of(&norm, price, &provider, Generator::Video(norm.clone()))
            }
        };
        Ok(PreparedRequest(Arc::new(job)))
    }

    /// The caller's balance and latest ledger lines.
    pub async fn statement(
        &self,
        call: &CallContext,
        limit: usize,
    ) -> Result<Statement, ServiceError> {
        let user_id = self.authenticate(call).await?;
        accounts::statement(self.store.as_ref(), &user_id, limit)
            .await?
            .ok_or(ServiceError::Unauthorized(
                "the user of this API key no longer exists",
            ))
    }

    /// Deletes the cached result under `cache_key` (admin API keys only): the next request for
    /// it is a miss on every instance. A result still being generated is not purged (it is saved
    /// when its job finishes).
    pub async fn purge(&self, call: &CallContext, cache_key: &str) -> Result<(), ServiceError> {
        self.authenticate(call).await?;
        if !self
            .store
            .is_admin(&api_key_digest(api_key_of(call)?))
            .await?
        {
            return Err(ServiceError::Forbidden(
                "purging the cache needs an admin API key",
            ));
        }
        const NOT_CACHED: &str = "no cached result under this key";
        let key = CacheKey::parse(cache_key).ok_or(ServiceError::NotFound(NOT_CACHED))?;
        if !self.store.purge_entry(&key).await? {
            return Err(ServiceError::NotFound(NOT_CACHED));
        }
        tracing::info!(request_id = %call.request_id, cache_key, "cache entry purged");
        Ok(())
    }

    pub(crate) async fn authenticate(&self, call: &CallContext) -> Result<String, ServiceError> {
        let api_key = api_key_of(call)?;
        let lookup = self.store.lookup(&api_key_digest(api_key), None).await?;
        lookup
            .user_id
            .ok_or(ServiceError::Unauthorized("invalid API key"))
    }

    /// Auth and the cache read in one batch, then idempotency, then hit or miss.
    async fn serve(
        &self,
        call: &CallContext,
        mut job: Arc<MediaJob>,
    ) -> Result<Answer, ServiceError> {
        let api_key = api_key_of(call)?;
        let digest = api_key_digest(api_key);
        let forced;
        let call = if self.private_entries && !call.cache_control.private {
            let mut private = call.clone();
            private.cache_control.private = true;
            forced = private;
            &forced
        } else {
            call
        };
        let mut lookup = if call.cache_control.private {
            // The key includes the account, known once the API key is: the entry is read after
            // it (the stores remember a key's user, so this is one read once warm).
            let caller = self.store.lookup(&digest, None).await?;
            if let Some(user_id) = &caller.user_id {
                // The remembered job is shared: this request's copy gets the private key.
                let private = job.cache_key.private_to(user_id);
                Arc::make_mut(&mut job).cache_key = private;
            }
            caller
        } else {
            Lookup::default()
        };
        if lookup.user_id.is_some() || !call.cache_control.private {
            let wanted = (!call.cache_control.no_cache).then_some(&job.cache_key);
            lookup = self.store.lookup(&digest, wanted).await?;
        }
        let user_id = lookup
            .user_id
            .clone()
            .ok_or(ServiceError::Unauthorized("invalid API key"))?;

        let result = match call.idempotency_key.as_deref() {
            None => self.hit_or_miss(call, &user_id, lookup, &job).await,
            Some(key) => self.idempotent(call, &user_id, key, lookup, &job).await,
        };
        match &result {
            Ok(Answer::Ready(g)) => tracing::info!(
                request_id = %call.request_id,
                user_id,
                media_type = %g.media_type,
                cache = g.outcome.as_str(),
                credits_charged = g.credits_charged,
                credits_remaining = g.credits_remaining,
                replayed = g.replayed,
                "served"
            ),
            Ok(Answer::Job(t)) => tracing::info!(
                request_id = %call.request_id,
                user_id,
                media_type = %t.media_type,
                cache = t.outcome.as_str(),
                job_id = %t.job_id,
                credits_charged = t.credits_charged,
                credits_remaining = t.credits_remaining,
                replayed = t.replayed,
                "job accepted"
            ),
            Err(e) => {
                tracing::info!(request_id = %call.request_id, user_id, error = %e, "not served")
            }
        }
        result
    }

    /// Runs the request once per idempotency key: a retry gets the stored answer.
    async fn idempotent(
        &self,
        call: &CallContext,
        user_id: &str,
        idempotency_key: &str,
        lookup: Lookup,
        job: &MediaJob,
    ) -> Result<Answer, ServiceError> {
        let claim = IdempotencyClaim {
            user_id: user_id.to_owned(),
            key: idempotency_key.to_owned(),
            fingerprint: fingerprint(&job.cache_key, call.cache_control),
            at: self.clock.now(),
        };
        match self.store.claim(&claim).await? {
            ClaimOutcome::Claimed => {}
            ClaimOutcome::Replay(stored) => {
                // Answers stored before jobs existed are bare generations.
                let mut answer = serde_json::from_str::<Answer>(&stored)
                    .or_else(|_| serde_json::from_str::<Generation>(&stored).map(Answer::Ready))
                    .map_err(|e| ServiceError::Storage(format!("stored answer: {e}")))?;
                answer.mark_replayed();
                return Ok(answer);
            }
            ClaimOutcome::Conflict => return Err(ServiceError::IdempotencyConflict),
            ClaimOutcome::InProgress => return Err(ServiceError::IdempotencyInProgress),
        }
        let result = self.hit_or_miss(call, user_id, lookup, job).await;
        let saved = match &result {
            Ok(answer) => {
                let answer = serde_json::to_string(answer).unwrap_or_default();
                self.store
                    .complete(user_id, idempotency_key, &answer, self.clock.now())
                    .await
            }
            Err(_) => self.store.release(user_id, idempotency_key).await,
        };
        if let Err(e) = saved {
            // The request itself succeeded or failed on its own; a retry may run it again.
            tracing::warn!(request_id = %call.request_id, error = %e, "idempotency record not saved");
        }
        result
    }

    async fn hit_or_miss(
        &self,
        call: &CallContext,
        user_id: &str,
        mut lookup: Lookup,
        job: &MediaJob,
    ) -> Result<Answer, ServiceError> {
        let now = self.clock.now();
        let seen = Seen::of(&lookup);
        if let Some(entry) = lookup.entry.take_if(|e| call.cache_control.serves(e, now)) {
            return self
                .hit(call, user_id, entry, job, seen)
                .await
                .map(Answer::Ready);
        }
        self.miss(call, user_id, lookup, job).await
    }

    /// Calls the provider of a speech or image request; no attempt starts that cannot end by
    /// `deadline`.
    async fn generate_now(
        &self,
        generator: &Generator,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<GeneratedMedia>, ProviderError> {
        let deadline = deadline.into_std();
        let started = std::time::Instant::now();
        let (provider, media) = match generator {
            Generator::Speech(req) => (
                self.speech.name(),
                self.speech.synthesize(req, deadline).await.map(|m| vec![m]),
            ),
            Generator::Image(req) => (
                self.images.name(),
                self.images.generate(req, deadline).await,
            ),
            Generator::Music(_) | Generator::Video(_) => {
                return Err(ProviderError::BadResponse {
                    message: "music and video are generated as provider tasks".into(),
                });
            }
        };
        telemetry::provider_call(provider, &media, started.elapsed());
        let media = media?;
        if media.is_empty() {
            return Err(ProviderError::BadResponse {
                message: "no media in the answer".into(),
            });
        }
        Ok(media)
    }

    /// Serves a stored result for the hit price, counting the hit.
    async fn hit(
        &self,
        call: &CallContext,
        user_id: &str,
        entry: CacheEntry,
        job: &MediaJob,
        seen: Seen,
    ) -> Result<Generation, ServiceError> {
        let price = self.pricing.hit(job.price);
        let charge = job.charge(
            call,
            user_id,
            price,
            LedgerReason::Hit,
            seen,
            self.clock.now(),
        );
        let remaining = self
            .store
            .charge(&Charge {
                count_hit: true,
                ..charge
            })
            .await?;
        let media_type = job.cache_key.media_type();
        telemetry::charged(media_type, price);
        telemetry::saved(media_type, entry.credits_used, price);
        Ok(Generation {
            id: call.request_id.clone(),
            media_type,
            cache_key: job.cache_key.to_string(),
            outcome: CacheOutcome::Hit,
            object_keys: entry.result_keys,
            content_type: entry.content_type,
            provider: entry.provider,
            model: entry.model,
            credits_charged: price,
            credits_remaining: remaining,
            created_at: entry.created_at,
            cache_expires_at: Some(entry.expires_at),
            age_seconds: Some(age_seconds(entry.created_at, self.clock.now())),
            replayed: false,
        })
    }

    /// Copies media into object storage under content-addressed keys.
    pub(crate) async fn store_media(
        &self,
        media_type: MediaType,
        media: Vec<GeneratedMedia>,
    ) -> Result<Vec<String>, ServiceError> {
        let mut keys = Vec::with_capacity(media.len());
        for item in media {
            let key = format!(
                "{media_type}/{}.{}",
                hex::encode(Sha256::digest(&item.bytes)),
                extension_for(&item.content_type)
            );
            self.objects
                .put(&key, item.bytes, &item.content_type)
                .await?;
            keys.push(key);
        }
        Ok(keys)
    }

    /// Gives back what request `request_id` was charged at `charged_at` (or a moment before);
    /// at most once per request.
    pub(crate) async fn refund_request(
        &self,
        user_id: &str,
        amount: u64,
        request_id: &str,
        cache_key: &CacheKey,
        charged_at: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        if amount == 0 {
            return Ok(());
        }
        let refund = Refund {
            user_id: user_id.to_owned(),
            amount,
            request_id: request_id.to_owned(),
            cache_key: cache_key.clone(),
            charged_at,
            at: self.clock.now(),
        };
        let applied = self.store.refund(&refund).await.map_err(|e| {
            // Left for reconciliation: the charge line without a refund line shows it.
            tracing::error!(request_id, user_id, amount, error = %e, "refund failed");
            ServiceError::from(e)
        })?;
        if applied.is_some() {
            telemetry::refunded(cache_key.media_type(), amount);
        }
        Ok(())
    }
}

fn api_key_of(call: &CallContext) -> Result<&str, ServiceError> {
    call.api_key.as_deref().ok_or(ServiceError::Unauthorized(
        "missing API key: send Authorization: Bearer <key>",
    ))
}

/// What an idempotent request asks for: the result and how the cache may be used.
fn fingerprint(cache_key: &CacheKey, cc: CacheControl) -> String {
    let mut text = format!(
        "{cache_key}|no-cache={}|no-store={}",
        cc.no_cache, cc.no_store
    );
    // Only when set, so the fingerprints of requests without them stay what they were.
    if let Some(max_age) = cc.max_age {
        text.push_str(&format!("|max-age={max_age}"));
    }
    if cc.private {
        text.push_str("|private");
    }
    hex::encode(Sha256::digest(text.as_bytes()))
}
