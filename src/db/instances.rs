//! Writing instances into the index: one transaction per instance that
//! upserts the study and series, inserts (or replaces) the instance, closes
//! its pending-blob journal entry, recomputes the counts and charges the
//! hospital's storage usage, refusing what exceeds its quota ([`charge`]).
//!
//! Concurrency: the transaction first writes the study row, which holds that
//! row's lock (PostgreSQL) or the database write lock (SQLite) until commit,
//! so two ingests into one study are serialized and the recomputed counts
//! are exact.

use std::collections::HashMap;

use entity::{instance, pending_blob, series, study};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction,
    EntityTrait, QueryFilter, QuerySelect, Statement,
};
use serde_json::{Map, Value};

use super::{DbError, HospitalDb, now_millis};
use crate::config::DuplicatePolicy;
use crate::dicom::{Inspected, normalize_person_name};

/// An instance whose blob is stored, ready to be indexed.
pub struct NewInstance<'a> {
    pub inspected: &'a Inspected,
    pub blob_key: String,
    pub size_bytes: i64,
    pub sha256: String,
}

/// The result of indexing an instance.
#[derive(Debug, PartialEq, Eq)]
pub enum Indexed {
    /// A new instance.
    Stored,
    /// The same bytes were already stored: nothing changed, the new blob is
    /// not referenced.
    Identical,
    /// A different object replaced the stored one, whose blob is returned
    /// for deletion.
    Replaced { old_blob: String },
}

/// Why an instance cannot be indexed.
#[derive(Debug, PartialEq, Eq)]
pub enum IndexConflict {
    /// The series already belongs to another study.
    SeriesInOtherStudy,
    /// A different object is stored under this SOP Instance UID and the
    /// policy is to reject.
    DifferentObject,
    /// Storing it would take the hospital past its storage quota.
    QuotaExceeded,
}

fn json_text(map: &Map<String, Value>) -> String {
    Value::Object(map.clone()).to_string()
}

