//! Hospitals, API keys, users and study shares: the administrative rows.

use entity::{api_key, hospital, study_share, user};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, SqlErr, Statement, TransactionTrait,
};

use super::{Db, DbError, Hospital, now_millis};

/// A hospital to register.
#[derive(Debug, Clone)]
pub struct NewHospital {
    pub hospital_id: String,
    pub name: String,
    pub contact_email: Option<String>,
    pub contact_phone: Option<String>,
    pub address: Option<String>,
    pub plan: String,
    pub max_users: i32,
    pub max_storage_bytes: i64,
}

/// Changes to a hospital (absent = unchanged).
#[derive(Debug, Clone, Default)]
pub struct HospitalPatch {
    pub status: Option<String>,
    pub plan: Option<(String, i32, i64)>,
    pub max_users: Option<i32>,
    pub max_storage_bytes: Option<i64>,
    pub settings: Option<String>,
}

/// What a hospital holds and may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub studies: i64,
    pub series: i64,
    pub instances: i64,
    /// Bytes of stored instances, kept exact by every ingest and delete.
    pub bytes: i64,
    /// 0: no quota.
    pub max_storage_bytes: i64,
    pub users: i64,
    pub max_users: i64,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub hospital_pk: i64,
    pub username: String,
    pub email: Option<String>,
    pub password_hash: String,
    pub roles: String,
    pub accessible_hospitals: Vec<String>,
    pub is_superadmin: bool,
}

/// Whether an insert failed only because the row exists.
pub fn is_conflict(e: &DbError) -> bool {
    matches!(e, DbError::Db(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))))
}

impl Db {
    pub async fn create_hospital(&self, new: NewHospital) -> Result<hospital::Model, DbError> {
        let now = now_millis();
        let am = hospital::ActiveModel {
            hospital_id: Set(new.hospital_id),
            name: Set(new.name),
            contact_email: Set(new.contact_email),
            contact_phone: Set(new.contact_phone),
            address: Set(new.address),
            plan: Set(new.plan),
            status: Set("active".into()),
            max_users: Set(new.max_users),
            max_storage_bytes: Set(new.max_storage_bytes),
            settings: Set("{}".into()),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        Ok(am.insert(&self.writer).await?)
    }

    pub async fn hospital_model(&self, id: &str) -> Result<hospital::Model, DbError> {
        hospital::Entity::find()
            .filter(hospital::Column::HospitalId.eq(id))
            .one(&self.conn)
            .await?
            .ok_or(DbError::NotFound)
    }

    pub async fn hospital_by_pk(&self, pk: i64) -> Result<Hospital, DbError> {
        hospital::Entity::find_by_id(pk)
            .one(&self.conn)
            .await?
            .map(Hospital::from)
            .ok_or(DbError::NotFound)
    }

    pub async fn list_hospitals(&self) -> Result<Vec<hospital::Model>, DbError> {
        Ok(hospital::Entity::find()
            .order_by_asc(hospital::Column::Id)
            .all(&self.conn)
            .await?)
    }

    pub async fn update_hospital(
        &self,
        id: &str,
        patch: HospitalPatch,
    ) -> Result<hospital::Model, DbError> {
        let mut am: hospital::ActiveModel = self.hospital_model(id).await?.into();
        if let Some(status) = patch.status {
            am.status = Set(status);
        }
        if let Some((plan, users, storage)) = patch.plan {
            am.plan = Set(plan);
            am.max_users = Set(users);
            am.max_storage_bytes = Set(storage);
        }
        if let Some(users) = patch.max_users {
            am.max_users = Set(users);
        }
        if let Some(storage) = patch.max_storage_bytes {
            am.max_storage_bytes = Set(storage);
        }
        if let Some(settings) = patch.settings {
            am.settings = Set(settings);
        }
        am.updated_at = Set(now_millis());
        Ok(am.update(&self.writer).await?)
    }

    pub async fn create_key(
        &self,
        hospital_pk: i64,
        key_id: &str,
        name: &str,
        role: &str,
        secret_hash: &str,
    ) -> Result<api_key::Model, DbError> {
        let am = api_key::ActiveModel {
            key_id: Set(key_id.into()),
            hospital_id: Set(hospital_pk),
            name: Set(name.into()),
            role: Set(role.into()),
            secret_hash: Set(secret_hash.into()),
            created_at: Set(now_millis()),
            revoked_at: Set(None),
            ..Default::default()
        };
        Ok(am.insert(&self.writer).await?)
    }

    /// An active (not revoked) key and its hospital, in one query (it runs on every
    /// request made with a key).
    pub async fn find_active_key(
        &self,
        key_id: &str,
    ) -> Result<Option<(api_key::Model, Hospital)>, DbError> {
        let found = api_key::Entity::find()
            .find_also_related(hospital::Entity)
            .filter(api_key::Column::KeyId.eq(key_id))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.conn)
            .await?;
        Ok(found.and_then(|(key, h)| Some((key, Hospital::from(h?)))))
    }

