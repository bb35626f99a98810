//! Reads for WADO-RS and the DELETE of studies, series and instances.
//!
//! Every query filters by the handle's hospital itself, on top of the
//! study/series/instance keys it was given: a key of another hospital finds
//! nothing. Lists of instances are read in pages by primary key (keyset
//! pagination), so a study of any size is served in bounded memory.

use entity::{instance, pending_blob, series};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use super::instances::{charge, recount};
use super::{DbError, HospitalDb, IN_CHUNK, now_millis};

/// `hospital_id IN (…)` of the rows this hospital may read under the study
/// UID `$1`: its own (`$2`) and those of the hospitals that shared that
/// study with it. The planner turns it into lookups of the
/// `(hospital_id, uid)` unique indexes.
const VISIBLE: &str = "IN (SELECT CAST($2 AS BIGINT) UNION ALL \
     SELECT owner_hospital_id FROM study_shares WHERE target_hospital_id = $2 AND study_uid = $1)";

/// This hospital's own copy before a shared one with the same UIDs.
const OWN_FIRST: &str = "CASE WHEN st.hospital_id = $2 THEN 0 ELSE 1 END";

/// The columns of a [`StudyRef`] (of `st`) and, prefixed `s_`, of a
/// [`SeriesRef`] (of `se`).
const STUDY_COLUMNS: &str =
    "st.id AS pk, st.hospital_id AS hospital_pk, st.study_uid AS uid, st.updated_at";
const SERIES_COLUMNS: &str = "se.id AS s_pk, se.series_uid AS s_uid";

/// A study this hospital may read (its own, or one shared with it), found
/// by UID.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct StudyRef {
    pub pk: i64,
    /// The hospital holding the study's rows (this one, or the sharer's).
    pub hospital_pk: i64,
    pub uid: String,
    /// Milliseconds; changes with every ingest or delete in the study.
    pub updated_at: i64,
}

/// A series of a study of this hospital.
#[derive(Debug, Clone, PartialEq, Eq, FromQueryResult)]
pub struct SeriesRef {
    pub pk: i64,
    pub uid: String,
}

/// Which instances of this hospital a read or delete covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceFilter {
    /// The hospital holding the rows: from a [`StudyRef`] only.
    pub hospital_pk: i64,
    pub study_pk: i64,
    pub series_pk: Option<i64>,
    pub instance_pk: Option<i64>,
}

/// What a retrieve needs of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceBlobRow {
    pub pk: i64,
    pub blob_key: String,
    pub size_bytes: i64,
    pub transfer_syntax: String,
}

/// What a metadata response needs of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadataRow {
    pub pk: i64,
    pub series_pk: i64,
    pub sop_uid: String,
    /// The stored DICOM JSON text (relative BulkDataURIs).
    pub metadata: String,
}

/// Where an instance's bytes are: what frame, bulk data and instance
/// reads need, without its metadata JSON (which can be hundreds of KB for
/// an enhanced multi-frame instance and is not read per frame).
#[derive(Debug, Clone, FromQueryResult)]
pub struct InstanceLayout {
    pub id: i64,
    pub transfer_syntax: String,
    pub blob_key: String,
    pub pixel_data_offset: Option<i64>,
    pub pixel_data_length: Option<i64>,
    /// JSON: per frame, the list of `[offset, length]` byte ranges.
    pub frames: Option<String>,
    /// JSON: bulk data path -> `[offset, length]`.
    pub bulk: String,
}

impl HospitalDb {
    fn instances_of(&self, f: InstanceFilter) -> sea_orm::Select<instance::Entity> {
        let mut q = instance::Entity::find()
            .filter(instance::Column::HospitalId.eq(f.hospital_pk))
            .filter(instance::Column::StudyId.eq(f.study_pk))
            // Always true. SQLite's planner has no statistics and took
            // `(hospital_id, instance_number)` for `hospital_id = ? AND
            // study_id = ?`: every instance of the hospital read to list one
            // study's (2.1 s for a 4,000-instance study among 400,000
            // instances). With a range on the rowid too, the study index
            // wins (`study_id=? AND rowid>?`).
            .filter(instance::Column::Id.gt(0));
        if let Some(s) = f.series_pk {
            q = q.filter(instance::Column::SeriesId.eq(s));
        }
        if let Some(i) = f.instance_pk {
            q = q.filter(instance::Column::Id.eq(i));
        }
        q
    }

    /// Keyset page of the covered instances: primary keys above `after`,
    /// in order, at most `limit`.
    fn page_of(
        &self,
        f: InstanceFilter,
        after: i64,
        limit: u64,
    ) -> sea_orm::Select<instance::Entity> {
        self.instances_of(f)
            .filter(instance::Column::Id.gt(after))
            .order_by_asc(instance::Column::Id)
            .limit(limit)
    }

