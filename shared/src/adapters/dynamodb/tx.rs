use super::item::{ledger_item, spend_of};
use super::{DynamoStore, Item, build_err, get_n, key, n, s, store_err, user_pk};
use crate::domain::budget::{format_day, utc_day};
use crate::domain::{Charge, DailySpend};
use crate::ports::{ChargeError, StoreError};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a write met by contention (an item inside another transaction, throttling) is
/// tried again. Conflicts clear in milliseconds on DynamoDB; the budget covers a hot user's
/// burst and stays well inside a request's deadline (writes that move money come first in a
/// request, and a settlement is retried by its queue message anyway).
const RETRY_BUDGET: Duration = Duration::from_secs(10);
/// First and longest pause between two tries (full jitter below them).
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_LONGEST: Duration = Duration::from_millis(250);

/// Writes sent again after contention, by every store of this process (for measurements).
pub(super) static CONTENTION_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The error codes of contention: the same write succeeds when sent again a little later.
fn is_contention_code(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "TransactionConflictException"
                | "TransactionInProgressException"
                | "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "InternalServerError"
        )
    )
}

/// A pause before try `attempt + 1`: full jitter under a doubling bound.
fn retry_pause(attempt: u32) -> Duration {
    let bound = RETRY_FIRST
        .saturating_mul(2u32.saturating_pow(attempt.min(8)))
        .min(RETRY_LONGEST);
    bound.mul_f64(rand::random::<f64>())
}

