//! `instances.sha256` becomes `digest`: new rows hold `blake3:` and the hex
//! BLAKE3 hash of the blob; the rows already there keep their hex SHA-256
//! (no prefix), which ingest still compares with. No row is rewritten.
//! `down` renames the column back; the rows indexed since keep their BLAKE3
//! digests, which an older binary would compare as SHA-256 (a retry of one
//! of those instances would be taken for a different object).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Instances {
    Table,
    Sha256,
    Digest,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Instances::Table)
                .rename_column(Instances::Sha256, Instances::Digest)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Instances::Table)
                .rename_column(Instances::Digest, Instances::Sha256)
                .to_owned(),
        )
        .await
    }
}