    /// A study this hospital may read: its own, or one another hospital
    /// shared with it (its own copy first when both exist). One query.
    pub async fn find_study(&self, study_uid: &str) -> Result<StudyRef, DbError> {
        let sql = format!(
            "SELECT {STUDY_COLUMNS} \
             FROM studies st \
             WHERE st.study_uid = $1 AND st.hospital_id {VISIBLE} \
             ORDER BY {OWN_FIRST} LIMIT 1"
        );
        self.located(&sql, vec![study_uid.into(), self.hospital.pk.into()])
            .await
            .map(|row| row.0)
    }

    /// A series of a readable study, with its study. One query.
    pub async fn find_series(
        &self,
        study_uid: &str,
        series_uid: &str,
    ) -> Result<(StudyRef, SeriesRef), DbError> {
        let sql = format!(
            "SELECT {STUDY_COLUMNS}, {SERIES_COLUMNS} \
             FROM series se JOIN studies st ON st.id = se.study_id \
             WHERE se.series_uid = $3 AND se.hospital_id {VISIBLE} AND st.study_uid = $1 \
             ORDER BY {OWN_FIRST} LIMIT 1"
        );
        let values = vec![study_uid.into(), self.hospital.pk.into(), series_uid.into()];
        let (study, row) = self.located(&sql, values).await?;
        Ok((study, SeriesRef::from_query_result(&row, "s_")?))
    }

    /// Where an instance of a series of a readable study is (without its
    /// metadata JSON), with its study and series: what frame, bulk data and
    /// instance reads need, in one query.
    pub async fn find_instance(
        &self,
        study_uid: &str,
        series_uid: &str,
        sop_uid: &str,
    ) -> Result<(StudyRef, SeriesRef, InstanceLayout), DbError> {
        let sql = format!(
            "SELECT {STUDY_COLUMNS}, {SERIES_COLUMNS}, \
               i.id, i.transfer_syntax, i.blob_key, i.pixel_data_offset, i.pixel_data_length, \
               i.frames, i.bulk \
             FROM instances i \
               JOIN series se ON se.id = i.series_id \
               JOIN studies st ON st.id = i.study_id \
             WHERE i.sop_uid = $4 AND i.hospital_id {VISIBLE} \
               AND se.series_uid = $3 AND st.study_uid = $1 \
             ORDER BY {OWN_FIRST} LIMIT 1"
        );
        let values = vec![
            study_uid.into(),
            self.hospital.pk.into(),
            series_uid.into(),
            sop_uid.into(),
        ];
        let (study, row) = self.located(&sql, values).await?;
        Ok((
            study,
            SeriesRef::from_query_result(&row, "s_")?,
            InstanceLayout::from_query_result(&row, "")?,
        ))
    }

