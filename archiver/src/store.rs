//! Postgres: the connection pool, the embedded migrations, the idempotent batch insert and
//! the history range queries.
//!
//! Every operation is bounded in time (`op_timeout`, also set as the session's
//! `statement_timeout`), and every failure is classified: [`StoreError::Rejected`] means the
//! data itself was refused (retrying the same rows cannot help), anything else means the
//! database is unavailable and the same operation may succeed later.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row as _;
use thiserror::Error;

use crate::record::Row;

/// The migrations under `archiver/migrations`, embedded at compile time (no database needed
/// to build).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("invalid database URL: {0}")]
    Config(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database rejected the data: {0}")]
    Rejected(String),
    #[error("database operation timed out after {0:?}")]
    Timeout(Duration),
    #[error("migrations failed: {0}")]
    Migrate(String),
}

impl StoreError {
    /// Whether retrying the same rows can never succeed.
    pub fn is_rejection(&self) -> bool {
        matches!(self, StoreError::Rejected(_))
    }
}

/// SQLSTATE classes that mean "this data", not "this database right now": data exceptions
/// (22), integrity constraint violations (23: not-null, check; unique ones are absorbed by
/// `ON CONFLICT DO NOTHING`) and program limits (54: e.g. an index row too large).
fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code.starts_with("22") || code.starts_with("23") || code.starts_with("54") {
                StoreError::Rejected(format!("{e} (SQLSTATE {code})"))
            } else {
                StoreError::Unavailable(format!("{e} (SQLSTATE {code})"))
            }
        }
        sqlx::Error::Encode(_) => StoreError::Rejected(e.to_string()),
        _ => StoreError::Unavailable(e.to_string()),
    }
}

/// The connection options in a Postgres URL (checked by `--check-config` too).
pub fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::Config(
            "the database URL must start with postgres:// or postgresql://".into(),
        ));
    }
    url.parse()
        .map_err(|e: sqlx::Error| StoreError::Config(e.to_string()))
}

/// A page of archived messages, oldest first: `(seq, stored object text)`.
#[derive(Debug, Default)]
pub struct Page {
    pub messages: Vec<(u64, String)>,
    /// More messages exist beyond the page in the direction read.
    pub more: bool,
}

/// Which range of a room to read (see `natter_bus::history::HistoryRequest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// `_id > after`, oldest first.
    After(i64),
    /// The newest with `_id < before`.
    Before(i64),
    /// `after < _id < before`, oldest first.
    Between(i64, i64),
    /// The newest of the room.
    Newest,
}

const INSERT: &str = "INSERT INTO messages \
    (_id, room, uuid, kind, user_id, user_name, msg, client_date, server_time) \
    SELECT i, r, u, k, ui, un, m::json, d, timestamptz 'epoch' + t * interval '1 microsecond' \
    FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                $7::text[], $8::text[], $9::bigint[]) AS x(i, r, u, k, ui, un, m, d, t) \
    ON CONFLICT DO NOTHING";

const AFTER: &str = "SELECT _id, msg::text AS msg FROM messages \
    WHERE room = $1 AND _id > $2 ORDER BY _id ASC LIMIT $3";
const BEFORE: &str = "SELECT _id, msg::text AS msg FROM messages \
    WHERE room = $1 AND _id < $2 ORDER BY _id DESC LIMIT $3";
const BETWEEN: &str = "SELECT _id, msg::text AS msg FROM messages \
    WHERE room = $1 AND _id > $2 AND _id < $3 ORDER BY _id ASC LIMIT $4";
const NEWEST: &str = "SELECT _id, msg::text AS msg FROM messages \
    WHERE room = $1 ORDER BY _id DESC LIMIT $2";

/// The archive database.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    op_timeout: Duration,
}

