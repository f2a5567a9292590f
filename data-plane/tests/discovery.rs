//! The Discovery client against a fake control plane that speaks the real
//! gRPC protocol on a real socket.

mod common;

use common::*;
use data_plane::DataPlane;
use gateway_proto::v1 as pb;
use gateway_proto::v1::discovery_server::{Discovery, DiscoveryServer};
use pb::data_plane_message::Kind;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// One Discovery stream as the fake control plane sees it.
struct Session {
    authorization: Option<String>,
    inbound: Streaming<pb::DataPlaneMessage>,
    outbound: mpsc::UnboundedSender<Result<pb::ConfigUpdate, Status>>,
    reports: Vec<pb::Report>,
}

impl Session {
    /// The next message that is not a report (reports are kept aside).
    async fn recv(&mut self) -> Kind {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.inbound.message())
                .await
                .expect("no message from the data plane")
                .expect("stream failed")
                .expect("stream ended");
            match message.kind.expect("empty message") {
                Kind::Report(report) => self.reports.push(report),
                other => return other,
            }
        }
    }

    async fn recv_report(&mut self) -> pb::Report {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.inbound.message())
                .await
                .expect("no report from the data plane")
                .unwrap()
                .unwrap();
            if let Some(Kind::Report(report)) = message.kind {
                return report;
            }
        }
    }

    fn send(&self, update: pb::ConfigUpdate) {
        self.outbound.send(Ok(update)).unwrap();
    }
}

struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl Discovery for Fake {
    type StreamStream = UnboundedReceiverStream<Result<pb::ConfigUpdate, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::DataPlaneMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.sessions.send(Session {
            authorization,
            inbound: request.into_inner(),
            outbound: tx,
            reports: Vec::new(),
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

struct FakeControlPlane {
    addr: SocketAddr,
    sessions: mpsc::UnboundedReceiver<Session>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeControlPlane {
    async fn start(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(DiscoveryServer::new(Fake { sessions: tx }))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            sessions,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn next_session(&mut self, within: Duration) -> Session {
        tokio::time::timeout(within, self.sessions.recv())
            .await
            .expect("the data plane did not connect")
            .unwrap()
    }

    /// Stops accepting and ends every open stream.
    async fn stop(mut self, open: Vec<Session>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(open);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

const CONFIG: &str = r#"{"version":1,"services":[{"name":"s","timeout":"2s"}],"routes":[{"name":"all","match":{"path_prefix":"/"},"service":"s"}]}"#;

fn instance(id: &str, up: &Upstream, weight: u32) -> pb::Instance {
    pb::Instance {
        id: id.into(),
        service: "s".into(),
        address: "127.0.0.1".into(),
        port: u32::from(up.port()),
        weight,
        health: pb::HealthState::Healthy as i32,
        ..Default::default()
    }
}

fn snapshot(epoch: &str, version: u64, instances: Vec<pb::Instance>) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch: epoch.into(),
        version,
        snapshot: true,
        config_json: CONFIG.into(),
        upserts: instances,
        ..Default::default()
    }
}

fn delta(epoch: &str, base: u64, upserts: Vec<pb::Instance>) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch: epoch.into(),
        version: base + 1,
        base_version: base,
        upserts,
        ..Default::default()
    }
}

async fn start_plane(cp: &FakeControlPlane, token: Option<&str>) -> DataPlane {
    let mut settings = local_settings();
    settings.control_plane = cp.url();
    settings.dataplane_token = token.map(String::from);
    DataPlane::start(settings).await.unwrap()
}

fn expect_ack(kind: Kind, version: u64) {
    match kind {
        Kind::Ack(ack) => assert_eq!(ack.version, version),
        other => panic!("expected ack {version}, got {other:?}"),
    }
}

fn expect_nack(kind: Kind, version: u64, want_snapshot: bool) -> String {
    match kind {
        Kind::Nack(nack) => {
            assert_eq!(nack.version, version);
            assert_eq!(nack.want_snapshot, want_snapshot, "{}", nack.reason);
            assert!(!nack.reason.is_empty());
            nack.reason
        }
        other => panic!("expected nack {version}, got {other:?}"),
    }
}

#[tokio::test]
async fn snapshot_then_deltas_are_acked_nacked_and_routed() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut cp = FakeControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let plane = start_plane(&cp, Some("s3cret")).await;
    let mut session = cp.next_session(Duration::from_secs(5)).await;
    assert_eq!(session.authorization.as_deref(), Some("Bearer s3cret"));
    match session.recv().await {
        Kind::Hello(hello) => {
            assert_eq!(hello.node_id, "test-node");
            assert_eq!((hello.epoch.as_str(), hello.version), ("", 0));
        }
        other => panic!("expected hello, got {other:?}"),
    }
    assert_eq!(admin_get(&plane, "/health/ready").await.status, 503);
    // No config at all is not "no such route".
    let answer = get(&plane, "/x").await;
    answer.assert_error(503, "NO_CONFIG");
    assert_eq!(answer.headers["retry-after"], "1");

    session.send(snapshot(
        "ep",
        5,
        vec![instance("a", &a, 3), instance("b", &b, 1)],
    ));
    expect_ack(session.recv().await, 5);
    assert_eq!(admin_get(&plane, "/health/ready").await.status, 200);

    // Weighted round-robin: 3 to 1.
    for _ in 0..8 {
        assert_eq!(get(&plane, "/x").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (6, 2));

    // A delta that does not start from the version held asks for a snapshot.
    session.send(delta("ep", 4, vec![]));
    expect_nack(session.recv().await, 5, true);
    let mut other_epoch = delta("other", 5, vec![]);
    other_epoch.version = 6;
    session.send(other_epoch);
    expect_nack(session.recv().await, 6, true);

    // Draining: no new requests for a.
    let mut drained = instance("a", &a, 3);
    drained.draining = true;
    session.send(delta("ep", 5, vec![drained]));
    expect_ack(session.recv().await, 6);
    let before = a.hits();
    for _ in 0..4 {
        assert_eq!(get(&plane, "/x").await.json()["upstream"], "b");
    }
    assert_eq!(a.hits(), before);

    // Content that cannot load is refused whole; the old config serves on.
    let mut bad = delta("ep", 6, vec![instance("c", &a, 1)]);
    bad.config_json =
        r#"{"version":1,"routes":[{"name":"r","match":{"path":"/"},"service":"ghost"}]}"#.into();
    session.send(bad);
    let reason = expect_nack(session.recv().await, 7, false);
    assert!(reason.contains("unknown service"), "{reason}");
    let mut bad_instance = delta("ep", 6, vec![instance("c", &a, 1)]);
    bad_instance.upserts[0].port = 0;
    session.send(bad_instance);
    expect_nack(session.recv().await, 7, false);
    assert_eq!(plane.runtime().version(), ("ep".to_string(), 6));
    assert_eq!(get(&plane, "/x").await.json()["upstream"], "b");

    // Unhealthy: no instance left.
    let mut sick = instance("b", &b, 1);
    sick.health = pb::HealthState::Unhealthy as i32;
    session.send(delta("ep", 6, vec![sick]));
    expect_ack(session.recv().await, 7);
    get(&plane, "/x")
        .await
        .assert_error(503, "NO_HEALTHY_INSTANCE");

    // A snapshot replaces everything, whatever the version held.
    session.send(snapshot("ep2", 2, vec![instance("b", &b, 1)]));
    expect_ack(session.recv().await, 2);
    assert_eq!(get(&plane, "/x").await.json()["upstream"], "b");

    let metrics = admin_get(&plane, "/metrics").await.text();
    assert!(
        metrics.contains("gateway_control_plane_connected 1"),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_config_version 2"), "{metrics}");
    // Two refused for their content, two out of sequence (a snapshot asked for).
    assert!(
        metrics.contains(r#"gateway_config_updates_total{result="rejected"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_config_updates_total{result="out_of_sequence"} 2"#),
        "{metrics}"
    );
    plane.shutdown().await;
    cp.stop(vec![session]).await;
}

#[tokio::test]
async fn reports_carry_in_flight_counts() {
    let a = Upstream::start("a").await;
    let mut cp = FakeControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let plane = start_plane(&cp, None).await;
    let mut session = cp.next_session(Duration::from_secs(5)).await;
    assert!(session.authorization.is_none());
    assert!(matches!(session.recv().await, Kind::Hello(_)));
    session.send(snapshot("ep", 1, vec![instance("a", &a, 1)]));
    expect_ack(session.recv().await, 1);

    let addr = plane.listen_addr();
    let slow = tokio::spawn(async move {
        let req = http::Request::get(format!("http://{addr}/slow/1500"))
            .body(empty())
            .unwrap();
        send(&client(), req).await.status
    });
    // A report shows the request in flight, and a later one its end.
    let mut saw_one = false;
    for _ in 0..10 {
        let report = session.recv_report().await;
        let load = report.in_flight.iter().find(|l| l.instance_id == "a");
        match load.map(|l| l.in_flight) {
            Some(1) => saw_one = true,
            Some(0) if saw_one => break,
            _ => {}
        }
    }
    assert!(saw_one, "no report showed the request in flight");
    assert_eq!(slow.await.unwrap(), 200);
    plane.shutdown().await;
    cp.stop(vec![session]).await;
}

#[tokio::test]
async fn keeps_serving_without_control_plane_and_resumes() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let mut cp = FakeControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let addr = cp.addr;
    let plane = start_plane(&cp, None).await;
    let mut session = cp.next_session(Duration::from_secs(5)).await;
    assert!(matches!(session.recv().await, Kind::Hello(_)));
    session.send(snapshot("ep", 3, vec![instance("a", &a, 1)]));
    expect_ack(session.recv().await, 3);

    cp.stop(vec![session]).await;
    let metrics = plane.metrics().clone();
    assert!(
        eventually(Duration::from_secs(3), || metrics
            .control_plane_connected
            .get()
            == 0)
        .await
    );
    for _ in 0..5 {
        assert_eq!(get(&plane, "/x").await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(admin_get(&plane, "/health/ready").await.status, 200);

    // Back on the same address: the data plane reconnects with what it holds.
    let mut cp = FakeControlPlane::start(addr).await;
    let mut session = cp.next_session(Duration::from_secs(10)).await;
    match session.recv().await {
        Kind::Hello(hello) => assert_eq!((hello.epoch.as_str(), hello.version), ("ep", 3)),
        other => panic!("expected hello, got {other:?}"),
    }
    session.send(delta("ep", 3, vec![instance("b", &b, 1)]));
    expect_ack(session.recv().await, 4);
    let mut upstreams = std::collections::BTreeSet::new();
    for _ in 0..4 {
        upstreams.insert(
            get(&plane, "/x").await.json()["upstream"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(upstreams.into_iter().collect::<Vec<_>>(), vec!["a", "b"]);
    plane.shutdown().await;
    cp.stop(vec![session]).await;
}

/// A data plane keeping its config cache in `dir`, streaming from `url`.
async fn start_cached_plane(url: String, dir: &std::path::Path, grace: Duration) -> DataPlane {
    let mut settings = local_settings();
    settings.control_plane = url;
    settings.config_cache = Some(dir.to_path_buf());
    settings.config_cache_grace = grace;
    DataPlane::start(settings).await.unwrap()
}

async fn cache_written(plane: &DataPlane, version: u64) -> bool {
    for _ in 0..100 {
        let health = admin_get(plane, "/health").await.json();
        if health["checks"]["configCache"]["writtenVersion"] == version {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn a_restarted_data_plane_serves_its_cached_config_and_says_hello_with_it() {
    let a = Upstream::start("a").await;
    let dir = std::env::temp_dir().join(format!("gw-dp-cache-{}", uuid::Uuid::new_v4().simple()));
    let mut cp = FakeControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let plane = start_cached_plane(cp.url(), &dir, Duration::from_secs(60)).await;
    let mut session = cp.next_session(Duration::from_secs(5)).await;
    assert!(matches!(session.recv().await, Kind::Hello(_)));
    session.send(snapshot("ep", 5, vec![instance("a", &a, 1)]));
    expect_ack(session.recv().await, 5);
    assert!(cache_written(&plane, 5).await);
    session.send(delta("ep", 5, vec![]));
    expect_ack(session.recv().await, 6);
    assert!(
        cache_written(&plane, 6).await,
        "the next version is written too"
    );
    plane.shutdown().await;
    cp.stop(vec![session]).await;

    // A control plane that is current says nothing: after that silence the
    // cached version counts as the control plane's.
    let mut cp = FakeControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let plane = start_cached_plane(cp.url(), &dir, Duration::from_secs(60)).await;
    assert_eq!(
        get(&plane, "/x").await.status,
        200,
        "served from the cache at once"
    );
    let ready = admin_get(&plane, "/health/ready").await;
    assert_eq!(
        ready.status, 503,
        "not ready before the control plane or the grace"
    );
    assert_eq!(ready.json()["source"], "cache");
    let mut session = cp.next_session(Duration::from_secs(5)).await;
    match session.recv().await {
        Kind::Hello(hello) => assert_eq!((hello.epoch.as_str(), hello.version), ("ep", 6)),
        other => panic!("expected hello, got {other:?}"),
    }
    let metrics = plane.metrics().clone();
    assert!(
        eventually(Duration::from_secs(5), || plane.runtime().source()
            == data_plane::runtime::ConfigSource::ControlPlane)
        .await
    );
    let ready = admin_get(&plane, "/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["source"], "control_plane");
    assert_eq!(metrics.control_plane_connected.get(), 1);
    plane.shutdown().await;
    cp.stop(vec![session]).await;

    // No control plane at all: ready with the cached config after the grace.
    let nowhere = format!("http://127.0.0.1:{}", gateway_tests::free_port());
    let plane = start_cached_plane(nowhere, &dir, Duration::from_millis(300)).await;
    assert_eq!(get(&plane, "/x").await.status, 200);
    let runtime = plane.runtime().clone();
    assert!(eventually(Duration::from_secs(5), || runtime.is_ready()).await);
    let health = admin_get(&plane, "/health").await.json();
    let control_plane = &health["checks"]["controlPlane"];
    assert_eq!(control_plane["source"], "cache", "{health}");
    assert_eq!(control_plane["configVersion"], 6);
    assert!(control_plane["cachedAt"].is_string(), "{health}");
    assert_eq!(health["status"], "degraded");
    let text = admin_get(&plane, "/metrics").await.text();
    assert!(
        text.contains(r#"gateway_config_source{source="cache"} 1"#),
        "{text}"
    );
    plane.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
