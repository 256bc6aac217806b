//! The simulator over HTTP: OpenAI's shapes, result URLs that expire, the fault and counter
//! controls.

use provider_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

async fn sim() -> SimHandle {
    provider_sim::spawn(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

async fn post(sim: &SimHandle, path: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url))
        .bearer_auth("k")
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn invalid_parameters_get_openai_error_shapes() {
    let sim = sim().await;
    let resp = post(
        &sim,
        "/v1/audio/speech",
        json!({"model": "tts-1", "input": "hi", "voice": "robot"}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["param"], "voice");
    let resp = post(
        &sim,
        "/v1/images/generations",
        json!({"prompt": "x", "model": "dall-e-3", "n": 2}),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let unauthenticated = reqwest::Client::new()
        .post(format!("{}/v1/audio/speech", sim.base_url))
        .json(&json!({"model": "tts-1", "input": "hi", "voice": "nova"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn url_results_download_until_they_expire() {
    let sim = sim().await;
    let resp = post(
        &sim,
        "/v1/images/generations",
        json!({"prompt": "a boat", "size": "256x256"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let url = body["data"][0]["url"].as_str().unwrap();
    let image = reqwest::get(url).await.unwrap();
    assert_eq!(image.status(), 200);
    assert!(image.bytes().await.unwrap().starts_with(b"\x89PNG"));

    let fault = reqwest::Client::new()
        .post(format!("{}/_sim/faults", sim.base_url))
        .json(&json!({"endpoint": "images", "kind": "expired_url", "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(fault.status(), 200);
    let body: Value = post(
        &sim,
        "/v1/images/generations",
        json!({"prompt": "a ship", "size": "256x256"}),
    )
    .await
    .json()
    .await
    .unwrap();
    let expired = reqwest::get(body["data"][0]["url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(expired.status(), 403);

    let calls: Value = reqwest::get(format!("{}/_sim/calls", sim.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        calls,
        json!({"speech": 0, "images": 2, "suno_generate": 0, "suno_record_info": 0,
               "kling_create": 0, "kling_query": 0})
    );
}

#[tokio::test]
async fn faults_apply_the_given_number_of_times_then_clear() {
    let sim = sim().await;
    let client = reqwest::Client::new();
    client
        .post(format!("{}/_sim/faults", sim.base_url))
        .json(&json!({"kind": "server_error", "status": 503, "times": 2}))
        .send()
        .await
        .unwrap();
    let speech = json!({"model": "tts-1", "input": "hi", "voice": "nova"});
    assert_eq!(
        post(&sim, "/v1/audio/speech", speech.clone())
            .await
            .status(),
        503
    );
    assert_eq!(
        post(&sim, "/v1/audio/speech", speech.clone())
            .await
            .status(),
        503
    );
    assert_eq!(
        post(&sim, "/v1/audio/speech", speech.clone())
            .await
            .status(),
        200
    );

    client
        .post(format!("{}/_sim/faults", sim.base_url))
        .json(&json!({"kind": "rate_limit", "retry_after_ms": 1500}))
        .send()
        .await
        .unwrap();
    let limited = post(&sim, "/v1/audio/speech", speech.clone()).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after-ms"], "1500");
    assert_eq!(limited.headers()["retry-after"], "2");
    client
        .delete(format!("{}/_sim/faults", sim.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(post(&sim, "/v1/audio/speech", speech).await.status(), 200);
}
