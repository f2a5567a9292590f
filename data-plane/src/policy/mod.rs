//! Route policies: each is compiled from its own section of a route's
//! config once per snapshot and exposes one narrow hook the proxy calls.
//! Policies never see the runtime snapshot nor the proxy: what they need is
//! passed in as arguments.

pub mod aggregate;
pub mod auth;
pub mod authorization;
pub mod cache;
pub mod cors;
pub mod ratelimit;
pub mod signature;
pub mod validation;
pub mod webhook;
