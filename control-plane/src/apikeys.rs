//! API keys of partner routes (`Admin.CreateApiKey`, `RevokeApiKey`,
//! `ListApiKeys`): checks the request, makes the key and its id, and hands
//! the store only the key's SHA-256 and its record.

use crate::store::{unix_ms, Store};
use gateway_common::credentials::{hash_api_key, ApiKeyRecord, API_KEY_PREFIX};
use gateway_proto::v1 as pb;
use rand::RngCore;
use tonic::Status;

/// Longest tenant id.
const MAX_TENANT_LEN: usize = 128;
/// Most scopes on one key.
const MAX_SCOPES: usize = 32;
/// Longest scope.
const MAX_SCOPE_LEN: usize = 64;
/// Longest name.
const MAX_NAME_LEN: usize = 64;

/// Checks a create request; every problem in one message.
pub fn check(request: &pb::CreateApiKeyRequest) -> Result<(), Status> {
    let mut errors = Vec::new();
    let tenant = &request.tenant;
    if tenant.is_empty() || tenant.len() > MAX_TENANT_LEN {
        errors.push(format!("tenant: must be 1 to {MAX_TENANT_LEN} characters"));
    } else if !tenant.bytes().all(|b| b.is_ascii_graphic()) {
        errors.push("tenant: printable ASCII without spaces only".to_string());
    }
    if request.scopes.is_empty() || request.scopes.len() > MAX_SCOPES {
        errors.push(format!("scopes: give 1 to {MAX_SCOPES} scopes"));
    }
    for (i, scope) in request.scopes.iter().enumerate() {
        let ok = !scope.is_empty()
            && scope.len() <= MAX_SCOPE_LEN
            && scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b":_.*-".contains(&b));
        if !ok {
            errors.push(format!(
                "scopes[{i}]: {scope:?} must be 1 to {MAX_SCOPE_LEN} of A-Z a-z 0-9 : _ . * -"
            ));
        } else if request.scopes[..i].contains(scope) {
            errors.push(format!("scopes[{i}]: {scope:?} is repeated"));
        }
    }
    let name = &request.name;
    if name.len() > MAX_NAME_LEN || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        errors.push(format!(
            "name: at most {MAX_NAME_LEN} printable ASCII characters"
        ));
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(Status::invalid_argument(errors.join("; "))),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new key: `gwk_` and 256 random bits (hex).
pub fn new_secret() -> String {
    format!("{API_KEY_PREFIX}{}", random_hex(32))
}

/// Public proto form of a record.
pub fn to_proto(record: ApiKeyRecord) -> pb::ApiKey {
    pb::ApiKey {
        id: record.id,
        tenant: record.tenant,
        scopes: record.scopes,
        name: record.name,
        created_at_ms: record.created_at_ms,
    }
}

/// Creates a key: the secret is in the answer and nowhere else.
pub async fn create(
    store: &dyn Store,
    request: pb::CreateApiKeyRequest,
) -> Result<pb::CreateApiKeyResponse, Status> {
    check(&request)?;
    let secret = new_secret();
    let record = ApiKeyRecord {
        id: format!("ak_{}", random_hex(8)),
        tenant: request.tenant,
        scopes: request.scopes,
        name: request.name,
        created_at_ms: unix_ms(),
    };
    store
        .create_api_key(&hash_api_key(&secret), &record)
        .await?;
    tracing::info!(id = %record.id, tenant = %record.tenant, scopes = ?record.scopes, "API key created");
    Ok(pb::CreateApiKeyResponse {
        key: Some(to_proto(record)),
        secret,
    })
}

/// Revokes the key `id`.
pub async fn revoke(
    store: &dyn Store,
    request: pb::RevokeApiKeyRequest,
) -> Result<pb::RevokeApiKeyResponse, Status> {
    if request.id.is_empty() || request.id.len() > 64 {
        return Err(Status::invalid_argument("id: give the key's id (ak_...)"));
    }
    let record = store.revoke_api_key(&request.id).await?;
    tracing::info!(id = %record.id, tenant = %record.tenant, "API key revoked");
    Ok(pb::RevokeApiKeyResponse {
        key: Some(to_proto(record)),
    })
}

/// Every key, without secrets.
pub async fn list(store: &dyn Store) -> Result<pb::ListApiKeysResponse, Status> {
    let keys = store.list_api_keys().await?;
    Ok(pb::ListApiKeysResponse {
        keys: keys.into_iter().map(to_proto).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tenant: &str, scopes: &[&str], name: &str) -> pb::CreateApiKeyRequest {
        pb::CreateApiKeyRequest {
            tenant: tenant.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
        }
    }

    #[test]
    fn requests_are_checked() {
        assert!(check(&request("t-1", &["events:read", "tickets:*"], "partner A")).is_ok());
        let e = check(&request("", &[], "x\n")).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        for part in ["tenant:", "scopes:", "name:"] {
            assert!(e.message().contains(part), "{}", e.message());
        }
        let e = check(&request("t 1", &["a,b", "ok", "ok"], "")).unwrap_err();
        assert!(e.message().contains("tenant: printable"), "{}", e.message());
        assert!(e.message().contains("scopes[0]"), "{}", e.message());
        assert!(
            e.message().contains("scopes[2]: \"ok\" is repeated"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn secrets_are_long_and_distinct() {
        let (a, b) = (new_secret(), new_secret());
        assert!(a.starts_with("gwk_"));
        assert_eq!(a.len(), 4 + 64);
        assert_ne!(a, b);
    }
}
