//! A study of one hospital, with its searchable attributes as columns.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "studies")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub hospital_id: i64,
    pub study_uid: String,
    pub patient_name: Option<String>,
    /// PatientName folded for case- and accent-insensitive search.
    pub patient_name_norm: Option<String>,
    pub patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub study_date: Option<String>,
    pub study_time: Option<String>,
    pub accession_number: Option<String>,
    pub referring_physician_name: Option<String>,
    /// DICOM StudyID (0020,0010).
    pub study_id_attr: Option<String>,
    pub study_description: Option<String>,
    /// Backslash-separated distinct modalities of the study's series.
    pub modalities_in_study: String,
    pub number_of_series: i32,
    pub number_of_instances: i32,
    pub size_bytes: i64,
    /// DICOM JSON of the study- and patient-level attributes.
    #[sea_orm(column_type = "Text")]
    pub attributes: String,
    pub received_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
