//! Indexing the instances of one STOW request together: one transaction,
//! so one commit (one fsync of the index) for the lot instead of one per
//! instance, and the counts of each touched series and study recomputed
//! once, at the end. Each instance is indexed in its own savepoint, so a
//! conflict (duplicate, series of another study, quota) or an error of one
//! instance leaves the others; a unique-key race with a concurrent ingest of
//! the same UIDs is retried once (the second attempt sees the winner's rows).

use sea_orm::{SqlErr, TransactionTrait};

use super::instances::recount;
use super::{DbError, HospitalDb, IndexConflict, Indexed, NewInstance, now_millis};
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
        let txn = self.db.conn().begin().await?;
        let mut out = Vec::with_capacity(news.len());
        // (study, series) pairs to recount, once each, before the commit
        let mut touched = Vec::new();
        for new in news {
            let mut attempt = 0;
            let outcome = loop {
                let savepoint = txn.begin().await?;
                let mut changed = Vec::new();
                match self.index_in(&savepoint, new, policy, &mut changed).await {
                    Ok(Ok(indexed)) => {
                        savepoint.commit().await?;
                        touched.extend(changed);
                        break Ok(Ok(indexed));
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
        touched.sort_unstable();
        touched.dedup();
        let now = now_millis();
        for (study_pk, series_pk) in touched {
            recount(&txn, study_pk, series_pk, now).await?;
        }
        txn.commit().await?;
        Ok(out)
    }
}
