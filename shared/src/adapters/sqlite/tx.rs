use super::schema::{SPEND_COLUMNS, spend_from_row};
use super::{db_err, iso};
use crate::domain::budget::format_day;
use crate::domain::{Charge, DailySpend, LedgerReason, Refund};
use crate::ports::{ChargeError, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;

pub(super) fn insert_ledger(
    tx: &rusqlite::Connection,
    user_id: &str,
    at: DateTime<Utc>,
    request_id: &str,
    amount: i64,
    reason: LedgerReason,
    cache_key: Option<&str>,
) -> rusqlite::Result<usize> {
    if tx.is_autocommit() {
        // See `debit`: a ledger line must never commit alone.
        return Err(rusqlite::Error::InvalidQuery);
    }
    let at = iso(at);
    let sk = format!("LEDGER#{at}#{request_id}#{}", reason.as_str());
    tx.prepare_cached(
        "INSERT OR IGNORE INTO ledger (user_id, sk, at, request_id, amount, reason, cache_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        user_id,
        sk,
        at,
        request_id,
        amount,
        reason.as_str(),
        cache_key
    ])
}

/// An amount as SQLite stores it; one past `i64::MAX` is refused (cast, it would credit).
fn signed(amount: u64) -> Result<i64, StoreError> {
    i64::try_from(amount).map_err(|_| StoreError(format!("amount {amount} out of range")))
}

/// Debits `amount` unless it takes the balance below zero; returns the new balance and the
/// user's daily spend (not changed by the debit).
fn debit(
    tx: &rusqlite::Connection,
    user_id: &str,
    amount: u64,
) -> Result<(u64, DailySpend), ChargeError> {
    if tx.is_autocommit() {
        // The transaction was ended under us (SQLite rolls back on some errors): a debit here
        // would commit alone, without its ledger line.
        return Err(StoreError("the write transaction was lost".into()).into());
    }
    let amount = signed(amount)?;
    let updated: Option<(i64, DailySpend)> = tx
        .prepare_cached(&format!(
            "UPDATE users SET credits_remaining = credits_remaining - ?2,
                              credits_used = credits_used + ?2
             WHERE id = ?1 AND credits_remaining >= ?2
             RETURNING credits_remaining, {SPEND_COLUMNS}"
        ))
        .and_then(|mut stmt| {
            stmt.query_row(params![user_id, amount], |r| {
                Ok((r.get(0)?, spend_from_row(r, 1)?))
            })
        })
        .optional()
        .map_err(db_err)?;
    if let Some((balance, spend)) = updated {
        return Ok((balance as u64, spend));
    }
    let balance: Option<i64> = tx
        .query_row(
            "SELECT credits_remaining FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    match balance {
        None => Err(ChargeError::UnknownUser),
        Some(available) => Err(ChargeError::InsufficientCredits {
            available: available as u64,
            required: amount as u64,
        }),
    }
}

/// The daily limit, the one check of every charge on this store (hits, misses and joins all go
/// through `charge_in`): counts `c` in the day's spend of `before` (the user's row as the debit
/// saw it, in the same write), or refuses it. A refusal is an error of the charge's write, so
/// its savepoint is rolled back with the debit: nothing is charged. One writer runs the writes
/// one after another and other processes wait for its transaction, so no concurrent charge can
/// slip past the limit between the read and the update.
fn count_spend(
    tx: &rusqlite::Connection,
    c: &Charge,
    before: DailySpend,
) -> Result<(), ChargeError> {
    let after = before.charge(c.amount, c.at)?;
    if after != before {
        write_spend(tx, &c.user_id, &after)?;
    }
    Ok(())
}

fn write_spend(
    tx: &rusqlite::Connection,
    user_id: &str,
    spend: &DailySpend,
) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE users SET spent_day = ?2, spent_today = ?3 WHERE id = ?1")
        .and_then(|mut stmt| {
            stmt.execute(params![
                user_id,
                spend.day.map(format_day),
                spend.spent as i64
            ])
        })
        .map_err(db_err)?;
    Ok(())
}

/// Gives the day's spend of refund `r` back when the charge was made the same UTC day (see
/// `DailySpend::refund`), inside the refund's write.
pub(super) fn refund_spend(tx: &rusqlite::Connection, r: &Refund) -> Result<(), StoreError> {
    let before = tx
        .prepare_cached(&format!("SELECT {SPEND_COLUMNS} FROM users WHERE id = ?1"))
        .and_then(|mut stmt| stmt.query_row([&r.user_id], |row| spend_from_row(row, 0)))
        .optional()
        .map_err(db_err)?;
    match before.and_then(|b| b.refund(r.amount, r.charged_at, r.at)) {
        Some(after) => write_spend(tx, &r.user_id, &after),
        None => Ok(()),
    }
}

