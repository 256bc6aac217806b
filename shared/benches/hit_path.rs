//! The cache-hit path on the embedded store: normalise, key, one batch read (API key + entry),
//! one transaction (charge + ledger line + hit count). Run: `cargo bench -p media-cache`.

use criterion::{Criterion, criterion_group, criterion_main};
use media_cache::adapters::fs_objects::{FsObjectStore, UrlSigner};
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::adapters::sqlite::SqliteStore;
use media_cache::clock::SystemClock;
use media_cache::domain::{NormalizedMedia, PriceTable, TtsRequest};
use media_cache::service::accounts::{create_user, generate_request_id};
use media_cache::service::{CacheOutcome, CallContext, MediaRequest, MediaService};
use std::hint::black_box;
use std::sync::Arc;

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
    let (service, api_key, _sim) = rt.block_on(async {
        let sim = provider_sim::spawn(Default::default(), "127.0.0.1:0".parse().unwrap())
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
        let service = MediaService::new(
            Arc::new(store),
            Arc::new(objects),
            openai.clone(),
            openai,
            PriceTable::default(),
            Arc::new(SystemClock),
        );
        (service, user.api_key, sim)
    });
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
