//! A blocking gRPC client of the control plane for timing-sensitive test
//! steps (no gwctl process in between).

use gateway_proto::v1 as pb;
use pb::admin_client::AdminClient;
use pb::registry_client::RegistryClient;
use std::future::Future;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Blocking client of one control plane's Registry and Admin APIs.
pub struct Grpc {
    runtime: tokio::runtime::Runtime,
    url: String,
    admin_token: String,
    registration_token: String,
}

impl Grpc {
    /// A client of the control plane at `url` with the two bearer tokens.
    pub fn new(url: &str, admin_token: &str, registration_token: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the gRPC test client");
        Self {
            runtime,
            url: url.to_string(),
            admin_token: admin_token.to_string(),
            registration_token: registration_token.to_string(),
        }
    }

    async fn channel(url: String) -> Result<Channel, Status> {
        Endpoint::from_shared(url)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("cannot connect: {e}")))
    }

    fn with_token<T>(message: T, token: &str) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {token}").parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    fn block<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// `Registry.Register`.
    pub fn register(&self, request: pb::RegisterRequest) -> Result<pb::RegisterResponse, Status> {
        self.register_with_token(request, &self.registration_token.clone())
    }

    /// `Registry.Register` with an explicit token (e.g. a wrong one).
    pub fn register_with_token(
        &self,
        request: pb::RegisterRequest,
        token: &str,
    ) -> Result<pb::RegisterResponse, Status> {
        let url = self.url.clone();
        self.block(async move {
            let mut client = RegistryClient::new(Self::channel(url).await?);
            Ok(client
                .register(Self::with_token(request, token))
                .await?
                .into_inner())
        })
    }

    /// `Registry.Deregister`.
    pub fn deregister(&self, id: &str) -> Result<pb::DeregisterResponse, Status> {
        let url = self.url.clone();
        let request = Self::with_token(
            pb::DeregisterRequest {
                instance_id: id.to_string(),
            },
            &self.registration_token,
        );
        self.block(async move {
            let mut client = RegistryClient::new(Self::channel(url).await?);
            Ok(client.deregister(request).await?.into_inner())
        })
    }

    /// `Admin.ListInstances` of every service.
    pub fn instances(&self) -> Result<Vec<pb::InstanceStatus>, Status> {
        let url = self.url.clone();
        let request = Self::with_token(
            pb::ListInstancesRequest {
                service: String::new(),
            },
            &self.admin_token,
        );
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client.list_instances(request).await?.into_inner().instances)
        })
    }

    /// `Admin.ApplyConfig` of a document.
    pub fn apply_config(
        &self,
        document: &str,
        dry_run: bool,
    ) -> Result<pb::ApplyConfigResponse, Status> {
        let url = self.url.clone();
        let request = Self::with_token(
            pb::ApplyConfigRequest {
                document: document.as_bytes().to_vec(),
                dry_run,
            },
            &self.admin_token,
        );
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client.apply_config(request).await?.into_inner())
        })
    }

    /// `Admin.GetConfig`: (config JSON, version).
    pub fn config(&self) -> Result<(String, u64), Status> {
        let url = self.url.clone();
        let request = Self::with_token(pb::GetConfigRequest::default(), &self.admin_token);
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            let answer = client.get_config(request).await?.into_inner();
            Ok((answer.config_json, answer.version))
        })
    }

    /// `Admin.SetBreakerPolicy`.
    pub fn set_breaker_policy(
        &self,
        policy: pb::BreakerPolicy,
    ) -> Result<pb::BreakerPolicy, Status> {
        let url = self.url.clone();
        let request = Self::with_token(
            pb::SetBreakerPolicyRequest {
                policy: Some(policy),
            },
            &self.admin_token,
        );
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client.set_breaker_policy(request).await?.into_inner())
        })
    }

    /// `Admin.InvalidateCache`.
    pub fn invalidate_cache(&self, pattern: &str) -> Result<pb::InvalidateCacheResponse, Status> {
        let url = self.url.clone();
        let request = Self::with_token(
            pb::InvalidateCacheRequest {
                pattern: pattern.to_string(),
            },
            &self.admin_token,
        );
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client.invalidate_cache(request).await?.into_inner())
        })
    }

    /// `Admin.GetTopology`.
    pub fn topology(&self) -> Result<pb::Topology, Status> {
        let url = self.url.clone();
        let request = Self::with_token(pb::TopologyRequest {}, &self.admin_token);
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client.get_topology(request).await?.into_inner())
        })
    }

    /// `Admin.ListDataPlanes`.
    pub fn data_planes(&self) -> Result<Vec<pb::DataPlaneStatus>, Status> {
        let url = self.url.clone();
        let request = Self::with_token(pb::ListDataPlanesRequest {}, &self.admin_token);
        self.block(async move {
            let mut client = AdminClient::new(Self::channel(url).await?);
            Ok(client
                .list_data_planes(request)
                .await?
                .into_inner()
                .data_planes)
        })
    }
}

/// A registration request for `service` at `127.0.0.1:port`.
pub fn registration(service: &str, id: &str, port: u16, ttl_seconds: u32) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.to_string(),
        instance_id: id.to_string(),
        address: "127.0.0.1".to_string(),
        port: u32::from(port),
        health_path: String::new(),
        weight: 0,
        zone: String::new(),
        metadata: Default::default(),
        lease_ttl_seconds: ttl_seconds,
        scheme: String::new(),
    }
}
