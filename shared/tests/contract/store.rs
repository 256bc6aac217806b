//! The store contract.

use chrono::{DateTime, Duration, TimeZone, Utc};
use media_cache::domain::{
    CacheEntry, CacheKey, Charge, ClaimOutcome, EntryStatus, IDEMPOTENCY_LEASE, IDEMPOTENCY_TTL,
    IdempotencyClaim, Job, JobFailure, JobStatus, LedgerReason, MediaType, Refund, api_key_digest,
};
use media_cache::ports::{ChargeError, JobStart, Store, UsageScan};
use media_cache::service::accounts::{create_user, generate_request_id};
use serde_json::json;
use std::sync::Arc;

/// Writes an entry item under a key that the adapter cannot read back (a field missing or of
/// the wrong kind), behind the adapter's back.
pub type Corrupt = Box<
    dyn Fn(CacheKey) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A store and whatever keeps it alive (a temporary directory, a table).
pub struct StoreHarness {
    /// The adapter under test.
    pub store: Arc<dyn Store>,
    /// The same adapter, as the usage scan (an operator's port, outside `Store`).
    pub usage: Arc<dyn UsageScan>,
    /// Breaks an entry in the adapter's own storage.
    pub corrupt: Corrupt,
    /// Dropped after the test.
    pub _guard: Box<dyn std::any::Any + Send>,
}

pub(super) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()
}

pub(super) fn key(n: u32) -> CacheKey {
    CacheKey::of(
        MediaType::Tts,
        &json!({"n": n, "nonce": generate_request_id()}),
    )
}

pub(super) fn entry(cache_key: &CacheKey) -> CacheEntry {
    CacheEntry {
        cache_key: cache_key.clone(),
        status: EntryStatus::Ready,
        result_keys: vec!["tts/abc.mp3".into(), "tts/def.mp3".into()],
        content_type: "audio/mpeg".into(),
        provider: "openai".into(),
        model: "tts-1".into(),
        credits_used: 4,
        created_at: t0() + Duration::microseconds(123_456),
        hit_count: 0,
        expires_at: t0() + Duration::days(7),
        request_params: r#"{"model":"tts-1","text":"hi"}"#.into(),
        job_id: None,
        lease_until: None,
    }
}

pub(super) fn charge(user: &str, amount: u64, cache_key: &CacheKey) -> Charge {
    Charge {
        user_id: user.into(),
        amount,
        reason: LedgerReason::Miss,
        request_id: generate_request_id(),
        cache_key: cache_key.clone(),
        count_hit: false,
        seen_balance: None,
        seen_spend: None,
        at: t0(),
    }
}

async fn balance(store: &dyn Store, user: &str) -> u64 {
    store
        .account(user)
        .await
        .unwrap()
        .unwrap()
        .credits_remaining
}

pub async fn lookup_of_an_unknown_key_finds_nothing(store: Arc<dyn Store>) {
    let found = store
        .lookup(&api_key_digest("nope"), Some(&key(1)))
        .await
        .unwrap();
    assert!(found.user_id.is_none());
    assert!(found.entry.is_none());
}

pub async fn an_api_key_resolves_to_its_user(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 5, t0()).await.unwrap();
    let found = store
        .lookup(&api_key_digest(&user.api_key), None)
        .await
        .unwrap();
    assert_eq!(found.user_id.as_deref(), Some(user.user_id.as_str()));
    let other = store
        .lookup(&api_key_digest("mc_other"), None)
        .await
        .unwrap();
    assert!(other.user_id.is_none());
}

pub async fn a_cache_entry_round_trips(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 5, t0()).await.unwrap();
    let k = key(2);
    let e = entry(&k);
    store.put_entry(&e).await.unwrap();
    let found = store
        .lookup(&api_key_digest(&user.api_key), Some(&k))
        .await
        .unwrap();
    assert_eq!(
        found.user_id.as_deref(),
        Some(user.user_id.as_str()),
        "one read, both records"
    );
    assert_eq!(found.entry, Some(e));
}

