//! The `mediactl` admin commands as a user runs them: on a data directory, and with `--table` on
//! the DynamoDB emulator that `scripts/test.sh` starts.

use std::process::Command;

fn mediactl(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mediactl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn field<'a>(output: &'a str, name: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {output}"))
}

/// `GET /api/v1/credits` with `api_key`, answered by the jobs function's application (the
/// function that serves it on AWS) over the store at `location` (`--data-dir DIR` or
/// `--table NAME`): the status and the body.
fn credits_request(location: &[&str], api_key: &str) -> (u16, serde_json::Value) {
    use media_cache::lambda::{Function, LambdaConfig, app};
    let vars: Vec<(&str, String)> = match location {
        ["--data-dir", dir] => vec![
            ("MEDIA_STORE", "embedded".into()),
            ("MEDIA_DATA_DIR", dir.to_string()),
        ],
        ["--table", table] => vec![
            ("TABLE_NAME", table.to_string()),
            (
                "BUCKET_NAME",
                std::env::var("MEDIA_TEST_BUCKET").expect("MEDIA_TEST_BUCKET is not set"),
            ),
            // The function needs a queue and a callback secret to start; a statement uses
            // neither (nothing is sent to this queue).
            (
                "JOBS_QUEUE_URL",
                "http://127.0.0.1:9/000000000000/unused".into(),
            ),
            ("CALLBACK_SECRET", "cli-test".into()),
        ],
        other => panic!("no store at {other:?}"),
    };
    let config = LambdaConfig::from_vars(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let sdk = match location[0] {
            "--table" => media_cache::lambda::sdk_config().await,
            _ => aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .build(),
        };
        let router = app(&config, &sdk, Function::Jobs).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        let response = reqwest::Client::new()
            .get(format!("{base}/api/v1/credits"))
            .bearer_auth(api_key)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    })
}

/// Creates a user, grants credits, adds a key, uses it for a request and shows the statement
/// through `location`.
fn round_trip(location: &[&str]) {
    let args = |rest: &[&str]| -> Vec<String> {
        location.iter().chain(rest).map(|a| a.to_string()).collect()
    };
    let created = mediactl(&args(&["users", "create", "--credits", "7"]));
    let user = field(&created, "user_id").to_owned();
    let first_key = field(&created, "api_key").to_owned();
    assert!(first_key.starts_with("mc_"));
    let granted = mediactl(&args(&["credits", "grant", &user, "5"]));
    assert!(granted.contains("balance 12"), "{granted}");
    let key = mediactl(&args(&["users", "add-key", &user]));
    let added = field(&key, "api_key").to_owned();
    assert!(added.starts_with("mc_"));
    assert_ne!(added, first_key);
    // The new key is the user's: a request made with it answers with the user's statement,
    // and the first key still works.
    for api_key in [&added, &first_key] {
        let (status, statement) = credits_request(location, api_key);
        assert_eq!(status, 200, "{statement}");
        assert_eq!(statement["user_id"], user.as_str(), "{statement}");
        assert_eq!(statement["credits_remaining"], 12, "{statement}");
    }
    let (status, _) = credits_request(location, "mc_a_key_nobody_was_given");
    assert_eq!(status, 401);
    let shown = mediactl(&args(&["credits", "show", &user]));
    assert!(shown.contains("12 credits remaining"), "{shown}");
    assert_eq!(shown.matches("grant").count(), 2, "{shown}");
}

#[test]
fn admin_commands_work_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    round_trip(&["--data-dir", dir.path().to_str().unwrap()]);
}

#[test]
fn admin_commands_work_on_a_dynamodb_table() {
    let table = std::env::var("MEDIA_TEST_TABLE").expect(
        "MEDIA_TEST_TABLE is not set: run ./scripts/test.sh, which starts the AWS emulator",
    );
    round_trip(&["--table", &table]);
}

/// Sets a user's daily limit, reads it back through `credits show`, and removes it.
fn limit_round_trip(location: &[&str]) {
    let args = |rest: &[&str]| -> Vec<String> {
        location.iter().chain(rest).map(|a| a.to_string()).collect()
    };
    let created = mediactl(&args(&["users", "create", "--credits", "7"]));
    let user = field(&created, "user_id").to_owned();
    let shown = mediactl(&args(&["credits", "show", &user]));
    assert!(shown.contains("daily limit: none"), "{shown}");
    let set = mediactl(&args(&["users", "limit", &user, "--daily", "25"]));
    assert!(set.contains("25 credits per UTC day"), "{set}");
    let shown = mediactl(&args(&["credits", "show", &user]));
    assert!(
        shown.contains("daily limit: 25 credits per UTC day, 0 spent today"),
        "{shown}"
    );
    mediactl(&args(&["users", "limit", &user, "--none"]));
    let shown = mediactl(&args(&["credits", "show", &user]));
    assert!(shown.contains("daily limit: none"), "{shown}");
}

