//! `gwctl token issue`: development access tokens signed with JWT_SECRET.

use super::context::{emit, Context};
use crate::cli::{TokenAction, TokenArgs, TokenIssueArgs};
use crate::jwt::MIN_SECRET_BYTES;
use crate::output::{structured, Format};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Claims of an access token, as the data plane verifies them.
#[derive(Debug, Serialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Tenant of the user.
    pub tenant_id: String,
    /// RBAC role.
    pub role: String,
    /// Rate-limit tier, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Always `access`.
    #[serde(rename = "type")]
    pub token_type: &'static str,
    /// Unique token id (for revocation).
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
}

#[derive(Serialize)]
struct TokenView<'a> {
    token: &'a str,
    expires_at_unix: u64,
}

/// Runs `token issue`.
pub fn run(ctx: &Context, args: TokenArgs) -> anyhow::Result<()> {
    match args.action {
        TokenAction::Issue(issue) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            let (token, claims) = issue_token(&issue, now)?;
            match ctx.format {
                Format::Table => emit(&format!("{token}\n")),
                format => emit(&structured(
                    format,
                    &TokenView {
                        token: &token,
                        expires_at_unix: claims.exp,
                    },
                )?),
            }
        }
    }
}

/// Signs a token for `args` issued at `now` (Unix seconds).
pub fn issue_token(args: &TokenIssueArgs, now: u64) -> anyhow::Result<(String, Claims)> {
    let secret = args
        .secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("JWT_SECRET is not set: set it to the gateway's signing secret (at least {MIN_SECRET_BYTES} bytes)"))?;
    if secret.len() < MIN_SECRET_BYTES {
        anyhow::bail!(
            "JWT_SECRET is {} bytes long: it must be at least {MIN_SECRET_BYTES} bytes",
            secret.len()
        );
    }
    if args.sub.is_empty() || args.tenant.is_empty() {
        anyhow::bail!("--sub and --tenant must not be empty");
    }
    let ttl = args.ttl.as_secs();
    if ttl == 0 {
        anyhow::bail!("--ttl must be at least 1s");
    }
    let claims = Claims {
        sub: args.sub.clone(),
        tenant_id: args.tenant.clone(),
        role: args.role.clone(),
        tier: args.tier.clone(),
        token_type: "access",
        jti: uuid::Uuid::new_v4().to_string(),
        iat: now,
        exp: now + ttl,
        iss: args.issuer.clone(),
        aud: args.audience.clone(),
    };
    let token = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?;
    Ok((token, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, DecodingKey, Validation};
    use std::time::Duration;

    fn args(secret: &str) -> TokenIssueArgs {
        TokenIssueArgs {
            sub: "user-1".into(),
            tenant: "tenant-1".into(),
            role: "customer".into(),
            tier: None,
            ttl: Duration::from_secs(900),
            issuer: "tickettoken".into(),
            audience: "tickettoken-platform".into(),
            secret: Some(secret.into()),
        }
    }

    #[test]
    fn signs_verifiable_claims() {
        let secret = "s".repeat(32);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let (token, _) = issue_token(&args(&secret), now).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["tickettoken-platform"]);
        validation.set_issuer(&["tickettoken"]);
        let data = decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["tenant_id"], "tenant-1");
        assert_eq!(data.claims["type"], "access");
        assert_eq!(data.claims["exp"].as_u64().unwrap(), now + 900);
        assert!(data.claims.get("tier").is_none());
        let mut premium = args(&secret);
        premium.tier = Some("premium".into());
        let (token, _) = issue_token(&premium, now).unwrap();
        let data = decode::<serde_json::Value>(
            &token,
            &DecodingKey::from_secret(secret.as_bytes()),
            &validation,
        )
        .unwrap();
        assert_eq!(data.claims["tier"], "premium");
    }

    #[test]
    fn short_or_missing_secrets_are_refused() {
        let error = issue_token(&args("short"), 0).unwrap_err().to_string();
        assert!(error.contains("at least 32 bytes"), "{error}");
        let mut no_secret = args("");
        no_secret.secret = None;
        assert!(issue_token(&no_secret, 0)
            .unwrap_err()
            .to_string()
            .contains("not set"));
    }
}