pub async fn put_entry_replaces_the_previous_entry(store: Arc<dyn Store>) {
    let k = key(3);
    store.put_entry(&entry(&k)).await.unwrap();
    let newer = CacheEntry {
        result_keys: vec!["tts/new.mp3".into()],
        created_at: t0() + Duration::days(1),
        expires_at: t0() + Duration::days(8),
        ..entry(&k)
    };
    store.put_entry(&newer).await.unwrap();
    let found = store.lookup("-", Some(&k)).await.unwrap().entry.unwrap();
    assert_eq!(found.result_keys, vec!["tts/new.mp3".to_string()]);
    assert_eq!(found.expires_at, newer.expires_at);
}

pub async fn a_charge_moves_credits_with_its_ledger_line(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let k = key(4);
    let c = charge(&user.user_id, 4, &k);
    assert_eq!(store.charge(&c).await.unwrap(), 6);
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    assert_eq!((account.credits_remaining, account.credits_used), (6, 4));
    let ledger = store.ledger(&user.user_id, 10).await.unwrap();
    let line = ledger
        .iter()
        .find(|l| l.reason == LedgerReason::Miss)
        .unwrap();
    assert_eq!(line.amount, -4);
    assert_eq!(line.request_id, c.request_id);
    assert_eq!(line.cache_key.as_deref(), Some(k.to_string().as_str()));
    assert_eq!(ledger.iter().map(|l| l.amount).sum::<i64>(), 6);
}

pub async fn a_charge_beyond_the_balance_changes_nothing(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 3, t0()).await.unwrap();
    let result = store.charge(&charge(&user.user_id, 4, &key(5))).await;
    match result {
        Err(ChargeError::InsufficientCredits { required, .. }) => assert_eq!(required, 4),
        other => panic!("expected insufficient credits, got {other:?}"),
    }
    assert_eq!(balance(store.as_ref(), &user.user_id).await, 3);
    assert_eq!(
        store.ledger(&user.user_id, 10).await.unwrap().len(),
        1,
        "only the grant"
    );
    // Exactly the balance is fine, and leaves zero.
    assert_eq!(
        store
            .charge(&charge(&user.user_id, 3, &key(5)))
            .await
            .unwrap(),
        0
    );
}

pub async fn a_charge_to_an_unknown_user_fails(store: Arc<dyn Store>) {
    let result = store.charge(&charge("usr_missing", 1, &key(6))).await;
    assert!(
        matches!(result, Err(ChargeError::UnknownUser)),
        "{result:?}"
    );
}

pub async fn a_hit_charge_counts_the_hit(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let k = key(7);
    store.put_entry(&entry(&k)).await.unwrap();
    for _ in 0..2 {
        let hit = Charge {
            reason: LedgerReason::Hit,
            count_hit: true,
            ..charge(&user.user_id, 1, &k)
        };
        store.charge(&hit).await.unwrap();
    }
    let found = store.lookup("-", Some(&k)).await.unwrap().entry.unwrap();
    assert_eq!(found.hit_count, 2);
    assert_eq!(balance(store.as_ref(), &user.user_id).await, 8);
}

pub async fn a_refund_happens_at_most_once(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let k = key(8);
    let c = charge(&user.user_id, 4, &k);
    store.charge(&c).await.unwrap();
    let refund = Refund {
        user_id: user.user_id.clone(),
        amount: 4,
        request_id: c.request_id.clone(),
        cache_key: k.clone(),
        charged_at: c.at,
        at: t0() + Duration::seconds(1),
    };
    assert_eq!(store.refund(&refund).await.unwrap(), Some(10));
    let again = Refund {
        at: t0() + Duration::seconds(2),
        ..refund
    };
    assert_eq!(
        store.refund(&again).await.unwrap(),
        None,
        "second refund ignored"
    );
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    assert_eq!((account.credits_remaining, account.credits_used), (10, 0));
    let ledger = store.ledger(&user.user_id, 10).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Refund)
            .count(),
        1
    );
    assert_eq!(ledger.iter().map(|l| l.amount).sum::<i64>(), 10);
}