/// Sends a request again while `contended` says the failure was contention, for at most
/// `RETRY_BUDGET`. Each try is the same request, so a write applies at most once.
pub(super) async fn retrying<T, E, Fut>(
    operation: &'static str,
    mut send: impl FnMut() -> Fut,
    contended: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        match send().await {
            Err(e) if contended(&e) && started.elapsed() < RETRY_BUDGET => {
                CONTENTION_RETRIES.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::store_retry(operation);
                tokio::time::sleep(retry_pause(attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Whether a plain request failed on contention.
pub(super) fn contended<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    is_contention_code(e.code())
}

/// How many times a charge is sent. A failed condition returns the profile as it is now, so a
/// try fails again only when another request changed it in between (the balance read before,
/// the day turning, the limit set); contention alone is retried inside `transact`.
const CHARGE_TRIES: usize = 5;

impl DynamoStore {
    /// A charge (debit, daily limit and ledger line) in one transaction with `extra` items, which
    /// follow them from index 2. Every charging path (hits, starts, joins) comes through here.
    ///
    /// The balance condition is `= seen` while the caller's read is fresh, so the new balance is
    /// known without another read; a balance moved meanwhile retries without it. The daily
    /// limit is checked with values known here (DynamoDB conditions cannot add numbers): the
    /// limit and the day's spend as last read. On the same day the spend may be at most
    /// `limit - amount` (`spent_today <= :room`, checked on the item as it is when the
    /// transaction commits, whatever other charges added since the read), so concurrent charges
    /// never overshoot; a new day starts the spend at this charge, only while the stored day is
    /// still an older one. A condition that fails returns the profile (`ALL_OLD`): it says which
    /// limit refused (balance, then daily limit), or gives the values of the next try.
    pub(super) async fn charge_with(
        &self,
        c: &Charge,
        extra: &[TransactWriteItem],
    ) -> Result<Charged, ChargeError> {
        let mut exact = c.seen_balance.filter(|b| *b >= c.amount);
        // The spend as the caller's lookup read it, or (a cold lookup reads no profile) the
        // common case: no limit, charged today or never. A wrong guess costs one more try.
        let mut spend = c.seen_spend;
        // Whether `spend` was read by this charge: a refusal rests on a read of its own.
        let mut fresh = false;
        for _ in 0..CHARGE_TRIES {
            let before = spend.unwrap_or_default();
            let after = match before.charge(c.amount, c.at) {
                Ok(after) => after,
                Err(exceeded) if fresh => return Err(exceeded.into()),
                Err(_) => {
                    // Over the limit as the caller read it: read the profile again before
                    // refusing (a refund or a new limit may have changed it).
                    let profile = self
                        .profile(&c.user_id)
                        .await?
                        .ok_or(ChargeError::UnknownUser)?;
                    spend = Some(chargeable(c, &profile)?);
                    fresh = true;
                    exact = None;
                    continue;
                }
            };
            let mut items = self.charge_items(c, exact, &before, &after)?;
            items.extend_from_slice(extra);
            match transact(&self.client, items).await {
                Ok(()) => {
                    let balance = match exact {
                        Some(seen) => seen - c.amount,
                        // The write cannot return the balance: read it (only off the warm path).
                        // Committed is committed: a failed read never turns it into an error.
                        None => match self.balance(&c.user_id).await {
                            Ok(balance) => balance.unwrap_or(0),
                            Err(e) => {
                                tracing::warn!(user_id = %c.user_id, error = %e, "balance after a charge unknown");
                                c.seen_balance.unwrap_or(0).saturating_sub(c.amount)
                            }
                        },
                    };
                    return Ok(Charged::Done(balance));
                }
                Err(TransactFailure::Condition { index: 0, old }) => {
                    let profile = match old {
                        Some(old) => old,
                        // No profile came back: it may not exist, or the store did not say.
                        None => self
                            .profile(&c.user_id)
                            .await?
                            .ok_or(ChargeError::UnknownUser)?,
                    };
                    // Not enough credits refuses here; otherwise the next try starts from the
                    // profile as it is (and refuses if it is over the limit).
                    spend = Some(chargeable(c, &profile)?);
                    fresh = true;
                    exact = None;
                }
                Err(TransactFailure::Condition { index: 1, .. }) => {
                    return Err(
                        StoreError(format!("request {} already charged", c.request_id)).into(),
                    );
                }
                Err(TransactFailure::Condition { index, old }) => {
                    return Ok(Charged::ExtraFailed {
                        index: index - 2,
                        old,
                    });
                }
                Err(TransactFailure::Store(e)) => return Err(e.into()),
            }
        }
        Err(StoreError("charge did not settle after retries".into()).into())
    }

    /// A charge with nothing else in its transaction.
    pub(super) async fn charge_alone(&self, c: &Charge) -> Result<u64, ChargeError> {
        match self.charge_with(c, &[]).await? {
            Charged::Done(balance) => Ok(balance),
            Charged::ExtraFailed { .. } => Err(StoreError("charge did not settle".into()).into()),
        }
    }

    /// The debit (balance and daily limit conditions) and the ledger put of a charge: items 0
    /// and 1 of its transaction. `exact` makes the balance condition `= seen` so the new balance
    /// is known; `before` is the spend as last read and `after` the spend with this charge
    /// (`DailySpend::charge` of `before`, which fits the limit).
    fn charge_items(
        &self,
        c: &Charge,
        exact: Option<u64>,
        before: &DailySpend,
        after: &DailySpend,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let cache_key = c.cache_key.to_string();
        let day = after.day.unwrap_or_else(|| utc_day(c.at));
        let mut set = String::from(
            "SET credits_remaining = credits_remaining - :a, credits_used = credits_used + :a",
        );
        let mut conditions = vec!["credits_remaining >= :a"];
        let mut debit = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(&c.user_id), "PROFILE")))
            .expression_attribute_values(":a", n(c.amount))
            .expression_attribute_values(":day", s(format_day(day)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(seen) = exact {
            conditions.push("credits_remaining = :seen");
            debit = debit.expression_attribute_values(":seen", n(seen));
        }
        // The limit as read: a limit set or removed since fails the condition, and the next try
        // uses the new one.
        match before.limit {
            Some(limit) => {
                conditions.push("daily_limit = :limit");
                debit = debit.expression_attribute_values(":limit", n(limit));
            }
            None => conditions.push("attribute_not_exists(daily_limit)"),
        }
        if before.limit.is_none() && before.day.is_none_or(|d| d == day) {
            // No limit, charged today or never (the guess of a charge whose caller read no
            // profile): add to the day's spend, or start it. Nothing to bound.
            conditions.push("(attribute_not_exists(spent_day) OR spent_day = :day)");
            set.push_str(
                ", spent_day = :day, spent_today = if_not_exists(spent_today, :zero) + :a",
            );
            debit = debit.expression_attribute_values(":zero", n(0));
        } else if let (Some(limit), true) = (before.limit, before.day == Some(day)) {
            // The day goes on: add to its spend, leaving room for this charge under the limit.
            conditions.push("spent_day = :day");
            conditions.push("spent_today <= :room");
            debit = debit.expression_attribute_values(":room", n(limit.saturating_sub(c.amount)));
            set.push_str(", spent_today = spent_today + :a");
        } else {
            // A new day (or the first charge): its spend starts at this charge, which fits the
            // limit by itself. Only while the stored day is older: of two first charges of a
            // day, the second fails here and adds to the first on its next try.
            conditions.push("(attribute_not_exists(spent_day) OR spent_day < :day)");
            set.push_str(", spent_day = :day, spent_today = :a");
        }
        let debit = debit
            .update_expression(set)
            .condition_expression(conditions.join(" AND "));
        Ok(vec![
            TransactWriteItem::builder()
                .update(debit.build().map_err(build_err)?)
                .build(),
            self.put_new_item(ledger_item(
                &c.user_id,
                c.at,
                &c.request_id,
                -(c.amount as i64),
                c.reason,
                Some(&cache_key),
            ))?,
        ])
    }
}

/// The spend of `profile` (the payer's item as it is now) when it has the credits for `c`:
/// not enough credits refuses first, as on every store.
fn chargeable(c: &Charge, profile: &Item) -> Result<DailySpend, ChargeError> {
    let available = get_n(profile, "credits_remaining").unwrap_or(0);
    if available < c.amount {
        return Err(ChargeError::InsufficientCredits {
            available,
            required: c.amount,
        });
    }
    spend_of(profile)
        .ok_or_else(|| StoreError(format!("user {}: unreadable daily spend", c.user_id)).into())
}

/// What a charge with extra items did.
pub(super) enum Charged {
    /// Committed; the new balance.
    Done(u64),
    /// Extra item `index` (0 = the first extra) failed its condition; nothing was written.
    ExtraFailed { index: usize, old: Option<Item> },
}

/// Why a transaction did not commit.
pub(super) enum TransactFailure {
    /// Item `index`'s condition failed; `old` is that item before, when the store returned it.
    Condition { index: usize, old: Option<Item> },
    /// Anything else.
    Store(StoreError),
}

/// Runs one transaction; a cancellation by contention alone (another transaction on one of its
/// items, throttling) is tried again with the same client request token, so it applies once.
pub(super) async fn transact(
    client: &Client,
    items: Vec<TransactWriteItem>,
) -> Result<(), TransactFailure> {
    let token = uuid::Uuid::new_v4().to_string();
    let request = client
        .transact_write_items()
        .set_transact_items(Some(items))
        .client_request_token(token);
    let result = retrying(
        "transaction",
        || request.clone().send(),
        |e: &SdkError<TransactWriteItemsError, _>| match e.as_service_error() {
            Some(TransactWriteItemsError::TransactionCanceledException(cancel)) => {
                let codes: Vec<_> = cancel
                    .cancellation_reasons()
                    .iter()
                    .filter_map(|r| r.code())
                    .collect();
                !codes.contains(&"ConditionalCheckFailed")
                    && codes.iter().any(|c| {
                        matches!(
                            *c,
                            "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded"
                        )
                    })
            }
            _ => is_contention_code(e.code()),
        },
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) => {
            if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                e.as_service_error()
                && let Some((index, reason)) = cancel
                    .cancellation_reasons()
                    .iter()
                    .enumerate()
                    .find(|(_, r)| r.code() == Some("ConditionalCheckFailed"))
            {
                return Err(TransactFailure::Condition {
                    index,
                    old: reason.item().cloned(),
                });
            }
            Err(TransactFailure::Store(store_err(e)))
        }
    }
}
