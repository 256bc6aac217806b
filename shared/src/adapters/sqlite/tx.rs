use super::{db_err, iso};
use crate::domain::{Charge, LedgerReason};
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

/// Debits `amount` unless it takes the balance below zero; returns the new balance.
fn debit(tx: &rusqlite::Connection, user_id: &str, amount: u64) -> Result<u64, ChargeError> {
    if tx.is_autocommit() {
        // The transaction was ended under us (SQLite rolls back on some errors): a debit here
        // would commit alone, without its ledger line.
        return Err(StoreError("the write transaction was lost".into()).into());
    }
    let amount = amount as i64;
    let updated: Option<i64> = tx
        .prepare_cached(
            "UPDATE users SET credits_remaining = credits_remaining - ?2,
                              credits_used = credits_used + ?2
             WHERE id = ?1 AND credits_remaining >= ?2
             RETURNING credits_remaining",
        )
        .and_then(|mut stmt| stmt.query_row(params![user_id, amount], |r| r.get(0)))
        .optional()
        .map_err(db_err)?;
    if let Some(balance) = updated {
        return Ok(balance as u64);
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

/// The debit, its ledger line and the hit count of `c`, inside `tx`; returns the new balance.
pub(super) fn charge_in(tx: &rusqlite::Connection, c: &Charge) -> Result<u64, ChargeError> {
    let balance = debit(tx, &c.user_id, c.amount)?;
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
