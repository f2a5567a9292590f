//! Operating the data plane: metrics, health, access log, trace spans and
//! the admin listener with its config dump.

pub mod access_log;
pub mod admin;
pub mod config_dump;
pub mod handles;
pub mod health;
pub mod metrics;
pub(crate) mod spans;
