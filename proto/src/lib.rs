//! Generated gRPC types and services of the gateway's wire contract
//! (`gateway.v1`): `Registry` for backends, `Admin` for operators and
//! `Discovery` for data planes.

#![allow(clippy::all, missing_docs)]

/// Package `gateway.v1`.
pub mod v1 {
    tonic::include_proto!("gateway.v1");
}

/// Encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/gateway_descriptor.bin"));

pub use v1::*;
