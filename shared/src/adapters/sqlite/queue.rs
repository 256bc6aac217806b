use super::{SqliteStore, db_err};
use crate::domain::JobMessage;
use crate::ports::{JobQueue, QueueError, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use rusqlite::params;

/// A message received from the embedded queue, hidden from other receivers until it is deleted
/// or its visibility timeout ends.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// Deletes it.
    pub receipt: i64,
    /// What it carries.
    pub message: JobMessage,
    /// How many times it has been received, this time included.
    pub receive_count: u32,
}

fn epoch_ms() -> i64 {
    // Queue timing is infrastructure time, like SQS's own: the wall clock, not the app's clock.
    Utc::now().timestamp_millis()
}

impl SqliteStore {
    /// Receives up to `max` visible messages, hiding each for `visibility`. A message received
    /// more than `max_receives` times goes dead instead (the embedded dead-letter queue).
    pub async fn receive_messages(
        &self,
        max: usize,
        visibility: std::time::Duration,
        max_receives: u32,
    ) -> Result<Vec<ReceivedMessage>, StoreError> {
        self.write(move |tx| {
            let now = epoch_ms();
            tx.execute(
                "UPDATE queue SET dead = 1 WHERE dead = 0 AND visible_at <= ?1 AND receive_count >= ?2",
                params![now, max_receives],
            )
            .map_err(db_err)?;
            let rows: Vec<(i64, String, u32)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE queue SET receive_count = receive_count + 1, visible_at = ?2
                         WHERE id IN (SELECT id FROM queue WHERE dead = 0 AND visible_at <= ?1
                                      ORDER BY visible_at, id LIMIT ?3)
                         RETURNING id, body, receive_count",
                    )
                    .map_err(db_err)?;
                let hidden_until = now + visibility.as_millis() as i64;
                stmt.query_map(params![now, hidden_until, max as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .map_err(db_err)?
                .collect::<Result<_, _>>()
                .map_err(db_err)?
            };
            let mut received = Vec::with_capacity(rows.len());
            for (receipt, body, receive_count) in rows {
                match serde_json::from_str(&body) {
                    Ok(message) => received.push(ReceivedMessage {
                        receipt,
                        message,
                        receive_count,
                    }),
                    Err(e) => {
                        tracing::error!(receipt, error = %e, "unreadable queue message dropped");
                        tx.execute("UPDATE queue SET dead = 1 WHERE id = ?1", [receipt])
                            .map_err(db_err)?;
                    }
                }
            }
            Ok(received)
        })
        .await
    }

    /// Deletes a received message: its work is done.
    pub async fn delete_message(&self, receipt: i64) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.execute("DELETE FROM queue WHERE id = ?1", [receipt])
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    /// Messages waiting (visible or delayed) and dead ones.
    pub async fn queue_depth(&self) -> Result<(u64, u64), StoreError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COALESCE(SUM(dead = 0), 0), COALESCE(SUM(dead = 1), 0) FROM queue",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .map_err(db_err)
        })
        .await
    }
}

#[async_trait]
impl JobQueue for SqliteStore {
    async fn send(
        &self,
        message: &JobMessage,
        delay: std::time::Duration,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_string(message).map_err(|e| QueueError(e.to_string()))?;
        let visible_at =
            epoch_ms() + delay.min(std::time::Duration::from_secs(900)).as_millis() as i64;
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO queue (body, visible_at) VALUES (?1, ?2)",
                params![body, visible_at],
            )
            .map_err(db_err)?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|e| QueueError(e.0))
    }
}