pub async fn grants_add_credits_with_a_ledger_line(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 0, t0()).await.unwrap();
    assert_eq!(store.ledger(&user.user_id, 10).await.unwrap().len(), 0);
    let balance = store
        .grant(&user.user_id, 25, &generate_request_id(), t0())
        .await
        .unwrap();
    assert_eq!(balance, 25);
    let ledger = store.ledger(&user.user_id, 10).await.unwrap();
    assert_eq!(ledger.len(), 1);
    assert_eq!(
        (ledger[0].reason, ledger[0].amount),
        (LedgerReason::Grant, 25)
    );
    let unknown = store
        .grant("usr_missing", 5, &generate_request_id(), t0())
        .await;
    assert!(
        matches!(unknown, Err(ChargeError::UnknownUser)),
        "{unknown:?}"
    );
}

pub async fn idempotency_claims_follow_their_lifecycle(store: Arc<dyn Store>) {
    let claim = IdempotencyClaim {
        user_id: "usr_idem".into(),
        key: format!("k-{}", generate_request_id()),
        fingerprint: "fp-1".into(),
        at: t0(),
    };
    assert_eq!(store.claim(&claim).await.unwrap(), ClaimOutcome::Claimed);
    assert_eq!(store.claim(&claim).await.unwrap(), ClaimOutcome::InProgress);
    let other = IdempotencyClaim {
        fingerprint: "fp-2".into(),
        ..claim.clone()
    };
    assert_eq!(store.claim(&other).await.unwrap(), ClaimOutcome::Conflict);

    // A crashed first attempt does not hold the key forever.
    let later = IdempotencyClaim {
        at: t0() + IDEMPOTENCY_LEASE + Duration::seconds(1),
        ..claim.clone()
    };
    assert_eq!(store.claim(&later).await.unwrap(), ClaimOutcome::Claimed);

    store
        .complete(&claim.user_id, &claim.key, "{\"answer\":1}", later.at)
        .await
        .unwrap();
    assert_eq!(
        store.claim(&later).await.unwrap(),
        ClaimOutcome::Replay("{\"answer\":1}".into())
    );
    store.release(&claim.user_id, &claim.key).await.unwrap();
    assert!(
        matches!(store.claim(&later).await.unwrap(), ClaimOutcome::Replay(_)),
        "release only lets go of unfinished claims"
    );
    let expired = IdempotencyClaim {
        at: later.at + IDEMPOTENCY_TTL + Duration::seconds(1),
        fingerprint: "fp-3".into(),
        ..claim.clone()
    };
    assert_eq!(
        store.claim(&expired).await.unwrap(),
        ClaimOutcome::Claimed,
        "expired records are gone"
    );

    let released = IdempotencyClaim {
        key: format!("k-{}", generate_request_id()),
        ..claim
    };
    assert_eq!(store.claim(&released).await.unwrap(), ClaimOutcome::Claimed);
    store
        .release(&released.user_id, &released.key)
        .await
        .unwrap();
    assert_eq!(
        store.claim(&released).await.unwrap(),
        ClaimOutcome::Claimed,
        "released after a failure"
    );
}

pub async fn concurrent_charges_never_overdraw(store: Arc<dyn Store>) {
    // 30 charges of a user with 25 credits, mixed with 6 of three users who can pay: stores
    // that commit concurrent charges together must still refuse each row on its own. (Kept
    // small enough for the strict DynamoDB emulator, which serves one request at a time and
    // holds each transaction: 60 + 12 ran past the 10 s conflict-retry budget on a loaded CI
    // machine; tests/api/credits.rs mixes 60 and 60 on the embedded store.)
    let user = create_user(store.as_ref(), 25, t0()).await.unwrap();
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(create_user(store.as_ref(), 100, t0()).await.unwrap());
    }
    let k = key(9);
    let tasks: Vec<_> = (0..36)
        .map(|i| {
            let store = Arc::clone(&store);
            let poor = i % 6 != 5;
            let payer = if poor {
                &user.user_id
            } else {
                &others[(i / 6) % 3].user_id
            };
            let c = charge(payer, 1, &k);
            tokio::spawn(async move { (poor, store.charge(&c).await) })
        })
        .collect();
    let (mut ok, mut refused, mut others_ok) = (0, 0, 0);
    for task in tasks {
        match task.await.unwrap() {
            (true, Ok(_)) => ok += 1,
            (true, Err(ChargeError::InsufficientCredits { .. })) => refused += 1,
            (false, Ok(_)) => others_ok += 1,
            (_, result) => panic!("unexpected {result:?}"),
        }
    }
    assert_eq!((ok, refused, others_ok), (25, 5, 6));
    assert_eq!(balance(store.as_ref(), &user.user_id).await, 0);
    let ledger = store.ledger(&user.user_id, 1000).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|l| l.reason == LedgerReason::Miss)
            .count(),
        25
    );
    assert_eq!(ledger.iter().map(|l| l.amount).sum::<i64>(), 0);
    for other in &others {
        let ledger = store.ledger(&other.user_id, 1000).await.unwrap();
        let sum: i64 = ledger.iter().map(|l| l.amount).sum();
        assert_eq!(sum, balance(store.as_ref(), &other.user_id).await as i64);
        assert_eq!(sum, 98, "100 granted, 2 charges of 1");
    }
}

