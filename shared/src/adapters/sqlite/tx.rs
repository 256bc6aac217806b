use super::schema::{SPEND_COLUMNS, spend_from_row};
use super::{db_err, iso};
use crate::domain::budget::format_day;
use crate::domain::{Charge, DailySpend, LedgerReason, Refund};
use crate::ports::{ChargeError, StoreError};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

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
    let amount = amount as i64;
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

/// The debit, its ledger line and the hit count of `c`, inside `tx`; returns the new balance.
pub(super) fn charge_in(tx: &rusqlite::Connection, c: &Charge) -> Result<u64, ChargeError> {
    let (balance, spend) = debit(tx, &c.user_id, c.amount)?;
    count_spend(tx, c, spend)?;
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
    if inserted == 0 {
        // Same request charged twice: refuse rather than double-charge.
        return Err(StoreError(format!("request {} already charged", c.request_id)).into());
    }
    if c.count_hit {
        tx.prepare_cached("UPDATE cache_entries SET hit_count = hit_count + 1 WHERE pk = ?1")
            .and_then(|mut stmt| stmt.execute([&key]))
            .map_err(db_err)?;
    }
    Ok(balance)
}
