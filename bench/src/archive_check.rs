//! Chaos cross-check: every acknowledged message is in Postgres exactly once.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sqlx::Row;

/// Wait (bounded) for the archive to catch up, then compare: `(missing, extra, rows)` where
/// `missing` are acknowledged uuids without a row and `extra` rows of this run no client
/// saw acknowledged.
pub async fn compare(url: &str, acked: &HashSet<String>, run: &str) -> (u64, u64, u64) {
    let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
    else {
        return (acked.len() as u64, 0, 0);
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut uuids: HashSet<String> = HashSet::new();
    let mut rows = 0u64;
    while Instant::now() < deadline {
        let got = sqlx::query("SELECT uuid FROM messages WHERE uuid LIKE $1")
            .bind(format!("{run}-%"))
            .fetch_all(&pool)
            .await;
        if let Ok(got) = got {
            rows = got.len() as u64;
            uuids = got
                .iter()
                .filter_map(|r| r.try_get::<String, _>("uuid").ok())
                .collect();
            if acked.iter().all(|u| uuids.contains(u)) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let missing = acked.iter().filter(|u| !uuids.contains(*u)).count() as u64;
    let extra = uuids.iter().filter(|u| !acked.contains(*u)).count() as u64;
    (missing, extra, rows)
}
