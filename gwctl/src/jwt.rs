//! The rule gwctl applies to a JWT signing secret, shared by `token issue`
//! and `dev`.

/// Shortest secret accepted, as the data plane requires.
pub const MIN_SECRET_BYTES: usize = 32;