pub async fn lookups_by_a_known_key_see_every_hit_and_replacement(store: Arc<dyn Store>) {
    // What a store keeps in memory for the hit path must read back as what is stored.
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let digest = api_key_digest(&user.api_key);
    let k = key(11);
    store.put_entry(&entry(&k)).await.unwrap();
    let first = store.lookup(&digest, Some(&k)).await.unwrap();
    assert_eq!(first.user_id.as_deref(), Some(user.user_id.as_str()));
    assert_eq!(first.entry.unwrap().hit_count, 0);
    for _ in 0..3 {
        let hit = Charge {
            reason: LedgerReason::Hit,
            count_hit: true,
            ..charge(&user.user_id, 1, &k)
        };
        store.charge(&hit).await.unwrap();
    }
    let again = store.lookup(&digest, Some(&k)).await.unwrap();
    assert_eq!(again.entry.unwrap().hit_count, 3);
    let newer = CacheEntry {
        result_keys: vec!["tts/newer.mp3".into()],
        ..entry(&k)
    };
    store.put_entry(&newer).await.unwrap();
    let replaced = store
        .lookup(&digest, Some(&k))
        .await
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(replaced.result_keys, newer.result_keys);
    assert_eq!(replaced.hit_count, 0);
}

pub async fn the_ledger_lists_newest_first(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let k = key(10);
    for i in 1..=3 {
        let c = Charge {
            at: t0() + Duration::minutes(i),
            ..charge(&user.user_id, i as u64, &k)
        };
        store.charge(&c).await.unwrap();
    }
    let ledger = store.ledger(&user.user_id, 2).await.unwrap();
    assert_eq!(
        ledger.iter().map(|l| l.amount).collect::<Vec<_>>(),
        vec![-3, -2]
    );
}

pub async fn charges_report_the_true_balance_even_after_a_stale_read(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let digest = api_key_digest(&user.api_key);
    let k = key(11);
    let fresh = Charge {
        seen_balance: Some(10),
        ..charge(&user.user_id, 2, &k)
    };
    assert_eq!(store.charge(&fresh).await.unwrap(), 8);
    let stale = Charge {
        seen_balance: Some(10),
        ..charge(&user.user_id, 3, &k)
    };
    assert_eq!(store.charge(&stale).await.unwrap(), 5, "not 10 - 3");
    // A lookup reports the balance when it reads it in its round trip: SQLite on a cold
    // lookup, DynamoDB once it knows whose key it is (warm). Of two lookups, at least one
    // reports it, and every one reported is the real balance.
    let mut reported = Vec::new();
    for _ in 0..2 {
        let found = store.lookup(&digest, None).await.unwrap();
        assert_eq!(found.user_id.as_deref(), Some(user.user_id.as_str()));
        reported.extend(found.balance);
    }
    assert!(!reported.is_empty(), "no lookup reported the balance");
    assert!(reported.iter().all(|b| *b == 5), "{reported:?}");
    assert_eq!(balance(store.as_ref(), &user.user_id).await, 5);
}

pub(super) fn video_key() -> CacheKey {
    CacheKey::of(MediaType::Video, &json!({"nonce": generate_request_id()}))
}

