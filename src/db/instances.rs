//! Writing one instance into the index, inside a batch's transaction
//! ([`super::batch`]): upsert its study and series (once per batch), insert
//! (or replace) the instance, and optionally charge the hospital's storage
//! usage, refusing what exceeds its quota ([`charge`]). Also the recount of
//! series and studies shared with deletes.
//!
//! Concurrency: the transaction first writes the study row, which holds that
//! row's lock (PostgreSQL) or the database write lock (SQLite) until commit,
//! so two ingests into one study are serialized and the recomputed counts
//! are exact.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write;

use entity::{instance, series, study};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::{Set, Unchanged},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    QueryTrait, Statement,
};
use serde_json::{Map, Value};

use super::{DbError, HospitalDb, IN_CHUNK, chunked, now_millis};
use crate::config::DuplicatePolicy;
use crate::dicom::{Inspected, normalize_person_name};

/// An instance whose blob is stored, ready to be indexed.
pub struct NewInstance<'a> {
    pub inspected: &'a Inspected,
    pub blob_key: String,
    pub size_bytes: i64,
    /// See `store::spool`: BLAKE3, or SHA-256 on rows from before it.
    pub digest: String,
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

impl HospitalDb {
    /// The stored digest and size of those of `sop_uids` already stored,
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
                instance::Column::Digest,
                instance::Column::SizeBytes,
            ])
            .filter(instance::Column::HospitalId.eq(self.hospital.pk))
            .filter(instance::Column::SopUid.is_in(sop_uids.iter().copied()))
            .into_tuple()
            .all(self.db.conn())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(sop, digest, size)| (sop, (digest, size)))
            .collect())
    }

    /// Bytes this hospital may still store; `None`: no quota. Advisory (a
    /// cheap early refusal before a blob is written): the ingest
    /// transaction's conditional update is what enforces the quota.
    pub async fn storage_headroom(&self) -> Result<Option<i64>, DbError> {
        let (bytes, max) = self.db.storage(self.hospital.pk).await?;
        Ok((max > 0).then_some(max - bytes))
    }

    /// Index every instance of a batch in `txn` with a few multi-row
    /// statements: its studies upserted, its series upserted, its instances
    /// inserted. The common case of a batch of new instances. `None` when
    /// an instance is already stored or conflicts (a series of another
    /// study): then the caller rolls back and indexes the batch instance
    /// by instance. Nothing is charged here.
    pub(super) async fn index_all(
        &self,
        txn: &DatabaseTransaction,
        news: &[NewInstance<'_>],
    ) -> Result<Option<Vec<Placed>>, sea_orm::DbErr> {
        let h = self.hospital.pk;
        let now = now_millis();
        // Rows in the order they first appear in the batch: ids, and so the
        // default order of search results, follow the request.
        let studies = first_of_each(news, |i| i.study_uid.as_str());
        let mut study_pks: HashMap<String, i64> = HashMap::with_capacity(studies.len());
        let rows: Vec<study::ActiveModel> = studies.iter().map(|i| study_row(h, i, now)).collect();
        for chunk in chunked(rows) {
            let mut q = study::Entity::insert_many(chunk)
                .on_conflict(study_upsert())
                .into_query();
            q.returning(Query::returning().columns([study::Column::Id, study::Column::StudyUid]));
            for row in query_all(txn, &q).await? {
                study_pks.insert(row.try_get("", "study_uid")?, row.try_get("", "id")?);
            }
        }
        let study_of = |ins: &Inspected| study_pks.get(ins.study_uid.as_str()).copied();

        let series = first_of_each(news, |i| i.series_uid.as_str());
        let mut rows = Vec::with_capacity(series.len());
        for ins in &series {
            let Some(study_pk) = study_of(ins) else {
                return Ok(None);
            };
            rows.push(series_row(h, study_pk, ins, now));
        }
        let mut series_pks: HashMap<String, (i64, i64)> = HashMap::with_capacity(rows.len());
        for chunk in chunked(rows) {
            let mut q = series::Entity::insert_many(chunk)
                .on_conflict(series_upsert())
                .into_query();
            q.returning(Query::returning().columns([
                series::Column::Id,
                series::Column::StudyId,
                series::Column::SeriesUid,
            ]));
            for row in query_all(txn, &q).await? {
                series_pks.insert(
                    row.try_get("", "series_uid")?,
                    (row.try_get("", "id")?, row.try_get("", "study_id")?),
                );
            }
        }

        let mut placed = Vec::with_capacity(news.len());
        let mut rows = Vec::with_capacity(news.len());
        for new in news {
            let ins = new.inspected;
            let (Some(study_pk), Some(&(series_pk, series_study))) =
                (study_of(ins), series_pks.get(ins.series_uid.as_str()))
            else {
                return Ok(None);
            };
            if series_study != study_pk {
                // the series belongs to another study (stored, or of an
                // earlier instance of this batch)
                return Ok(None);
            }
            rows.push(instance_row(h, study_pk, series_pk, new, now));
            placed.push(Placed {
                indexed: Indexed::Stored,
                delta: new.size_bytes,
                study_pk,
                series_pk,
                touched: vec![(study_pk, series_pk)],
            });
        }
        let mut inserted = 0;
        for chunk in chunked(rows) {
            inserted += instance::Entity::insert_many(chunk)
                .on_conflict(instance_kept())
                .exec_without_returning(txn)
                .await?;
        }
        // fewer: some SOP Instance UID is stored already (or twice here)
        Ok((inserted == news.len() as u64).then_some(placed))
    }

    /// Index one instance in `txn` (a savepoint of the batch's
    /// transaction). `known` holds the study and series rows the batch
    /// already wrote: those are neither written nor looked up again. With
    /// `charge_now` the instance's bytes are charged to the hospital's
    /// quota here; otherwise the caller charges the batch's total.
    pub(super) async fn index_in(
        &self,
        txn: &DatabaseTransaction,
        new: &NewInstance<'_>,
        policy: DuplicatePolicy,
        known: &Known,
        charge_now: bool,
    ) -> Result<Result<Placed, IndexConflict>, sea_orm::DbErr> {
        let h = self.hospital.pk;
        let ins = new.inspected;
        let now = now_millis();

        // Study: inserted if new, and its row locked (the update of an
        // existing one) for the rest of the transaction.
        let study_pk = match known.studies.get(ins.study_uid.as_str()) {
            Some(pk) => *pk,
            None => {
                let mut q = study::Entity::insert(study_row(h, ins, now))
                    .on_conflict(study_upsert())
                    .into_query();
                q.returning_col(study::Column::Id);
                query_one(txn, &q).await?.try_get("", "id")?
            }
        };

        // Series: inserted if new; a conflict leaves the row as it is.
        let series_pk = match known.series.get(ins.series_uid.as_str()) {
            Some(&(pk, study)) if study == study_pk => pk,
            Some(_) => return Ok(Err(IndexConflict::SeriesInOtherStudy)),
            None => {
                let mut q = series::Entity::insert(series_row(h, study_pk, ins, now))
                    .on_conflict(series_upsert())
                    .into_query();
                q.returning(
                    Query::returning().columns([series::Column::Id, series::Column::StudyId]),
                );
                let row = query_one(txn, &q).await?;
                if row.try_get::<i64>("", "study_id")? != study_pk {
                    return Ok(Err(IndexConflict::SeriesInOtherStudy));
                }
                row.try_get("", "id")?
            }
        };

        // Instance: inserted unless its SOP Instance UID is stored.
        let inserted = instance::Entity::insert(instance_row(h, study_pk, series_pk, new, now))
            .on_conflict(instance_kept())
            .exec_without_returning(txn)
            .await?;
        let mut touched = vec![(study_pk, series_pk)];
        let (delta, indexed) = if inserted == 1 {
            (new.size_bytes, Indexed::Stored)
        } else {
            let old = instance::Entity::find()
                .filter(instance::Column::HospitalId.eq(h))
                .filter(instance::Column::SopUid.eq(ins.sop_instance_uid.as_str()))
                .one(txn)
                .await?
                .ok_or_else(|| sea_orm::DbErr::RecordNotFound("instance in conflict".into()))?;
            // A row from before BLAKE3 (SHA-256) was already compared by
            // ingest's pre-check; one indexed since is BLAKE3 like `new`.
            if old.digest == new.digest {
                return Ok(Ok(Placed {
                    indexed: Indexed::Identical,
                    delta: 0,
                    study_pk,
                    series_pk,
                    touched: Vec::new(),
                }));
            }
            if policy == DuplicatePolicy::Reject {
                return Ok(Err(IndexConflict::DifferentObject));
            }
            let mut am = instance_row(h, study_pk, series_pk, new, now);
            am.id = Unchanged(old.id);
            am.update(txn).await?;
            if old.series_id != series_pk {
                touched.push((old.study_id, old.series_id));
            }
            (
                new.size_bytes - old.size_bytes,
                Indexed::Replaced {
                    old_blob: old.blob_key,
                },
            )
        };
        // The quota, last (rows before the usage row, as deletes lock them):
        // refused, the caller rolls everything back.
        if charge_now && !charge(txn, h, delta).await? {
            return Ok(Err(IndexConflict::QuotaExceeded));
        }
        Ok(Ok(Placed {
            indexed,
            delta,
            study_pk,
            series_pk,
            touched,
        }))
    }
}