/// Writes the ledger line of charge `c` and returns its cache key, or None when the request was
/// charged before (the line is there already).
fn charge_line(tx: &rusqlite::Connection, c: &Charge) -> Result<Option<String>, StoreError> {
    let key = c.cache_key.to_string();
    let inserted = insert_ledger(
        tx,
        &c.user_id,
        c.at,
        &c.request_id,
        -(c.amount as i64),
        c.reason,
        Some(&key),
    )
    .map_err(db_err)?;
    Ok((inserted > 0).then_some(key))
}

/// Same request charged twice: refused rather than charged twice.
fn already_charged(c: &Charge) -> ChargeError {
    StoreError(format!("request {} already charged", c.request_id)).into()
}

/// The debit, its ledger line and the hit count of `c`, inside `tx`; returns the new balance.
pub(super) fn charge_in(tx: &rusqlite::Connection, c: &Charge) -> Result<u64, ChargeError> {
    let (balance, spend) = debit(tx, &c.user_id, c.amount)?;
    count_spend(tx, c, spend)?;
    let Some(key) = charge_line(tx, c)? else {
        return Err(already_charged(c));
    };
    if c.count_hit {
        tx.prepare_cached("UPDATE cache_entries SET hit_count = hit_count + 1 WHERE pk = ?1")
            .and_then(|mut stmt| stmt.execute([&key]))
            .map_err(db_err)?;
    }
    Ok(balance)
}

/// What a run of charges has done to one user's row so far.
struct Account {
    balance: u64,
    spend: DailySpend,
    /// The spend as read, before the run.
    spend_read: DailySpend,
    /// Credits debited by the run.
    debited: u64,
}

/// Applies `charges` in order, each exactly as [`charge_in`] would one after another (the same
/// checks against the balance and the daily spend left by the charges before it, the same
/// ledger line, the same refusals), with one read and one update of each user's row and one
/// update of each entry's hit count for the whole run instead of a read and three writes per
/// charge: the writer's work per hit. A refused charge changes nothing. The outer error is the
/// store's (nothing of the run may be kept); the inner results are each charge's own.
pub(super) fn charge_run(
    tx: &rusqlite::Connection,
    charges: &[&Charge],
) -> Result<Vec<Result<u64, ChargeError>>, StoreError> {
    if tx.is_autocommit() {
        // See `debit`.
        return Err(StoreError("the write transaction was lost".into()));
    }
    let mut accounts: HashMap<&str, Option<Account>> = HashMap::new();
    let mut hits: Vec<(String, i64)> = Vec::new();
    let mut results = Vec::with_capacity(charges.len());
    for c in charges {
        if let Err(e) = signed(c.amount) {
            results.push(Err(e.into()));
            continue;
        }
        let account = match accounts.entry(c.user_id.as_str()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(read_account(tx, &c.user_id)?),
        };
        let Some(account) = account else {
            results.push(Err(ChargeError::UnknownUser));
            continue;
        };
        if account.balance < c.amount {
            results.push(Err(ChargeError::InsufficientCredits {
                available: account.balance,
                required: c.amount,
            }));
            continue;
        }
        let spend = match account.spend.charge(c.amount, c.at) {
            Ok(spend) => spend,
            Err(e) => {
                results.push(Err(e.into()));
                continue;
            }
        };
        let Some(key) = charge_line(tx, c)? else {
            results.push(Err(already_charged(c)));
            continue;
        };
        account.balance -= c.amount;
        account.debited += c.amount;
        account.spend = spend;
        if c.count_hit {
            match hits.iter_mut().find(|(k, _)| *k == key) {
                Some((_, n)) => *n += 1,
                None => hits.push((key, 1)),
            }
        }
        results.push(Ok(account.balance));
    }
    for (user_id, account) in &accounts {
        let Some(account) = account
            .as_ref()
            .filter(|a| a.debited > 0 || a.spend != a.spend_read)
        else {
            continue;
        };
        tx.prepare_cached(
            "UPDATE users SET credits_remaining = credits_remaining - ?2,
                              credits_used = credits_used + ?2, spent_day = ?3, spent_today = ?4
             WHERE id = ?1",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                user_id,
                account.debited as i64,
                account.spend.day.map(format_day),
                account.spend.spent as i64
            ])
        })
        .map_err(db_err)?;
    }
    for (key, n) in &hits {
        tx.prepare_cached("UPDATE cache_entries SET hit_count = hit_count + ?2 WHERE pk = ?1")
            .and_then(|mut stmt| stmt.execute(params![key, n]))
            .map_err(db_err)?;
    }
    Ok(results)
}

