//! The index database: connection, migrations at start-up, and every query
//! over `entity`. Nothing else in the crate writes SQL.
//!
//! DICOM data is only reachable through [`HospitalDb`], a handle scoped to
//! one hospital whose every query filters by that hospital itself. Only the
//! `auth` module constructs it.

use std::time::Duration;

use entity::hospital;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, QueryFilter, Statement,
};

mod admin;
mod audit;
mod batch;
mod instances;
mod journal;
mod retention;
mod retrieve;
mod search;

pub use search::{InstanceHit, Search, SeriesHit};

pub use admin::{HospitalPatch, NewHospital, NewUser, Usage, is_conflict};
pub use audit::AuditQuery;
pub use instances::{IndexConflict, Indexed, NewInstance};
pub use retrieve::{
    InstanceBlobRow, InstanceFilter, InstanceLayout, InstanceMetadataRow, SeriesRef, StudyRef,
};

/// Values per `IN (…)` list (SQLite allows 32,766 parameters a
/// statement).
const IN_CHUNK: usize = 500;

/// Most rows in one multi-row insert or `VALUES` list.
const ROWS_PER_INSERT: usize = 32;

/// Statement sizes for `len` rows: 32, 16, 8, 4, 2 or 1 at a time, largest
/// first. Every row count is another prepared statement that a connection
/// keeps in its cache; this way a statement kind has six, not one per
/// batch size.
fn statement_sizes(mut len: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let n = 1 << len.min(ROWS_PER_INSERT).checked_ilog2()?;
        len -= n;
        Some(n)
    })
}

/// `rows` in statements of [`statement_sizes`].
fn chunked<T>(rows: Vec<T>) -> Vec<Vec<T>> {
    let mut rows = rows.into_iter();
    statement_sizes(rows.len())
        .map(|n| rows.by_ref().take(n).collect())
        .collect()
}

/// The id of the hospital created on an empty index.
pub const DEFAULT_HOSPITAL: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    /// The hospital has as many users as its plan allows.
    #[error("the plan of this hospital allows {0} users")]
    UserQuota(i32),
}

/// Milliseconds since the Unix epoch: how every time is stored.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The connection pools of the index.
#[derive(Clone, Debug)]
pub struct Db {
    conn: DatabaseConnection,
    /// Where every write goes. On SQLite a pool of one connection: SQLite
    /// lets one connection write at a time, and one that finds the lock
    /// taken sleeps in its busy handler (1, 2, 5, 10… ms) rather than being
    /// woken when the lock is free; here writers queue for the connection
    /// instead. Its page cache also stays valid between transactions, as no
    /// other connection writes. On PostgreSQL the same pool as reads.
    writer: DatabaseConnection,
    /// Grouped journal inserts ([`journal`]).
    journal: tokio::sync::mpsc::UnboundedSender<journal::JournalJob>,
}

/// A hospital as the rest of the crate sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hospital {
    /// Primary key in the index.
    pub pk: i64,
    /// Public id (`default`, `hosp_…`).
    pub id: String,
    pub status: String,
    /// Its settings, parsed.
    pub policy: crate::policy::Policy,
}

impl From<hospital::Model> for Hospital {
    fn from(m: hospital::Model) -> Self {
        Hospital {
            policy: crate::policy::Policy::from_stored(&m.settings),
            pk: m.id,
            id: m.hospital_id,
            status: m.status,
        }
    }
}

/// Sizes and timeouts of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    pub max_connections: u32,
    /// How long a request waits for a free connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL's `statement_timeout` on every connection; `None`: no limit.
    pub statement_timeout: Option<Duration>,
}

