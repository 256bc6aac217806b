//! What the hit path would otherwise read on every request, kept in memory:
//! - the user of an API key digest: a key is never moved to another user nor deleted, so a
//!   digest once found stays right (an unknown digest is not remembered: a key can be added
//!   at any time, also by `mediactl` in another process);
//! - READY cache entries, for [`ENTRY_LIFETIME`] at most. A READY entry is only ever replaced
//!   by a newer READY one or left to expire, and the hit count and ledger line of a hit are
//!   written by the charge itself, so serving from memory keeps both exact. Every write of an
//!   entry in this process forgets it once committed. The short lifetime bounds what this
//!   process cannot see: an entry replaced by another process on the same file (`cargo lambda
//!   watch` runs one per function), and a remembered `hit_count` that missed a hit committed
//!   while it was read; a hot key is read again once per lifetime, which costs nothing.

use crate::domain::CacheEntry;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How long a READY entry is served from memory before it is read again.
const ENTRY_LIFETIME: Duration = Duration::from_secs(2);

/// The most entries of each kind kept; when full, expired entries go first, then everything.
const CAPACITY: usize = 16_384;

/// A READY entry and the hits this process has counted on it since it was read.
struct Remembered {
    entry: CacheEntry,
    hits: AtomicU64,
    until: Instant,
}

#[derive(Default)]
pub(super) struct Memo {
    users: RwLock<HashMap<String, String>>,
    entries: RwLock<HashMap<String, Arc<Remembered>>>,
    /// Bumped after every committed entry write: a read that began before it may have seen the
    /// old entry and must not be remembered.
    entry_writes: AtomicU64,
}

impl Memo {
    pub(super) fn user(&self, digest: &str) -> Option<String> {
        read(&self.users).get(digest).cloned()
    }

    pub(super) fn remember_user(&self, digest: &str, user_id: &str) {
        let mut users = write(&self.users);
        if users.len() >= CAPACITY {
            users.clear();
        }
        users.insert(digest.to_owned(), user_id.to_owned());
    }

    /// The READY entry remembered under `pk`. The caller checks its expiry on its own clock,
    /// as it does for an entry read from the store.
    pub(super) fn entry(&self, pk: &str) -> Option<CacheEntry> {
        read(&self.entries)
            .get(pk)
            .filter(|r| r.until > Instant::now())
            .map(|r| CacheEntry {
                hit_count: r.entry.hit_count + r.hits.load(Ordering::Relaxed),
                ..r.entry.clone()
            })
    }

    /// Counts a committed hit on `pk`, so a remembered `hit_count` stays the stored one (and a
    /// read that began before this hit is not remembered).
    pub(super) fn count_hit(&self, pk: &str) {
        match read(&self.entries).get(pk) {
            Some(r) if r.until > Instant::now() => {
                r.hits.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.entry_writes.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Where entry writes stand; pass it back to [`Memo::remember_entry`] with what was read.
    pub(super) fn entry_writes(&self) -> u64 {
        self.entry_writes.load(Ordering::Acquire)
    }

    /// Keeps a servable entry read from the store, unless an entry was written or a hit counted
    /// since the read began (`writes_before`), or the entry is already remembered and live
    /// (with hits counted since).
    pub(super) fn remember_entry(
        &self,
        entry: &CacheEntry,
        writes_before: u64,
        now: DateTime<Utc>,
    ) {
        if !entry.is_servable(now) {
            return;
        }
        let mut entries = write(&self.entries);
        let pk = entry.cache_key.to_string();
        let live = entries.get(&pk).is_some_and(|r| r.until > Instant::now());
        if self.entry_writes.load(Ordering::Acquire) != writes_before || live {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.retain(|_, r| r.entry.is_servable(now));
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        let remembered = Remembered {
            entry: entry.clone(),
            hits: AtomicU64::new(0),
            until: Instant::now() + ENTRY_LIFETIME,
        };
        entries.insert(pk, Arc::new(remembered));
    }

    /// Forgets every entry after a committed write of many (a purge).
    pub(super) fn forget_entries(&self) {
        let mut entries = write(&self.entries);
        self.entry_writes.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Forgets `pk` after a committed write of it.
    pub(super) fn forget_entry(&self, pk: &str) {
        let mut entries = write(&self.entries);
        self.entry_writes.fetch_add(1, Ordering::AcqRel);
        entries.remove(pk);
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}
