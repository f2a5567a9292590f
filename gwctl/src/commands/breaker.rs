//! `gwctl breaker get SERVICE` and `gwctl breaker set SERVICE [...]`.

use super::context::{emit, Context};
use super::get::current_config;
use crate::cli::{BreakerAction, BreakerArgs, BreakerSetArgs};
use crate::client::Api;
use crate::output::{structured, Format};
use crate::views::{policy_from_config, BreakerView};
use gateway_common::config::BreakerConfig;
use gateway_proto::v1 as pb;

/// Runs `breaker get` or `breaker set`.
pub async fn run(ctx: &Context, args: BreakerArgs) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let policy = match args.action {
        BreakerAction::Get { service } => cp
            .admin()
            .get_breaker_policy(pb::GetBreakerPolicyRequest { service })
            .await
            .map_err(|s| cp.explain(Api::Admin, s))?
            .into_inner(),
        BreakerAction::Set(set) => {
            let config = current_config(&cp).await?;
            let service = config.service(&set.service).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown service {:?}: it is not in the current config",
                    set.service
                )
            })?;
            let current = service.circuit_breaker.clone().unwrap_or_default();
            let policy = merge(current, &set)?;
            cp.admin()
                .set_breaker_policy(pb::SetBreakerPolicyRequest {
                    policy: Some(policy_from_config(&set.service, &policy)),
                })
                .await
                .map_err(|s| cp.explain(Api::Admin, s))?
                .into_inner()
        }
    };
    let view = BreakerView::from_policy(&policy);
    match ctx.format {
        Format::Table => emit(&view.table().render()),
        format => emit(&structured(format, &view)?),
    }
}

/// The current policy with the flags given applied, checked like a config.
fn merge(mut policy: BreakerConfig, set: &BreakerSetArgs) -> anyhow::Result<BreakerConfig> {
    if let Some(v) = set.enabled {
        policy.enabled = v;
    }
    if let Some(v) = set.error_threshold_percent {
        policy.error_threshold_percent = v;
    }
    if let Some(v) = set.volume_threshold {
        policy.volume_threshold = v;
    }
    if let Some(v) = set.reset_timeout {
        policy.reset_timeout = v;
    }
    if let Some(v) = set.call_timeout {
        policy.call_timeout = v;
    }
    if let Some(v) = set.rolling_window {
        policy.rolling_window = v;
    }
    if let Some(v) = set.rolling_buckets {
        policy.rolling_buckets = v;
    }
    if let Some(v) = set.half_open_max_requests {
        policy.half_open_max_requests = v;
    }
    let mut errors = Vec::new();
    policy.validate("circuit_breaker", &mut errors);
    if errors.is_empty() {
        Ok(policy)
    } else {
        anyhow::bail!("invalid breaker policy: {}", errors.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn set() -> BreakerSetArgs {
        BreakerSetArgs {
            service: "pay".into(),
            error_threshold_percent: None,
            volume_threshold: None,
            reset_timeout: None,
            call_timeout: None,
            rolling_window: None,
            rolling_buckets: None,
            half_open_max_requests: None,
            enabled: None,
        }
    }

    #[test]
    fn unspecified_fields_keep_their_value() {
        let current = BreakerConfig {
            volume_threshold: 3,
            ..BreakerConfig::default()
        };
        let mut args = set();
        args.error_threshold_percent = Some(25);
        args.reset_timeout = Some(Duration::from_secs(5));
        let merged = merge(current, &args).unwrap();
        assert_eq!(merged.volume_threshold, 3);
        assert_eq!(merged.error_threshold_percent, 25);
        assert_eq!(merged.reset_timeout, Duration::from_secs(5));
        assert_eq!(
            merged.rolling_buckets,
            BreakerConfig::default().rolling_buckets
        );
    }

    #[test]
    fn invalid_values_are_refused_with_the_reason() {
        let mut args = set();
        args.error_threshold_percent = Some(150);
        let error = merge(BreakerConfig::default(), &args)
            .unwrap_err()
            .to_string();
        assert!(error.contains("error_threshold_percent"), "{error}");
    }
}
