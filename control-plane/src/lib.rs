//! Control plane of the gateway.
//!
//! It keeps the declarative config, the instance registrations with their
//! leases, drain flags and health verdicts in a [`store`] (Redis, or memory
//! for a single replica), and streams them as versioned snapshots and deltas
//! to every connected data plane ([`discovery`]). Any number of replicas may
//! share one Redis: each follows the store's change log into its own
//! [`view`], and the holder of the [`leader`] lock runs the [`health`]
//! checker and the lease sweeper ([`leases`]).
//!
//! The gRPC port may speak TLS, and require client certificates ([`tls`]);
//! a data plane's certificate may then pin the node ids it may say Hello as
//! ([`node_identity`]).
//!
//! Start one with [`ControlPlane::start`] and [`Settings`].

#![warn(missing_docs)]

pub mod admin;
pub mod apikeys;
pub mod auth;
pub mod cli;
pub mod compat;
pub mod discovery;
pub mod health;
mod health_tls;
pub mod http;
pub mod leader;
pub mod leases;
pub mod metrics;
pub mod node_identity;
pub mod propagation;
pub mod registry;
pub mod rpc_metrics;
pub mod rpc_spans;
pub mod server;
pub mod settings;
pub mod store;
pub mod tls;
pub mod view;

pub use server::{ControlPlane, ShutdownHandle};
pub use settings::Settings;
