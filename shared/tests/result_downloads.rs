//! Provider result downloads under the download policy, against servers this test starts on
//! 127.0.0.1: listed hosts are fetched, everything else is refused before a connection is made
//! (each server counts the connections it accepts), bodies stop at the size cap, pages are not
//! media, and every redirect hop is checked. No test sends traffic anywhere but loopback: the
//! refusals of other addresses are unit tests of the policy (`adapters::download`).

use media_cache::adapters::download::{DownloadPolicy, MIB};
use media_cache::adapters::kling::{KlingAuth, KlingClient, KlingConfig};
use media_cache::adapters::openai::{OpenAiClient, OpenAiConfig};
use media_cache::adapters::suno::{SunoClient, SunoConfig};
use media_cache::domain::{ImageRequest, NormalizedMedia};
use media_cache::ports::{ImageProvider, ProviderError, TaskProvider};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the test server answers to a path.
#[derive(Clone)]
struct Reply {
    status: &'static str,
    headers: Vec<(&'static str, String)>,
    /// None: an endless body (no length, bytes until the client hangs up).
    body: Option<Vec<u8>>,
}

impl Reply {
    fn ok(content_type: &str, body: &[u8]) -> Self {
        Self {
            status: "200 OK",
            headers: vec![("Content-Type", content_type.to_owned())],
            body: Some(body.to_vec()),
        }
    }

    fn endless(content_type: &str) -> Self {
        Self {
            body: None,
            ..Self::ok(content_type, b"")
        }
    }

    fn redirect(location: &str) -> Self {
        Self {
            status: "302 Found",
            headers: vec![("Location", location.to_owned())],
            body: Some(Vec::new()),
        }
    }
}

/// A raw HTTP/1.1 server on 127.0.0.1 with canned answers by path.
struct Loopback {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    routes: Arc<Mutex<Vec<(String, Reply)>>>,
}

impl Loopback {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<Vec<(String, Reply)>>> = Arc::default();
        let (count, table) = (Arc::clone(&connections), Arc::clone(&routes));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(answer(stream, Arc::clone(&table)));
            }
        });
        Self {
            addr,
            connections,
            routes,
        }
    }

    fn route(&self, path: &str, reply: Reply) -> &Self {
        self.routes.lock().unwrap().push((path.to_owned(), reply));
        self
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `host:port`, as the allow list takes it.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn answer(mut stream: tokio::net::TcpStream, routes: Arc<Mutex<Vec<(String, Reply)>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
    let reply = routes
        .lock()
        .unwrap()
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, r)| r.clone())
        .unwrap_or(Reply {
            status: "404 Not Found",
            headers: Vec::new(),
            body: Some(Vec::new()),
        });
    let mut out = format!("HTTP/1.1 {}\r\nConnection: close\r\n", reply.status);
    for (name, value) in &reply.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let declares_length = reply
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if let (Some(body), false) = (&reply.body, declares_length) {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    if stream.write_all(out.as_bytes()).await.is_err() {
        return;
    }
    match reply.body {
        Some(body) => {
            let _ = stream.write_all(&body).await;
        }
        // Until the client hangs up.
        None => {
            let chunk = vec![0xffu8; 64 * 1024];
            while stream.write_all(&chunk).await.is_ok() {}
        }
    }
}

fn suno(policy: DownloadPolicy) -> SunoClient {
    SunoClient::new(SunoConfig {
        download: policy,
        ..SunoConfig::new("http://127.0.0.1:9", "k")
    })
    .unwrap()
}

fn kling(policy: DownloadPolicy) -> KlingClient {
    KlingClient::new(KlingConfig {
        download: policy,
        ..KlingConfig::new("http://127.0.0.1:9", KlingAuth::ApiKey("k".into()))
    })
    .unwrap()
}

