//! A Lambda function's metrics as CloudWatch embedded-metric-format documents: a speech miss and
//! hit through the tts function's application on the emulator, then the documents the runtime
//! layer writes after an invocation (the same `flush`), parsed and checked against the EMF
//! specification's structure and the request's figures.

#[path = "../aws/support.rs"]
#[allow(dead_code)] // the helpers other AWS tests use
mod support;

use media_cache::lambda::Function;
use media_cache::service::accounts::create_user;
use serde_json::{Value, json};

/// The documents of one flush, one JSON object per line.
fn documents(collector: &metrics_cloudwatch_embedded::Collector) -> Vec<Value> {
    let mut out = Vec::new();
    collector.flush(&mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is one JSON document"))
        .collect()
}

/// Checks a document's `_aws` block (the EMF specification's required members) and returns its
/// dimension names and metric names with units.
fn metadata(doc: &Value) -> (Vec<String>, Vec<(String, String)>) {
    let aws = &doc["_aws"];
    assert!(
        aws["Timestamp"].as_u64().unwrap() > 1_700_000_000_000,
        "{doc}"
    );
    let directives = aws["CloudWatchMetrics"].as_array().unwrap();
    assert_eq!(directives.len(), 1, "{doc}");
    let directive = &directives[0];
    assert_eq!(directive["Namespace"], "MediaCache");
    let sets = directive["Dimensions"].as_array().unwrap();
    assert_eq!(sets.len(), 1);
    let dimensions: Vec<String> = sets[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_owned())
        .collect();
    // Every dimension and metric named in the directive is a member of the document.
    for d in &dimensions {
        assert!(doc[d].is_string(), "dimension {d} missing in {doc}");
    }
    let metrics: Vec<(String, String)> = directive["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["Name"].as_str().unwrap().to_owned();
            assert!(
                doc[&name].is_number() || doc[&name].is_array(),
                "metric {name} has no value in {doc}"
            );
            (name, m["Unit"].as_str().unwrap_or("None").to_owned())
        })
        .collect();
    (dimensions, metrics)
}

/// The document whose dimension members match `members`.
fn find<'a>(docs: &'a [Value], members: &[(&str, &str)]) -> &'a Value {
    docs.iter()
        .find(|d| members.iter().all(|(k, v)| d[*k] == *v))
        .unwrap_or_else(|| panic!("no document with {members:?} in {docs:#?}"))
}

#[tokio::test]
async fn a_hit_and_a_miss_write_valid_embedded_metric_documents() {
    let collector = media_cache::lambda::metrics_recorder("tts").unwrap();
    let sim = support::simulator().await;
    let base = support::serve_function(&sim, Function::Tts).await;
    let sdk = support::sdk().await;
    let store = media_cache::adapters::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        support::env("MEDIA_TEST_TABLE"),
        "s3://unused/",
    );
    let user = create_user(&store, 100, chrono::Utc::now()).await.unwrap();
    // Unique per run: a re-run on the same emulator must miss first.
    let text = format!("embedded metrics {}", uuid_like());
    let send = || {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/media/tts"))
            .bearer_auth(&user.api_key)
            .json(&json!({"text": text}))
            .send()
    };

    let miss = send().await.unwrap();
    assert_eq!(miss.headers()["x-cache"], "MISS");
    let price: u64 = miss.headers()["x-credits-charged"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let docs = documents(collector);
    let requests = find(&docs, &[("media_type", "tts"), ("outcome", "miss")]);
    let (dimensions, metrics) = metadata(requests);
    assert_eq!(dimensions, ["function", "media_type", "outcome"]);
    assert_eq!(requests["function"], "tts");
    assert!(metrics.contains(&("mediacache_requests_total".into(), "Count".into())));
    assert_eq!(requests["mediacache_requests_total"], 1);
    let credits = docs
        .iter()
        .find(|d| d["media_type"] == "tts" && d["outcome"].is_null())
        .expect("a credits document");
    let (dimensions, _) = metadata(credits);
    assert_eq!(dimensions, ["function", "media_type"]);
    assert_eq!(credits["mediacache_credits_charged_total"], price);
    let provider = find(&docs, &[("provider", "openai"), ("result", "ok")]);
    let (dimensions, _) = metadata(provider);
    assert_eq!(dimensions, ["function", "provider", "result"]);
    assert_eq!(provider["mediacache_provider_calls_total"], 1);
    let latency = docs
        .iter()
        .find(|d| d["provider"] == "openai" && d["result"].is_null())
        .expect("a latency document");
    let (_, metrics) = metadata(latency);
    assert!(metrics.contains(&(
        "mediacache_provider_latency_seconds".into(),
        "Seconds".into()
    )));

    let hit = send().await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    let docs = documents(collector);
    let requests = find(&docs, &[("media_type", "tts"), ("outcome", "hit")]);
    metadata(requests);
    assert_eq!(requests["mediacache_requests_total"], 1);
    assert!(
        docs.iter().all(|d| d["outcome"] != "miss"),
        "a flush starts the next invocation's counts from zero: {docs:#?}"
    );
    let credits = docs
        .iter()
        .find(|d| d["media_type"] == "tts" && d["outcome"].is_null())
        .expect("a credits document");
    metadata(credits);
    assert_eq!(credits["mediacache_credits_charged_total"], 1);
    assert_eq!(credits["mediacache_credits_saved_total"], price - 1);
}

/// A value unique to this run.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}