pub(super) fn job(owner: &str, cache_key: &CacheKey, leader: Option<&str>, charged: u64) -> Job {
    let id = format!("job_{}", generate_request_id());
    Job {
        id,
        owner: owner.into(),
        media_type: MediaType::Video,
        cache_key: cache_key.clone(),
        leader: leader.map(Into::into),
        request_id: generate_request_id(),
        credits_charged: charged,
        provider: "kling".into(),
        model: "kling-v2-5-turbo".into(),
        provider_task: None,
        status: JobStatus::Queued,
        attempts: 0,
        result_keys: Vec::new(),
        content_type: "video/mp4".into(),
        failure: None,
        request_params: r#"{"model":"kling-v2-5-turbo","prompt":"x"}"#.into(),
        save_entry: true,
        created_at: t0(),
        updated_at: t0(),
        deadline: t0() + Duration::minutes(30),
    }
}

pub(super) fn pending(job: &Job) -> CacheEntry {
    CacheEntry {
        cache_key: job.cache_key.clone(),
        status: EntryStatus::Pending,
        result_keys: Vec::new(),
        content_type: "video/mp4".into(),
        provider: "kling".into(),
        model: "kling-v2-5-turbo".into(),
        credits_used: job.credits_charged,
        created_at: t0(),
        hit_count: 0,
        expires_at: job.deadline,
        request_params: job.request_params.clone(),
        job_id: Some(job.id.clone()),
        lease_until: Some(job.deadline),
    }
}

pub(super) fn job_charge(job: &Job, reason: LedgerReason) -> Charge {
    Charge {
        user_id: job.owner.clone(),
        amount: job.credits_charged,
        reason,
        request_id: job.request_id.clone(),
        cache_key: job.cache_key.clone(),
        count_hit: false,
        seen_balance: None,
        seen_spend: None,
        at: t0(),
    }
}

async fn entry_of(store: &dyn Store, cache_key: &CacheKey) -> Option<CacheEntry> {
    store
        .lookup(&api_key_digest("mc_none"), Some(cache_key))
        .await
        .unwrap()
        .entry
}

pub(super) async fn start(store: &dyn Store, leader: &Job, replace_ready: bool) -> JobStart {
    store
        .start_job(
            leader,
            &pending(leader),
            replace_ready,
            &job_charge(leader, LedgerReason::Miss),
        )
        .await
        .unwrap()
}

pub async fn a_job_starts_with_its_pending_entry_and_charge(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 100, t0()).await.unwrap();
    let leader = job(&user.user_id, &video_key(), None, 50);
    assert_eq!(
        start(store.as_ref(), &leader, false).await,
        JobStart::Started { balance: 50 }
    );
    assert_eq!(store.job(&leader.id).await.unwrap(), Some(leader.clone()));
    let entry = entry_of(store.as_ref(), &leader.cache_key).await.unwrap();
    assert_eq!(entry.status, EntryStatus::Pending);
    assert_eq!(entry.joinable_job(t0()), Some(leader.id.as_str()));
    // The grant and the charge share a timestamp: find the charge by its request.
    let ledger = store.ledger(&user.user_id, 10).await.unwrap();
    let line = ledger
        .iter()
        .find(|l| l.request_id == leader.request_id)
        .expect("the charge's ledger line");
    assert_eq!((line.amount, line.reason), (-50, LedgerReason::Miss));
}