impl Db {
    /// Connect; SQLite runs in WAL mode with full fsync on commit, so an
    /// acknowledged instance survives a crash.
    pub async fn connect(url: &str, pool: &PoolOptions) -> Result<Self, DbError> {
        let mut opt = ConnectOptions::new(url.to_owned());
        opt.max_connections(pool.max_connections)
            .min_connections(1)
            .acquire_timeout(pool.acquire_timeout)
            // A connection is pinged when it leaves the pool only after 30 s
            // idle (what a server restart or a firewall drops), not on every
            // acquire: that was one more round trip per query, and on
            // SQLite's single writer one more hop per transaction.
            .test_before_acquire_if_idle_for(Duration::from_secs(30))
            .sqlx_logging(false);
        let timeout_ms = pool.statement_timeout.map(|t| t.as_millis().to_string());
        opt.map_sqlx_postgres_opts(move |o| {
            // as on SQLite, below
            let o = o.statement_cache_capacity(32);
            match &timeout_ms {
                Some(ms) => o.options([("statement_timeout", ms.as_str())]),
                None => o,
            }
        });
        opt.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // LIKE case-sensitive as on PostgreSQL, and able to use indexes
                .pragma("case_sensitive_like", "ON")
                // Each connection keeps its prepared statements; the batch
                // statements differ by row count, so sqlx's default of 100
                // filled every connection with large ones (9 MiB over 8
                // connections after 40,000 instances). The searches and
                // lookups fit in 32.
                .statement_cache_capacity(32)
        });
        let conn = Database::connect(opt.clone()).await?;
        let writer = if conn.get_database_backend() == DbBackend::Sqlite {
            opt.max_connections(1);
            Database::connect(opt).await?
        } else {
            conn.clone()
        };
        let journal = journal::start(writer.clone());
        Ok(Db {
            conn,
            writer,
            journal,
        })
    }

    pub async fn migrate(&self) -> Result<(), DbError> {
        Migrator::up(&self.writer, None).await?;
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.conn.get_database_backend()
    }

    pub async fn ping(&self) -> Result<(), DbError> {
        self.conn
            .execute_raw(Statement::from_string(self.backend(), "SELECT 1"))
            .await?;
        Ok(())
    }

    /// Create the hospital `default` if the index has no hospital yet.
    /// Returns whether it was created.
    pub async fn ensure_default_hospital(&self) -> Result<bool, DbError> {
        if hospital::Entity::find().one(&self.conn).await?.is_some() {
            return Ok(false);
        }
        let now = now_millis();
        let am = hospital::ActiveModel {
            hospital_id: Set(DEFAULT_HOSPITAL.to_owned()),
            name: Set("Default hospital".to_owned()),
            plan: Set("enterprise".to_owned()),
            status: Set("active".to_owned()),
            max_users: Set(0),
            max_storage_bytes: Set(0),
            settings: Set("{}".to_owned()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        let inserted = hospital::Entity::insert(am)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(hospital::Column::HospitalId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.writer)
            .await?;
        Ok(inserted > 0)
    }

    pub async fn find_hospital(&self, id: &str) -> Result<Hospital, DbError> {
        hospital::Entity::find()
            .filter(hospital::Column::HospitalId.eq(id))
            .one(&self.conn)
            .await?
            .map(Hospital::from)
            .ok_or(DbError::NotFound)
    }

    /// The handle scoped to one hospital. Crate-private: `auth` is the only
    /// caller, after it resolved who may act on which hospital.
    pub(crate) fn scoped(&self, hospital: Hospital) -> HospitalDb {
        HospitalDb {
            db: self.clone(),
            hospital,
        }
    }

    /// The raw connection, for read-only inspection (tests, diagnostics).
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }
}

/// The index as one hospital sees it. Every method filters by the hospital.
#[derive(Clone, Debug)]
pub struct HospitalDb {
    db: Db,
    hospital: Hospital,
}

impl HospitalDb {
    pub fn hospital(&self) -> &Hospital {
        &self.hospital
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every row in exactly one statement, in at most six sizes.
    #[test]
    fn statement_sizes_are_powers_of_two_up_to_32_covering_all_rows() {
        let mut seen = BTreeSet::new();
        for len in 0..=300 {
            let sizes: Vec<usize> = statement_sizes(len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), len);
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            seen.extend(sizes);
        }
        assert_eq!(seen, BTreeSet::from([1, 2, 4, 8, 16, 32]));
        let chunks = chunked((0..50).collect::<Vec<_>>());
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [32, 16, 2]);
        assert_eq!(chunks.concat(), (0..50).collect::<Vec<_>>());
    }
}
