//! The daily spend limit, checked inside the charge on every store.

use super::store::{charge, job, job_charge, key, pending, t0, video_key};
use chrono::{Duration, TimeZone, Utc};
use media_cache::domain::{
    Charge, DailyLimitExceeded, DailySpend, LedgerReason, Refund, api_key_digest,
};
use media_cache::ports::{ChargeError, Store};
use media_cache::service::accounts::{NewUser, create_user};
use std::sync::Arc;

/// A user with `credits` and a daily limit of `limit`.
async fn limited_user(store: &dyn Store, credits: u64, limit: u64) -> NewUser {
    let user = create_user(store, credits, t0()).await.unwrap();
    store
        .set_daily_limit(&user.user_id, Some(limit))
        .await
        .unwrap();
    user
}

/// The balance, the daily spend and the sum of the ledger of `user`.
async fn books(store: &dyn Store, user: &NewUser) -> (u64, DailySpend, i64) {
    let account = store.account(&user.user_id).await.unwrap().unwrap();
    let ledger = store.ledger(&user.user_id, 1000).await.unwrap();
    let sum = ledger.iter().map(|l| l.amount).sum();
    (account.credits_remaining, account.spend, sum)
}

fn refused(result: Result<u64, ChargeError>) -> DailyLimitExceeded {
    match result {
        Err(ChargeError::DailyLimitExceeded(e)) => e,
        other => panic!("expected the daily limit to refuse, got {other:?}"),
    }
}

pub async fn a_charge_over_the_daily_limit_is_refused_and_changes_nothing(store: Arc<dyn Store>) {
    // Given a user with 100 credits and a daily limit of 10
    let user = limited_user(store.as_ref(), 100, 10).await;
    // When they are charged 4 + 3 + 2 + 1 = 10 on one day
    let k = key(1);
    for amount in [4, 3, 2, 1] {
        store
            .charge(&charge(&user.user_id, amount, &k))
            .await
            .unwrap();
    }
    let before = books(store.as_ref(), &user).await;
    assert_eq!((before.0, before.1.spent_on(t0())), (90, 10));
    // Then the next credit is refused, saying the limit, the spend and when it resets
    let refusal = refused(store.charge(&charge(&user.user_id, 1, &k)).await);
    let midnight = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
    assert_eq!(
        (refusal.limit, refusal.spent, refusal.required),
        (10, 10, 1)
    );
    assert_eq!(refusal.resets_at, midnight);
    assert_eq!(refusal.retry_after_secs, 12 * 3600, "t0 is noon UTC");
    // And the refusal moved no credit, wrote no ledger line and counted no spend
    assert_eq!(books(store.as_ref(), &user).await, before);
    assert_eq!(before.2, 90, "ledger sum == balance");
    // Grants do not count toward the spend.
    store
        .grant(&user.user_id, 5, "req_grant_after_limit", t0())
        .await
        .unwrap();
    let (_, spend, _) = books(store.as_ref(), &user).await;
    assert_eq!(spend.spent_on(t0()), 10);
}

pub async fn the_daily_spend_starts_again_on_the_next_utc_day(store: Arc<dyn Store>) {
    let user = limited_user(store.as_ref(), 100, 10).await;
    let k = key(2);
    store.charge(&charge(&user.user_id, 10, &k)).await.unwrap();
    let late = Charge {
        at: Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 59).unwrap(),
        ..charge(&user.user_id, 1, &k)
    };
    assert_eq!(refused(store.charge(&late).await).retry_after_secs, 1);
    // The first charge of the next UTC day starts its spend at its own amount.
    let next_day = Utc.with_ymd_and_hms(2026, 11, 26, 0, 0, 0).unwrap();
    let fresh = Charge {
        at: next_day,
        ..charge(&user.user_id, 7, &k)
    };
    assert_eq!(store.charge(&fresh).await.unwrap(), 83);
    let (balance, spend, sum) = books(store.as_ref(), &user).await;
    assert_eq!((balance, sum), (83, 83));
    assert_eq!(spend.spent_on(next_day), 7);
    let over = Charge {
        at: next_day + Duration::hours(1),
        ..charge(&user.user_id, 4, &k)
    };
    assert_eq!(refused(store.charge(&over).await).spent, 7);
}

