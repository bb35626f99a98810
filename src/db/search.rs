//! QIDO-RS searches: the typed query (`dicom::query`) folded into SQL
//! conditions, always under the hospital filter of the scoped handle.
//!
//! Order (documented in the README): studies newest first (by index id),
//! series by SeriesNumber then arrival, instances by InstanceNumber then
//! arrival. Ids are unique, so pages never overlap or skip.

use std::collections::HashMap;

use entity::{instance, series, study, study_share};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, LikeExpr, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, JoinType, Order, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, RelationTrait,
};

use super::{DbError, HospitalDb};
use crate::dicom::query::{Field, Match, like_pattern};

/// The filters of one search, and its window.
#[derive(Debug, Clone)]
pub struct Search {
    pub filters: Vec<(Field, Match)>,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub limit: u64,
    pub offset: u64,
}

/// A series with its study.
pub type SeriesHit = (series::Model, study::Model);
/// An instance with its series and study.
pub type InstanceHit = (instance::Model, series::Model, study::Model);

fn column(field: Field) -> (Expr, bool) {
    use Field::*;
    let s = |c: study::Column| Expr::col((study::Entity, c));
    let r = |c: series::Column| Expr::col((series::Entity, c));
    let i = |c: instance::Column| Expr::col((instance::Entity, c));
    // (expression, whether the column holds upper-case folded text)
    match field {
        StudyUid => (s(study::Column::StudyUid), false),
        StudyDate => (s(study::Column::StudyDate), false),
        StudyTime => (s(study::Column::StudyTime), false),
        AccessionNumber => (s(study::Column::AccessionNumber), false),
        ModalitiesInStudy => (s(study::Column::ModalitiesInStudy), false),
        ReferringPhysicianName => (s(study::Column::ReferringPhysicianName), false),
        PatientName => (s(study::Column::PatientNameNorm), true),
        PatientId => (s(study::Column::PatientId), false),
        PatientBirthDate => (s(study::Column::PatientBirthDate), false),
        PatientSex => (s(study::Column::PatientSex), false),
        StudyId => (s(study::Column::StudyIdAttr), false),
        StudyDescription => (s(study::Column::StudyDescription), false),
        SeriesUid => (r(series::Column::SeriesUid), false),
        Modality => (r(series::Column::Modality), false),
        SeriesNumber => (r(series::Column::SeriesNumber), false),
        SeriesDescription => (r(series::Column::SeriesDescription), false),
        SeriesDate => (r(series::Column::SeriesDate), false),
        PpsStartDate => (r(series::Column::PpsStartDate), false),
        PpsStartTime => (r(series::Column::PpsStartTime), false),
        SopUid => (i(instance::Column::SopUid), false),
        SopClassUid => (i(instance::Column::SopClassUid), false),
        InstanceNumber => (i(instance::Column::InstanceNumber), false),
    }
}

fn like(col: Expr, pattern: String) -> SimpleExpr {
    col.like(LikeExpr::new(pattern).escape('\\'))
}

/// One attribute's match as a SQL condition (`None`: matches everything).
fn condition(field: Field, m: &Match) -> Option<SimpleExpr> {
    let (col, folded) = column(field);
    // ReferringPhysicianName has no folded column: compare upper-cased.
    let col: Expr = if field == Field::ReferringPhysicianName && !folded {
        Expr::expr(sea_orm::sea_query::Func::upper(col))
    } else {
        col
    };
    Some(match m {
        Match::Universal => return None,
        Match::Single(v) => col.eq(v.clone()),
        Match::Wildcard(w) => like(col, like_pattern(w)),
        Match::Integer(n) => col.eq(*n),
        Match::Range(from, to) => {
            let mut c = Condition::all();
            if let Some(f) = from {
                c = c.add(col.clone().gte(f.clone()));
            }
            if let Some(t) = to {
                // "1230" must include "123059.5": pad the bound with 9s.
                let bound = if matches!(field, Field::StudyTime | Field::PpsStartTime) {
                    format!("{t}9999999999")
                } else {
                    t.clone()
                };
                c = c.add(col.lte(bound));
            }
            return Some(c.into());
        }
        Match::UidList(values) if field == Field::ModalitiesInStudy => {
            // a series of the study has one of the modalities
            let ms = Alias::new("ms");
            let sub = Query::select()
                .expr(Expr::val(1))
                .from_as(series::Entity, ms.clone())
                .and_where(
                    Expr::col((ms.clone(), series::Column::StudyId))
                        .equals((study::Entity, study::Column::Id)),
                )
                .and_where(Expr::col((ms, series::Column::Modality)).is_in(values.clone()))
                .to_owned();
            Expr::exists(sub)
        }
        Match::UidList(values) => col.is_in(values.clone()),
        Match::Fuzzy(words) => {
            let mut all = Condition::all();
            for w in words {
                let p = like_pattern(w);
                all = all.add(
                    Condition::any()
                        .add(like(col.clone(), format!("{p}%")))
                        .add(like(col.clone(), format!("%^{p}%")))
                        .add(like(col.clone(), format!("% {p}%"))),
                );
            }
            return Some(all.into());
        }
    })
}

fn conditions(search: &Search) -> Condition {
    let mut c = Condition::all();
    for (field, m) in &search.filters {
        if let Some(expr) = condition(*field, m) {
            c = c.add(expr);
        }
    }
    if let Some(uid) = &search.study_uid {
        c = c.add(Expr::col((study::Entity, study::Column::StudyUid)).eq(uid.clone()));
    }
    if let Some(uid) = &search.series_uid {
        c = c.add(Expr::col((series::Entity, series::Column::SeriesUid)).eq(uid.clone()));
    }
    c
}

