//! Hospital policies (issue #9): the storage each hospital uses (kept in
//! the same transaction as the instance rows, so the quota check is exact
//! and race-free), the audit trail, TOTP secrets of users, and leases that
//! let one replica at a time run a background sweep.
//!
//! Existing hospitals get their usage backfilled from their instance rows.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Hospitals {
    Table,
    Id,
}

#[derive(DeriveIden, Clone, Copy)]
enum Studies {
    Table,
    HospitalId,
    ReceivedAt,
}

#[derive(DeriveIden, Clone, Copy)]
enum HospitalUsage {
    Table,
    HospitalId,
    Bytes,
}

#[derive(DeriveIden, Clone, Copy)]
enum AuditLog {
    Table,
    Id,
    At,
    HospitalId,
    ActorKind,
    ActorId,
    ActorName,
    Action,
    Method,
    StudyUid,
    SeriesUid,
    InstanceUid,
    Status,
    ClientIp,
}

#[derive(DeriveIden, Clone, Copy)]
enum Users {
    Table,
    TotpSecret,
    TotpPending,
    TotpLastStep,
}

#[derive(DeriveIden, Clone, Copy)]
enum Leases {
    Table,
    Name,
    Holder,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(HospitalUsage::Table)
                .col(big_integer(HospitalUsage::HospitalId).primary_key())
                .col(big_integer(HospitalUsage::Bytes).default(0))
                .foreign_key(
                    ForeignKey::create()
                        .from(HospitalUsage::Table, HospitalUsage::HospitalId)
                        .to(Hospitals::Table, Hospitals::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // Backfill: what every existing hospital stores now.
        m.get_connection()
            .execute_unprepared(
                "INSERT INTO hospital_usage (hospital_id, bytes) \
                 SELECT h.id, (SELECT CAST(COALESCE(SUM(i.size_bytes), 0) AS BIGINT) \
                               FROM instances i WHERE i.hospital_id = h.id) \
                 FROM hospitals h",
            )
            .await?;

        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .col(big_pk_auto(AuditLog::Id))
                .col(big_integer(AuditLog::At))
                .col(string_null(AuditLog::HospitalId))
                .col(string(AuditLog::ActorKind))
                .col(string_null(AuditLog::ActorId))
                .col(string_null(AuditLog::ActorName))
                .col(string(AuditLog::Action))
                .col(string(AuditLog::Method))
                .col(text_null(AuditLog::StudyUid))
                .col(string_null(AuditLog::SeriesUid))
                .col(string_null(AuditLog::InstanceUid))
                .col(integer(AuditLog::Status))
                .col(string_null(AuditLog::ClientIp))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_hospital")
                .table(AuditLog::Table)
                .col(AuditLog::HospitalId)
                .col(AuditLog::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_at")
                .table(AuditLog::Table)
                .col(AuditLog::At)
                .to_owned(),
        )
        .await?;

        // SQLite adds one column per ALTER TABLE.
        for col in [
            text_null(Users::TotpSecret),
            text_null(Users::TotpPending),
            big_integer_null(Users::TotpLastStep),
        ] {
            let mut col = col;
            m.alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(&mut col)
                    .to_owned(),
            )
            .await?;
        }

        m.create_table(
            Table::create()
                .table(Leases::Table)
                .col(string(Leases::Name).primary_key())
                .col(string(Leases::Holder))
                .col(big_integer(Leases::ExpiresAt))
                .to_owned(),
        )
        .await?;

        // The retention sweeper looks for a hospital's oldest studies.
        m.create_index(
            Index::create()
                .name("ix_studies_hospital_received")
                .table(Studies::Table)
                .col(Studies::HospitalId)
                .col(Studies::ReceivedAt)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_studies_hospital_received")
                .table(Studies::Table)
                .to_owned(),
        )
        .await?;
        for t in [
            Leases::Table.into_iden(),
            AuditLog::Table.into_iden(),
            HospitalUsage::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        for c in [Users::TotpLastStep, Users::TotpPending, Users::TotpSecret] {
            m.alter_table(Table::alter().table(Users::Table).drop_column(c).to_owned())
                .await?;
        }
        Ok(())
    }
}
