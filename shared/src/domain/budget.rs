//! Budgets: a user's daily spend limit, in credits per UTC day, checked inside the charge.
//!
//! The spend lives on the user's profile beside the balance (`daily_limit`, `spent_day`,
//! `spent_today`) and rolls over lazily: the stored spend belongs to `spent_day`, and a charge on
//! a later day starts it again at its own amount. Every charge counts (hits, misses, joins);
//! grants do not. Each store applies [`DailySpend::charge`] in the transaction that debits the
//! balance, so a refused charge changes nothing and concurrent charges never overshoot.

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

/// A user's daily limit and what they spent on the last UTC day they were charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DailySpend {
    /// Credits the user may spend in a UTC day; None: no limit.
    pub limit: Option<u64>,
    /// The UTC day `spent` belongs to; None before the first charge.
    pub day: Option<NaiveDate>,
    /// Credits charged on `day` (less same-day refunds).
    pub spent: u64,
}

/// A charge refused because it would take the day's spend over the limit; nothing was charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "daily spend limit reached: the limit is {limit} credits a day, {spent} were spent today and \
     this request costs {required}; the day's spend resets at 00:00 UTC ({reset})",
    reset = .resets_at.format("%Y-%m-%dT%H:%M:%SZ")
)]
pub struct DailyLimitExceeded {
    /// The user's daily limit.
    pub limit: u64,
    /// What was spent on the day so far.
    pub spent: u64,
    /// The price of the refused charge.
    pub required: u64,
    /// When the day's spend starts again from zero (the next 00:00 UTC).
    pub resets_at: DateTime<Utc>,
    /// Whole seconds from the refused charge until `resets_at` (at least 1): `Retry-After`.
    pub retry_after_secs: u64,
}

/// The UTC day of `at`.
pub fn utc_day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// 00:00 UTC of the day after `day`.
pub fn day_end(day: NaiveDate) -> DateTime<Utc> {
    day.succ_opt()
        .unwrap_or(NaiveDate::MAX)
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
}

/// The next 00:00 UTC after `at`.
pub fn next_day_start(at: DateTime<Utc>) -> DateTime<Utc> {
    day_end(utc_day(at))
}

/// Whole seconds from `at` until `until`, rounded up, at least 1.
fn secs_until(at: DateTime<Utc>, until: DateTime<Utc>) -> u64 {
    let left = (until - at).max(TimeDelta::zero());
    let millis = left.num_milliseconds().max(0) as u64;
    millis.div_ceil(1000).max(1)
}

/// The stored spelling of a day: `YYYY-MM-DD` (sorts as the days do).
pub fn format_day(day: NaiveDate) -> String {
    day.format("%Y-%m-%d").to_string()
}

