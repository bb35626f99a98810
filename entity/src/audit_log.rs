//! One recorded DICOMweb or admin action: who, on which hospital, what,
//! on which UIDs, with which outcome, from where, when. Never patient data.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Public id of the hospital acted on (none: unauthenticated and not
    /// attributable; visible to superadmins only).
    pub hospital_id: Option<String>,
    /// `key`, `user`, `external`, `system` or `anonymous`.
    pub actor_kind: String,
    /// Key id, user id, external subject; never a secret.
    pub actor_id: Option<String>,
    /// User name, when known.
    pub actor_name: Option<String>,
    pub action: String,
    pub method: String,
    /// Several study UIDs (a STOW into `/studies`) are separated by `\`.
    #[sea_orm(column_type = "Text", nullable)]
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub instance_uid: Option<String>,
    pub status: i32,
    pub client_ip: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