    /// Revoke a key of a hospital; `NotFound` if it has no such active key.
    pub async fn revoke_key(&self, hospital_pk: i64, key_id: &str) -> Result<(), DbError> {
        let key = api_key::Entity::find()
            .filter(api_key::Column::KeyId.eq(key_id))
            .filter(api_key::Column::HospitalId.eq(hospital_pk))
            .filter(api_key::Column::RevokedAt.is_null())
            .one(&self.conn)
            .await?
            .ok_or(DbError::NotFound)?;
        let mut am: api_key::ActiveModel = key.into();
        am.revoked_at = Set(Some(now_millis()));
        am.update(&self.writer).await?;
        Ok(())
    }

    /// Create a user unless the hospital has `max_users` (when above 0)
    /// already: [`DbError::UserQuota`]. The hospital row is locked for the
    /// count and the insert, so concurrent creations cannot overshoot.
    pub async fn create_user(&self, new: NewUser) -> Result<user::Model, DbError> {
        let txn = self.writer.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            txn.get_database_backend(),
            "UPDATE hospitals SET updated_at = updated_at WHERE id = $1",
            vec![new.hospital_pk.into()],
        ))
        .await?;
        let hospital = hospital::Entity::find_by_id(new.hospital_pk)
            .one(&txn)
            .await?
            .ok_or(DbError::NotFound)?;
        if hospital.max_users > 0 {
            use sea_orm::PaginatorTrait;
            let n = user::Entity::find()
                .filter(user::Column::HospitalId.eq(new.hospital_pk))
                .count(&txn)
                .await?;
            if n >= u64::try_from(hospital.max_users).unwrap_or(0) {
                txn.rollback().await?;
                return Err(DbError::UserQuota(hospital.max_users));
            }
        }
        let am = user::ActiveModel {
            hospital_id: Set(new.hospital_pk),
            username: Set(new.username),
            email: Set(new.email),
            password_hash: Set(new.password_hash),
            roles: Set(new.roles),
            accessible_hospitals: Set(
                serde_json::to_string(&new.accessible_hospitals).unwrap_or_else(|_| "[]".into())
            ),
            is_active: Set(true),
            is_superadmin: Set(new.is_superadmin),
            last_login: Set(None),
            created_at: Set(now_millis()),
            ..Default::default()
        };
        let user = am.insert(&txn).await?;
        txn.commit().await?;
        Ok(user)
    }

    /// A hospital's stored bytes and quota (0: none).
    pub async fn storage(&self, hospital_pk: i64) -> Result<(i64, i64), DbError> {
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                self.backend(),
                "SELECT COALESCE((SELECT bytes FROM hospital_usage WHERE hospital_id = h.id), 0) AS bytes, \
                        h.max_storage_bytes AS max_bytes \
                 FROM hospitals h WHERE h.id = $1",
                vec![hospital_pk.into()],
            ))
            .await?
            .ok_or(DbError::NotFound)?;
        Ok((row.try_get("", "bytes")?, row.try_get("", "max_bytes")?))
    }

    /// What a hospital holds: counted from the rows, bytes from the usage
    /// kept with every ingest and delete.
    pub async fn usage(&self, hospital_pk: i64) -> Result<Usage, DbError> {
        let row = self
            .conn
            .query_one_raw(Statement::from_sql_and_values(
                self.backend(),
                "SELECT (SELECT COUNT(*) FROM studies WHERE hospital_id = h.id) AS studies, \
                        (SELECT COUNT(*) FROM series WHERE hospital_id = h.id) AS series, \
                        (SELECT COUNT(*) FROM instances WHERE hospital_id = h.id) AS instances, \
                        (SELECT COUNT(*) FROM users WHERE hospital_id = h.id) AS users, \
                        COALESCE((SELECT bytes FROM hospital_usage WHERE hospital_id = h.id), 0) AS bytes, \
                        h.max_storage_bytes AS max_bytes, CAST(h.max_users AS BIGINT) AS max_users \
                 FROM hospitals h WHERE h.id = $1",
                vec![hospital_pk.into()],
            ))
            .await?
            .ok_or(DbError::NotFound)?;
        let get = |c: &str| row.try_get::<i64>("", c);
        Ok(Usage {
            studies: get("studies")?,
            series: get("series")?,
            instances: get("instances")?,
            bytes: get("bytes")?,
            max_storage_bytes: get("max_bytes")?,
            users: get("users")?,
            max_users: get("max_users")?,
        })
    }

    /// Users named `username` (one per hospital at most).
    pub async fn users_named(&self, username: &str) -> Result<Vec<user::Model>, DbError> {
        Ok(user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .all(&self.conn)
            .await?)
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<user::Model>, DbError> {
        Ok(user::Entity::find_by_id(id).one(&self.conn).await?)
    }

    /// An active user and their home hospital, in one query (it runs on
    /// every request made with a login token).
    pub async fn active_user(&self, id: i64) -> Result<Option<(user::Model, Hospital)>, DbError> {
        let found = user::Entity::find_by_id(id)
            .find_also_related(hospital::Entity)
            .filter(user::Column::IsActive.eq(true))
            .one(&self.conn)
            .await?;
        Ok(found.and_then(|(user, h)| Some((user, Hospital::from(h?)))))
    }

    /// Hand a user a TOTP secret to confirm (replacing an unconfirmed one).
    pub async fn set_totp_pending(&self, user_id: i64, secret: &str) -> Result<(), DbError> {
        let res = self
            .writer
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                "UPDATE users SET totp_pending = $1 WHERE id = $2",
                vec![secret.into(), user_id.into()],
            ))
            .await?;
        if res.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Make the pending secret `pending` the user's TOTP secret, the code of
    /// `step` being used. False when the pending secret changed meanwhile.
    pub async fn activate_totp(
        &self,
        user_id: i64,
        pending: &str,
        step: i64,
    ) -> Result<bool, DbError> {
        let res = self
            .writer
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                "UPDATE users SET totp_secret = totp_pending, totp_pending = NULL, totp_last_step = $1 \
                 WHERE id = $2 AND totp_pending = $3",
                vec![step.into(), user_id.into(), pending.into()],
            ))
            .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Use the TOTP code of `step`: false when a code of that step (or a
    /// later one) was used already (a replay).
    pub async fn use_totp_step(&self, user_id: i64, step: i64) -> Result<bool, DbError> {
        let res = self
            .writer
            .execute_raw(Statement::from_sql_and_values(
                self.backend(),
                "UPDATE users SET totp_last_step = $1 \
                 WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
                vec![step.into(), user_id.into()],
            ))
            .await?;
        Ok(res.rows_affected() == 1)
    }

    pub async fn set_user_active(&self, id: i64, active: bool) -> Result<(), DbError> {
        let user = self.user_by_id(id).await?.ok_or(DbError::NotFound)?;
        let mut am: user::ActiveModel = user.into();
        am.is_active = Set(active);
        am.update(&self.writer).await?;
        Ok(())
    }

    pub async fn touch_login(&self, id: i64) -> Result<(), DbError> {
        if let Some(user) = self.user_by_id(id).await? {
            let mut am: user::ActiveModel = user.into();
            am.last_login = Set(Some(now_millis()));
            am.update(&self.writer).await?;
        }
        Ok(())
    }

    /// Whether a hospital holds a study itself (sharing needs it).
    pub async fn hospital_holds_study(
        &self,
        hospital_pk: i64,
        study_uid: &str,
    ) -> Result<bool, DbError> {
        use entity::study;
        Ok(study::Entity::find()
            .filter(study::Column::HospitalId.eq(hospital_pk))
            .filter(study::Column::StudyUid.eq(study_uid))
            .one(&self.conn)
            .await?
            .is_some())
    }

    pub async fn share_study(
        &self,
        owner_pk: i64,
        study_uid: &str,
        target_pk: i64,
        level: &str,
    ) -> Result<(), DbError> {
        let am = study_share::ActiveModel {
            owner_hospital_id: Set(owner_pk),
            study_uid: Set(study_uid.into()),
            target_hospital_id: Set(target_pk),
            access_level: Set(level.into()),
            created_at: Set(now_millis()),
            ..Default::default()
        };
        match am.insert(&self.writer).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = DbError::from(e);
                if is_conflict(&e) { Ok(()) } else { Err(e) }
            }
        }
    }

    pub async fn unshare_study(
        &self,
        owner_pk: i64,
        study_uid: &str,
        target_pk: i64,
    ) -> Result<(), DbError> {
        let res = study_share::Entity::delete_many()
            .filter(study_share::Column::OwnerHospitalId.eq(owner_pk))
            .filter(study_share::Column::StudyUid.eq(study_uid))
            .filter(study_share::Column::TargetHospitalId.eq(target_pk))
            .exec(&self.writer)
            .await?;
        if res.rows_affected == 0 {
            Err(DbError::NotFound)
        } else {
            Ok(())
        }
    }
}
