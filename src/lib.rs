//! cloudpacs: a multi-tenant DICOMweb archive.
//!
//! Dependency direction: `dicomweb` (HTTP) -> `archive` (domain) ->
//! {`db`, `store`, `dicom`}; `auth` builds the hospital-scoped index handle.

pub mod admin;
pub mod app;
pub mod archive;
pub mod audit;
pub mod auth;
pub mod config;
pub mod db;
pub mod dicom;
pub mod dicomweb;
pub mod error;
pub mod heap;
pub mod policy;
pub mod retention;
pub mod store;

pub use app::{AppState, app};
