//! The OpenAI-compatible drop-ins share the cache with the native routes.

use base64::Engine;
use integration_tests::TestApp;
use provider_sim::Endpoint;
use serde_json::json;

#[tokio::test]
async fn openai_speech_answers_audio_and_shares_the_cache() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let body = json!({"model": "tts-1", "input": "Hello compat", "voice": "alloy",
                      "response_format": "wav", "user": "end-user-7"});
    let resp = app
        .http
        .post(format!("{}/v1/audio/speech", app.server.base_url))
        .bearer_auth(&user.api_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/wav");
    assert_eq!(resp.headers()["x-cache"], "MISS");
    assert_eq!(resp.headers()["x-credits-charged"], "2");
    let audio = resp.bytes().await.unwrap();
    assert_eq!(&audio[..4], b"RIFF");

    let native = app
        .post(
            "/api/v1/media/tts",
            &user,
            &json!({"text": "Hello compat", "voice": "alloy", "format": "wav"}),
        )
        .await;
    assert_eq!(native.header("x-cache"), "HIT", "one cache for both routes");
    let (_, bytes, _) = app.download(native.json["url"].as_str().unwrap()).await;
    assert_eq!(bytes, audio.to_vec());
    assert_eq!(app.sim_calls(Endpoint::Speech), 1);

    let bad = app
        .post(
            "/v1/audio/speech",
            &user,
            &json!({"model": "tts-1", "input": " ", "voice": "alloy"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(
        bad.error_message().contains("`input`"),
        "{}",
        bad.error_message()
    );
}

#[tokio::test]
async fn openai_images_answer_urls_or_base64_from_one_cache() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let url_answer = app
        .post(
            "/v1/images/generations",
            &user,
            &json!({"prompt": "a kite", "size": "256x256"}),
        )
        .await;
    assert_eq!(url_answer.status, 200, "{:?}", url_answer.json);
    assert_eq!(url_answer.header("x-cache"), "MISS");
    assert_eq!(
        url_answer.header("x-credits-charged"),
        "5",
        "OpenAI's default model, dall-e-2"
    );
    assert!(url_answer.json["created"].is_i64());
    let (status, png, _) = app
        .download(url_answer.json["data"][0]["url"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    assert_eq!(&png[..4], b"\x89PNG");

    let b64_answer = app
        .post(
            "/v1/images/generations",
            &user,
            &json!({"prompt": "a kite", "size": "256x256", "model": "dall-e-2", "response_format": "b64_json"}),
        )
        .await;
    assert_eq!(b64_answer.header("x-cache"), "HIT");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64_answer.json["data"][0]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, png);
    assert_eq!(app.sim_calls(Endpoint::Images), 1);

    let bad = app
        .post(
            "/v1/images/generations",
            &user,
            &json!({"prompt": "a kite", "response_format": "gif"}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(bad.error_message().contains("response_format"));
}