pub async fn a_live_entry_blocks_a_second_start(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 500, t0()).await.unwrap();
    let k = video_key();
    let first = job(&user.user_id, &k, None, 50);
    start(store.as_ref(), &first, false).await;
    let second = job(&user.user_id, &k, None, 50);
    match start(store.as_ref(), &second, true).await {
        JobStart::EntryTaken(entry) => assert_eq!(entry.job_id.as_deref(), Some(first.id.as_str())),
        other => panic!("a pending entry blocks even no-cache: {other:?}"),
    }
    assert_eq!(
        store.job(&second.id).await.unwrap(),
        None,
        "nothing written"
    );
    assert_eq!(
        balance(store.as_ref(), &user.user_id).await,
        450,
        "nor charged"
    );

    // A ready entry blocks a plain start, not a no-cache one.
    let ready = CacheEntry {
        result_keys: vec!["video/a.mp4".into()],
        status: EntryStatus::Ready,
        expires_at: t0() + Duration::days(7),
        job_id: None,
        lease_until: None,
        ..pending(&first)
    };
    let k2 = video_key();
    store
        .put_entry(&CacheEntry {
            cache_key: k2.clone(),
            ..ready
        })
        .await
        .unwrap();
    let third = job(&user.user_id, &k2, None, 50);
    assert!(matches!(
        start(store.as_ref(), &third, false).await,
        JobStart::EntryTaken(_)
    ));
    assert!(matches!(
        start(store.as_ref(), &third, true).await,
        JobStart::Started { .. }
    ));

    // A pending entry whose lease ran out is taken over.
    let k3 = video_key();
    let stale = Job {
        deadline: t0() - Duration::seconds(1),
        ..job(&user.user_id, &k3, None, 50)
    };
    start(store.as_ref(), &stale, false).await;
    let fresh = job(&user.user_id, &k3, None, 50);
    assert!(matches!(
        start(store.as_ref(), &fresh, false).await,
        JobStart::Started { .. }
    ));
}

pub async fn a_start_without_credits_writes_nothing(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 10, t0()).await.unwrap();
    let leader = job(&user.user_id, &video_key(), None, 50);
    let result = store
        .start_job(
            &leader,
            &pending(&leader),
            false,
            &job_charge(&leader, LedgerReason::Miss),
        )
        .await;
    assert!(
        matches!(
            result,
            Err(ChargeError::InsufficientCredits {
                available: 10,
                required: 50
            })
        ),
        "{result:?}"
    );
    assert_eq!(store.job(&leader.id).await.unwrap(), None);
    assert_eq!(entry_of(store.as_ref(), &leader.cache_key).await, None);
}

pub async fn followers_join_only_while_the_entry_is_pending_on_their_leader(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 100, t0()).await.unwrap();
    let other = create_user(store.as_ref(), 100, t0()).await.unwrap();
    let k = video_key();
    let leader = job(&user.user_id, &k, None, 50);
    start(store.as_ref(), &leader, false).await;
    let follower = job(&other.user_id, &k, Some(&leader.id), 1);
    let joined = store
        .join_job(&follower, &job_charge(&follower, LedgerReason::Hit))
        .await
        .unwrap();
    assert_eq!(joined, Some(99));
    let wrong = job(&other.user_id, &k, Some("job_someone_else"), 1);
    assert_eq!(
        store
            .join_job(&wrong, &job_charge(&wrong, LedgerReason::Hit))
            .await
            .unwrap(),
        None,
        "another leader's entry"
    );
    assert_eq!(
        store.followers(&leader.id).await.unwrap(),
        vec![follower.clone()]
    );

    let done = Job {
        status: JobStatus::Completed,
        result_keys: vec!["video/r.mp4".into()],
        ..leader.clone()
    };
    let ready = CacheEntry {
        status: EntryStatus::Ready,
        result_keys: done.result_keys.clone(),
        expires_at: t0() + Duration::days(7),
        job_id: None,
        lease_until: None,
        ..pending(&leader)
    };
    assert!(store.finish_job(&done, Some(&ready)).await.unwrap());
    let late = job(&other.user_id, &k, Some(&leader.id), 1);
    assert_eq!(
        store
            .join_job(&late, &job_charge(&late, LedgerReason::Hit))
            .await
            .unwrap(),
        None,
        "too late: the entry is ready"
    );
    assert_eq!(
        balance(store.as_ref(), &other.user_id).await,
        99,
        "charged once"
    );
    assert_eq!(store.followers(&leader.id).await.unwrap().len(), 1);
    assert_eq!(entry_of(store.as_ref(), &k).await, Some(ready));
}