/// Parses [`format_day`]'s spelling.
pub fn parse_day(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

impl DailySpend {
    /// What was spent on the UTC day of `at`: 0 when the stored day is an older one.
    pub fn spent_on(&self, at: DateTime<Utc>) -> u64 {
        if self.day.is_some_and(|d| d >= utc_day(at)) {
            self.spent
        } else {
            0
        }
    }

    /// The spend after a charge of `amount` at `at`, or why it is refused. The charge counts
    /// toward the day of `at`; a stored day later than that (another process whose clock runs a
    /// little ahead charged first, around midnight) is kept rather than reset, so skewed clocks
    /// never give anyone a fresh day.
    pub fn charge(&self, amount: u64, at: DateTime<Utc>) -> Result<Self, DailyLimitExceeded> {
        let today = utc_day(at);
        let (day, spent) = match self.day {
            Some(d) if d >= today => (d, self.spent),
            _ => (today, 0),
        };
        let after = spent.saturating_add(amount);
        if let Some(limit) = self.limit
            && after > limit
        {
            let resets_at = day_end(day);
            return Err(DailyLimitExceeded {
                limit,
                spent,
                required: amount,
                resets_at,
                retry_after_secs: secs_until(at, resets_at),
            });
        }
        Ok(Self {
            limit: self.limit,
            day: Some(day),
            spent: after,
        })
    }

    /// The spend after refunding `amount` at `at` of a charge made at `charged_at`, or None when
    /// the refund leaves the spend as it is.
    ///
    /// A refund gives the spend back only when the charge and the refund fall on the same UTC day
    /// and the stored spend is still that day's: the credits come back to the day they were
    /// taken from, so a failed generation does not eat into the user's budget. A charge of an
    /// earlier day is refunded in credits only: that day is over and its spend no longer limits
    /// anything, and taking it off today's spend would let the user spend more today than the
    /// limit. (`charged_at` may be a little earlier than the charge itself, e.g. the job's
    /// creation; across a midnight that only means no spend is given back, never too much.)
    pub fn refund(
        &self,
        amount: u64,
        charged_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Option<Self> {
        let day = utc_day(charged_at);
        (day == utc_day(at) && self.day == Some(day) && amount > 0 && self.spent > 0).then(|| {
            Self {
                spent: self.spent.saturating_sub(amount),
                ..*self
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(d: u32, h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, d, h, m, s).unwrap()
    }

    fn limited(limit: u64, day: Option<DateTime<Utc>>, spent: u64) -> DailySpend {
        DailySpend {
            limit: Some(limit),
            day: day.map(utc_day),
            spent,
        }
    }

    #[test]
    fn charges_add_up_to_the_limit_and_no_further() {
        let now = at(25, 12, 0, 0);
        let mut spend = limited(10, None, 0);
        for _ in 0..10 {
            spend = spend.charge(1, now).unwrap();
        }
        assert_eq!((spend.day, spend.spent), (Some(utc_day(now)), 10));
        let refused = spend.charge(1, now).unwrap_err();
        assert_eq!(
            (refused.limit, refused.spent, refused.required),
            (10, 10, 1)
        );
        assert_eq!(refused.resets_at, at(26, 0, 0, 0));
        assert_eq!(refused.retry_after_secs, 12 * 3600);
        assert_eq!(spend.charge(0, now), Ok(spend), "a free charge fits");
    }

    #[test]
    fn a_new_day_starts_the_spend_at_the_charge() {
        let spend = limited(10, Some(at(25, 23, 0, 0)), 10);
        let next = spend.charge(3, at(26, 0, 0, 1)).unwrap();
        assert_eq!((next.day, next.spent), (Some(utc_day(at(26, 0, 0, 0))), 3));
        assert_eq!(spend.spent_on(at(26, 8, 0, 0)), 0);
        assert_eq!(spend.spent_on(at(25, 23, 59, 59)), 10);
    }

    #[test]
    fn a_charge_larger_than_the_limit_is_refused_even_on_a_fresh_day() {
        let refused = limited(10, None, 0)
            .charge(11, at(25, 12, 0, 0))
            .unwrap_err();
        assert_eq!((refused.spent, refused.required), (0, 11));
    }

    #[test]
    fn no_limit_still_counts_the_spend() {
        let spend = DailySpend::default().charge(50, at(25, 12, 0, 0)).unwrap();
        assert_eq!((spend.limit, spend.spent), (None, 50));
    }

    #[test]
    fn a_later_stored_day_is_kept_not_reset() {
        let ahead = limited(10, Some(at(26, 0, 0, 0)), 9);
        let refused = ahead.charge(2, at(25, 23, 59, 59)).unwrap_err();
        assert_eq!(refused.resets_at, at(27, 0, 0, 0));
        assert_eq!(ahead.charge(1, at(25, 23, 59, 59)).unwrap().spent, 10);
    }

    #[test]
    fn retry_after_rounds_up_and_is_at_least_one_second() {
        let spend = limited(1, Some(at(25, 0, 0, 0)), 1);
        let late = at(25, 23, 59, 59) + TimeDelta::milliseconds(500);
        assert_eq!(spend.charge(1, late).unwrap_err().retry_after_secs, 1);
        let earlier = at(25, 23, 59, 58) + TimeDelta::milliseconds(100);
        assert_eq!(spend.charge(1, earlier).unwrap_err().retry_after_secs, 2);
    }

    #[test]
    fn refunds_give_the_spend_back_on_the_day_of_the_charge_only() {
        let charged = at(25, 10, 0, 0);
        let spend = limited(10, Some(charged), 10);
        let back = spend.refund(4, charged, at(25, 11, 0, 0)).unwrap();
        assert_eq!(back.spent, 6);
        assert_eq!(spend.refund(4, charged, at(26, 0, 0, 1)), None, "next day");
        let today = limited(10, Some(at(26, 1, 0, 0)), 2);
        assert_eq!(
            today.refund(4, charged, at(26, 2, 0, 0)),
            None,
            "yesterday's charge never lowers today's spend"
        );
        assert_eq!(spend.refund(20, charged, charged).unwrap().spent, 0);
    }

    #[test]
    fn days_are_stored_as_sortable_text() {
        let day = utc_day(at(5, 1, 2, 3));
        assert_eq!(format_day(day), "2026-11-05");
        assert_eq!(parse_day("2026-11-05"), Some(day));
        assert!(format_day(day) < format_day(utc_day(at(25, 0, 0, 0))));
        assert_eq!(parse_day("yesterday"), None);
    }
}
