//! `gwctl apikey create|list|revoke`.

use super::context::{emit, Context};
use crate::cli::{ApiKeyAction, ApiKeyArgs};
use crate::client::Api;
use crate::output::{structured, Format, Table};
use gateway_proto::v1 as pb;
use serde::Serialize;

/// Runs `apikey create`, `list` or `revoke`.
pub async fn run(ctx: &Context, args: ApiKeyArgs) -> anyhow::Result<()> {
    match args.action {
        ApiKeyAction::Create {
            tenant,
            scopes,
            name,
        } => create(ctx, tenant, scopes, name).await,
        ApiKeyAction::List => list(ctx).await,
        ApiKeyAction::Revoke { id } => revoke(ctx, id).await,
    }
}

#[derive(Serialize)]
struct KeyView {
    id: String,
    tenant: String,
    scopes: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    name: String,
    created_at_ms: u64,
}

impl From<pb::ApiKey> for KeyView {
    fn from(k: pb::ApiKey) -> Self {
        Self {
            id: k.id,
            tenant: k.tenant,
            scopes: k.scopes,
            name: k.name,
            created_at_ms: k.created_at_ms,
        }
    }
}

#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    key: KeyView,
    /// The key itself, shown this once.
    api_key: String,
}

async fn create(
    ctx: &Context,
    tenant: String,
    scopes: Vec<String>,
    name: String,
) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .create_api_key(pb::CreateApiKeyRequest {
            tenant,
            scopes,
            name,
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let key = answer
        .key
        .ok_or_else(|| anyhow::anyhow!("the control plane answered without the key's record"))?;
    let view = Created {
        key: key.into(),
        api_key: answer.secret,
    };
    match ctx.format {
        Format::Table => emit(&format!(
            "created API key {} for tenant {} (scopes {})\n{}\nKeep it now: it is not stored and cannot be shown again.\n",
            view.key.id,
            view.key.tenant,
            view.key.scopes.join(","),
            view.api_key
        )),
        format => emit(&structured(format, &view)?),
    }
}

async fn list(ctx: &Context) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .list_api_keys(pb::ListApiKeysRequest {})
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let keys: Vec<KeyView> = answer.keys.into_iter().map(KeyView::from).collect();
    match ctx.format {
        Format::Table => {
            let mut table = Table::new(["ID", "TENANT", "SCOPES", "NAME", "AGE"]);
            for k in &keys {
                table.row(vec![
                    k.id.clone(),
                    k.tenant.clone(),
                    k.scopes.join(","),
                    crate::output::or_dash(&k.name),
                    crate::output::ago(k.created_at_ms),
                ]);
            }
            emit(&table.render())
        }
        format => emit(&structured(format, &keys)?),
    }
}

async fn revoke(ctx: &Context, id: String) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .revoke_api_key(pb::RevokeApiKeyRequest { id })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let key: KeyView = answer
        .key
        .ok_or_else(|| anyhow::anyhow!("the control plane answered without the key's record"))?
        .into();
    match ctx.format {
        Format::Table => emit(&format!(
            "revoked API key {} (tenant {}); data planes refuse it now\n",
            key.id, key.tenant
        )),
        format => emit(&structured(format, &key)?),
    }
}
