//! A study one hospital shares (read-only) with another.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "study_shares")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub owner_hospital_id: i64,
    pub study_uid: String,
    pub target_hospital_id: i64,
    pub access_level: String,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