impl HospitalDb {
    /// The stored SHA-256 and size of those of `sop_uids` already stored,
    /// by SOP Instance UID (cheap pre-checks for retried uploads and for
    /// the quota): one query for a batch, without the metadata column.
    pub async fn stored_instances(
        &self,
        sop_uids: &[&str],
    ) -> Result<HashMap<String, (String, i64)>, DbError> {
        if sop_uids.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<(String, String, i64)> = instance::Entity::find()
            .select_only()
            .columns([
                instance::Column::SopUid,
                instance::Column::Sha256,
                instance::Column::SizeBytes,
            ])
            .filter(instance::Column::HospitalId.eq(self.hospital.pk))
            .filter(instance::Column::SopUid.is_in(sop_uids.iter().copied()))
            .into_tuple()
            .all(self.db.conn())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(sop, sha, size)| (sop, (sha, size)))
            .collect())
    }

    /// Bytes this hospital may still store; `None`: no quota. Advisory (a
    /// cheap early refusal before a blob is written): the ingest
    /// transaction's conditional update is what enforces the quota.
    pub async fn storage_headroom(&self) -> Result<Option<i64>, DbError> {
        let (bytes, max) = self.db.storage(self.hospital.pk).await?;
        Ok((max > 0).then_some(max - bytes))
    }

    /// Index one instance in `txn`. The (study, series) pairs whose counts
    /// it changed are added to `touched`: the caller recounts them (once
    /// per batch) before committing.
    pub(super) async fn index_in(
        &self,
        txn: &DatabaseTransaction,
        new: &NewInstance<'_>,
        policy: DuplicatePolicy,
        touched: &mut Vec<(i64, i64)>,
    ) -> Result<Result<Indexed, IndexConflict>, sea_orm::DbErr> {
        let h = self.hospital.pk;
        let ins = new.inspected;
        let now = now_millis();

        // Study: insert if new, then lock its row for the rest of the transaction.
        let s = &ins.study;
        let am = study::ActiveModel {
            hospital_id: Set(h),
            study_uid: Set(ins.study_uid.to_string()),
            patient_name: Set(s.patient_name.clone()),
            patient_name_norm: Set(s.patient_name.as_deref().map(normalize_person_name)),
            patient_id: Set(s.patient_id.clone()),
            patient_birth_date: Set(s.patient_birth_date.clone()),
            patient_sex: Set(s.patient_sex.clone()),
            study_date: Set(s.study_date.clone()),
            study_time: Set(s.study_time.clone()),
            accession_number: Set(s.accession_number.clone()),
            referring_physician_name: Set(s.referring_physician_name.clone()),
            study_id_attr: Set(s.study_id.clone()),
            study_description: Set(s.study_description.clone()),
            modalities_in_study: Set(String::new()),
            number_of_series: Set(0),
            number_of_instances: Set(0),
            size_bytes: Set(0),
            attributes: Set(json_text(&ins.study_json)),
            received_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        study::Entity::insert(am)
            .on_conflict(
                OnConflict::columns([study::Column::HospitalId, study::Column::StudyUid])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        let study_pk = study::Entity::find()
            .filter(study::Column::HospitalId.eq(h))
            .filter(study::Column::StudyUid.eq(ins.study_uid.as_str()))
            .one(txn)
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("study just upserted".into()))?
            .id;
        exec(
            txn,
            "UPDATE studies SET updated_at = $1 WHERE id = $2",
            vec![now.into(), study_pk.into()],
        )
        .await?;

        // Series.
        let r = &ins.series;
        let am = series::ActiveModel {
            hospital_id: Set(h),
            study_id: Set(study_pk),
            series_uid: Set(ins.series_uid.to_string()),
            modality: Set(r.modality.clone()),
            series_number: Set(r.series_number),
            series_description: Set(r.series_description.clone()),
            series_date: Set(r.series_date.clone()),
            series_time: Set(r.series_time.clone()),
            pps_start_date: Set(r.pps_start_date.clone()),
            pps_start_time: Set(r.pps_start_time.clone()),
            number_of_instances: Set(0),
            attributes: Set(json_text(&ins.series_json)),
            received_at: Set(now),
            ..Default::default()
        };
        series::Entity::insert(am)
            .on_conflict(
                OnConflict::columns([series::Column::HospitalId, series::Column::SeriesUid])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        let series_row = series::Entity::find()
            .filter(series::Column::HospitalId.eq(h))
            .filter(series::Column::SeriesUid.eq(ins.series_uid.as_str()))
            .one(txn)
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("series just upserted".into()))?;
        if series_row.study_id != study_pk {
            return Ok(Err(IndexConflict::SeriesInOtherStudy));
        }

        // Instance.
        let existing = instance::Entity::find()
            .filter(instance::Column::HospitalId.eq(h))
            .filter(instance::Column::SopUid.eq(ins.sop_instance_uid.as_str()))
            .one(txn)
            .await?;
        let frames = ins
            .frames
            .as_ref()
            .map(|f| serde_json::to_string(f).unwrap_or_default());
        let bulk: Map<String, Value> = ins
            .bulk
            .iter()
            .map(|(path, (o, l))| (path.clone(), serde_json::json!([o, l])))
            .collect();
        let fill = |am: &mut instance::ActiveModel| {
            am.hospital_id = Set(h);
            am.study_id = Set(study_pk);
            am.series_id = Set(series_row.id);
            am.sop_uid = Set(ins.sop_instance_uid.to_string());
            am.sop_class_uid = Set(ins.sop_class_uid.to_string());
            am.instance_number = Set(ins.instance_number);
            am.transfer_syntax = Set(ins.transfer_syntax.clone());
            am.rows = Set(ins.rows);
            am.columns = Set(ins.columns);
            am.bits_allocated = Set(ins.bits_allocated);
            am.number_of_frames = Set(ins.number_of_frames);
            am.blob_key = Set(new.blob_key.clone());
            am.size_bytes = Set(new.size_bytes);
            am.sha256 = Set(new.sha256.clone());
            am.pixel_data_offset = Set(ins.pixel_data.map(|p| p.0 as i64));
            am.pixel_data_length = Set(ins.pixel_data.map(|p| p.1 as i64));
            am.frames = Set(frames.clone());
            am.bulk = Set(json_text(&bulk));
            am.metadata = Set(json_text(&ins.metadata));
            am.received_at = Set(now);
        };
        let (delta, outcome) = match existing {
            Some(old) if old.sha256 == new.sha256 => return Ok(Ok(Indexed::Identical)),
            Some(_) if policy == DuplicatePolicy::Reject => {
                return Ok(Err(IndexConflict::DifferentObject));
            }
            Some(old) => {
                let mut am: instance::ActiveModel = old.clone().into();
                fill(&mut am);
                am.update(txn).await?;
                if old.series_id != series_row.id {
                    touched.push((old.study_id, old.series_id));
                }
                (
                    new.size_bytes - old.size_bytes,
                    Indexed::Replaced {
                        old_blob: old.blob_key,
                    },
                )
            }
            None => {
                let mut am = <instance::ActiveModel as Default>::default();
                fill(&mut am);
                instance::Entity::insert(am)
                    .exec_without_returning(txn)
                    .await?;
                (new.size_bytes, Indexed::Stored)
            }
        };
        // The quota, last (rows before the usage row, as deletes lock them):
        // refused, the caller rolls everything back.
        if !charge(txn, h, delta).await? {
            return Ok(Err(IndexConflict::QuotaExceeded));
        }
        pending_blob::Entity::delete_many()
            .filter(pending_blob::Column::BlobKey.eq(new.blob_key.as_str()))
            .exec(txn)
            .await?;
        touched.push((study_pk, series_row.id));
        Ok(Ok(outcome))
    }
}

