//! Helpers of the gRPC-level tests: a control plane on loopback ports and
//! authenticated clients.

#![allow(dead_code)]

use control_plane::{ControlPlane, Settings};
use gateway_proto::v1 as pb;
use gateway_proto::v1::admin_client::AdminClient;
use gateway_proto::v1::discovery_client::DiscoveryClient;
use gateway_proto::v1::registry_client::RegistryClient;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

pub const ADMIN_TOKEN: &str = "admin-secret";
pub const REGISTRATION_TOKEN: &str = "registration-secret";
pub const DATAPLANE_TOKEN: &str = "dataplane-secret";

/// Settings for a test control plane on loopback ports.
pub fn settings(redis_url: Option<String>) -> Settings {
    Settings {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        redis_url,
        admin_token: Some(ADMIN_TOKEN.into()),
        registration_token: Some(REGISTRATION_TOKEN.into()),
        dataplane_token: Some(DATAPLANE_TOKEN.into()),
        allow_unauthenticated: false,
        replica_id: format!("test-{}", uuid::Uuid::new_v4().simple()),
        key_prefix: "gw:".into(),
        leader_ttl: Duration::from_secs(1),
        lease_sweep_interval: Duration::from_millis(50),
        delta_ring: control_plane::view::RING_CAPACITY,
        ..Settings::default()
    }
}

pub async fn start(redis_url: Option<String>) -> ControlPlane {
    ControlPlane::start(settings(redis_url)).await.unwrap()
}

pub async fn channel(cp: &ControlPlane) -> Channel {
    Channel::from_shared(format!("http://{}", cp.grpc_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[derive(Clone)]
pub struct Bearer(pub Option<&'static str>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = self.0 {
            let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

pub type Registry = RegistryClient<InterceptedService<Channel, Bearer>>;
pub type Admin = AdminClient<InterceptedService<Channel, Bearer>>;
pub type Discovery = DiscoveryClient<InterceptedService<Channel, Bearer>>;

pub async fn registry(cp: &ControlPlane) -> Registry {
    RegistryClient::with_interceptor(channel(cp).await, Bearer(Some(REGISTRATION_TOKEN)))
}

pub async fn admin(cp: &ControlPlane) -> Admin {
    AdminClient::with_interceptor(channel(cp).await, Bearer(Some(ADMIN_TOKEN)))
}

pub async fn discovery(cp: &ControlPlane) -> Discovery {
    DiscoveryClient::with_interceptor(channel(cp).await, Bearer(Some(DATAPLANE_TOKEN)))
        .max_decoding_message_size(64 << 20)
}

pub fn registration(service: &str, id: &str, port: u32) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: service.into(),
        instance_id: id.into(),
        address: "127.0.0.1".into(),
        port,
        lease_ttl_seconds: 60,
        ..Default::default()
    }
}

/// A data plane's end of a Discovery stream.
pub struct DataPlane {
    pub tx: mpsc::Sender<pb::DataPlaneMessage>,
    pub updates: Streaming<pb::ConfigUpdate>,
}

pub fn hello(node_id: &str, epoch: &str, version: u64) -> pb::DataPlaneMessage {
    hello_as(node_id, epoch, version, "")
}

/// A Hello from a data plane of build version `build_version`.
pub fn hello_as(
    node_id: &str,
    epoch: &str,
    version: u64,
    build_version: &str,
) -> pb::DataPlaneMessage {
    pb::DataPlaneMessage {
        kind: Some(pb::data_plane_message::Kind::Hello(pb::Hello {
            node_id: node_id.into(),
            epoch: epoch.into(),
            version,
            build_version: build_version.into(),
        })),
    }
}

impl DataPlane {
    pub async fn connect(
        cp: &ControlPlane,
        node_id: &str,
        epoch: &str,
        version: u64,
    ) -> Result<DataPlane, Status> {
        let (tx, rx) = mpsc::channel(16);
        tx.send(hello(node_id, epoch, version)).await.unwrap();
        let updates = discovery(cp)
            .await
            .stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(DataPlane { tx, updates })
    }

    /// The next update, failing after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> pb::ConfigUpdate {
        tokio::time::timeout(timeout, self.updates.message())
            .await
            .expect("no update in time")
            .expect("stream failed")
            .expect("stream ended")
    }

    /// `None` when no update arrives within `wait`.
    pub async fn quiet(&mut self, wait: Duration) -> Option<pb::ConfigUpdate> {
        match tokio::time::timeout(wait, self.updates.message()).await {
            Err(_) => None,
            Ok(message) => message.expect("stream failed"),
        }
    }

    pub async fn send(&self, kind: pb::data_plane_message::Kind) {
        self.tx
            .send(pb::DataPlaneMessage { kind: Some(kind) })
            .await
            .unwrap();
    }

    pub async fn ack(&self, version: u64) {
        self.send(pb::data_plane_message::Kind::Ack(pb::Ack { version }))
            .await;
    }

    /// Waits for an update that satisfies `want`, skipping others.
    pub async fn until(
        &mut self,
        timeout: Duration,
        want: impl Fn(&pb::ConfigUpdate) -> bool,
    ) -> pb::ConfigUpdate {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let update = self.next(left).await;
            if want(&update) {
                return update;
            }
        }
    }
}

#[allow(unused_imports)]
pub use gateway_tests::wait::until_some;

/// GET over plain HTTP/1.1: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = gateway_tests::http::get_async(addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status, response.text())
}
