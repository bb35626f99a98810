//! A person who logs in.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Home hospital.
    pub hospital_id: i64,
    pub username: String,
    pub email: Option<String>,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Comma-separated roles.
    pub roles: String,
    /// JSON array of public hospital ids the user may also access.
    #[sea_orm(column_type = "Text")]
    pub accessible_hospitals: String,
    pub is_active: bool,
    pub is_superadmin: bool,
    pub last_login: Option<i64>,
    pub created_at: i64,
    /// Active TOTP secret (base32), once enrollment was verified.
    #[sea_orm(column_type = "Text", nullable)]
    pub totp_secret: Option<String>,
    /// Secret handed out by enrollment, active after its first valid code.
    #[sea_orm(column_type = "Text", nullable)]
    pub totp_pending: Option<String>,
    /// The last TOTP time step accepted (a code is accepted once).
    pub totp_last_step: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(
        belongs_to = "super::hospital::Entity",
        from = "Column::HospitalId",
        to = "super::hospital::Column::Id"
    )]
    Hospital,
}

impl Related<super::hospital::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Hospital.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
