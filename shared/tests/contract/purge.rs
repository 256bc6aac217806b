//! The purge and admin-key contract: what an operator's purge deletes, and who may ask.

use super::store::{entry, key, t0};
use chrono::Duration;
use media_cache::domain::{CacheKey, EntryStatus, MediaType, api_key_digest};
use media_cache::ports::{PurgeFilter, Store};
use media_cache::service::accounts::{create_user, generate_request_id};
use serde_json::json;
use std::sync::Arc;

/// Whether a READY or pending entry is stored under `k`.
async fn stored(store: &dyn Store, k: &CacheKey) -> bool {
    store.lookup("-", Some(k)).await.unwrap().entry.is_some()
}

pub async fn a_purge_deletes_a_ready_entry_and_leaves_a_pending_one(store: Arc<dyn Store>) {
    let ready = key(1);
    store.put_entry(&entry(&ready)).await.unwrap();
    assert!(stored(store.as_ref(), &ready).await);
    assert!(store.purge_entry(&ready).await.unwrap(), "it was there");
    assert!(
        !stored(store.as_ref(), &ready).await,
        "a purged entry is a miss"
    );
    assert!(!store.purge_entry(&ready).await.unwrap(), "nothing left");

    let pending = key(2);
    store
        .put_entry(&media_cache::domain::CacheEntry {
            status: EntryStatus::Pending,
            result_keys: Vec::new(),
            job_id: Some("job_in_flight".into()),
            lease_until: Some(t0() + Duration::minutes(30)),
            ..entry(&pending)
        })
        .await
        .unwrap();
    assert!(!store.purge_entry(&pending).await.unwrap());
    assert!(
        stored(store.as_ref(), &pending).await,
        "a job in flight keeps its entry"
    );
}

pub async fn a_filtered_purge_deletes_only_what_every_condition_matches(store: Arc<dyn Store>) {
    // Private to an account of this test alone: other tests' entries never match the filters.
    let owner = format!("usr_{}", generate_request_id());
    let private = |media_type: MediaType| {
        CacheKey::of(media_type, &json!({"nonce": generate_request_id()})).private_to(&owner)
    };
    let old = t0() - Duration::days(2);
    let (old_tts, new_tts, old_image) = (
        private(MediaType::Tts),
        private(MediaType::Tts),
        private(MediaType::Image),
    );
    let shared_old_tts = key(3);
    for (k, created_at) in [
        (&old_tts, old),
        (&new_tts, t0()),
        (&old_image, old),
        (&shared_old_tts, old),
    ] {
        store
            .put_entry(&media_cache::domain::CacheEntry {
                created_at,
                ..entry(k)
            })
            .await
            .unwrap();
    }

    let old_tts_of_owner = PurgeFilter {
        media_type: Some(MediaType::Tts),
        created_before: Some(t0() - Duration::days(1)),
        owner: Some(owner.clone()),
    };
    assert_eq!(store.purge_entries(&old_tts_of_owner).await.unwrap(), 1);
    assert!(!stored(store.as_ref(), &old_tts).await);
    for kept in [&new_tts, &old_image, &shared_old_tts] {
        assert!(stored(store.as_ref(), kept).await, "{kept} is kept");
    }

    let everything_of_owner = PurgeFilter {
        owner: Some(owner),
        ..PurgeFilter::default()
    };
    assert_eq!(store.purge_entries(&everything_of_owner).await.unwrap(), 2);
    assert!(!stored(store.as_ref(), &new_tts).await);
    assert!(!stored(store.as_ref(), &old_image).await);
    assert!(
        stored(store.as_ref(), &shared_old_tts).await,
        "shared entries are nobody's private ones"
    );
}

pub async fn admin_keys_are_marked_one_by_one(store: Arc<dyn Store>) {
    let admin = create_user(store.as_ref(), 5, t0()).await.unwrap();
    let other = create_user(store.as_ref(), 5, t0()).await.unwrap();
    let digest = api_key_digest(&admin.api_key);
    assert!(!store.is_admin(&digest).await.unwrap());
    store.make_admin(&digest).await.unwrap();
    assert!(store.is_admin(&digest).await.unwrap());
    assert!(
        !store
            .is_admin(&api_key_digest(&other.api_key))
            .await
            .unwrap()
    );
    let unknown = api_key_digest("mc_no_such_key_anywhere");
    assert!(store.make_admin(&unknown).await.is_err(), "only a real key");
    assert!(!store.is_admin(&unknown).await.unwrap());
}
