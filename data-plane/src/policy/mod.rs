//! Route policies: each is compiled from its own section of a route's
//! config once per snapshot and exposes one narrow hook the proxy calls.
//! Policies never see the runtime snapshot nor the proxy: what they need is
//! passed in as arguments.

pub mod aggregate;
pub mod auth;
pub mod authorization;
pub mod cache;
pub mod client_cert;
pub mod cors;
pub mod pipeline;
pub mod ratelimit;
pub mod signature;
pub mod validation;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

/// What a policy's hook knows of the route it runs on.
#[derive(Debug, Clone, Copy)]
pub struct RouteContext<'a> {
    /// The route's name.
    pub name: &'a Arc<String>,
    /// Largest request body, in bytes.
    pub body_limit: u64,
    /// Time allowed for the response head.
    pub timeout: Duration,
}