/// The first instance of each study (or series, by `key`) of a batch, in
/// the order they first appear.
fn first_of_each<'a>(
    news: &[NewInstance<'a>],
    key: impl Fn(&'a Inspected) -> &'a str,
) -> Vec<&'a Inspected> {
    let mut seen = HashSet::new();
    news.iter()
        .map(|n| n.inspected)
        .filter(|i| seen.insert(key(i)))
        .collect()
}

/// The study row of an instance, as first written (counts come later).
fn study_row(h: i64, ins: &Inspected, now: i64) -> study::ActiveModel {
    let s = &ins.study;
    study::ActiveModel {
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
        attributes: Set(ins.study_json.clone()),
        received_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    }
}

/// A stored study keeps its row; the update takes its lock.
fn study_upsert() -> OnConflict {
    OnConflict::columns([study::Column::HospitalId, study::Column::StudyUid])
        .update_column(study::Column::UpdatedAt)
        .to_owned()
}

/// The series row of an instance, as first written.
fn series_row(h: i64, study_pk: i64, ins: &Inspected, now: i64) -> series::ActiveModel {
    let r = &ins.series;
    series::ActiveModel {
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
        attributes: Set(ins.series_json.clone()),
        received_at: Set(now),
        ..Default::default()
    }
}

/// A stored series keeps its row: a no-op update, so that RETURNING
/// answers for it too (with its study, to tell a conflict).
fn series_upsert() -> OnConflict {
    OnConflict::columns([series::Column::HospitalId, series::Column::SeriesUid])
        .value(
            series::Column::StudyId,
            Expr::col((series::Entity, series::Column::StudyId)),
        )
        .to_owned()
}

