//! Indexing the instances of one STOW request together: one transaction,
//! so one commit (one fsync of the index) for the lot instead of one per
//! instance. Each instance is indexed in its own savepoint, so a conflict
//! (duplicate, series of another study, quota) or an error of one instance
//! leaves the others; a unique-key race with a concurrent ingest of the same
//! UIDs is retried once (the second attempt sees the winner's rows). What
//! is the same for the whole batch is written once, at the end: the counts
//! of each touched series and study, the journal entries of the indexed
//! blobs, and the hospital's usage.
//!
//! The usage row is the one row every ingest of a hospital writes, so it is
//! charged last, with the batch's total, and held only until the commit.
//! When that total does not fit the quota, the batch is indexed again,
//! charging instance by instance, so that the instances that fit are kept.

use entity::pending_blob;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, SqlErr, TransactionTrait};

use super::instances::{Known, charge, recount};
use super::{DbError, HospitalDb, IN_CHUNK, IndexConflict, Indexed, NewInstance, now_millis};
use crate::config::DuplicatePolicy;

/// The outcome of one instance of a batch.
pub type BatchOutcome = Result<Result<Indexed, IndexConflict>, DbError>;

impl HospitalDb {
    /// Index instances whose blobs are stored, in one transaction; one
    /// outcome per instance, in order. `Err` when the transaction itself
    /// failed (then nothing was indexed).
    pub async fn index_instances(
        &self,
        news: &[NewInstance<'_>],
        policy: DuplicatePolicy,
    ) -> Result<Vec<BatchOutcome>, DbError> {
        match self.index_batch(news, policy, false).await? {
            Some(out) => Ok(out),
            None => Ok(self
                .index_batch(news, policy, true)
                .await?
                .expect("charged per instance")),
        }
    }

    /// One attempt; `None` when `per_instance` is false and the batch's
    /// total does not fit the quota (then nothing was indexed).
    async fn index_batch(
        &self,
        news: &[NewInstance<'_>],
        policy: DuplicatePolicy,
        per_instance: bool,
    ) -> Result<Option<Vec<BatchOutcome>>, DbError> {
        let txn = self.db.conn().begin().await?;
        let mut out = Vec::with_capacity(news.len());
        let mut known = Known::default();
        // (study, series) pairs to recount, indexed blobs, bytes added
        let mut touched = Vec::new();
        let mut journaled = Vec::new();
        let mut total = 0;
        for new in news {
            let mut attempt = 0;
            let outcome = loop {
                let savepoint = txn.begin().await?;
                match self
                    .index_in(&savepoint, new, policy, &known, per_instance)
                    .await
                {
                    Ok(Ok(placed)) => {
                        savepoint.commit().await?;
                        let ins = new.inspected;
                        known
                            .studies
                            .insert(ins.study_uid.to_string(), placed.study_pk);
                        known.series.insert(
                            ins.series_uid.to_string(),
                            (placed.series_pk, placed.study_pk),
                        );
                        touched.extend(placed.touched);
                        total += placed.delta;
                        if placed.indexed != Indexed::Identical {
                            journaled.push(new.blob_key.as_str());
                        }
                        break Ok(Ok(placed.indexed));
                    }
                    Ok(Err(conflict)) => {
                        savepoint.rollback().await?;
                        break Ok(Err(conflict));
                    }
                    Err(e) => {
                        savepoint.rollback().await?;
                        // a concurrent ingest of the same UIDs won a unique
                        // key: the second attempt sees its rows
                        let unique =
                            matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)));
                        if unique && attempt == 0 {
                            attempt += 1;
                            continue;
                        }
                        break Err(DbError::from(e));
                    }
                }
            };
            out.push(outcome);
        }
        recount(&txn, &touched, now_millis()).await?;
        for chunk in journaled.chunks(IN_CHUNK) {
            pending_blob::Entity::delete_many()
                .filter(pending_blob::Column::BlobKey.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?;
        }
        if !per_instance && !charge(&txn, self.hospital.pk, total).await? {
            txn.rollback().await?;
            return Ok(None);
        }
        txn.commit().await?;
        Ok(Some(out))
    }
}
