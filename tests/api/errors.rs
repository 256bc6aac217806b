//! Bad input: each gets its documented 4xx with a message naming the problem, never a 500, and
//! costs nothing.

use integration_tests::TestApp;
use provider_sim::Endpoint;
use serde_json::json;

const TTS: &str = "/api/v1/media/tts";
const IMAGE: &str = "/api/v1/media/image";

/// A named bad request: route, API key, body, then the documented answer: status, stable code,
/// and `param` (the field at fault, for `invalid_parameter` only).
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a str>,
    String,
    u16,
    &'a str,
    Option<&'a str>,
);

#[tokio::test]
async fn bad_requests_get_clear_4xx_errors_and_cost_nothing() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let key = Some(user.api_key.as_str());
    let long_text = json!({"text": "a".repeat(4097)}).to_string();
    let huge = json!({"text": "a".repeat(300 * 1024)}).to_string();
    let malformed = "malformed_request";
    let invalid = "invalid_parameter";
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            TTS,
            key,
            "{\"text\": ".into(),
            400,
            malformed,
            None,
        ),
        (
            "not an object",
            TTS,
            key,
            "[1,2]".into(),
            400,
            malformed,
            None,
        ),
        (
            "unknown field",
            TTS,
            key,
            json!({"text": "x", "colour": "red"}).to_string(),
            400,
            malformed,
            None,
        ),
        (
            "wrong type",
            TTS,
            key,
            json!({"text": "x", "speed": "fast"}).to_string(),
            400,
            malformed,
            None,
        ),
        (
            "a fraction of an image",
            IMAGE,
            key,
            json!({"prompt": "x", "n": 1.5}).to_string(),
            400,
            malformed,
            None,
        ),
        (
            "missing text",
            TTS,
            key,
            json!({"voice": "nova"}).to_string(),
            422,
            invalid,
            Some("text"),
        ),
        (
            "empty text",
            TTS,
            key,
            json!({"text": "   "}).to_string(),
            422,
            invalid,
            Some("text"),
        ),
        (
            "4097 characters",
            TTS,
            key,
            long_text,
            422,
            invalid,
            Some("text"),
        ),
        (
            "speed 5.0",
            TTS,
            key,
            json!({"text": "x", "speed": 5.0}).to_string(),
            422,
            invalid,
            Some("speed"),
        ),
        (
            "unknown voice",
            TTS,
            key,
            json!({"text": "x", "voice": "robot"}).to_string(),
            422,
            invalid,
            Some("voice"),
        ),
        (
            "instructions on tts-1",
            TTS,
            key,
            json!({"text": "x", "instructions": "calm"}).to_string(),
            422,
            invalid,
            Some("instructions"),
        ),
        (
            "dall-e-3 with n = 2",
            IMAGE,
            key,
            json!({"prompt": "x", "n": 2}).to_string(),
            422,
            invalid,
            Some("n"),
        ),
        (
            "more images than any count holds",
            IMAGE,
            key,
            json!({"prompt": "x", "n": u64::MAX}).to_string(),
            422,
            invalid,
            Some("n"),
        ),
        (
            "bad size",
            IMAGE,
            key,
            json!({"prompt": "x", "size": "10x10"}).to_string(),
            422,
            invalid,
            Some("size"),
        ),
        (
            "body over the limit",
            TTS,
            key,
            huge,
            413,
            "payload_too_large",
            None,
        ),
        (
            "missing API key",
            TTS,
            None,
            json!({"text": "x"}).to_string(),
            401,
            "unauthorized",
            None,
        ),
        (
            "wrong API key",
            TTS,
            Some("mc_wrong"),
            json!({"text": "x"}).to_string(),
            401,
            "unauthorized",
            None,
        ),
    ];
    for (name, path, key, body, status, code, param) in cases {
        let answer = app.post_raw(path, key, &[], body).await;
        assert_eq!(answer.status, status, "{name}: {:?}", answer.json);
        let error = &answer.json["error"];
        assert_eq!(error["code"], code, "{name}: {:?}", answer.json);
        assert_eq!(error["param"].as_str(), param, "{name}: {:?}", answer.json);
        assert!(
            error["request_id"]
                .as_str()
                .unwrap_or("")
                .starts_with("req_"),
            "{name}"
        );
        // A message a person can act on; for a parameter, one that names it.
        let message = answer.error_message();
        assert!(!message.trim().is_empty(), "{name}");
        if let Some(param) = param {
            assert!(
                message.contains(&format!("`{param}`")),
                "{name}: {message:?} should name `{param}`"
            );
        }
    }
    assert_eq!(app.balance(&user).await, 100);
    assert_eq!(
        app.sim_calls(Endpoint::Speech) + app.sim_calls(Endpoint::Images),
        0
    );
}

#[tokio::test]
async fn parameter_errors_name_the_field_and_headers_are_checked() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    let answer = app
        .post(TTS, &user, &json!({"text": "x", "speed": 5.0}))
        .await;
    assert_eq!(answer.json["error"]["param"], "speed");
    assert_eq!(answer.json["error"]["code"], "invalid_parameter");

    let long_key = "k".repeat(300);
    let bad = app
        .post_raw(
            TTS,
            Some(&user.api_key),
            &[("idempotency-key", long_key.as_str())],
            json!({"text": "x"}).to_string(),
        )
        .await;
    assert_eq!(bad.status, 400);
    assert!(bad.error_message().contains("Idempotency-Key"));

    let basic = app
        .post_raw(
            TTS,
            None,
            &[("authorization", "Basic dXNlcjpwYXNz")],
            json!({"text": "x"}).to_string(),
        )
        .await;
    assert_eq!(basic.status, 401);
}

#[tokio::test]
async fn a_negative_n_is_a_parameter_error_naming_the_field_and_costs_nothing() {
    let app = TestApp::start().await;
    let user = app.user(100).await;
    // As the contract says of any count out of range (`minimum: 1`): 422 with `param`, on the
    // native route and on the OpenAI drop-in, not a malformed body.
    for path in [IMAGE, "/v1/images/generations"] {
        let answer = app
            .post(path, &user, &json!({"prompt": "x", "n": -1}))
            .await;
        assert_eq!(answer.status, 422, "{path}: {:?}", answer.json);
        assert_eq!(answer.json["error"]["code"], "invalid_parameter", "{path}");
        assert_eq!(answer.json["error"]["param"], "n", "{path}");
        let message = answer.error_message();
        assert!(
            message.contains("must be between 1 and") && message.contains("(got -1)"),
            "{path}: says the allowed range and the value: {message:?}"
        );
    }
    assert_eq!(app.balance(&user).await, 100);
    assert_eq!(app.sim_calls(Endpoint::Images), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = TestApp::start().await;
    let missing = app.get("/api/v1/nothing", None).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json["error"]["code"], "not_found");
    let method = app.get(TTS, None).await;
    assert_eq!(method.status, 405);
    assert_eq!(method.json["error"]["code"], "method_not_allowed");
    let health = app.get("/healthz", None).await;
    assert_eq!(
        (health.status, health.json["status"].as_str()),
        (200, Some("ok"))
    );
    let credits = app.get("/api/v1/credits", None).await;
    assert_eq!(credits.status, 401);
}
