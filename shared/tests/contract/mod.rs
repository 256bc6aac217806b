//! Contract suites that every adapter of a port must pass. `store_contract!` and
//! `object_contract!` stamp out one test per case for a given adapter factory. A case must be
//! registered in its suite macro: one written but never run is a dead-code warning.

pub mod budget;
pub mod objects;
pub mod purge;
pub mod queue;
pub mod store;
pub mod usage;

/// Declares the store contract tests for an adapter: `store_contract!(factory_expr)` where the
/// expression is an async block evaluating to a `contract::store::StoreHarness`.
#[macro_export]
macro_rules! store_contract {
    ($factory:expr) => {
        $crate::store_contract!(@cases $factory;
            lookup_of_an_unknown_key_finds_nothing,
            an_api_key_resolves_to_its_user,
            a_cache_entry_round_trips,
            put_entry_replaces_the_previous_entry,
            a_charge_moves_credits_with_its_ledger_line,
            a_charge_beyond_the_balance_changes_nothing,
            a_charge_to_an_unknown_user_fails,
            a_hit_charge_counts_the_hit,
            a_refund_happens_at_most_once,
            grants_add_credits_with_a_ledger_line,
            idempotency_claims_follow_their_lifecycle,
            concurrent_charges_never_overdraw,
            lookups_by_a_known_key_see_every_hit_and_replacement,
            the_ledger_lists_newest_first,
            charges_report_the_true_balance_even_after_a_stale_read,
            a_job_starts_with_its_pending_entry_and_charge,
            a_live_entry_blocks_a_second_start,
            a_start_without_credits_writes_nothing,
            followers_join_only_while_the_entry_is_pending_on_their_leader,
            a_finished_job_never_changes_again,
            a_failed_job_deletes_only_its_own_pending_entry,
            one_of_two_concurrent_claims_takes_an_attempt,
        );
        $crate::store_contract!(@harness_cases $factory;
            an_unreadable_entry_is_a_miss_that_a_start_overwrites,
            a_no_cache_start_leaves_the_ready_entry_until_its_result_replaces_it,
            a_result_never_replaces_another_jobs_live_claim,
        );
        $crate::store_contract!(@purge_cases $factory;
            a_purge_deletes_a_ready_entry_and_leaves_a_pending_one,
            a_filtered_purge_deletes_only_what_every_condition_matches,
            admin_keys_are_marked_one_by_one,
        );
        $crate::store_contract!(@budget_cases $factory;
            a_charge_over_the_daily_limit_is_refused_and_changes_nothing,
            the_daily_spend_starts_again_on_the_next_utc_day,
            concurrent_charges_never_pass_the_daily_limit,
            the_limit_is_checked_as_stored_not_as_last_read,
            starts_and_joins_count_toward_the_daily_limit,
            a_refund_gives_the_spend_back_on_the_day_of_its_charge_only,
        );
        $crate::store_contract!(@usage_cases $factory;
            usage_records_hold_every_ledger_line_with_its_user,
            usage_records_hold_every_entry_and_job,
            usage_records_read_every_page_and_report_progress_after_each,
            a_usage_report_of_the_records_nets_refunds_and_prices_hits_by_their_entry,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::store::$case(harness.store).await;
            }
        )+
    };
    (@harness_cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::store::$case(harness).await;
            }
        )+
    };
    (@purge_cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::purge::$case(harness.store).await;
            }
        )+
    };
    (@budget_cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::budget::$case(harness.store).await;
            }
        )+
    };
    (@usage_cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::usage::$case(harness).await;
            }
        )+
    };
}

/// Declares the object store contract tests: the expression is an async block evaluating to a
/// `contract::objects::Harness`.
#[macro_export]
macro_rules! object_contract {
    ($factory:expr) => {
        $crate::object_contract!(@cases $factory;
            a_stored_object_downloads_through_its_presigned_url,
            a_stored_object_reads_back_and_a_missing_one_is_none,
            putting_the_same_key_twice_keeps_one_object,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::objects::$case(harness).await;
            }
        )+
    };
}

/// Declares the job queue contract tests: the expression is an async block evaluating to a
/// `contract::queue::QueueHarness`.
#[macro_export]
macro_rules! queue_contract {
    ($factory:expr) => {
        $crate::queue_contract!(@cases $factory;
            a_sent_message_arrives_whole,
            a_delayed_message_waits_its_delay,
        );
    };
    (@cases $factory:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let harness = $factory.await;
                $crate::contract::queue::$case(harness).await;
            }
        )+
    };
}