impl HospitalDb {
    /// The studies this hospital may read: its own, and those another
    /// hospital shared with it. Checked once per search so that hospitals
    /// without shares keep the plain, index-friendly condition.
    pub(super) async fn visible_studies(&self) -> Result<Condition, DbError> {
        let own = Expr::col((study::Entity, study::Column::HospitalId)).eq(self.hospital.pk);
        let has_shares = study_share::Entity::find()
            .filter(study_share::Column::TargetHospitalId.eq(self.hospital.pk))
            .one(self.db.conn())
            .await?
            .is_some();
        if !has_shares {
            return Ok(Condition::all().add(own));
        }
        let shared = Query::select()
            .expr(Expr::val(1))
            .from(study_share::Entity)
            .and_where(
                Expr::col((study_share::Entity, study_share::Column::TargetHospitalId))
                    .eq(self.hospital.pk),
            )
            .and_where(
                Expr::col((study_share::Entity, study_share::Column::OwnerHospitalId))
                    .equals((study::Entity, study::Column::HospitalId)),
            )
            .and_where(
                Expr::col((study_share::Entity, study_share::Column::StudyUid))
                    .equals((study::Entity, study::Column::StudyUid)),
            )
            .to_owned();
        Ok(Condition::any().add(own).add(Expr::exists(shared)))
    }

    pub async fn search_studies(&self, search: &Search) -> Result<Vec<study::Model>, DbError> {
        // With a selective filter, order by an expression: the planner then
        // picks the filter's index and sorts the (few) matches, instead of
        // walking the id index backwards through every study looking for
        // them. ModalitiesInStudy alone is not selective (a handful of
        // values shared by many studies, and no index of its own): walking
        // the id index stops after `limit` hits, where sorting every match
        // first cost O(studies) (409 ms at 100,000 studies).
        let filtered = search.study_uid.is_some()
            || search
                .filters
                .iter()
                .any(|(field, m)| *m != Match::Universal && *field != Field::ModalitiesInStudy);
        let order = if filtered {
            Expr::cust("studies.id + 0")
        } else {
            Expr::col((study::Entity, study::Column::Id))
        };
        // The page is chosen on ids alone (a subquery), then only its rows
        // are read, in one statement: a broad match (`PatientName=THO*` is
        // thousands of studies at 100k) is then sorted from the filter's
        // index, which holds the id, and never reads (or, on PostgreSQL,
        // de-TOASTs) the rows it skips. Both orders are newest first.
        let page = study::Entity::find()
            .select_only()
            .column(study::Column::Id)
            .filter(self.visible_studies().await?)
            .filter(conditions(search))
            .order_by(order, Order::Desc)
            .offset(search.offset)
            .limit(search.limit)
            .into_query();
        Ok(study::Entity::find()
            .filter(study::Column::Id.in_subquery(page))
            .order_by(study::Column::Id, Order::Desc)
            .all(self.db.conn())
            .await?)
    }

    pub async fn search_series(&self, search: &Search) -> Result<Vec<SeriesHit>, DbError> {
        let rows = series::Entity::find()
            .join(JoinType::InnerJoin, series::Relation::Study.def())
            .filter(self.visible_studies().await?)
            .filter(conditions(search))
            .order_by(
                Expr::cust("COALESCE(series.series_number, 2147483647)"),
                Order::Asc,
            )
            .order_by(series::Column::Id, Order::Asc)
            .offset(search.offset)
            .limit(search.limit)
            .all(self.db.conn())
            .await?;
        let studies = self.studies_by_id(rows.iter().map(|s| s.study_id)).await?;
        Ok(rows
            .into_iter()
            .filter_map(|s| studies.get(&s.study_id).cloned().map(|st| (s, st)))
            .collect())
    }

    pub async fn search_instances(&self, search: &Search) -> Result<Vec<InstanceHit>, DbError> {
        let rows = instance::Entity::find()
            .join(JoinType::InnerJoin, instance::Relation::Series.def())
            .join(JoinType::InnerJoin, instance::Relation::Study.def())
            .filter(self.visible_studies().await?)
            .filter(conditions(search))
            .order_by(
                Expr::cust("COALESCE(instances.instance_number, 2147483647)"),
                Order::Asc,
            )
            .order_by(instance::Column::Id, Order::Asc)
            .offset(search.offset)
            .limit(search.limit)
            .all(self.db.conn())
            .await?;
        let studies = self.studies_by_id(rows.iter().map(|i| i.study_id)).await?;
        let mut ids: Vec<i64> = rows.iter().map(|i| i.series_id).collect();
        ids.sort_unstable();
        ids.dedup();
        // ids of rows the visibility condition already admitted
        let series: HashMap<i64, series::Model> = series::Entity::find()
            .filter(series::Column::Id.is_in(ids))
            .all(self.db.conn())
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        Ok(rows
            .into_iter()
            .filter_map(|i| {
                let se = series.get(&i.series_id)?.clone();
                let st = studies.get(&i.study_id)?.clone();
                Some((i, se, st))
            })
            .collect())
    }

    async fn studies_by_id(
        &self,
        ids: impl Iterator<Item = i64>,
    ) -> Result<HashMap<i64, study::Model>, DbError> {
        let mut ids: Vec<i64> = ids.collect();
        ids.sort_unstable();
        ids.dedup();
        // ids of rows the visibility condition already admitted
        Ok(study::Entity::find()
            .filter(study::Column::Id.is_in(ids))
            .all(self.db.conn())
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect())
    }
}
