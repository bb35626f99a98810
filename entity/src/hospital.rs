//! A hospital: the tenant every DICOM row belongs to.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "hospitals")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Public identifier: `default` or `hosp_<16 hex>`.
    #[sea_orm(unique)]
    pub hospital_id: String,
    pub name: String,
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
    pub address: Option<String>,
    pub plan: String,
    pub status: String,
    pub max_users: i32,
    pub max_storage_bytes: i64,
    /// JSON object of the hospital's settings.
    #[sea_orm(column_type = "Text")]
    pub settings: String,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
