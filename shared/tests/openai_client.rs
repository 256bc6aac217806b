//! The OpenAI client against the provider simulator over HTTP: real requests, real media bytes,
//! retries and error classification.

use media_cache::adapters::download::DownloadPolicy;
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::domain::{ImageRequest, NormalizedMedia, TtsRequest};
use media_cache::ports::{ImageProvider, ProviderError, SpeechProvider};
use provider_sim::{Endpoint, FaultKind, FaultRule, SimConfig, SimHandle};
use std::time::Duration;

async fn sim(config: SimConfig) -> SimHandle {
    provider_sim::spawn(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A deadline no test reaches.
fn later() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}

fn client(sim: &SimHandle, key: &str) -> OpenAiClient {
    client_with_timeout(sim, key, Duration::from_secs(10))
}

fn client_with_timeout(sim: &SimHandle, key: &str, timeout: Duration) -> OpenAiClient {
    OpenAiClient::new(OpenAiConfig {
        timeout,
        initial_backoff: Duration::from_millis(5),
        // Image URLs from the simulator are http on loopback.
        download: DownloadPolicy::allowing(DownloadPolicy::host_of(&sim.base_url)),
        ..OpenAiConfig::new(&sim.base_url, key)
    })
    .unwrap()
}

fn tts(format: &str) -> media_cache::domain::NormalizedTtsRequest {
    TtsRequest {
        text: Some("The quick brown fox".into()),
        format: Some(format.into()),
        ..Default::default()
    }
    .normalize()
    .unwrap()
}

fn fail(kind: FaultKind, times: u32) -> FaultRule {
    FaultRule {
        endpoint: None,
        kind,
        times: Some(times),
    }
}

#[tokio::test]
async fn speech_comes_back_in_every_format_with_its_content_type() {
    let sim = sim(SimConfig::default()).await;
    let client = client(&sim, "k");
    let cases: [(&str, &str, &[u8]); 6] = [
        ("mp3", "audio/mpeg", b"ID3"),
        ("wav", "audio/wav", b"RIFF"),
        ("flac", "audio/flac", b"fLaC"),
        ("opus", "audio/ogg", b"OggS"),
        ("aac", "audio/aac", &[0xFF, 0xF1]),
        ("pcm", "audio/pcm", b""),
    ];
    for (format, content_type, magic) in cases {
        let media = client.synthesize(&tts(format), later()).await.unwrap();
        assert_eq!(media.content_type, content_type, "{format}");
        assert!(media.bytes.starts_with(magic), "{format}");
        assert!(media.bytes.len() > 100, "{format}: real audio");
    }
    // PCM is the WAV's samples without the 44-byte header.
    let wav = client.synthesize(&tts("wav"), later()).await.unwrap();
    let pcm = client.synthesize(&tts("pcm"), later()).await.unwrap();
    assert_eq!(wav.bytes.len(), pcm.bytes.len() + 44);
    assert_eq!(sim.calls(Endpoint::Speech), 8);
    // Deterministic: the same request gives the same bytes.
    assert_eq!(client.synthesize(&tts("wav"), later()).await.unwrap(), wav);
}

#[tokio::test]
async fn images_decode_from_b64_json_for_every_model() {
    let sim = sim(SimConfig::default()).await;
    let client = client(&sim, "k");
    for (model, format, magic) in [
        ("dall-e-2", None, &b"\x89PNG"[..]),
        ("dall-e-3", None, &b"\x89PNG"[..]),
        ("gpt-image-1", Some("jpeg"), &[0xFF, 0xD8][..]),
        ("gpt-image-1", Some("webp"), &b"RIFF"[..]),
    ] {
        let req = ImageRequest {
            prompt: Some("a red kite".into()),
            model: Some(model.into()),
            output_format: format.map(Into::into),
            size: Some(
                if model == "dall-e-2" {
                    "256x256"
                } else {
                    "1024x1024"
                }
                .into(),
            ),
            ..Default::default()
        }
        .normalize()
        .unwrap();
        let images = client.generate(&req, later()).await.unwrap();
        assert_eq!(images.len(), 1, "{model}");
        assert!(images[0].bytes.starts_with(magic), "{model} {format:?}");
        assert_eq!(images[0].content_type, req.content_type());
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_then_succeed() {
    let sim = sim(SimConfig::default()).await;
    let client = client(&sim, "k");
    sim.state
        .inject(fail(FaultKind::RateLimit { retry_after_ms: 10 }, 1));
    sim.state
        .inject(fail(FaultKind::ServerError { status: 503 }, 1));
    assert!(client.synthesize(&tts("mp3"), later()).await.is_ok());
    assert_eq!(sim.calls(Endpoint::Speech), 3);
}

#[tokio::test]
async fn failures_are_classified() {
    let sim = sim(SimConfig {
        api_key: Some("right".into()),
        ..Default::default()
    })
    .await;
    let wrong = client(&sim, "wrong");
    assert!(matches!(
        wrong.synthesize(&tts("mp3"), later()).await,
        Err(ProviderError::Account { .. })
    ));
    assert_eq!(sim.calls(Endpoint::Speech), 1, "a bad key is not retried");

    let right = client(&sim, "right");
    sim.state.inject(fail(FaultKind::InsufficientQuota, 1));
    assert!(matches!(
        right.synthesize(&tts("mp3"), later()).await,
        Err(ProviderError::Account { .. })
    ));

    sim.state.inject(fail(FaultKind::ContentPolicy, 1));
    match right.synthesize(&tts("mp3"), later()).await {
        Err(ProviderError::Rejected { message }) => assert!(message.contains("safety")),
        other => panic!("{other:?}"),
    }

    sim.state
        .inject(fail(FaultKind::ServerError { status: 500 }, 3));
    assert!(matches!(
        right.synthesize(&tts("mp3"), later()).await,
        Err(ProviderError::Unavailable {
            retry_after: None,
            ..
        })
    ));

    sim.state.inject(fail(
        FaultKind::RateLimit {
            retry_after_ms: 30_000,
        },
        1,
    ));
    match right.synthesize(&tts("mp3"), later()).await {
        Err(ProviderError::RateLimited { retry_after }) => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
        }
        other => panic!("{other:?}"),
    }

    let impatient = client_with_timeout(&sim, "right", Duration::from_millis(300));
    sim.state
        .inject(fail(FaultKind::Timeout { delay_ms: 1_500 }, 3));
    assert!(matches!(
        impatient.synthesize(&tts("mp3"), later()).await,
        Err(ProviderError::Timeout)
    ));
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable() {
    // A port held (bound) but never listened on: connections to it are refused, and no other
    // test can start a server there while this one runs.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{}", refusing.local_addr().unwrap());
    let client = OpenAiClient::new(OpenAiConfig {
        initial_backoff: Duration::from_millis(1),
        ..OpenAiConfig::new(base, "k")
    })
    .unwrap();
    assert!(matches!(
        client.synthesize(&tts("mp3"), later()).await,
        Err(ProviderError::Unavailable { .. })
    ));
}