    /// Run one of the lookups above: `$1` is the study UID, `$2` this
    /// hospital; the row starts with the study's columns.
    async fn located(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<(StudyRef, sea_orm::QueryResult), DbError> {
        let conn = self.db.conn();
        let row = conn
            .query_one_raw(Statement::from_sql_and_values(
                conn.get_database_backend(),
                sql,
                values,
            ))
            .await?
            .ok_or(DbError::NotFound)?;
        Ok((StudyRef::from_query_result(&row, "")?, row))
    }

    /// The UIDs of the series of a study, by primary key.
    pub async fn series_uids(&self, study: &StudyRef) -> Result<Vec<(i64, String)>, DbError> {
        Ok(series::Entity::find()
            .select_only()
            .column(series::Column::Id)
            .column(series::Column::SeriesUid)
            .filter(series::Column::HospitalId.eq(study.hospital_pk))
            .filter(series::Column::StudyId.eq(study.pk))
            .into_tuple::<(i64, String)>()
            .all(self.db.conn())
            .await?)
    }

    /// The distinct transfer syntaxes of the covered instances.
    pub async fn transfer_syntaxes(&self, f: InstanceFilter) -> Result<Vec<String>, DbError> {
        Ok(self
            .instances_of(f)
            .select_only()
            .column(instance::Column::TransferSyntax)
            .distinct()
            .into_tuple::<String>()
            .all(self.db.conn())
            .await?)
    }

    /// Up to `limit` covered instances with a primary key above `after`.
    pub async fn instance_blobs_page(
        &self,
        f: InstanceFilter,
        after: i64,
        limit: u64,
    ) -> Result<Vec<InstanceBlobRow>, DbError> {
        let rows = self
            .page_of(f, after, limit)
            .select_only()
            .column(instance::Column::Id)
            .column(instance::Column::BlobKey)
            .column(instance::Column::SizeBytes)
            .column(instance::Column::TransferSyntax)
            .into_tuple::<(i64, String, i64, String)>()
            .all(self.db.conn())
            .await?;
        Ok(rows
            .into_iter()
            .map(
                |(pk, blob_key, size_bytes, transfer_syntax)| InstanceBlobRow {
                    pk,
                    blob_key,
                    size_bytes,
                    transfer_syntax,
                },
            )
            .collect())
    }

    /// Up to `limit` covered instances' metadata with a primary key above
    /// `after`.
    pub async fn instance_metadata_page(
        &self,
        f: InstanceFilter,
        after: i64,
        limit: u64,
    ) -> Result<Vec<InstanceMetadataRow>, DbError> {
        let rows = self
            .page_of(f, after, limit)
            .select_only()
            .column(instance::Column::Id)
            .column(instance::Column::SeriesId)
            .column(instance::Column::SopUid)
            .column(instance::Column::Metadata)
            .into_tuple::<(i64, i64, String, String)>()
            .all(self.db.conn())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(pk, series_pk, sop_uid, metadata)| InstanceMetadataRow {
                pk,
                series_pk,
                sop_uid,
                metadata,
            })
            .collect())
    }

    /// Remove the covered instances from the index, in one transaction that
    /// also journals their blob keys as pending (so a crash before the blobs
    /// are deleted leaves them to the orphan sweeper, never leaked) and
    /// recounts, or drops, the series and study they leave. Returns the blob
    /// keys to delete; `NotFound` when nothing was covered.
    pub async fn delete_instances(&self, f: InstanceFilter) -> Result<Vec<String>, DbError> {
        // A study shared with this hospital is read-only here.
        if f.hospital_pk != self.hospital.pk {
            return Err(DbError::NotFound);
        }
        let txn = self.db.writer.begin().await?;
        let now = now_millis();
        // Lock the study row first, as ingest does, so a concurrent ingest
        // into this study waits and the recounts stay exact.
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            "UPDATE studies SET updated_at = $1 WHERE id = $2 AND hospital_id = $3",
            vec![now.into(), f.study_pk.into(), self.hospital.pk.into()],
        ))
        .await?;
        let victims = self
            .instances_of(f)
            .select_only()
            .column(instance::Column::Id)
            .column(instance::Column::SeriesId)
            .column(instance::Column::BlobKey)
            .column(instance::Column::SizeBytes)
            .into_tuple::<(i64, i64, String, i64)>()
            .all(&txn)
            .await?;
        if victims.is_empty() {
            txn.rollback().await?;
            return Err(DbError::NotFound);
        }
        for chunk in victims.chunks(IN_CHUNK) {
            let journal = chunk
                .iter()
                .map(|(_, _, key, _)| pending_blob::ActiveModel {
                    blob_key: Set(key.clone()),
                    created_at: Set(now),
                    ..Default::default()
                });
            pending_blob::Entity::insert_many(journal)
                .on_conflict(
                    OnConflict::column(pending_blob::Column::BlobKey)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
            instance::Entity::delete_many()
                .filter(instance::Column::HospitalId.eq(self.hospital.pk))
                .filter(instance::Column::Id.is_in(chunk.iter().map(|(pk, _, _, _)| *pk)))
                .exec(&txn)
                .await?;
        }
        let pairs: Vec<(i64, i64)> = victims
            .iter()
            .map(|(_, s, _, _)| (f.study_pk, *s))
            .collect();
        recount(&txn, &pairs, now, false).await?;
        let freed: i64 = victims.iter().map(|(_, _, _, size)| size).sum();
        charge(&txn, self.hospital.pk, -freed).await?;
        txn.commit().await?;
        Ok(victims.into_iter().map(|(_, _, key, _)| key).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait};

    use super::*;
    use crate::db::{Db, PoolOptions};

    /// SQLite plans the instances of a study through the study index, not
    /// through an index on the hospital (which reads all its instances).
    #[tokio::test]
    async fn a_study_s_instances_are_found_through_the_study_index() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("i.sqlite").display()
        );
        let pool = PoolOptions {
            max_connections: 2,
            acquire_timeout: std::time::Duration::from_secs(5),
            statement_timeout: None,
        };
        let db = Db::connect(&url, &pool).await.unwrap();
        db.migrate().await.unwrap();
        db.ensure_default_hospital().await.unwrap();
        let scope = db.scoped(db.find_hospital("default").await.unwrap());
        let f = InstanceFilter {
            hospital_pk: scope.hospital().pk,
            study_pk: 1,
            series_pk: None,
            instance_pk: None,
        };
        let listing = scope
            .instances_of(f)
            .select_only()
            .column(instance::Column::TransferSyntax)
            .distinct()
            .build(DbBackend::Sqlite);
        let plan = db
            .conn()
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!("EXPLAIN QUERY PLAN {}", listing.sql),
                listing.values.map(|v| v.0).unwrap_or_default(),
            ))
            .await
            .unwrap();
        let detail: Vec<String> = plan
            .iter()
            .map(|r| r.try_get::<String>("", "detail").unwrap())
            .collect();
        assert!(
            detail.iter().any(|d| d.contains("ix_instances_study")),
            "{detail:?}"
        );
    }
}
