//! Credentials and sharing: API keys (machines), users (people), and studies
//! one hospital shares with another.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Hospitals {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum ApiKeys {
    Table,
    Id,
    KeyId,
    HospitalId,
    Name,
    Role,
    SecretHash,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    Id,
    HospitalId,
    Username,
    Email,
    PasswordHash,
    Roles,
    AccessibleHospitals,
    IsActive,
    IsSuperadmin,
    LastLogin,
    CreatedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum StudyShares {
    Table,
    Id,
    OwnerHospitalId,
    StudyUid,
    TargetHospitalId,
    AccessLevel,
    CreatedAt,
}

fn fk(from: (impl IntoIden, impl IntoIden)) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(from.0, from.1)
        .to(Hospitals::Table, Hospitals::Id)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ApiKeys::Table)
                .col(big_pk_auto(ApiKeys::Id))
                .col(string_uniq(ApiKeys::KeyId))
                .col(big_integer(ApiKeys::HospitalId))
                .col(string(ApiKeys::Name))
                .col(string(ApiKeys::Role))
                .col(string(ApiKeys::SecretHash))
                .col(big_integer(ApiKeys::CreatedAt))
                .col(big_integer_null(ApiKeys::RevokedAt))
                .foreign_key(&mut fk((ApiKeys::Table, ApiKeys::HospitalId)))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(big_pk_auto(Users::Id))
                .col(big_integer(Users::HospitalId))
                .col(string(Users::Username))
                .col(string_null(Users::Email))
                .col(string(Users::PasswordHash))
                .col(string(Users::Roles))
                .col(text(Users::AccessibleHospitals))
                .col(boolean(Users::IsActive))
                .col(boolean(Users::IsSuperadmin))
                .col(big_integer_null(Users::LastLogin))
                .col(big_integer(Users::CreatedAt))
                .foreign_key(&mut fk((Users::Table, Users::HospitalId)))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(StudyShares::Table)
                .col(big_pk_auto(StudyShares::Id))
                .col(big_integer(StudyShares::OwnerHospitalId))
                .col(string(StudyShares::StudyUid))
                .col(big_integer(StudyShares::TargetHospitalId))
                .col(string(StudyShares::AccessLevel))
                .col(big_integer(StudyShares::CreatedAt))
                .foreign_key(&mut fk((StudyShares::Table, StudyShares::OwnerHospitalId)))
                .foreign_key(&mut fk((StudyShares::Table, StudyShares::TargetHospitalId)))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_users_hospital_username")
                .table(Users::Table)
                .col(Users::HospitalId)
                .col(Users::Username)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_shares")
                .table(StudyShares::Table)
                .col(StudyShares::OwnerHospitalId)
                .col(StudyShares::StudyUid)
                .col(StudyShares::TargetHospitalId)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_shares_target")
                .table(StudyShares::Table)
                .col(StudyShares::TargetHospitalId)
                .col(StudyShares::OwnerHospitalId)
                .col(StudyShares::StudyUid)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            StudyShares::Table.into_iden(),
            Users::Table.into_iden(),
            ApiKeys::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
