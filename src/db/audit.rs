//! The audit trail: batched inserts, and pages of it for administrators.

use entity::audit_log;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{Db, DbError};

/// Which audit rows to read. `hospital: None` reads every hospital's rows
/// and the unattributed ones: superadmins only (the caller decides).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub hospital: Option<String>,
    pub action: Option<String>,
    /// Milliseconds, inclusive.
    pub since: Option<i64>,
    /// Milliseconds, exclusive.
    pub until: Option<i64>,
    pub limit: u64,
    pub offset: u64,
}

impl Db {
    pub async fn insert_audit(&self, rows: Vec<audit_log::ActiveModel>) -> Result<(), DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        audit_log::Entity::insert_many(rows)
            .exec_without_returning(&self.writer)
            .await?;
        Ok(())
    }

    /// A page of audit rows, newest first (by id: a stable order).
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<audit_log::Model>, DbError> {
        let mut sel = audit_log::Entity::find();
        if let Some(h) = &q.hospital {
            sel = sel.filter(audit_log::Column::HospitalId.eq(h.as_str()));
        }
        if let Some(a) = &q.action {
            sel = sel.filter(audit_log::Column::Action.eq(a.as_str()));
        }
        if let Some(t) = q.since {
            sel = sel.filter(audit_log::Column::At.gte(t));
        }
        if let Some(t) = q.until {
            sel = sel.filter(audit_log::Column::At.lt(t));
        }
        Ok(sel
            .order_by_desc(audit_log::Column::Id)
            .limit(q.limit)
            .offset(q.offset)
            .all(&self.conn)
            .await?)
    }
}