/// The error's message, asserting it is the final kind a refusal must be.
fn refusal(result: Result<impl std::fmt::Debug, ProviderError>) -> String {
    match result {
        Err(e @ ProviderError::Refused { .. }) => {
            assert!(!e.is_transient(), "{e:?}");
            assert_eq!(e.code(), "provider_result_refused");
            e.to_string()
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_listed_loopback_host_is_downloaded_over_plain_http() {
    let server = Loopback::start().await;
    server.route("/song.mp3", Reply::ok("audio/mpeg", b"ID3 a song"));
    let client = suno(DownloadPolicy::allowing([server.host()]));
    let song = client.download(&server.url("/song.mp3")).await.unwrap();
    assert_eq!(&song.bytes[..], b"ID3 a song");
    assert_eq!(song.content_type, "audio/mpeg");
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn a_loopback_host_not_listed_is_refused_before_any_connection() {
    let server = Loopback::start().await;
    server.route("/song.mp3", Reply::ok("audio/mpeg", b"ID3 a song"));
    let client = suno(DownloadPolicy::default());
    let port = server.addr.port();

    // Over https, an IP literal is checked before the request...
    let literal = refusal(
        client
            .download(&format!("https://127.0.0.1:{port}/song.mp3"))
            .await,
    );
    assert!(literal.contains("private or reserved address"), "{literal}");
    // ...and a name on the addresses it resolves to (`localhost` from /etc/hosts), before the
    // connection that would use them.
    let named = refusal(
        client
            .download(&format!("https://localhost:{port}/song.mp3"))
            .await,
    );
    assert!(named.contains("private or reserved address"), "{named}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn plain_http_to_a_host_not_listed_is_refused_before_any_connection() {
    let server = Loopback::start().await;
    server.route("/song.mp3", Reply::ok("audio/mpeg", b"ID3 a song"));
    // The same address on another port is listed, not this one.
    let client = suno(DownloadPolicy::allowing(["127.0.0.1:9"]));
    let message = refusal(client.download(&server.url("/song.mp3")).await);
    assert_eq!(message, "the provider's result URL was refused: not https");
    assert!(!message.contains("127.0.0.1"));
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn an_endless_body_stops_at_the_size_cap_with_an_error() {
    let server = Loopback::start().await;
    server.route("/forever.mp3", Reply::endless("audio/mpeg"));
    let client = suno(DownloadPolicy {
        max_audio_bytes: MIB,
        ..DownloadPolicy::allowing([server.host()])
    });
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        client.download(&server.url("/forever.mp3")),
    )
    .await
    .expect("the download stops at the cap, not at the timeout");
    let message = refusal(result);
    assert!(
        message.ends_with("larger than the 1 MiB limit for audio"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_the_body_is_read() {
    let server = Loopback::start().await;
    let mut huge = Reply::ok("video/mp4", b"ftyp");
    huge.headers
        .push(("Content-Length", (300 * MIB).to_string()));
    server.route("/huge.mp4", huge);
    let client = kling(DownloadPolicy::allowing([server.host()]));
    let message = refusal(client.download(&server.url("/huge.mp4")).await);
    assert!(
        message.ends_with("larger than the 200 MiB limit for video"),
        "{message}"
    );
}

#[tokio::test]
async fn a_result_served_as_a_web_page_is_refused() {
    let server = Loopback::start().await;
    server.route(
        "/song.mp3",
        Reply::ok("text/html; charset=utf-8", b"<html>login</html>"),
    );
    let client = suno(DownloadPolicy::allowing([server.host()]));
    let message = refusal(client.download(&server.url("/song.mp3")).await);
    assert!(message.ends_with("text/html is not audio"), "{message}");
}

#[tokio::test]
async fn a_result_served_as_octet_stream_is_accepted_under_our_own_type() {
    let server = Loopback::start().await;
    server.route(
        "/clip.mp4",
        Reply::ok("application/octet-stream", b"\0\0\0\x18ftypmp42"),
    );
    let client = kling(DownloadPolicy::allowing([server.host()]));
    let video = client.download(&server.url("/clip.mp4")).await.unwrap();
    assert_eq!(video.content_type, "video/mp4");
    assert_eq!(&video.bytes[4..8], b"ftyp");
}

#[tokio::test]
async fn a_redirect_within_the_listed_host_is_followed() {
    let server = Loopback::start().await;
    server
        .route("/old.mp3", Reply::redirect("/new.mp3"))
        .route("/new.mp3", Reply::ok("audio/mpeg", b"ID3 moved"));
    let client = suno(DownloadPolicy::allowing([server.host()]));
    let song = client.download(&server.url("/old.mp3")).await.unwrap();
    assert_eq!(&song.bytes[..], b"ID3 moved");
}

#[tokio::test]
async fn every_redirect_hop_is_checked_before_it_is_followed() {
    let target = Loopback::start().await;
    target.route("/song.mp3", Reply::ok("audio/mpeg", b"ID3 elsewhere"));
    let port = target.addr.port();
    let server = Loopback::start().await;
    server
        .route(
            "/to-literal",
            Reply::redirect(&format!("https://127.0.0.1:{port}/song.mp3")),
        )
        .route(
            "/to-name",
            Reply::redirect(&format!("https://localhost:{port}/song.mp3")),
        )
        .route(
            "/to-http",
            Reply::redirect(&format!("http://127.0.0.1:{port}/song.mp3")),
        );
    // Only the redirecting server is listed, by host and port: `localhost` is not.
    let client = suno(DownloadPolicy::allowing([server.host()]));
    for (path, why) in [
        ("/to-literal", "private or reserved address"),
        ("/to-name", "private or reserved address"),
        ("/to-http", "not https"),
    ] {
        let message = refusal(client.download(&server.url(path)).await);
        assert!(message.ends_with(why), "{path}: {message}");
    }
    assert_eq!(target.connections(), 0);
}

#[tokio::test]
async fn a_redirect_loop_is_cut_off_after_the_configured_hops() {
    let server = Loopback::start().await;
    server.route("/loop", Reply::redirect("/loop"));
    let client = suno(DownloadPolicy {
        max_redirects: 3,
        ..DownloadPolicy::allowing([server.host()])
    });
    let message = refusal(client.download(&server.url("/loop")).await);
    assert!(message.ends_with("more than 3 redirects"), "{message}");
    assert_eq!(server.connections(), 4);
}

fn openai(api: &Loopback, policy: DownloadPolicy) -> OpenAiClient {
    OpenAiClient::new(OpenAiConfig {
        download: policy,
        initial_backoff: Duration::from_millis(1),
        ..OpenAiConfig::new(api.url(""), "k")
    })
    .unwrap()
}

fn image_request() -> media_cache::domain::NormalizedImageRequest {
    ImageRequest {
        prompt: Some("a red fox".into()),
        ..Default::default()
    }
    .normalize()
    .unwrap()
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[tokio::test]
async fn an_image_answered_with_a_url_is_downloaded_under_the_policy() {
    let api = Loopback::start().await;
    let answer = format!(
        r#"{{"created": 1, "data": [{{"url": "{}"}}]}}"#,
        api.url("/files/fox.png")
    );
    api.route(
        "/v1/images/generations",
        Reply::ok("application/json", answer.as_bytes()),
    )
    .route("/files/fox.png", Reply::ok("image/png", b"\x89PNG fox"));
    let client = openai(&api, DownloadPolicy::allowing([api.host()]));
    let req = image_request();
    let images = client.generate(&req, later()).await.unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(&images[0].bytes[..], b"\x89PNG fox");
    assert_eq!(images[0].content_type, req.content_type());
}

#[tokio::test]
async fn an_image_url_to_a_host_not_listed_is_refused_before_any_connection() {
    let files = Loopback::start().await;
    files.route("/fox.png", Reply::ok("image/png", b"\x89PNG fox"));
    let api = Loopback::start().await;
    let answer = format!(
        r#"{{"created": 1, "data": [{{"url": "https://127.0.0.1:{}/fox.png"}}]}}"#,
        files.addr.port()
    );
    api.route(
        "/v1/images/generations",
        Reply::ok("application/json", answer.as_bytes()),
    );
    // The API itself is reached (its base URL is configuration, not the policy's business).
    let client = openai(&api, DownloadPolicy::default());
    let message = refusal(client.generate(&image_request(), later()).await);
    assert!(
        message.ends_with("private or reserved address"),
        "{message}"
    );
    assert_eq!(files.connections(), 0);
}