pub async fn concurrent_charges_never_pass_the_daily_limit(store: Arc<dyn Store>) {
    // 30 charges of 1 credit at once by a user with 100 credits and a limit of 10, each with the
    // balance and spend a lookup would have read before any of them: exactly 10 go through.
    // (Sized for the strict DynamoDB emulator, which cancels concurrent transactions on one
    // item and has them retried.)
    let user = limited_user(store.as_ref(), 100, 10).await;
    let k = key(3);
    let seen = DailySpend {
        limit: Some(10),
        day: None,
        spent: 0,
    };
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let store = Arc::clone(&store);
            let c = Charge {
                seen_balance: Some(100),
                seen_spend: Some(seen),
                ..charge(&user.user_id, 1, &k)
            };
            tokio::spawn(async move { store.charge(&c).await })
        })
        .collect();
    let (mut ok, mut refusals) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ChargeError::DailyLimitExceeded(e)) => {
                assert_eq!((e.limit, e.spent), (10, 10));
                refusals += 1;
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!((ok, refusals), (10, 20));
    let (balance, spend, sum) = books(store.as_ref(), &user).await;
    assert_eq!(spend.spent_on(t0()), 10);
    assert_eq!(balance, 90);
    assert_eq!(
        sum, balance as i64,
        "ledger sum == balance change from zero"
    );
}

pub async fn the_limit_is_checked_as_stored_not_as_last_read(store: Arc<dyn Store>) {
    // A read that says "no limit, nothing spent" does not let a charge past the stored limit.
    let user = limited_user(store.as_ref(), 100, 10).await;
    let k = key(4);
    store.charge(&charge(&user.user_id, 9, &k)).await.unwrap();
    let stale_open = Charge {
        seen_balance: Some(100),
        seen_spend: Some(DailySpend::default()),
        ..charge(&user.user_id, 2, &k)
    };
    assert_eq!(refused(store.charge(&stale_open).await).spent, 9);
    // A read that says "limit reached" does not refuse a charge the stored limit allows.
    store
        .set_daily_limit(&user.user_id, Some(20))
        .await
        .unwrap();
    let stale_full = Charge {
        seen_balance: Some(91),
        seen_spend: Some(DailySpend {
            limit: Some(10),
            day: Some(t0().date_naive()),
            spent: 9,
        }),
        ..charge(&user.user_id, 2, &k)
    };
    assert_eq!(store.charge(&stale_full).await.unwrap(), 89);
    // Without a limit nothing is refused, and the spend is still counted.
    store.set_daily_limit(&user.user_id, None).await.unwrap();
    store.charge(&charge(&user.user_id, 30, &k)).await.unwrap();
    let (balance, spend, sum) = books(store.as_ref(), &user).await;
    assert_eq!((balance, sum), (59, 59));
    assert_eq!((spend.limit, spend.spent_on(t0())), (None, 41));
    // A lookup that reads the profile reads the limit and spend with the balance.
    let digest = api_key_digest(&user.api_key);
    for _ in 0..2 {
        let found = store.lookup(&digest, None).await.unwrap();
        if let Some(seen) = found.spend {
            assert_eq!(seen, spend);
            assert_eq!(found.balance, Some(59));
        }
    }
    let unknown = store.set_daily_limit("usr_missing", Some(1)).await;
    assert!(
        matches!(unknown, Err(ChargeError::UnknownUser)),
        "{unknown:?}"
    );
}

