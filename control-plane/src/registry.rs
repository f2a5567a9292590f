//! The `gateway.v1.Registry` service: backends register, keep their lease
//! alive and deregister.

use crate::metrics::{EffectLabel, Metrics};
use crate::store::{RegisterEffect, Registered, Store, StoreError, STATIC_ID_PREFIX};
use gateway_common::registration::{check_instance_id, validate_registration, ValidRegistration};
use gateway_proto::v1 as pb;
use gateway_proto::v1::registry_server::Registry;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Fresh ids drawn before a registration gives up.
const GENERATED_ID_ATTEMPTS: usize = 5;

/// Implementation of the Registry service.
pub struct RegistryService {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
}

impl RegistryService {
    /// Serves registrations with `store`; streams end when `cancel` fires.
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, cancel: CancellationToken) -> Self {
        RegistryService {
            store,
            metrics,
            cancel,
        }
    }
}

/// `SERVICE-xxxxxxxx`, a fresh instance id.
pub fn generate_instance_id(service: &str) -> String {
    format!("{service}-{:08x}", rand::random::<u32>())
}

/// Checks the instance id carried in `field`; `INVALID_ARGUMENT` naming the field.
pub(crate) fn check_id_field(id: &str, field: &str) -> Result<(), Status> {
    check_instance_id(id).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

fn check_registered_id(id: &str, field: &str) -> Result<(), Status> {
    check_id_field(id, field)?;
    if id.starts_with(STATIC_ID_PREFIX) {
        return Err(Status::failed_precondition(format!(
            "{field}: {id:?} is a static instance of the config; change the config instead"
        )));
    }
    Ok(())
}

impl RegistryService {
    async fn register(&self, req: pb::RegisterRequest) -> Result<pb::RegisterResponse, Status> {
        let mut valid = validate_registration(&req).map_err(|reasons| {
            Status::invalid_argument(format!("invalid registration: {}", reasons.join("; ")))
        })?;
        let registered = if valid.spec.id.is_empty() {
            self.register_generated(&mut valid).await?
        } else {
            check_registered_id(&valid.spec.id, "instance_id")?;
            self.store.register(&valid.spec, valid.ttl, false).await?
        };
        let effect = match registered.effect {
            RegisterEffect::Created => "created",
            RegisterEffect::Updated => "updated",
            RegisterEffect::Renewed => "renewed",
        };
        self.metrics
            .registrations
            .get_or_create(&EffectLabel { effect })
            .inc();
        if registered.effect != RegisterEffect::Renewed {
            tracing::info!(id = %valid.spec.id, service = %valid.spec.service, address = %valid.spec.authority(), version = registered.version, "instance registered");
        }
        Ok(pb::RegisterResponse {
            lease_id: valid.spec.id.clone(),
            instance_id: valid.spec.id,
            lease_ttl_seconds: valid.ttl.as_secs() as u32,
            version: registered.version,
        })
    }

    /// Registers under a fresh id, drawing another if it is taken.
    async fn register_generated(
        &self,
        valid: &mut ValidRegistration,
    ) -> Result<Registered, Status> {
        let mut attempts = 0;
        loop {
            valid.spec.id = generate_instance_id(&valid.spec.service);
            match self.store.register(&valid.spec, valid.ttl, true).await {
                Err(StoreError::Conflict(_)) if attempts < GENERATED_ID_ATTEMPTS => attempts += 1,
                other => return Ok(other?),
            }
        }
    }

    async fn heartbeat(&self, req: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse, Status> {
        check_id_field(&req.lease_id, "lease_id")?;
        match self.store.renew_lease(&req.lease_id).await? {
            Some(ttl) => Ok(pb::HeartbeatResponse {
                ttl_ms: ttl.as_millis() as u64,
            }),
            None => Err(Status::not_found(format!(
                "no lease {:?} (expired or never granted); register again",
                req.lease_id
            ))),
        }
    }

    async fn deregister(
        &self,
        req: pb::DeregisterRequest,
    ) -> Result<pb::DeregisterResponse, Status> {
        check_registered_id(&req.instance_id, "instance_id")?;
        let result = self.store.deregister(&req.instance_id).await?;
        if result.removed {
            self.metrics.deregistrations.inc();
            tracing::info!(id = %req.instance_id, version = result.version, "instance deregistered");
        }
        Ok(pb::DeregisterResponse {
            removed: result.removed,
            version: result.version,
        })
    }
}

async fn keep_alive(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    mut inbound: Streaming<pb::KeepAliveRequest>,
    tx: mpsc::Sender<Result<pb::KeepAliveResponse, Status>>,
) {
    loop {
        let message = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tx.closed() => return,
            message = inbound.message() => message,
        };
        let request = match message {
            Ok(Some(request)) => request,
            Ok(None) | Err(_) => return,
        };
        let answer = match check_id_field(&request.lease_id, "lease_id") {
            Err(status) => Err(status),
            Ok(()) => match store.renew_lease(&request.lease_id).await {
                Ok(ttl) => Ok(pb::KeepAliveResponse {
                    found: ttl.is_some(),
                    ttl_ms: ttl.map_or(0, |t| t.as_millis() as u64),
                    lease_id: request.lease_id,
                }),
                Err(e) => Err(Status::from(e)),
            },
        };
        let failed = answer.is_err();
        let answer = metrics.observe("Registry/KeepAlive", answer);
        if tx.send(answer).await.is_err() || failed {
            return;
        }
    }
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let result = RegistryService::register(self, request.into_inner()).await;
        self.metrics
            .observe("Registry/Register", result)
            .map(Response::new)
    }

    type KeepAliveStream = ReceiverStream<Result<pb::KeepAliveResponse, Status>>;

    async fn keep_alive(
        &self,
        request: Request<Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(keep_alive(
            self.store.clone(),
            self.metrics.clone(),
            self.cancel.clone(),
            request.into_inner(),
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let result = RegistryService::heartbeat(self, request.into_inner()).await;
        self.metrics
            .observe("Registry/Heartbeat", result)
            .map(Response::new)
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let result = RegistryService::deregister(self, request.into_inner()).await;
        self.metrics
            .observe("Registry/Deregister", result)
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_name_the_service() {
        let id = generate_instance_id("ticket");
        assert!(id.starts_with("ticket-"));
        assert_eq!(id.len(), "ticket-".len() + 8);
        assert!(check_instance_id(&id).is_ok());
    }

    #[test]
    fn static_ids_cannot_be_registered() {
        let err = check_registered_id("static:a:10.0.0.1:80", "instance_id").unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert_eq!(
            check_registered_id("bad id", "instance_id")
                .unwrap_err()
                .code(),
            tonic::Code::InvalidArgument
        );
    }
}