/// The instance row of an instance (every column but the id).
fn instance_row(
    h: i64,
    study_pk: i64,
    series_pk: i64,
    new: &NewInstance<'_>,
    now: i64,
) -> instance::ActiveModel {
    let ins = new.inspected;
    let bulk: Map<String, Value> = ins
        .bulk
        .iter()
        .map(|(path, (o, l))| (path.clone(), serde_json::json!([o, l])))
        .collect();
    instance::ActiveModel {
        hospital_id: Set(h),
        study_id: Set(study_pk),
        series_id: Set(series_pk),
        sop_uid: Set(ins.sop_instance_uid.to_string()),
        sop_class_uid: Set(ins.sop_class_uid.to_string()),
        instance_number: Set(ins.instance_number),
        transfer_syntax: Set(ins.transfer_syntax.clone()),
        rows: Set(ins.rows),
        columns: Set(ins.columns),
        bits_allocated: Set(ins.bits_allocated),
        number_of_frames: Set(ins.number_of_frames),
        blob_key: Set(new.blob_key.clone()),
        size_bytes: Set(new.size_bytes),
        digest: Set(new.digest.clone()),
        pixel_data_offset: Set(ins.pixel_data.map(|p| p.0 as i64)),
        pixel_data_length: Set(ins.pixel_data.map(|p| p.1 as i64)),
        frames: Set(ins
            .frames
            .as_ref()
            .map(|f| serde_json::to_string(f).unwrap_or_default())),
        bulk: Set(Value::Object(bulk).to_string()),
        metadata: Set(ins.metadata.clone()),
        received_at: Set(now),
        ..Default::default()
    }
}

/// A stored SOP Instance UID keeps its row (the caller decides).
fn instance_kept() -> OnConflict {
    OnConflict::columns([instance::Column::HospitalId, instance::Column::SopUid])
        .do_nothing()
        .to_owned()
}

/// The study and series rows a batch has written so far, by UID.
#[derive(Debug, Default)]
pub(super) struct Known {
    pub studies: HashMap<String, i64>,
    /// Series primary key and its study's.
    pub series: HashMap<String, (i64, i64)>,
}

/// What indexing one instance wrote.
#[derive(Debug)]
pub(super) struct Placed {
    pub indexed: Indexed,
    /// Bytes it adds to the hospital's usage.
    pub delta: i64,
    pub study_pk: i64,
    pub series_pk: i64,
    /// (study, series) pairs whose counts changed.
    pub touched: Vec<(i64, i64)>,
}

/// Run an INSERT … RETURNING; its row.
async fn query_one<C: ConnectionTrait>(
    c: &C,
    q: &sea_orm::sea_query::InsertStatement,
) -> Result<sea_orm::QueryResult, sea_orm::DbErr> {
    c.query_one_raw(c.get_database_backend().build(q))
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("no row returned".into()))
}