/// A user's balance and daily spend, or None when there is no such user.
fn read_account(tx: &rusqlite::Connection, user_id: &str) -> Result<Option<Account>, StoreError> {
    tx.prepare_cached(&format!(
        "SELECT credits_remaining, {SPEND_COLUMNS} FROM users WHERE id = ?1"
    ))
    .and_then(|mut stmt| {
        stmt.query_row([user_id], |r| {
            let spend = spend_from_row(r, 1)?;
            Ok(Account {
                balance: r.get::<_, i64>(0)? as u64,
                spend,
                spend_read: spend,
                debited: 0,
            })
        })
    })
    .optional()
    .map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::sqlite::schema::SCHEMA;
    use crate::domain::{CacheKey, MediaType};
    use chrono::TimeZone;
    use proptest::prelude::*;

    /// A store with three users (one with a daily limit) and two cache entries.
    fn store() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, credits_remaining, credits_used, created_at, daily_limit)
                 VALUES ('u0', 6, 0, 'x', NULL), ('u1', 9, 2, 'x', 5), ('u2', 0, 0, 'x', NULL);",
        )
        .unwrap();
        for key in keys() {
            conn.execute(
                "INSERT INTO cache_entries (pk, status, result_keys, content_type, provider,
                     model, credits_used, created_at, ttl, request_params)
                 VALUES (?1, 'READY', '[]', 'audio/mpeg', 'p', 'm', 3, 'x', 0, '{}')",
                [key.to_string()],
            )
            .unwrap();
        }
        conn
    }

    fn keys() -> [CacheKey; 2] {
        [
            CacheKey::of_canonical(MediaType::Tts, "{\"a\":1}"),
            CacheKey::of_canonical(MediaType::Image, "{\"b\":2}"),
        ]
    }

    /// Everything a charge can change, in a comparable form.
    fn dump(conn: &rusqlite::Connection) -> Vec<String> {
        let mut rows = Vec::new();
        for sql in [
            "SELECT id, credits_remaining, credits_used, spent_day, spent_today FROM users ORDER BY id",
            "SELECT rowid, user_id, sk, at, request_id, amount, reason, cache_key FROM ledger ORDER BY rowid",
            "SELECT pk, hit_count FROM cache_entries ORDER BY pk",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            let mut q = stmt.query([]).unwrap();
            while let Some(r) = q.next().unwrap() {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                rows.push(cells.join("|"));
            }
        }
        rows
    }

    fn charge((user, amount, request, hit, key, hour): (u8, u64, u8, bool, u8, u32)) -> Charge {
        Charge {
            user_id: format!("u{user}"),
            amount,
            reason: if hit {
                LedgerReason::Hit
            } else {
                LedgerReason::Miss
            },
            request_id: format!("req_{request}"),
            cache_key: keys()[key as usize].clone(),
            count_hit: hit,
            seen_balance: None,
            seen_spend: None,
            // Hours 0 to 29 from 2026-11-27: some charges fall on the next UTC day.
            at: Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0).unwrap()
                + chrono::Duration::hours(hour.into()),
        }
    }

    proptest! {
        /// A run of charges leaves the store and answers each charge exactly as the same charges
        /// made one by one, each in its savepoint: balances, daily spends, refusals (no credits,
        /// daily limit, unknown user, the same request twice), ledger lines and hit counts.
        #[test]
        fn a_run_of_charges_is_the_same_as_charging_one_by_one(
            raw in proptest::collection::vec(
                (
                    0u8..4,
                    // Now and then one past i64::MAX: refused, never cast into a credit.
                    prop_oneof![9 => 0u64..4, 1 => Just(1u64 << 63)],
                    0u8..12,
                    any::<bool>(),
                    0u8..2,
                    0u32..30,
                ),
                1..40,
            )
        ) {
            let mut charges: Vec<Charge> = raw.into_iter().map(charge).collect();
            // Time moves forward within a run, as the writer receives charges.
            charges.sort_by_key(|c| c.at);

            let alone = store();
            alone.execute_batch("BEGIN IMMEDIATE").unwrap();
            let one_by_one: Vec<String> = charges
                .iter()
                .map(|c| {
                    alone.execute_batch("SAVEPOINT w").unwrap();
                    let result = charge_in(&alone, c);
                    if result.is_err() {
                        alone.execute_batch("ROLLBACK TO w").unwrap();
                    }
                    alone.execute_batch("RELEASE w").unwrap();
                    format!("{result:?}")
                })
                .collect();
            alone.execute_batch("COMMIT").unwrap();

            let run = store();
            run.execute_batch("BEGIN IMMEDIATE").unwrap();
            let all: Vec<&Charge> = charges.iter().collect();
            let together: Vec<String> = charge_run(&run, &all)
                .unwrap()
                .iter()
                .map(|r| format!("{r:?}"))
                .collect();
            run.execute_batch("COMMIT").unwrap();

            prop_assert_eq!(together, one_by_one);
            prop_assert_eq!(dump(&run), dump(&alone));
        }
    }

    #[test]
    fn a_run_outside_a_transaction_charges_nothing() {
        let conn = store();
        let c = charge((0, 1, 0, true, 0, 0));
        assert!(charge_run(&conn, &[&c]).is_err());
        assert_eq!(
            conn.query_row("SELECT COUNT(*) FROM ledger", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );
    }
}
