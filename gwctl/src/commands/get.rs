//! `gwctl get services|routes|instances|dataplanes|config`.

use super::context::{emit, Context};
use crate::cli::{GetArgs, GetKind};
use crate::client::{Api, ControlPlane};
use crate::output::{structured, Format};
use crate::views::{
    data_planes_table, instances_table, routes_table, services_table, DataPlaneView, InstanceView,
};
use anyhow::Context as _;
use gateway_common::GatewayConfig;
use gateway_proto::v1 as pb;

/// Lists what was asked for.
pub async fn run(ctx: &Context, args: GetArgs) -> anyhow::Result<()> {
    if args.service.is_some() && args.kind != GetKind::Instances {
        anyhow::bail!("--service only applies to `get instances`");
    }
    if args.data_plane.is_some() && args.kind != GetKind::Config {
        anyhow::bail!("--data-plane only applies to `get config`");
    }
    let cp = ctx.connect().await?;
    let text = match args.kind {
        GetKind::Services => {
            let config = current_config(&cp).await?;
            render(ctx.format, &config.services, || {
                services_table(&config.services).render()
            })?
        }
        GetKind::Routes => {
            let config = current_config(&cp).await?;
            render(ctx.format, &config.routes, || {
                routes_table(&config.routes).render()
            })?
        }
        GetKind::Instances => {
            let instances = list_instances(&cp, args.service.unwrap_or_default()).await?;
            render(ctx.format, &instances, || {
                instances_table(&instances).render()
            })?
        }
        GetKind::Config => match args.data_plane {
            None => {
                let (config, version) = versioned_config(&cp).await?;
                render_config(ctx.format, &config, version)?
            }
            Some(node) => {
                let held = config_request(&cp, node.clone()).await?;
                if held.version != held.current {
                    eprintln!(
                        "data plane {node} holds version {} (the control plane is at {})",
                        held.version, held.current
                    );
                }
                render_config(ctx.format, &held.config, held.version)?
            }
        },
        GetKind::Dataplanes => {
            let data_planes = list_data_planes(&cp).await?;
            render(ctx.format, &data_planes, || {
                data_planes_table(&data_planes).render()
            })?
        }
    };
    emit(&text)
}

fn render<T: serde::Serialize>(
    format: Format,
    value: &T,
    table: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    match format {
        Format::Table => Ok(table()),
        format => structured(format, value),
    }
}

/// The control plane's current config (not re-validated: it is shown as stored).
pub async fn current_config(cp: &ControlPlane) -> anyhow::Result<GatewayConfig> {
    Ok(versioned_config(cp).await?.0)
}

/// The control plane's current config and its version.
pub async fn versioned_config(cp: &ControlPlane) -> anyhow::Result<(GatewayConfig, u64)> {
    let held = config_request(cp, String::new()).await?;
    Ok((held.config, held.version))
}

/// A config as the control plane answered it.
struct HeldConfig {
    config: GatewayConfig,
    /// Its version.
    version: u64,
    /// The store's current version.
    current: u64,
}

/// The current config (`data_plane` empty), or the one data plane
/// `data_plane` acknowledged last.
async fn config_request(cp: &ControlPlane, data_plane: String) -> anyhow::Result<HeldConfig> {
    let answer = cp
        .admin()
        .get_config(pb::GetConfigRequest { data_plane })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let config = if answer.config_json.trim().is_empty() {
        GatewayConfig::default()
    } else {
        serde_json::from_str(&answer.config_json)
            .context("the control plane sent a config gwctl cannot read")?
    };
    Ok(HeldConfig {
        config,
        version: answer.version,
        // A control plane of an earlier build does not send it.
        current: answer.current_version.max(answer.version),
    })
}

/// The config as a document `gwctl apply -f` takes back.
pub fn config_document(config: &GatewayConfig) -> anyhow::Result<String> {
    Ok(serde_norway::to_string(config)?)
}

/// `get config`: YAML with its version as a comment, or JSON with both.
fn render_config(format: Format, config: &GatewayConfig, version: u64) -> anyhow::Result<String> {
    match format {
        Format::Json => structured(
            format,
            &serde_json::json!({ "version": version, "config": config }),
        ),
        Format::Table | Format::Yaml => {
            Ok(format!("# version {version}\n{}", config_document(config)?))
        }
    }
}

/// Instances of one service (or all for an empty name).
pub async fn list_instances(
    cp: &ControlPlane,
    service: String,
) -> anyhow::Result<Vec<InstanceView>> {
    let answer = cp
        .admin()
        .list_instances(pb::ListInstancesRequest { service })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let mut instances: Vec<InstanceView> = answer
        .instances
        .iter()
        .map(InstanceView::from_status)
        .collect();
    instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    Ok(instances)
}

/// Every data plane the control plane knows.
pub async fn list_data_planes(cp: &ControlPlane) -> anyhow::Result<Vec<DataPlaneView>> {
    let answer = cp
        .admin()
        .list_data_planes(pb::ListDataPlanesRequest {})
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    let mut data_planes: Vec<DataPlaneView> = answer
        .data_planes
        .iter()
        .map(DataPlaneView::from_status)
        .collect();
    data_planes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(data_planes)
}
