//! Where routing config comes from and how it is held: the runtime snapshot
//! built from it, the route table, the Discovery client, the standalone
//! config file and the config cache on disk.

pub mod cache;
pub mod discovery;
pub mod routing;
pub mod runtime;
pub mod source;
pub mod standalone;
