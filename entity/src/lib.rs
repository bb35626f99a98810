//! sea-orm entities of the cloudpacs index (tables only, no logic).
//!
//! The schema itself is owned by the `migration` crate; these mirror it.

pub mod api_key;
pub mod audit_log;
pub mod hospital;
pub mod instance;
pub mod pending_blob;
pub mod series;
pub mod study;
pub mod study_share;
pub mod user;
