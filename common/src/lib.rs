//! Shared crate of the gateway: what the control plane, the data planes and
//! gwctl must agree on.
//!
//! * [`config`]: the declarative config model (YAML or JSON), its validation
//!   and its diff.
//! * [`routing`]: the route table both planes build from a config, so a
//!   config the control plane accepts is one every data plane can load.
//! * [`registration`]: the rules for instance registrations and the instance
//!   model streamed to data planes.
//! * [`cache`]: the response cache's key, Redis layout and invalidation
//!   patterns, shared by the data planes and the control plane.
//! * [`duration`]: human-friendly durations (`250ms`, `5s`, `1m`) in configs.
//! * [`process`]: a process's default identity (`hostname-pid`) and logging.

pub mod cache;
pub mod config;
pub mod duration;
pub mod process;
pub mod registration;
pub mod routing;

pub use config::{ConfigError, GatewayConfig};
