//! The crash journal of blobs (`pending_blobs`): a blob's key is recorded
//! before the blob is written or deleted, and removed once the index
//! references it or it is gone. The orphan sweep deletes what an ingest
//! that never finished left behind, after checking that no instance
//! references it.
//!
//! An ingest batch whose blob store keeps no journal of its own (S3; see
//! `BlobStore::journal`) journals its keys here before writing its blobs:
//! those inserts are grouped. One task takes every batch's keys that arrived
//! while the previous insert ran and records them with one statement and
//! one commit, so concurrent STOW requests do not each queue for SQLite's
//! single writer (and wait for a commit) of their own.

use std::time::Duration;

use entity::{instance, pending_blob};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    QuerySelect, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use super::{Db, DbError, chunked, now_millis};

/// Keys of one batch, and where the grouped insert answers.
#[derive(Debug)]
pub(super) struct JournalJob {
    keys: Vec<String>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Start the task that records grouped journal inserts through `writer`;
/// it ends when the last sender is dropped.
pub(super) fn start(writer: DatabaseConnection) -> mpsc::UnboundedSender<JournalJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<JournalJob>();
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while let Ok(more) = rx.try_recv() {
                jobs.push(more);
            }
            let keys: Vec<&str> = jobs
                .iter()
                .flat_map(|j| j.keys.iter().map(String::as_str))
                .collect();
            let result = insert(&writer, &keys).await.map_err(|e| e.to_string());
            for job in jobs {
                let _ = job.done.send(result.clone());
            }
        }
    });
    tx
}

/// Record `keys` in one transaction.
async fn insert(writer: &DatabaseConnection, keys: &[&str]) -> Result<(), DbErr> {
    let now = now_millis();
    let txn = writer.begin().await?;
    let rows: Vec<_> = keys
        .iter()
        .map(|key| pending_blob::ActiveModel {
            blob_key: Set((*key).to_owned()),
            created_at: Set(now),
            ..Default::default()
        })
        .collect();
    for chunk in chunked(rows) {
        pending_blob::Entity::insert_many(chunk)
            .exec_without_returning(&txn)
            .await?;
    }
    txn.commit().await
}

impl Db {
    /// Record a blob about to be written or deleted; already recorded is
    /// fine.
    pub async fn add_pending_blob(&self, key: &str) -> Result<(), DbError> {
        let am = pending_blob::ActiveModel {
            blob_key: Set(key.to_owned()),
            created_at: Set(now_millis()),
            ..Default::default()
        };
        pending_blob::Entity::insert(am)
            .on_conflict(
                sea_orm::sea_query::OnConflict::column(pending_blob::Column::BlobKey)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.writer)
            .await?;
        Ok(())
    }

    /// Record the new blobs of a batch (new keys: never recorded before),
    /// together with those of the batches that ask meanwhile.
    pub async fn add_pending_blobs(&self, keys: &[&str]) -> Result<(), DbError> {
        let (done, answer) = oneshot::channel();
        let job = JournalJob {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            done,
        };
        let gone = || DbError::Db(DbErr::Custom("the journal task has stopped".into()));
        self.journal.send(job).map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| DbError::Db(DbErr::Custom(e)))
    }

    pub async fn remove_pending_blob(&self, key: &str) -> Result<(), DbError> {
        pending_blob::Entity::delete_many()
            .filter(pending_blob::Column::BlobKey.eq(key))
            .exec(&self.writer)
            .await?;
        Ok(())
    }

    /// Journal entries older than `age`: blobs whose ingest never finished.
    pub async fn stale_pending_blobs(&self, age: Duration) -> Result<Vec<String>, DbError> {
        let cutoff = now_millis() - i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
        Ok(pending_blob::Entity::find()
            .filter(pending_blob::Column::CreatedAt.lte(cutoff))
            .limit(1000)
            .all(&self.conn)
            .await?
            .into_iter()
            .map(|p| p.blob_key)
            .collect())
    }

    /// Whether an instance row points at this blob.
    pub async fn blob_referenced(&self, key: &str) -> Result<bool, DbError> {
        Ok(instance::Entity::find()
            .filter(instance::Column::BlobKey.eq(key))
            .one(&self.conn)
            .await?
            .is_some())
    }
}