async fn exec<C: ConnectionTrait>(
    c: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<(), sea_orm::DbErr> {
    c.execute_raw(Statement::from_sql_and_values(
        c.get_database_backend(),
        sql,
        values,
    ))
    .await?;
    Ok(())
}

/// Add `delta` bytes to a hospital's usage, in the caller's transaction,
/// unless that takes it past its `max_storage_bytes` (0: no quota). The
/// check and the addition are one conditional UPDATE of the usage row, which
/// PostgreSQL row-locks (SQLite: the write lock) until commit: two
/// concurrent ingests cannot both see the same headroom. A delta of 0 or
/// less always passes. Returns whether it was charged.
pub(super) async fn charge<C: ConnectionTrait>(
    c: &C,
    hospital_pk: i64,
    delta: i64,
) -> Result<bool, sea_orm::DbErr> {
    exec(
        c,
        "INSERT INTO hospital_usage (hospital_id, bytes) VALUES ($1, 0) ON CONFLICT (hospital_id) DO NOTHING",
        vec![hospital_pk.into()],
    )
    .await?;
    let res = c
        .execute_raw(Statement::from_sql_and_values(
            c.get_database_backend(),
            "UPDATE hospital_usage SET bytes = bytes + $1 \
             WHERE hospital_id = $2 AND ($1 <= 0 \
               OR (SELECT max_storage_bytes FROM hospitals WHERE id = $2) <= 0 \
               OR bytes + $1 <= (SELECT max_storage_bytes FROM hospitals WHERE id = $2))",
            vec![delta.into(), hospital_pk.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Recompute the counts of a series and its study from the rows, and drop
/// them when they became empty.
pub(super) async fn recount<C: ConnectionTrait>(
    c: &C,
    study_pk: i64,
    series_pk: i64,
    now: i64,
) -> Result<(), sea_orm::DbErr> {
    exec(
        c,
        "UPDATE series SET number_of_instances = (SELECT COUNT(*) FROM instances WHERE series_id = $1) WHERE id = $1",
        vec![series_pk.into()],
    )
    .await?;
    exec(
        c,
        "DELETE FROM series WHERE id = $1 AND number_of_instances = 0",
        vec![series_pk.into()],
    )
    .await?;
    let modalities: Vec<String> = c
        .query_all_raw(Statement::from_sql_and_values(
            c.get_database_backend(),
            "SELECT DISTINCT modality FROM series WHERE study_id = $1 AND modality IS NOT NULL ORDER BY modality",
            vec![study_pk.into()],
        ))
        .await?
        .iter()
        .filter_map(|row| row.try_get::<String>("", "modality").ok())
        .collect();
    exec(
        c,
        "UPDATE studies SET \
           number_of_series = (SELECT COUNT(*) FROM series WHERE study_id = $1), \
           number_of_instances = (SELECT COUNT(*) FROM instances WHERE study_id = $1), \
           size_bytes = (SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM instances WHERE study_id = $1), \
           modalities_in_study = $2, updated_at = $3 \
         WHERE id = $1",
        vec![study_pk.into(), modalities.join("\\").into(), now.into()],
    )
    .await?;
    exec(
        c,
        "DELETE FROM studies WHERE id = $1 AND number_of_instances = 0",
        vec![study_pk.into()],
    )
    .await?;
    Ok(())
}