impl Store {
    /// A lazily connecting pool of at most `pool_size` connections; nothing is contacted yet.
    /// `connect_timeout` bounds waiting for a connection, `op_timeout` each operation.
    pub fn new(
        url: &str,
        pool_size: u32,
        connect_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Store, StoreError> {
        let opts = parse_url(url)?;
        let statement_timeout = op_timeout.as_millis().to_string();
        let opts = opts
            .application_name("natter-archiver")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            .min_connections(0)
            .acquire_timeout(connect_timeout.min(op_timeout))
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(opts);
        Ok(Store { pool, op_timeout })
    }

    async fn bounded<T, F>(&self, fut: F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(r) => r.map_err(classify),
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        }
    }

    /// Apply the embedded migrations (idempotent; concurrent replicas serialise on
    /// Postgres' advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let run = MIGRATOR.run(&self.pool);
        match tokio::time::timeout(self.op_timeout.max(Duration::from_secs(30)), run).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Migrate(e.to_string())),
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        }
    }

    /// `SELECT 1`, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        let q = sqlx::query("SELECT 1").execute(&self.pool);
        match tokio::time::timeout(timeout, q).await {
            Ok(r) => r.map(|_| ()).map_err(classify),
            Err(_) => Err(StoreError::Timeout(timeout)),
        }
    }

    /// Insert `rows` in one statement (hence one transaction): rows whose `_id` or
    /// `(room, uuid)` is already archived are skipped. Returns how many rows were inserted.
    pub async fn insert(&self, rows: &[Row]) -> Result<u64, StoreError> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut rooms = Vec::with_capacity(n);
        let mut uuids = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut user_ids = Vec::with_capacity(n);
        let mut user_names = Vec::with_capacity(n);
        let mut msgs = Vec::with_capacity(n);
        let mut dates = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for r in rows {
            ids.push(r.seq);
            rooms.push(r.room.as_str());
            uuids.push(r.uuid.as_deref());
            kinds.push(r.kind);
            user_ids.push(r.user_id.as_deref());
            user_names.push(r.user_name.as_deref());
            msgs.push(r.msg.as_str());
            dates.push(r.client_date.as_deref());
            times.push(r.server_time_us);
        }
        let q = sqlx::query(INSERT)
            .bind(ids)
            .bind(rooms)
            .bind(uuids)
            .bind(kinds)
            .bind(user_ids)
            .bind(user_names)
            .bind(msgs)
            .bind(dates)
            .bind(times)
            .execute(&self.pool);
        let done = self.bounded(q).await?;
        Ok(done.rows_affected())
    }

    /// Up to `limit` messages of `room` in `range`, oldest first, and whether more exist in
    /// the direction read.
    pub async fn page(&self, room: &str, range: Range, limit: u32) -> Result<Page, StoreError> {
        let fetch = i64::from(limit) + 1;
        let (rows, descending) = match range {
            Range::After(a) => {
                let q = sqlx::query(AFTER)
                    .bind(room)
                    .bind(a)
                    .bind(fetch)
                    .fetch_all(&self.pool);
                (self.bounded(q).await?, false)
            }
            Range::Before(b) => {
                let q = sqlx::query(BEFORE)
                    .bind(room)
                    .bind(b)
                    .bind(fetch)
                    .fetch_all(&self.pool);
                (self.bounded(q).await?, true)
            }
            Range::Between(a, b) => {
                let q = sqlx::query(BETWEEN)
                    .bind(room)
                    .bind(a)
                    .bind(b)
                    .bind(fetch)
                    .fetch_all(&self.pool);
                (self.bounded(q).await?, false)
            }
            Range::Newest => {
                let q = sqlx::query(NEWEST)
                    .bind(room)
                    .bind(fetch)
                    .fetch_all(&self.pool);
                (self.bounded(q).await?, true)
            }
        };
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("_id").map_err(classify)?;
            let msg: String = row.try_get("msg").map_err(classify)?;
            // `_id` is a stream sequence, never negative.
            messages.push((u64::try_from(id).unwrap_or(0), msg));
        }
        let more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        if descending {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