pub async fn a_finished_job_never_changes_again(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 100, t0()).await.unwrap();
    let leader = job(&user.user_id, &video_key(), None, 50);
    start(store.as_ref(), &leader, false).await;
    let running = Job {
        status: JobStatus::Processing,
        provider_task: Some("text2video/t1".into()),
        attempts: 1,
        ..leader.clone()
    };
    assert!(store.update_job(&running).await.unwrap());
    let failed = Job {
        status: JobStatus::Failed,
        failure: Some(JobFailure::new("timed_out", "too slow")),
        ..running.clone()
    };
    assert!(store.finish_job(&failed, None).await.unwrap());
    assert!(!store.finish_job(&failed, None).await.unwrap(), "once");
    assert!(!store.update_job(&running).await.unwrap(), "terminal stays");
    assert_eq!(store.job(&leader.id).await.unwrap(), Some(failed));
}

pub async fn a_failed_job_deletes_only_its_own_pending_entry(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 200, t0()).await.unwrap();
    let k = video_key();
    let leader = job(&user.user_id, &k, None, 50);
    start(store.as_ref(), &leader, false).await;
    let failed = Job {
        status: JobStatus::Failed,
        ..leader.clone()
    };
    assert!(store.finish_job(&failed, None).await.unwrap());
    assert_eq!(
        entry_of(store.as_ref(), &k).await,
        None,
        "the next request may start"
    );

    // A job whose entry was taken over leaves the new owner's entry alone.
    let stale = Job {
        deadline: t0() - Duration::seconds(1),
        ..job(&user.user_id, &k, None, 50)
    };
    start(store.as_ref(), &stale, false).await;
    let fresh = job(&user.user_id, &k, None, 50);
    start(store.as_ref(), &fresh, false).await;
    let stale_failed = Job {
        status: JobStatus::Failed,
        ..stale
    };
    assert!(store.finish_job(&stale_failed, None).await.unwrap());
    let entry = entry_of(store.as_ref(), &k).await.unwrap();
    assert_eq!(entry.job_id.as_deref(), Some(fresh.id.as_str()));
}

pub async fn an_unreadable_entry_is_a_miss_that_a_start_overwrites(harness: StoreHarness) {
    let store = harness.store.as_ref();
    let user = create_user(store, 100, t0()).await.unwrap();
    let k = video_key();
    (harness.corrupt)(k.clone()).await;
    assert_eq!(
        entry_of(store, &k).await,
        None,
        "unreadable reads as missing"
    );
    let leader = job(&user.user_id, &k, None, 50);
    assert_eq!(
        start(store, &leader, false).await,
        JobStart::Started { balance: 50 }
    );
    let entry = entry_of(store, &k).await.expect("overwritten");
    assert_eq!(entry.joinable_job(t0()), Some(leader.id.as_str()));
}

pub async fn a_no_cache_start_leaves_the_ready_entry_until_its_result_replaces_it(
    harness: StoreHarness,
) {
    let store = harness.store.as_ref();
    let user = create_user(store, 500, t0()).await.unwrap();
    let k = video_key();
    let first = job(&user.user_id, &k, None, 50);
    let ready = CacheEntry {
        result_keys: vec!["video/first.mp4".into()],
        status: EntryStatus::Ready,
        expires_at: t0() + Duration::days(7),
        job_id: None,
        lease_until: None,
        ..pending(&first)
    };
    store.put_entry(&ready).await.unwrap();

    // A bypass that fails (or saves nothing) leaves the entry everyone is served from.
    let failing = job(&user.user_id, &k, None, 50);
    assert!(matches!(
        start(store, &failing, true).await,
        JobStart::Started { .. }
    ));
    assert_eq!(
        entry_of(store, &k).await,
        Some(ready.clone()),
        "still served"
    );
    let failed = Job {
        status: JobStatus::Failed,
        ..failing
    };
    assert!(store.finish_job(&failed, None).await.unwrap());
    assert_eq!(
        entry_of(store, &k).await,
        Some(ready.clone()),
        "not deleted"
    );

    // One that succeeds replaces it with its own result.
    let fresh = job(&user.user_id, &k, None, 50);
    start(store, &fresh, true).await;
    let done = Job {
        status: JobStatus::Completed,
        result_keys: vec!["video/fresh.mp4".into()],
        ..fresh.clone()
    };
    let replacement = CacheEntry {
        result_keys: done.result_keys.clone(),
        ..ready.clone()
    };
    assert!(store.finish_job(&done, Some(&replacement)).await.unwrap());
    assert_eq!(entry_of(store, &k).await, Some(replacement));
    assert_eq!(balance(store, &user.user_id).await, 400, "both charged");
}

