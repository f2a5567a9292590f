//! Revoked tokens and API keys: their layout in Redis and the messages of
//! the push channel, shared by the data planes (which revoke tokens on
//! logout and refresh-token reuse, and keep both sets in memory) and the
//! control plane (which creates and revokes API keys).
//!
//! * `{prefix}revoked`: sorted set of revocations, scored by the unix time
//!   (seconds) after which they no longer matter (the token's expiry).
//!   Members: `j:{jti}` (one access token), `f:{family}` (every token of a
//!   refresh-token family), `s:{cutoff}:{sub}` (access tokens without `jti`
//!   of the subject issued at or before `cutoff`).
//! * `{prefix}refresh:{family}`: hash of a refresh-token family (`current`
//!   jti, `sub`, `tenant`, `revoked`), expiring with the family's last token.
//! * `{prefix}apikeys`: hash from the SHA-256 (hex) of a key to its
//!   [`ApiKeyRecord`] (JSON); `{prefix}apikeys:ids`: hash from key id to
//!   that SHA-256.
//! * `{prefix}credentials`: pub/sub channel carrying every change of both
//!   sets as a [`Push`], so a data plane's per-request checks never call
//!   Redis.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Name of the revocation sorted set.
pub fn revoked_key(prefix: &str) -> String {
    format!("{prefix}revoked")
}

/// Name of the hash of a refresh-token family.
pub fn family_key(prefix: &str, family: &str) -> String {
    format!("{prefix}refresh:{family}")
}

/// Name of the API-key hash (SHA-256 -> record).
pub fn apikeys_key(prefix: &str) -> String {
    format!("{prefix}apikeys")
}

/// Name of the API-key id hash (id -> SHA-256).
pub fn apikey_ids_key(prefix: &str) -> String {
    format!("{prefix}apikeys:ids")
}

/// Name of the push channel.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}credentials")
}

/// Header carrying an API key.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What one revocation covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// The access token with this `jti`.
    Jti(String),
    /// Every token carrying this refresh-token `family`.
    Family(String),
    /// The subject's access tokens without `jti` issued (`iat`) at or
    /// before `cutoff` (unix seconds).
    Subject {
        /// The token's `sub`.
        sub: String,
        /// Latest `iat` covered.
        cutoff: u64,
    },
}

impl Revocation {
    /// The sorted-set member.
    pub fn member(&self) -> String {
        match self {
            Self::Jti(jti) => format!("j:{jti}"),
            Self::Family(family) => format!("f:{family}"),
            Self::Subject { sub, cutoff } => format!("s:{cutoff}:{sub}"),
        }
    }

    /// Reads a sorted-set member.
    pub fn parse(member: &str) -> Option<Self> {
        let (kind, rest) = member.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        match kind {
            "j" => Some(Self::Jti(rest.to_string())),
            "f" => Some(Self::Family(rest.to_string())),
            "s" => {
                let (cutoff, sub) = rest.split_once(':')?;
                (!sub.is_empty()).then_some(())?;
                Some(Self::Subject {
                    sub: sub.to_string(),
                    cutoff: cutoff.parse().ok()?,
                })
            }
            _ => None,
        }
    }
}

/// An API key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (`gwctl apikey revoke ID`).
    pub id: String,
    /// Tenant the key acts for (`x-tenant-id`).
    pub tenant: String,
    /// Scopes granted (`x-api-key-scopes`).
    pub scopes: Vec<String>,
    /// Free label.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Creation time, unix ms.
    pub created_at_ms: u64,
}

/// Prefix of every API key (tells a key from a token in logs and scanners).
pub const API_KEY_PREFIX: &str = "gwk_";

/// SHA-256 of `key`, lower-case hex: the only form a key is stored in.
/// A fast hash is enough: keys carry 256 random bits, so there is nothing
/// to guess by trying; and it lets the data plane find a key by its hash
/// in a map, in microseconds, without a per-key salt.
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// A message of the push channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A revocation that matters until `until` (unix seconds).
    Revoked {
        /// What is revoked.
        revocation: Revocation,
        /// Its score in the sorted set.
        until: u64,
    },
    /// An API key was created (its hash and record).
    KeyAdded {
        /// SHA-256 (hex) of the key.
        hash: String,
        /// The record.
        record: ApiKeyRecord,
    },
    /// An API key was revoked.
    KeyRevoked {
        /// SHA-256 (hex) of the key.
        hash: String,
    },
}

impl Push {
    /// The message text.
    pub fn encode(&self) -> String {
        match self {
            Self::Revoked { revocation, until } => format!("r {until} {}", revocation.member()),
            Self::KeyAdded { hash, record } => format!(
                "k+ {hash} {}",
                serde_json::to_string(record).unwrap_or_default()
            ),
            Self::KeyRevoked { hash } => format!("k- {hash}"),
        }
    }

    /// Reads a message; `None` for one this version does not know.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, rest) = text.split_once(' ')?;
        match kind {
            "r" => {
                let (until, member) = rest.split_once(' ')?;
                Some(Self::Revoked {
                    revocation: Revocation::parse(member)?,
                    until: until.parse().ok()?,
                })
            }
            "k+" => {
                let (hash, json) = rest.split_once(' ')?;
                Some(Self::KeyAdded {
                    hash: hash.to_string(),
                    record: serde_json::from_str(json).ok()?,
                })
            }
            "k-" => Some(Self::KeyRevoked {
                hash: rest.to_string(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip() {
        for r in [
            Revocation::Jti("a:b".into()),
            Revocation::Family("fam-1".into()),
            Revocation::Subject {
                sub: "user:1".into(),
                cutoff: 1_700_000_000,
            },
        ] {
            assert_eq!(Revocation::parse(&r.member()), Some(r));
        }
        assert_eq!(Revocation::parse("j:"), None);
        assert_eq!(Revocation::parse("x:1"), None);
        assert_eq!(Revocation::parse("s:abc:u"), None);
        assert_eq!(Revocation::parse("s:1:"), None);
    }

    #[test]
    fn messages_round_trip() {
        let record = ApiKeyRecord {
            id: "k1".into(),
            tenant: "t 1".into(),
            scopes: vec!["a".into(), "b".into()],
            name: "partner".into(),
            created_at_ms: 5,
        };
        for push in [
            Push::Revoked {
                revocation: Revocation::Jti("j 1".into()),
                until: 9,
            },
            Push::KeyAdded {
                hash: "ab".into(),
                record,
            },
            Push::KeyRevoked { hash: "ab".into() },
        ] {
            assert_eq!(Push::parse(&push.encode()), Some(push));
        }
        assert_eq!(Push::parse("r x j:1"), None);
        assert_eq!(Push::parse("zz 1"), None);
        assert_eq!(Push::parse("k+ ab {"), None);
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        assert_eq!(
            hash_api_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
