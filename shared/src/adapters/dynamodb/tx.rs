use super::item::ledger_item;
use super::{DynamoStore, Item, build_err, get_n, key, n, store_err, user_pk};
use crate::domain::Charge;
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

impl DynamoStore {
    /// A charge (debit and ledger line) in one transaction with `extra` items, which follow them
    /// from index 2. The balance condition is `= seen` while the caller's read is fresh, so the
    /// new balance is known without another read; a balance moved meanwhile retries without it.
    pub(super) async fn charge_with(
        &self,
        c: &Charge,
        extra: &[TransactWriteItem],
    ) -> Result<Charged, ChargeError> {
        let mut exact = c.seen_balance.filter(|b| *b >= c.amount);
        // At most: the exact attempt and a plain one.
        for _ in 0..2 {
            let mut items = self.charge_items(c, exact)?;
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
                    let available = match old {
                        Some(old) => get_n(&old, "credits_remaining").unwrap_or(0),
                        // No profile came back: it may not exist, or the store did not say.
                        None => self
                            .balance(&c.user_id)
                            .await?
                            .ok_or(ChargeError::UnknownUser)?,
                    };
                    if available < c.amount {
                        return Err(ChargeError::InsufficientCredits {
                            available,
                            required: c.amount,
                        });
                    }
                    // Another request moved the balance since we read it: charge without `= seen`.
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

    /// The debit (balance condition first) and the ledger put of a charge: items 0 and 1 of its
    /// transaction. `exact` makes the condition `= seen` so the new balance is known.
    fn charge_items(
        &self,
        c: &Charge,
        exact: Option<u64>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let cache_key = c.cache_key.to_string();
        let mut debit = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(user_pk(&c.user_id), "PROFILE")))
            .update_expression(
                "SET credits_remaining = credits_remaining - :a, credits_used = credits_used + :a",
            )
            .expression_attribute_values(":a", n(c.amount))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        debit = match exact {
            Some(seen) => debit
                .condition_expression("credits_remaining = :seen AND credits_remaining >= :a")
                .expression_attribute_values(":seen", n(seen)),
            None => debit.condition_expression("credits_remaining >= :a"),
        };
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