pub async fn a_result_never_replaces_another_jobs_live_claim(harness: StoreHarness) {
    let store = harness.store.as_ref();
    let user = create_user(store, 500, t0()).await.unwrap();
    let k = video_key();
    // A job whose claim ran out, and the job that took the entry over.
    let stale = Job {
        deadline: t0() - Duration::seconds(1),
        ..job(&user.user_id, &k, None, 50)
    };
    start(store, &stale, false).await;
    let current = job(&user.user_id, &k, None, 50);
    start(store, &current, false).await;
    let late = Job {
        status: JobStatus::Completed,
        result_keys: vec!["video/late.mp4".into()],
        ..stale.clone()
    };
    let ready = CacheEntry {
        result_keys: late.result_keys.clone(),
        status: EntryStatus::Ready,
        expires_at: t0() + Duration::days(7),
        job_id: None,
        lease_until: None,
        ..pending(&stale)
    };
    assert!(
        store.finish_job(&late, Some(&ready)).await.unwrap(),
        "the job finishes"
    );
    let entry = entry_of(store, &k).await.unwrap();
    assert_eq!(
        entry.joinable_job(t0()),
        Some(current.id.as_str()),
        "the live claim stays"
    );
}

pub async fn one_of_two_concurrent_claims_takes_an_attempt(store: Arc<dyn Store>) {
    let user = create_user(store.as_ref(), 100, t0()).await.unwrap();
    let leader = job(&user.user_id, &video_key(), None, 50);
    start(store.as_ref(), &leader, false).await;
    let attempt = Job {
        attempts: leader.attempts + 1,
        status: JobStatus::Processing,
        updated_at: t0() + Duration::minutes(1),
        ..leader.clone()
    };
    // Attempts begun before this are over; `attempt` begins after it.
    let long_ago = t0();
    let (a, b) = tokio::join!(
        store.claim_attempt(&attempt, long_ago),
        store.claim_attempt(&attempt, long_ago)
    );
    assert_eq!(
        [a.unwrap(), b.unwrap()].iter().filter(|t| **t).count(),
        1,
        "one delivery takes it"
    );
    assert!(
        !store.claim_attempt(&attempt, long_ago).await.unwrap(),
        "taken already"
    );
    let next = Job {
        attempts: attempt.attempts + 1,
        updated_at: attempt.updated_at + Duration::minutes(1),
        ..attempt.clone()
    };
    assert!(
        !store.claim_attempt(&next, long_ago).await.unwrap(),
        "not while the attempt before may still be running"
    );
    assert!(
        store
            .claim_attempt(&next, attempt.updated_at)
            .await
            .unwrap(),
        "the next attempt, once the one before is over"
    );
    let late_release = Job {
        status: JobStatus::Queued,
        ..attempt.clone()
    };
    assert!(
        !store.update_job(&late_release).await.unwrap(),
        "the attempt before, ending late, never takes the job back from the running one"
    );
    assert_eq!(
        store.job(&next.id).await.unwrap().unwrap().attempts,
        next.attempts
    );
    // An attempt that let go of the job (queued again) may be followed at once.
    let let_go = Job {
        status: JobStatus::Queued,
        ..next.clone()
    };
    assert!(store.update_job(&let_go).await.unwrap());
    let third = Job {
        attempts: next.attempts + 1,
        updated_at: next.updated_at + Duration::seconds(1),
        ..next.clone()
    };
    assert!(
        store.claim_attempt(&third, long_ago).await.unwrap(),
        "right after an attempt let go"
    );
    let failed = Job {
        status: JobStatus::Failed,
        ..third.clone()
    };
    assert!(store.finish_job(&failed, None).await.unwrap());
    let after = Job {
        attempts: third.attempts + 1,
        updated_at: third.updated_at + Duration::days(1),
        ..third
    };
    assert!(
        !store.claim_attempt(&after, third.updated_at).await.unwrap(),
        "never once finished"
    );
}
