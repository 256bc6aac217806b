//! The cache-hit path on the embedded store: normalise and key; a hit (the key's user and the
//! entry from memory, then the charge, its ledger line and the hit count committed by the
//! store's writer); 32 hits at once (their charges committed together); charges straight to
//! the store, one at a time and 32 at once (group commit); and the join path of a request
//! identical to a video job in flight (single flight). Run: `cargo bench -p media-cache`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use media_cache::adapters::fs_objects::{FsObjectStore, UrlSigner};
use media_cache::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::adapters::sqlite::SqliteStore;
use media_cache::clock::SystemClock;
use media_cache::domain::{
    CacheKey, Charge, LedgerReason, NormalizedMedia, PriceTable, TtsRequest, VideoRequest,
};
use media_cache::ports::CreditStore;
use media_cache::service::accounts::{create_user, generate_request_id};
use media_cache::service::{
    Answer, CacheOutcome, CallContext, CallbackSigner, JobParts, JobPolicy, MediaRequest,
    MediaService,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn tts_request() -> TtsRequest {
    TtsRequest {
        text: Some("  The quick brown fox jumps over the lazy dog.  ".into()),
        voice: Some("Nova".into()),
        speed: Some(1.0),
        ..Default::default()
    }
}

fn request() -> MediaRequest {
    MediaRequest::Tts(tts_request())
}

fn bench(c: &mut Criterion) {
    c.bench_function("normalise_and_key/tts", |b| {
        let req = tts_request();
        b.iter(|| black_box(black_box(&req).normalize().unwrap().cache_key()))
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (service, store, user, _sim) = rt.block_on(async {
        // Video tasks never finish here: the first request's job stays pending to be joined.
        let sim_config = provider_sim::SimConfig {
            task_duration: Duration::from_secs(24 * 3600),
            ..Default::default()
        };
        let sim = provider_sim::spawn(sim_config, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let store = SqliteStore::open(&dir.path().join("bench.db")).unwrap();
        let openai = Arc::new(OpenAiClient::new(OpenAiConfig::new(&sim.base_url, "k")).unwrap());
        let objects = FsObjectStore::new(
            dir.path().join("objects"),
            "http://127.0.0.1:8080",
            UrlSigner::new(vec![1u8; 32]),
        );
        let user = create_user(&store, 1_000_000_000, chrono::Utc::now())
            .await
            .unwrap();
        let kling = KlingClient::new(KlingConfig::new(
            &sim.base_url,
            KlingAuth::ApiKey("k".into()),
        ))
        .unwrap();
        let jobs = JobParts {
            miss: Default::default(),
            queue: Arc::new(store.clone()),
            callbacks: CallbackSigner::new(vec![2u8; 32], "http://127.0.0.1:8080"),
            policy: JobPolicy::default(),
            music: None,
            video: Some(Arc::new(kling)),
        };
        let service = MediaService::new(
            Arc::new(store.clone()),
            Arc::new(objects),
            openai.clone(),
            openai,
            PriceTable::default(),
            Arc::new(SystemClock),
        )
        .with_jobs(jobs);
        (service, store, user, sim)
    });
    let (user_id, api_key) = (user.user_id, user.api_key);
    let call = |api_key: &str| CallContext {
        api_key: Some(api_key.to_owned()),
        request_id: generate_request_id(),
        ..Default::default()
    };
    // Prime the cache with one miss.
    let first = rt
        .block_on(service.generate(&call(&api_key), &request()))
        .unwrap()
        .ready()
        .unwrap();
    assert_eq!(first.outcome, CacheOutcome::Miss);
    let request_ref = request();

    c.bench_function("hit_path/sqlite", |b| {
        b.to_async(&rt).iter(|| async {
            let generation = service
                .generate(&call(&api_key), &request())
                .await
                .unwrap()
                .ready()
                .unwrap();
            assert_eq!(generation.outcome, CacheOutcome::Hit);
            black_box(generation)
        })
    });

    let mut concurrent = c.benchmark_group("hits_at_once");
    concurrent.throughput(Throughput::Elements(32));
    concurrent.bench_function("sqlite/32", |b| {
        b.to_async(&rt).iter(|| async {
            let calls: Vec<_> = (0..32).map(|_| call(&api_key)).collect();
            let hits = futures_util::future::join_all(
                calls
                    .iter()
                    .map(|call| service.generate(call, &request_ref)),
            )
            .await;
            assert!(hits.iter().all(Result::is_ok));
            black_box(hits)
        })
    });
    concurrent.finish();

    let key = first_key(&first);
    let charge = || Charge {
        user_id: user_id.clone(),
        amount: 1,
        reason: LedgerReason::Hit,
        request_id: generate_request_id(),
        cache_key: key.clone(),
        count_hit: true,
        seen_balance: None,
        seen_spend: None,
        at: chrono::Utc::now(),
    };
    let mut charges = c.benchmark_group("charges");
    charges.throughput(Throughput::Elements(32));
    charges.bench_function("sqlite/one_at_a_time/32", |b| {
        b.to_async(&rt).iter(|| async {
            for _ in 0..32 {
                store.charge(&charge()).await.unwrap();
            }
        })
    });
    charges.bench_function("sqlite/at_once/32", |b| {
        b.to_async(&rt).iter(|| async {
            let batch: Vec<_> = (0..32).map(|_| charge()).collect();
            let done = futures_util::future::join_all(batch.iter().map(|c| store.charge(c))).await;
            assert!(done.iter().all(Result::is_ok));
        })
    });
    charges.finish();

    let video = || {
        MediaRequest::Video(VideoRequest {
            prompt: Some("a paper boat on a rainy street".into()),
            ..Default::default()
        })
    };
    let leader = rt
        .block_on(service.generate(&call(&api_key), &video()))
        .unwrap();
    assert!(matches!(leader, Answer::Job(ref t) if t.outcome == CacheOutcome::Miss));
    c.bench_function("join_path/sqlite", |b| {
        b.to_async(&rt).iter(|| async {
            let answer = service.generate(&call(&api_key), &video()).await.unwrap();
            let Answer::Job(ticket) = answer else {
                panic!("a pending job is joined, not served")
            };
            assert_eq!(ticket.outcome, CacheOutcome::Coalesced);
            black_box(ticket)
        })
    });
}

fn first_key(generation: &media_cache::service::Generation) -> CacheKey {
    CacheKey::parse(&generation.cache_key).expect("a generation's key parses")
}

criterion_group!(benches, bench);
criterion_main!(benches);
