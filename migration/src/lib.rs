//! Schema migrations of the cloudpacs index, nothing else.
//!
//! Migrations never depend on the `entity` crate: an old migration must keep
//! its meaning when the entities change.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_core;
mod m20261128_000002_qido_indexes;
mod m20261128_000003_credentials;
mod m20261128_000004_policies;
mod m20261204_000005_covering_study_indexes;
mod m20261205_000006_drop_duplicate_received_index;
mod m20261205_000007_instance_digest;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_core::Migration),
            Box::new(m20261128_000002_qido_indexes::Migration),
            Box::new(m20261128_000003_credentials::Migration),
            Box::new(m20261128_000004_policies::Migration),
            Box::new(m20261204_000005_covering_study_indexes::Migration),
            Box::new(m20261205_000006_drop_duplicate_received_index::Migration),
            Box::new(m20261205_000007_instance_digest::Migration),
        ]
    }
}