pub async fn starts_and_joins_count_toward_the_daily_limit(store: Arc<dyn Store>) {
    // A miss over the limit: no job, no pending entry, no charge.
    let user = limited_user(store.as_ref(), 500, 60).await;
    let leader = job(&user.user_id, &video_key(), None, 50);
    store
        .start_job(
            &leader,
            &pending(&leader),
            false,
            &job_charge(&leader, LedgerReason::Miss),
        )
        .await
        .unwrap();
    let second = job(&user.user_id, &video_key(), None, 50);
    let result = store
        .start_job(
            &second,
            &pending(&second),
            false,
            &job_charge(&second, LedgerReason::Miss),
        )
        .await;
    match result {
        Err(ChargeError::DailyLimitExceeded(e)) => assert_eq!((e.spent, e.required), (50, 50)),
        other => panic!("expected the daily limit to refuse the start, got {other:?}"),
    }
    assert_eq!(store.job(&second.id).await.unwrap(), None);
    let entry = store
        .lookup("-", Some(&second.cache_key))
        .await
        .unwrap()
        .entry;
    assert_eq!(entry, None, "no pending entry");
    // A join over the limit: no follower job, no charge.
    let other = create_user(store.as_ref(), 500, t0()).await.unwrap();
    let theirs = job(&other.user_id, &video_key(), None, 50);
    store
        .start_job(
            &theirs,
            &pending(&theirs),
            false,
            &job_charge(&theirs, LedgerReason::Miss),
        )
        .await
        .unwrap();
    let joins: Vec<_> = (0..11)
        .map(|_| job(&user.user_id, &theirs.cache_key, Some(&theirs.id), 1))
        .collect();
    for follower in &joins[..10] {
        let joined = store
            .join_job(follower, &job_charge(follower, LedgerReason::Hit))
            .await
            .unwrap();
        assert!(joined.is_some());
    }
    let last = &joins[10];
    match store
        .join_job(last, &job_charge(last, LedgerReason::Hit))
        .await
    {
        Err(ChargeError::DailyLimitExceeded(e)) => assert_eq!((e.spent, e.limit), (60, 60)),
        other => panic!("expected the daily limit to refuse the join, got {other:?}"),
    }
    assert_eq!(store.job(&last.id).await.unwrap(), None);
    let (balance, spend, sum) = books(store.as_ref(), &user).await;
    assert_eq!((balance, sum), (440, 440));
    assert_eq!(spend.spent_on(t0()), 60);
}

pub async fn a_refund_gives_the_spend_back_on_the_day_of_its_charge_only(store: Arc<dyn Store>) {
    let user = limited_user(store.as_ref(), 100, 10).await;
    let k = key(5);
    let refund_of = |c: &Charge, at| Refund {
        user_id: c.user_id.clone(),
        amount: c.amount,
        request_id: c.request_id.clone(),
        cache_key: c.cache_key.clone(),
        charged_at: c.at,
        at,
    };
    // Refunded the same day: the credits and that charge's spend come back, once.
    let first = charge(&user.user_id, 4, &k);
    let second = charge(&user.user_id, 6, &k);
    store.charge(&first).await.unwrap();
    store.charge(&second).await.unwrap();
    let same_day = refund_of(&first, t0() + Duration::hours(1));
    assert_eq!(store.refund(&same_day).await.unwrap(), Some(94));
    assert_eq!(store.refund(&same_day).await.unwrap(), None, "once");
    let (_, spend, _) = books(store.as_ref(), &user).await;
    assert_eq!(spend.spent_on(t0()), 6, "the spend comes back once");
    assert_eq!(
        store
            .refund(&refund_of(&second, t0() + Duration::hours(2)))
            .await
            .unwrap(),
        Some(100)
    );
    let (_, spend, _) = books(store.as_ref(), &user).await;
    assert_eq!(spend.spent_on(t0()), 0);
    // Charged late one day, refunded the next: the credits only. The new day's spend stays.
    let late = Charge {
        at: Utc.with_ymd_and_hms(2026, 11, 25, 23, 59, 0).unwrap(),
        ..charge(&user.user_id, 6, &k)
    };
    store.charge(&late).await.unwrap();
    let next_day = Utc.with_ymd_and_hms(2026, 11, 26, 0, 1, 0).unwrap();
    let today = Charge {
        at: next_day,
        ..charge(&user.user_id, 8, &k)
    };
    store.charge(&today).await.unwrap();
    assert_eq!(
        store.refund(&refund_of(&late, next_day)).await.unwrap(),
        Some(92)
    );
    let (balance, spend, sum) = books(store.as_ref(), &user).await;
    assert_eq!((balance, sum), (92, 92));
    assert_eq!(
        spend.spent_on(next_day),
        8,
        "yesterday's refund is not today's"
    );
    let over = Charge {
        at: next_day,
        ..charge(&user.user_id, 3, &k)
    };
    assert_eq!(refused(store.charge(&over).await).spent, 8);
}
