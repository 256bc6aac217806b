use super::schema::{ENTRY_COLUMNS, JOB_COLUMNS, entry_from_row, job_from_row};
use super::{SqliteStore, db_err, parse_iso};
use crate::domain::LedgerLine;
use crate::domain::LedgerReason;
use crate::domain::usage::{ReadCost, UsageRecords};
use crate::ports::{StoreError, UsageScan};
use async_trait::async_trait;

/// A row, or nothing for an unreadable one: a report must not fail on one corrupt row (logged).
fn readable<T>(row: rusqlite::Result<T>) -> Option<T> {
    row.inspect_err(|e| tracing::warn!(error = %e, "unreadable row left out of the usage report"))
        .ok()
}

#[async_trait]
impl UsageScan for SqliteStore {
    async fn usage_records(
        &self,
        progress: &(dyn Fn(ReadCost) + Send + Sync),
    ) -> Result<UsageRecords, StoreError> {
        // One read transaction: the three tables as of one moment. Unreadable rows are left out
        // and logged, as the DynamoDB scan does.
        let records = self
            .read(|conn| {
                let tx = conn.unchecked_transaction().map_err(db_err)?;
                let ledger = tx
                    .prepare(
                        "SELECT user_id, at, request_id, amount, reason, cache_key FROM ledger",
                    )
                    .map_err(db_err)?
                    .query_map([], |r| {
                        let at: String = r.get(1)?;
                        let reason: String = r.get(4)?;
                        Ok(LedgerLine {
                            user_id: r.get(0)?,
                            at: parse_iso(&at)?,
                            request_id: r.get(2)?,
                            amount: r.get(3)?,
                            reason: LedgerReason::parse(&reason)
                                .ok_or(rusqlite::Error::InvalidQuery)?,
                            cache_key: r.get(5)?,
                        })
                    })
                    .map_err(db_err)?
                    .filter_map(readable)
                    .collect();
                let entries = tx
                    .prepare(&format!("SELECT {ENTRY_COLUMNS} FROM cache_entries"))
                    .map_err(db_err)?
                    .query_map([], entry_from_row)
                    .map_err(db_err)?
                    .filter_map(readable)
                    .collect();
                let jobs = tx
                    .prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs"))
                    .map_err(db_err)?
                    .query_map([], job_from_row)
                    .map_err(db_err)?
                    .filter_map(readable)
                    .collect();
                Ok::<_, StoreError>(UsageRecords {
                    ledger,
                    entries,
                    jobs,
                    read: None,
                })
            })
            .await?;
        let items = (records.ledger.len() + records.entries.len() + records.jobs.len()) as u64;
        let read = ReadCost {
            items,
            pages: 1,
            capacity_units: 0.0,
        };
        progress(read);
        Ok(records)
    }
}