/// Run an INSERT … RETURNING of several rows; its rows.
async fn query_all<C: ConnectionTrait>(
    c: &C,
    q: &sea_orm::sea_query::InsertStatement,
) -> Result<Vec<sea_orm::QueryResult>, sea_orm::DbErr> {
    c.query_all_raw(c.get_database_backend().build(q)).await
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
/// check and the addition are one conditional upsert of the usage row, which
/// PostgreSQL row-locks (SQLite: the write lock) until commit: two
/// concurrent ingests cannot both see the same headroom. A delta of 0 or
/// less always passes. Returns whether it was charged.
pub(super) async fn charge<C: ConnectionTrait>(
    c: &C,
    hospital_pk: i64,
    delta: i64,
) -> Result<bool, sea_orm::DbErr> {
    // One statement: the hospital's first charge inserts its row (when
    // `delta` alone fits), a later one adds to it (when the sum fits).
    let res = c
        .execute_raw(Statement::from_sql_and_values(
            c.get_database_backend(),
            "INSERT INTO hospital_usage (hospital_id, bytes) \
             SELECT $2, $1 WHERE $1 <= 0 \
               OR (SELECT max_storage_bytes FROM hospitals WHERE id = $2) <= 0 \
               OR $1 <= (SELECT max_storage_bytes FROM hospitals WHERE id = $2) \
             ON CONFLICT (hospital_id) DO UPDATE SET bytes = hospital_usage.bytes + $1 \
             WHERE $1 <= 0 \
               OR (SELECT max_storage_bytes FROM hospitals WHERE id = $2) <= 0 \
               OR hospital_usage.bytes + $1 <= (SELECT max_storage_bytes FROM hospitals WHERE id = $2)",
            vec![delta.into(), hospital_pk.into()],
        ))
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Recompute the counts of the given series and studies from the rows,
/// and drop those that became empty (unless `grown`: only instances were
/// added): a few statements for the lot.
pub(super) async fn recount<C: ConnectionTrait>(
    c: &C,
    pairs: &[(i64, i64)],
    now: i64,
    grown: bool,
) -> Result<(), sea_orm::DbErr> {
    let series_pks: BTreeSet<i64> = pairs.iter().map(|p| p.1).collect();
    let study_pks: BTreeSet<i64> = pairs.iter().map(|p| p.0).collect();
    for chunk in Vec::from_iter(series_pks).chunks(IN_CHUNK) {
        series::Entity::update_many()
            .col_expr(
                series::Column::NumberOfInstances,
                Expr::cust(
                    "(SELECT COUNT(*) FROM instances WHERE instances.series_id = series.id)",
                ),
            )
            .filter(series::Column::Id.is_in(chunk.iter().copied()))
            .exec(c)
            .await?;
        if !grown {
            series::Entity::delete_many()
                .filter(series::Column::Id.is_in(chunk.iter().copied()))
                .filter(series::Column::NumberOfInstances.eq(0))
                .exec(c)
                .await?;
        }
    }
    for chunk in Vec::from_iter(study_pks).chunks(IN_CHUNK) {
        let rows: Vec<(i64, String)> = series::Entity::find()
            .select_only()
            .column(series::Column::StudyId)
            .column(series::Column::Modality)
            .filter(series::Column::StudyId.is_in(chunk.iter().copied()))
            .filter(series::Column::Modality.is_not_null())
            .group_by(series::Column::StudyId)
            .group_by(series::Column::Modality)
            .into_tuple()
            .all(c)
            .await?;
        let mut modalities: HashMap<i64, BTreeSet<String>> = HashMap::new();
        for (study_pk, modality) in rows {
            modalities.entry(study_pk).or_default().insert(modality);
        }
        // one UPDATE per few studies, each study's modalities joined in
        // from a VALUES list (its columns are column1, column2 on both
        // databases)
        for studies in chunked(chunk.to_vec()) {
            let mut sql = String::from(
                "UPDATE studies SET \
                   number_of_series = (SELECT COUNT(*) FROM series WHERE study_id = studies.id), \
                   number_of_instances = (SELECT COUNT(*) FROM instances WHERE study_id = studies.id), \
                   size_bytes = (SELECT CAST(COALESCE(SUM(size_bytes), 0) AS BIGINT) FROM instances WHERE study_id = studies.id), \
                   modalities_in_study = v.column2, updated_at = $1 \
                 FROM (VALUES ",
            );
            let mut values: Vec<sea_orm::Value> = vec![now.into()];
            for (i, study_pk) in studies.iter().enumerate() {
                let listed: Vec<&str> = modalities
                    .get(study_pk)
                    .map(|m| m.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                let n = values.len();
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}(${}, ${})", n + 1, n + 2);
                values.push((*study_pk).into());
                values.push(listed.join("\\").into());
            }
            sql.push_str(") AS v WHERE studies.id = v.column1");
            exec(c, &sql, values).await?;
        }
        if !grown {
            study::Entity::delete_many()
                .filter(study::Column::Id.is_in(chunk.iter().copied()))
                .filter(study::Column::NumberOfInstances.eq(0))
                .exec(c)
                .await?;
        }
    }
    Ok(())
}
