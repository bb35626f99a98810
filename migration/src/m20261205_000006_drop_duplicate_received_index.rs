//! Drop `ix_studies_hospital_received`: migration 4 created it for the
//! retention sweeper on the same columns as migration 1's
//! `ix_studies_received` (hospital_id, received_at), which serves that
//! search as well. Every study insert wrote both.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Studies {
    Table,
    HospitalId,
    ReceivedAt,
}

const NAME: &str = "ix_studies_hospital_received";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(NAME).table(Studies::Table).to_owned())
            .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(NAME)
                .table(Studies::Table)
                .col(Studies::HospitalId)
                .col(Studies::ReceivedAt)
                .to_owned(),
        )
        .await
    }
}
