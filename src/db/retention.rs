//! What the retention sweeper reads and claims: studies past a hospital's
//! retention, and leases that let one replica at a time run a sweep.

use entity::study;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
};

use super::{Db, DbError};

impl Db {
    /// Take (or renew) the lease `name` until `now + ttl_ms` unless another
    /// holder has it unexpired. One statement, atomic on both backends.
    pub async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, DbError> {
        let res = self
            .writer
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE leases.expires_at <= $4 OR leases.holder = $2",
                vec![
                    name.into(),
                    holder.into(),
                    now.saturating_add(ttl_ms).into(),
                    now.into(),
                ],
            ))
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Give a lease up (only its holder can).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), DbError> {
        self.writer
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                "UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2",
                vec![name.into(), holder.into()],
            ))
            .await?;
        Ok(())
    }

    /// Up to `limit` study UIDs of a hospital received before `cutoff`
    /// (milliseconds), oldest first.
    pub async fn studies_received_before(
        &self,
        hospital_pk: i64,
        cutoff: i64,
        limit: u64,
    ) -> Result<Vec<String>, DbError> {
        Ok(study::Entity::find()
            .select_only()
            .column(study::Column::StudyUid)
            .filter(study::Column::HospitalId.eq(hospital_pk))
            .filter(study::Column::ReceivedAt.lt(cutoff))
            .order_by_asc(study::Column::ReceivedAt)
            .order_by_asc(study::Column::Id)
            .limit(limit)
            .into_tuple::<String>()
            .all(&self.conn)
            .await?)
    }
}