#[test]
fn daily_limits_are_set_and_removed_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let location = ["--data-dir", dir.path().to_str().unwrap()];
    limit_round_trip(&location);
    // A limit needs a number or --none, for a user that exists.
    for (rest, says) in [
        (
            vec!["users", "limit", "usr_nobody", "--daily", "5"],
            "usr_nobody: unknown user",
        ),
        (vec!["users", "limit", "usr_nobody"], "--daily"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mediactl"))
            .args(location.iter().chain(&rest))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

#[test]
fn daily_limits_are_set_and_removed_on_a_dynamodb_table() {
    let table = std::env::var("MEDIA_TEST_TABLE").expect(
        "MEDIA_TEST_TABLE is not set: run ./scripts/test.sh, which starts the AWS emulator",
    );
    limit_round_trip(&["--table", &table]);
}

#[test]
fn mistakes_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "credits",
            "grant",
            "usr_nobody",
            "5",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usr_nobody: unknown user"), "{err}");
    let short = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "users",
            "create",
            "--api-key",
            "short",
        ])
        .output()
        .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("at least 16"));
}

#[test]
fn stats_on_a_table_say_what_the_scan_reads_and_costs() {
    let table = std::env::var("MEDIA_TEST_TABLE").expect(
        "MEDIA_TEST_TABLE is not set: run ./scripts/test.sh, which starts the AWS emulator",
    );
    // At least one item to read, whatever ran before.
    mediactl(&[
        "--table".into(),
        table.clone(),
        "users".into(),
        "create".into(),
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_mediactl"))
        .args(["--table", &table, "stats", "--json", "--since", "24h"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("scanning {table}: about")) && err.contains("read units"),
        "the estimate comes first: {err}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], format!("dynamodb:{table}"));
    assert!(report["since"].is_string());
    let read = &report["read"];
    assert!(read["items"].as_u64().unwrap() >= 1, "{read}");
    assert!(read["pages"].as_u64().unwrap() >= 1, "{read}");
    assert!(read["capacity_units"].as_f64().unwrap() > 0.0, "{read}");
    assert_eq!(report["media_types"].as_array().unwrap().len(), 4);
}

#[test]
fn stats_refuse_a_missing_store_and_a_bad_since() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mediactl"))
            .args(["--data-dir", dir.path().to_str().unwrap(), "stats"])
            .args(args)
            .output()
            .unwrap()
    };
    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no store at"));
    assert!(
        !dir.path().join("media.db").exists(),
        "a report creates nothing"
    );
    let bad = run(&["--since", "last tuesday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since `last tuesday`"));
}

#[tokio::test]
async fn cache_purge_deletes_what_it_is_told_and_refuses_to_guess() {
    use media_cache::adapters::sqlite::SqliteStore;
    use media_cache::domain::{CacheEntry, CacheKey, EntryStatus, MediaType};
    use media_cache::ports::{CacheStore, LookupStore};

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    let ready = |text: &str, age_hours: i64| CacheEntry {
        cache_key: CacheKey::of(MediaType::Tts, &serde_json::json!({ "text": text })),
        status: EntryStatus::Ready,
        result_keys: vec!["tts/a.mp3".into()],
        content_type: "audio/mpeg".into(),
        provider: "openai".into(),
        model: "tts-1".into(),
        credits_used: 2,
        created_at: now - chrono::Duration::hours(age_hours),
        hit_count: 0,
        expires_at: now + chrono::Duration::days(7),
        request_params: "{}".into(),
        job_id: None,
        lease_until: None,
    };
    let (old, young) = (ready("old", 30), ready("young", 1));
    {
        let store = SqliteStore::open(&dir.path().join("media.db")).unwrap();
        store.put_entry(&old).await.unwrap();
        store.put_entry(&young).await.unwrap();
    }
    let purge = |args: &[&str]| {
        let mut all = vec!["--data-dir".to_string(), data_dir.clone()];
        all.extend(["cache", "purge"].iter().chain(args).map(|a| a.to_string()));
        Command::new(env!("CARGO_BIN_EXE_mediactl"))
            .args(all)
            .output()
            .unwrap()
    };
    let nothing = purge(&[]);
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("say what to purge"));

    let by_age = purge(&["--media-type", "tts", "--older-than", "24h"]);
    assert!(by_age.status.success(), "{by_age:?}");
    assert_eq!(
        String::from_utf8_lossy(&by_age.stdout).trim(),
        "purged 1 cached results"
    );
    let by_key = purge(&["--key", &young.cache_key.to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&by_key.stdout).trim(),
        "purged 1 cached results"
    );
    let store = SqliteStore::open(&dir.path().join("media.db")).unwrap();
    for gone in [&old, &young] {
        let found = store.lookup("-", Some(&gone.cache_key)).await.unwrap();
        assert!(found.entry.is_none(), "{} purged", gone.cache_key);
    }

    let admin = mediactl(&[
        "--data-dir".into(),
        data_dir.clone(),
        "users".into(),
        "create".into(),
        "--admin".into(),
    ]);
    assert_eq!(field(&admin, "admin"), "true");
    let digest = media_cache::domain::api_key_digest(field(&admin, "api_key"));
    use media_cache::ports::AdminKeys;
    assert!(store.is_admin(&digest).await.unwrap());
}
