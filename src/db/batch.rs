//! Indexing the instances of one STOW request together: one transaction,
//! so one commit (one fsync of the index) for the lot instead of one per
//! instance. What is the same for the whole batch is written once, at the
//! end: the counts of each touched series and study, the journal entries of
//! the indexed blobs (when they are journaled in the index), and the
//! hospital's usage.
//!
//! The batch is first indexed straight in its transaction, with a few
//! multi-row statements for all its instances (studies, series, instances:
//! a statement each, not three per instance), which is all that is needed
//! when every instance is new and nothing conflicts (the common case). When an
//! instance conflicts (duplicate, series of another study, quota) or fails,
//! that attempt is rolled back and the batch indexed again with each
//! instance in its own savepoint, so that one instance's conflict or error
//! leaves the others; there a unique-key race with a concurrent ingest of
//! the same UIDs is retried once (the second attempt sees the winner's
//! rows).
//!
//! The usage row is the one row every ingest of a hospital writes, so it is
//! charged last, with the batch's total, and held only until the commit.
//! When that total does not fit the quota, the batch is indexed again,
//! charging instance by instance, so that the instances that fit are kept.

use entity::pending_blob;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, SqlErr, TransactionTrait,
};

use super::instances::{Known, Placed, charge, recount};
use super::{DbError, HospitalDb, IN_CHUNK, IndexConflict, Indexed, NewInstance, now_millis};
use crate::config::DuplicatePolicy;

/// The outcome of one instance of a batch.
pub type BatchOutcome = Result<Result<Indexed, IndexConflict>, DbError>;

impl HospitalDb {
    /// Index instances whose blobs are stored, in one transaction; one
    /// outcome per instance, in order. `Err` when the transaction itself
    /// failed (then nothing was indexed). With `journaled`, the blobs are
    /// journaled in the index (`pending_blobs`), and the transaction
    /// removes the entries of those it indexes.
    pub async fn index_instances(
        &self,
        news: &[NewInstance<'_>],
        policy: DuplicatePolicy,
        journaled: bool,
    ) -> Result<Vec<BatchOutcome>, DbError> {
        for attempt in [Attempt::Straight, Attempt::Savepoints] {
            if let Some(out) = self.index_batch(news, policy, attempt, journaled).await? {
                return Ok(out);
            }
        }
        Ok(self
            .index_batch(news, policy, Attempt::ChargeEach, journaled)
            .await?
            .expect("charged per instance, in savepoints"))
    }

    /// One attempt; `None` when it gave up (then nothing was indexed).
    async fn index_batch(
        &self,
        news: &[NewInstance<'_>],
        policy: DuplicatePolicy,
        attempt: Attempt,
        journaled: bool,
    ) -> Result<Option<Vec<BatchOutcome>>, DbError> {
        let per_instance = attempt == Attempt::ChargeEach;
        let txn = self.db.writer.begin().await?;
        let mut written = Written::default();
        let out = if attempt == Attempt::Straight {
            match self.index_all(&txn, news).await {
                Ok(Some(placed)) => news
                    .iter()
                    .zip(placed)
                    .map(|(new, placed)| Ok(Ok(written.record(new, placed))))
                    .collect(),
                // a conflict or an error: again, in savepoints
                Ok(None) | Err(_) => {
                    txn.rollback().await?;
                    return Ok(None);
                }
            }
        } else {
            let mut out = Vec::with_capacity(news.len());
            for new in news {
                out.push(
                    self.index_in_savepoint(&txn, new, policy, per_instance, &mut written)
                        .await?,
                );
            }
            out
        };
        let Written {
            touched,
            indexed,
            total,
            ..
        } = written;
        // the straight attempt only adds instances: no series or study
        // becomes empty
        let grown = attempt == Attempt::Straight;
        recount(&txn, &touched, now_millis(), grown).await?;
        if journaled {
            for chunk in indexed.chunks(IN_CHUNK) {
                pending_blob::Entity::delete_many()
                    .filter(pending_blob::Column::BlobKey.is_in(chunk.iter().copied()))
                    .exec(&txn)
                    .await?;
            }
        }
        if !per_instance && !charge(&txn, self.hospital.pk, total).await? {
            // over the quota: again, charging instance by instance
            txn.rollback().await?;
            return Ok(None);
        }
        txn.commit().await?;
        Ok(Some(out))
    }

    /// One instance in its savepoint of `txn`: its conflict or error
    /// rolls back only its own rows.
    async fn index_in_savepoint<'a>(
        &self,
        txn: &DatabaseTransaction,
        new: &'a NewInstance<'_>,
        policy: DuplicatePolicy,
        charge_now: bool,
        written: &mut Written<'a>,
    ) -> Result<BatchOutcome, DbError> {
        let mut tries = 0;
        loop {
            let savepoint = txn.begin().await?;
            match self
                .index_in(&savepoint, new, policy, &written.known, charge_now)
                .await
            {
                Ok(Ok(placed)) => {
                    savepoint.commit().await?;
                    return Ok(Ok(Ok(written.record(new, placed))));
                }
                Ok(Err(conflict)) => {
                    savepoint.rollback().await?;
                    return Ok(Ok(Err(conflict)));
                }
                Err(e) => {
                    savepoint.rollback().await?;
                    // a concurrent ingest of the same UIDs won a unique
                    // key: the second try sees its rows
                    let unique = matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)));
                    if unique && tries == 0 {
                        tries += 1;
                        continue;
                    }
                    return Ok(Err(DbError::from(e)));
                }
            }
        }
    }
}

/// What the instances indexed so far in a batch wrote.
#[derive(Default)]
struct Written<'a> {
    known: Known,
    /// (study, series) pairs to recount
    touched: Vec<(i64, i64)>,
    /// blobs now indexed
    indexed: Vec<&'a str>,
    /// bytes added
    total: i64,
}

impl<'a> Written<'a> {
    fn record(&mut self, new: &'a NewInstance<'_>, placed: Placed) -> Indexed {
        let ins = new.inspected;
        self.known
            .studies
            .insert(ins.study_uid.to_string(), placed.study_pk);
        self.known.series.insert(
            ins.series_uid.to_string(),
            (placed.series_pk, placed.study_pk),
        );
        self.touched.extend(placed.touched);
        self.total += placed.delta;
        if placed.indexed != Indexed::Identical {
            self.indexed.push(new.blob_key.as_str());
        }
        placed.indexed
    }
}

/// How [`HospitalDb::index_batch`] indexes a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Multi-row statements in the transaction itself, the batch's total
    /// charged at the end; gives up when an instance is stored already or
    /// conflicts, at an error, or when the total does not fit the quota.
    Straight,
    /// Each instance in its savepoint, the total charged at the end; gives
    /// up when the total does not fit the quota.
    Savepoints,
    /// Each instance in its savepoint and charged on its own: the
    /// instances that fit the quota are kept.
    ChargeEach,
}
