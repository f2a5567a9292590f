//! The Discovery stream server: one session per connected data plane.
//!
//! A session answers the data plane's `Hello` with nothing (it is current),
//! the deltas it misses merged into one (its version is still in the ring)
//! or a snapshot, then sends one merged delta from the last version it sent
//! whenever the view advances, so bursts coalesce. ACK/NACK come back
//! asynchronously and are recorded, with the data plane's reports, in the
//! store so that every replica can list every data plane: the latest status
//! of every session of the replica is written in one store call at most every
//! [`RECORD_WRITE_GAP`] ([`StatusWriter`]), so a registration costs the
//! store the same whether 1 or 100 data planes acknowledge it.
//!
//! Updates are encoded once per version range and shared by every session
//! that sends the same range ([`UpdateCache`]); a custom codec writes the
//! encoded bytes as they are.

use crate::metrics::Metrics;
use crate::node_identity::{valid_node_id, NodeIdentity};
use crate::store::{unix_ms, BreakerStatus, DataPlaneRecord, Delta, InFlight, Store};
use crate::view::{merge, Stamp, View, ViewState};
use bytes::{BufMut, Bytes};
use gateway_proto::v1 as pb;
use parking_lot::Mutex;
use prost::Message;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify, OnceCell};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::server::{NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

/// Longest a Hello waits for the view to catch up with the store.
const GREET_CATCH_UP: Duration = Duration::from_secs(1);

/// Time a data plane has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Least time between two writes of data planes' status by one replica.
const RECORD_WRITE_GAP: Duration = Duration::from_millis(250);
/// Most in-flight or breaker entries kept per data plane.
const MAX_REPORT_ENTRIES: usize = 10_000;
/// Longest NACK reason kept.
const MAX_REASON_BYTES: usize = 1024;
/// Cached encoded deltas before old ranges are dropped.
const DELTA_CACHE_ENTRIES: usize = 256;

/// A `ConfigUpdate`, encoded once and shared.
#[derive(Debug, Clone)]
pub struct EncodedUpdate {
    bytes: Bytes,
    version: u64,
    snapshot: bool,
}

impl EncodedUpdate {
    fn new(update: &pb::ConfigUpdate) -> Self {
        EncodedUpdate {
            bytes: Bytes::from(update.encode_to_vec()),
            version: update.version,
            snapshot: update.snapshot,
        }
    }

    /// Version after the update is applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Whether it is a snapshot (else a delta).
    pub fn is_snapshot(&self) -> bool {
        self.snapshot
    }

    /// The encoded message.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// (generation, version) of a cached snapshot.
type SnapshotKey = (u64, u64);
/// (generation, from, to) of a cached delta.
type DeltaKey = (u64, u64, u64);
/// Filled once by the first session that needs it; the others wait.
type Slot<T> = Arc<OnceCell<T>>;

/// Encoded snapshots and merged deltas, keyed by what they cover.
#[derive(Default)]
pub struct UpdateCache {
    snapshot: Mutex<Option<(SnapshotKey, Slot<EncodedUpdate>)>>,
    deltas: Mutex<HashMap<DeltaKey, Slot<Option<EncodedUpdate>>>>,
}

fn snapshot_update(state: &ViewState) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch: state.epoch().to_string(),
        version: state.version(),
        snapshot: true,
        base_version: 0,
        config_json: state.config_json().to_string(),
        upserts: state.instances().values().map(|i| i.to_proto()).collect(),
        removals: Vec::new(),
    }
}

fn delta_update(epoch: String, from: u64, to: u64, delta: Delta) -> pb::ConfigUpdate {
    pb::ConfigUpdate {
        epoch,
        version: to,
        snapshot: false,
        base_version: from,
        config_json: delta.config.unwrap_or_default(),
        upserts: delta.upserts.iter().map(|i| i.to_proto()).collect(),
        removals: delta.removals,
    }
}

impl UpdateCache {
    /// A snapshot of the view as it is now.
    pub async fn snapshot(&self, view: &View) -> EncodedUpdate {
        let stamp = view.stamp();
        let key = (stamp.generation, stamp.version);
        let cell = {
            let mut slot = self.snapshot.lock();
            match slot.as_ref() {
                Some((k, cell)) if *k == key => cell.clone(),
                _ => {
                    let cell = Arc::new(OnceCell::new());
                    *slot = Some((key, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| async {
            let started = std::time::Instant::now();
            let update = snapshot_update(&view.read());
            let encoded = EncodedUpdate::new(&update);
            tracing::info!(
                version = update.version,
                instances = update.upserts.len(),
                bytes = encoded.bytes.len(),
                encode_ms = started.elapsed().as_secs_f64() * 1000.0,
                "snapshot encoded"
            );
            encoded
        })
        .await
        .clone()
    }

    /// The delta from `from` to `to` in `generation`, if the view still
    /// holds every delta in between.
    pub async fn delta(
        &self,
        view: &View,
        generation: u64,
        from: u64,
        to: u64,
    ) -> Option<EncodedUpdate> {
        let key = (generation, from, to);
        let cell = {
            let mut deltas = self.deltas.lock();
            if deltas.len() >= DELTA_CACHE_ENTRIES && !deltas.contains_key(&key) {
                let newest = deltas.keys().map(|k| k.2).max().unwrap_or(0);
                deltas.retain(|k, _| k.2 >= newest && k.0 >= generation);
            }
            deltas.entry(key).or_default().clone()
        };
        cell.get_or_init(|| async {
            let (epoch, deltas) = {
                let state = view.read();
                if state.generation() != generation {
                    return None;
                }
                (state.epoch().to_string(), state.deltas_between(from, to)?)
            };
            Some(EncodedUpdate::new(&delta_update(
                epoch,
                from,
                to,
                merge(&deltas),
            )))
        })
        .await
        .clone()
    }
}

/// Writes the status of this replica's data planes to the store: sessions
/// publish their latest record, and one task writes every record that
/// changed in one store call, at most every [`RECORD_WRITE_GAP`].
#[derive(Default)]
pub struct StatusWriter {
    pending: Mutex<HashMap<String, DataPlaneRecord>>,
    wake: Notify,
    /// Held while records are written, so that a session's final record is
    /// never overwritten by an earlier one still being written.
    writing: tokio::sync::Mutex<()>,
}

impl StatusWriter {
    /// Queues the latest status of a data plane.
    fn publish(&self, record: DataPlaneRecord) {
        self.pending.lock().insert(record.node_id.clone(), record);
        self.wake.notify_one();
    }

    /// Writes what is queued.
    async fn flush(&self, store: &dyn Store) {
        let _writing = self.writing.lock().await;
        let batch: Vec<DataPlaneRecord> = self.pending.lock().drain().map(|(_, r)| r).collect();
        if batch.is_empty() {
            return;
        }
        if let Err(e) = store.record_dataplanes(&batch).await {
            tracing::debug!(count = batch.len(), error = %e, "cannot record data planes' status");
        }
    }

    /// Writes the final status of a session that ended, dropping what it
    /// queued before.
    async fn gone(&self, store: &dyn Store, record: &DataPlaneRecord) {
        let _writing = self.writing.lock().await;
        {
            let mut pending = self.pending.lock();
            if pending
                .get(&record.node_id)
                .is_some_and(|r| r.session == record.session)
            {
                pending.remove(&record.node_id);
            }
        }
        if let Err(e) = store.record_dataplane_gone(record).await {
            tracing::debug!(node_id = %record.node_id, error = %e, "cannot record a data plane's disconnection");
        }
    }

    /// Writes queued records until `cancel` fires, then once more.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.notified() => {}
            }
            self.flush(store.as_ref()).await;
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(RECORD_WRITE_GAP) => {}
            }
        }
        self.flush(store.as_ref()).await;
    }
}

/// What this replica knows about its own sessions (for metrics).
#[derive(Default)]
pub struct Sessions {
    acked: Mutex<HashMap<u64, u64>>,
    next_id: AtomicU64,
}

impl Sessions {
    fn open(&self) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.acked.lock().insert(id, 0);
        id
    }

    fn ack(&self, id: u64, version: u64) {
        if let Some(v) = self.acked.lock().get_mut(&id) {
            *v = version;
        }
    }

    fn close(&self, id: u64) {
        self.acked.lock().remove(&id);
    }

    /// Open sessions.
    pub fn count(&self) -> usize {
        self.acked.lock().len()
    }

    /// Largest gap between `version` and a session's acknowledged version.
    pub fn max_lag(&self, version: u64) -> u64 {
        self.acked
            .lock()
            .values()
            .map(|acked| version.saturating_sub(*acked))
            .max()
            .unwrap_or(0)
    }
}

/// Everything sessions share.
pub struct DiscoveryContext {
    /// The replica's view.
    pub view: Arc<View>,
    /// The store (data-plane status records).
    pub store: Arc<dyn Store>,
    /// This replica's id.
    pub replica: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Encoded updates.
    pub cache: UpdateCache,
    /// Open sessions.
    pub sessions: Sessions,
    /// Writes the sessions' status to the store.
    pub status: Arc<StatusWriter>,
    /// Fires at shutdown: sessions end.
    pub cancel: CancellationToken,
    /// Session tasks, awaited at shutdown.
    pub tracker: TaskTracker,
}

/// The `gateway.v1.Discovery` service.
#[derive(Clone)]
pub struct DiscoveryServer {
    ctx: Arc<DiscoveryContext>,
}

impl DiscoveryServer {
    /// Serves Discovery streams with `ctx`.
    pub fn new(ctx: Arc<DiscoveryContext>) -> Self {
        DiscoveryServer { ctx }
    }
}

impl NamedService for DiscoveryServer {
    const NAME: &'static str = "gateway.v1.Discovery";
}

impl<B> Service<http::Request<B>> for DiscoveryServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != "/gateway.v1.Discovery/Stream" {
            return Box::pin(async move {
                let status = Status::unimplemented("unknown Discovery method");
                Ok(status.into_http())
            });
        }
        let method = StreamMethod(self.ctx.clone());
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(DiscoveryCodec);
            Ok(grpc.streaming(method, req).await)
        })
    }
}

struct StreamMethod(Arc<DiscoveryContext>);

impl StreamingService<pb::DataPlaneMessage> for StreamMethod {
    type Response = EncodedUpdate;
    type ResponseStream = ReceiverStream<Result<EncodedUpdate, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<pb::DataPlaneMessage>>) -> Self::Future {
        let ctx = self.0.clone();
        let peer = request.peer_certs();
        let identity = NodeIdentity::of_peer(peer.as_deref().map(Vec::as_slice));
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(2);
            let inbound = request.into_inner();
            let tracker = ctx.tracker.clone();
            tracker.spawn(run_session(ctx, inbound, tx, identity));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Writes pre-encoded updates; decodes data-plane messages with prost.
#[derive(Debug, Clone, Copy, Default)]
struct DiscoveryCodec;

struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = EncodedUpdate;
    type Error = Status;

    fn encode(&mut self, item: EncodedUpdate, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.bytes);
        Ok(())
    }
}

struct MessageDecoder(tonic_prost::ProstDecoder<pb::DataPlaneMessage>);

impl Decoder for MessageDecoder {
    type Item = pb::DataPlaneMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src)
    }
}

impl Codec for DiscoveryCodec {
    type Encode = EncodedUpdate;
    type Decode = pb::DataPlaneMessage;
    type Encoder = PreEncoded;
    type Decoder = MessageDecoder;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> MessageDecoder {
        MessageDecoder(tonic_prost::ProstDecoder::default())
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Generation and version last sent to the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    generation: u64,
    version: u64,
}

/// The session ended (the data plane left, or the replica shuts down).
struct Closed;

struct Session {
    ctx: Arc<DiscoveryContext>,
    local_id: u64,
    /// When the data plane said Hello: only versions applied since are
    /// timed to its ACK (catching up after a reconnect is not propagation).
    opened: Instant,
    tx: mpsc::Sender<Result<EncodedUpdate, Status>>,
    sent: Option<Sent>,
    /// The last snapshot sent: it answers every NACK of an update sent
    /// before it.
    snapshot_sent: Option<Sent>,
    /// Set while the data plane holds updates of another epoch (its Hello)
    /// and nothing was sent to it: it gets no snapshot of a view holding no
    /// config (see [`Session::send_snapshot`]).
    holds_other_history: bool,
    /// A snapshot was withheld for that reason (logged once).
    withheld: bool,
    record: DataPlaneRecord,
    /// The node ids its client certificate allows (every Hello is checked).
    identity: NodeIdentity,
}

async fn run_session(
    ctx: Arc<DiscoveryContext>,
    mut inbound: Streaming<pb::DataPlaneMessage>,
    tx: mpsc::Sender<Result<EncodedUpdate, Status>>,
    identity: NodeIdentity,
) {
    let hello = tokio::select! {
        _ = ctx.cancel.cancelled() => return,
        first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message()) => first,
    };
    let hello = match hello {
        Ok(Ok(Some(pb::DataPlaneMessage {
            kind: Some(pb::data_plane_message::Kind::Hello(hello)),
        }))) if valid_node_id(&hello.node_id) => hello,
        Ok(Err(_)) | Ok(Ok(None)) => return,
        _ => {
            let status = Status::invalid_argument(
                "the first message must be Hello with a node_id of 1-253 printable characters",
            );
            ctx.metrics.grpc_error("Discovery/Stream", &status);
            let _ = tx.send(Err(status)).await;
            return;
        }
    };
    if let Err(status) = identity.check(&hello.node_id) {
        tracing::warn!(node_id = %hello.node_id, reason = %status.message(), "Hello refused");
        ctx.metrics.grpc_error("Discovery/Stream", &status);
        let _ = tx.send(Err(status)).await;
        return;
    }
    if let Err(reason) = crate::compat::check(crate::compat::VERSION, &hello.build_version) {
        tracing::warn!(node_id = %hello.node_id, data_plane_version = %hello.build_version, "{reason}");
        let status = Status::failed_precondition(reason);
        ctx.metrics.grpc_error("Discovery/Stream", &status);
        let _ = tx.send(Err(status)).await;
        return;
    }
    let now = unix_ms();
    // What the data plane holds counts as acknowledged only in this epoch.
    let held = if ctx.view.read().epoch() == hello.epoch {
        hello.version
    } else {
        0
    };
    let record = DataPlaneRecord {
        node_id: hello.node_id.clone(),
        session: uuid::Uuid::new_v4().to_string(),
        replica: ctx.replica.clone(),
        acked_version: held,
        connected_at_unix_ms: now,
        last_seen_unix_ms: now,
        connected: true,
        build_version: hello.build_version.clone(),
        ..DataPlaneRecord::default()
    };
    tracing::info!(node_id = %hello.node_id, epoch = %hello.epoch, version = hello.version, build_version = %hello.build_version, "data plane connected");
    let local_id = ctx.sessions.open();
    ctx.sessions.ack(local_id, held);
    let mut session = Session {
        ctx: ctx.clone(),
        local_id,
        opened: Instant::now(),
        tx,
        sent: None,
        snapshot_sent: None,
        holds_other_history: false,
        withheld: false,
        record,
        identity,
    };
    let _ = session.run(hello, &mut inbound).await;
    ctx.sessions.close(local_id);
    let mut record = session.record;
    record.connected = false;
    record.last_seen_unix_ms = unix_ms();
    ctx.status.gone(ctx.store.as_ref(), &record).await;
    tracing::info!(node_id = %record.node_id, "data plane disconnected");
}

impl Session {
    async fn run(
        &mut self,
        hello: pb::Hello,
        inbound: &mut Streaming<pb::DataPlaneMessage>,
    ) -> Result<(), Closed> {
        self.publish_record();
        self.greet(&hello).await?;
        let mut stamps = self.ctx.view.subscribe();
        stamps.borrow_and_update();
        // A change between the greeting and the subscription is caught here.
        self.sync().await?;
        let cancel = self.ctx.cancel.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Err(Closed),
                changed = stamps.changed() => {
                    changed.map_err(|_| Closed)?;
                    self.sync().await?;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.handle(message).await?,
                    Ok(None) | Err(_) => return Err(Closed),
                },
            }
        }
    }

    async fn send(&mut self, update: EncodedUpdate, generation: u64) -> Result<(), Closed> {
        let version = update.version();
        let (snapshot, bytes) = (update.is_snapshot(), update.bytes().len());
        self.tx.send(Ok(update)).await.map_err(|_| Closed)?;
        self.ctx.metrics.update_sent(snapshot, bytes);
        self.sent = Some(Sent {
            generation,
            version,
        });
        Ok(())
    }

    /// Sends a snapshot of the view, except to a data plane holding another
    /// history while the view holds no config: the store lost its data and
    /// no replica holding the config could write it back (all restarted).
    /// That data plane keeps serving its last config until one is applied;
    /// a view never loses its config, so the check cannot flip back.
    async fn send_snapshot(&mut self) -> Result<(), Closed> {
        if self.holds_other_history {
            if !self.ctx.view.read().configured() {
                if !self.withheld {
                    tracing::warn!(node_id = %self.record.node_id, "the store holds no config: the data plane keeps serving its own until one is applied");
                }
                self.withheld = true;
                return Ok(());
            }
            self.holds_other_history = false;
        }
        let generation = self.ctx.view.stamp().generation;
        let update = self.ctx.cache.snapshot(&self.ctx.view).await;
        let version = update.version();
        self.send(update, generation).await?;
        self.snapshot_sent = Some(Sent {
            generation,
            version,
        });
        Ok(())
    }

    /// Whether a snapshot was sent after the update of `version` (a data
    /// plane that lost a delta NACKs every later delta until the snapshot
    /// reaches it; one snapshot answers them all).
    fn answered_by_snapshot(&self, version: u64) -> bool {
        self.snapshot_sent.is_some_and(|s| {
            s.generation == self.ctx.view.stamp().generation && version <= s.version
        })
    }

    /// Waits (a bounded time) until the view holds every change committed
    /// to the store before now and at least `seen`, so that a data plane
    /// never starts from less than what a write acknowledged before it
    /// connected. Without the store (down), it starts from what the view has.
    async fn catch_up(&self, seen: u64) {
        let caught_up = self
            .ctx
            .view
            .catch_up(self.ctx.store.as_ref(), seen, GREET_CATCH_UP);
        // Bounded as a whole: a store outage must not hold data planes back.
        if let Ok(Err(e)) = tokio::time::timeout(GREET_CATCH_UP, caught_up).await {
            tracing::debug!(error = %e, "store head unavailable; greeting from the view as it is");
        }
    }

    /// Answers the Hello: nothing when current, the missing deltas when the
    /// ring has them, else a snapshot.
    async fn greet(&mut self, hello: &pb::Hello) -> Result<(), Closed> {
        let same_epoch = hello.version > 0 && self.ctx.view.read().epoch() == hello.epoch;
        // The data plane may have seen a newer version through another replica.
        let seen = if same_epoch { hello.version } else { 0 };
        self.catch_up(seen).await;
        if !same_epoch {
            self.holds_other_history = hello.version > 0;
            return self.send_snapshot().await;
        }
        let stamp = self.ctx.view.stamp();
        if hello.version == stamp.version {
            self.sent = Some(Sent {
                generation: stamp.generation,
                version: stamp.version,
            });
            return Ok(());
        }
        if hello.version < stamp.version {
            let delta = self
                .ctx
                .cache
                .delta(
                    &self.ctx.view,
                    stamp.generation,
                    hello.version,
                    stamp.version,
                )
                .await;
            if let Some(update) = delta {
                return self.send(update, stamp.generation).await;
            }
        }
        self.send_snapshot().await
    }

    /// Brings the data plane from what was last sent to the view's version.
    async fn sync(&mut self) -> Result<(), Closed> {
        let stamp: Stamp = self.ctx.view.stamp();
        match self.sent {
            Some(sent) if sent.generation == stamp.generation && sent.version == stamp.version => {
                Ok(())
            }
            Some(sent) if sent.generation == stamp.generation && sent.version < stamp.version => {
                let delta = self
                    .ctx
                    .cache
                    .delta(
                        &self.ctx.view,
                        stamp.generation,
                        sent.version,
                        stamp.version,
                    )
                    .await;
                match delta {
                    Some(update) => self.send(update, stamp.generation).await,
                    None => self.send_snapshot().await,
                }
            }
            _ => self.send_snapshot().await,
        }
    }

    async fn handle(&mut self, message: pb::DataPlaneMessage) -> Result<(), Closed> {
        use pb::data_plane_message::Kind;
        self.record.last_seen_unix_ms = unix_ms();
        match message.kind {
            Some(Kind::Ack(ack)) => {
                self.time_propagation(ack.version);
                self.record.acked_version = ack.version;
                self.ctx.sessions.ack(self.local_id, ack.version);
            }
            Some(Kind::Nack(nack)) if nack.want_snapshot => {
                if self.answered_by_snapshot(nack.version) {
                    tracing::debug!(node_id = %self.record.node_id, version = nack.version, "data plane asks for a snapshot; the one already sent answers it");
                } else {
                    tracing::debug!(node_id = %self.record.node_id, version = nack.version, "data plane asks for a snapshot");
                    self.send_snapshot().await?;
                }
            }
            Some(Kind::Nack(nack)) => {
                tracing::warn!(node_id = %self.record.node_id, version = nack.version, reason = %nack.reason, "data plane refused an update");
                self.record.nacked_version = nack.version;
                self.record.nack_reason = truncate(&nack.reason, MAX_REASON_BYTES);
            }
            Some(Kind::Report(report)) => self.merge_report(report),
            Some(Kind::Hello(hello)) => {
                if let Err(status) = self.identity.check(&hello.node_id) {
                    let _ = self.tx.send(Err(status)).await;
                    return Err(Closed);
                }
                self.greet(&hello).await?;
            }
            None => {}
        }
        self.publish_record();
        Ok(())
    }

    /// Times an ACK from the view's apply of the oldest version it covers
    /// (`control_plane_config_propagation_seconds`).
    fn time_propagation(&self, acked: u64) {
        let previous = self.record.acked_version;
        if acked <= previous {
            return;
        }
        let applied = self.ctx.view.read().applied_at(previous + 1);
        if let Some(at) = applied.filter(|at| *at >= self.opened) {
            self.ctx
                .metrics
                .config_propagation
                .observe(at.elapsed().as_secs_f64());
        }
    }

    /// Reports carry the in-flight counts that changed (zero: gone) and the
    /// breaker states that changed (`UNSPECIFIED`: gone); they are merged
    /// into what is known.
    fn merge_report(&mut self, report: pb::Report) {
        let record = &mut self.record;
        for load in report.in_flight {
            record
                .in_flight
                .retain(|l| l.instance_id != load.instance_id);
            if load.in_flight > 0 && record.in_flight.len() < MAX_REPORT_ENTRIES {
                record.in_flight.push(InFlight {
                    instance_id: load.instance_id,
                    in_flight: load.in_flight,
                });
            }
        }
        for breaker in report.breakers {
            record.breakers.retain(|b| b.service != breaker.service);
            // UNSPECIFIED: the data plane no longer has a breaker for it.
            if breaker.state != pb::BreakerState::Unspecified as i32
                && record.breakers.len() < MAX_REPORT_ENTRIES
            {
                record.breakers.push(BreakerStatus {
                    service: breaker.service,
                    state: breaker.state,
                });
            }
        }
        record
            .in_flight
            .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        record.breakers.sort_by(|a, b| a.service.cmp(&b.service));
    }

    fn publish_record(&self) {
        self.ctx.status.publish(self.record.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;
    use gateway_common::registration::{Instance, InstanceSpec, InstanceState};
    use gateway_common::GatewayConfig;

    fn instance(id: &str) -> Instance {
        Instance {
            spec: InstanceSpec {
                id: id.into(),
                service: "svc".into(),
                address: "10.0.0.1".into(),
                port: 80,
                health_path: String::new(),
                weight: 1,
                zone: String::new(),
                metadata: Default::default(),
                static_instance: false,
                tls: false,
            },
            state: InstanceState::default(),
        }
    }

    fn view() -> Arc<View> {
        View::new(
            Snapshot {
                epoch: "e".into(),
                version: 0,
                config: GatewayConfig::default(),
                config_json: GatewayConfig::default().to_json(),
                configured: false,
                instances: vec![],
                lease_ttls_ms: Default::default(),
            },
            vec![],
            100,
        )
    }

    fn upsert(version: u64, id: &str) -> crate::store::Change {
        crate::store::Change {
            version,
            epoch: None,
            delta: Delta {
                upserts: vec![instance(id)],
                ..Delta::default()
            },
        }
    }

    #[tokio::test]
    async fn deltas_are_encoded_once_per_range() {
        let view = view();
        view.apply(vec![upsert(1, "a"), upsert(2, "b")]).unwrap();
        let cache = UpdateCache::default();
        let g = view.stamp().generation;
        let one = cache.delta(&view, g, 0, 2).await.unwrap();
        let two = cache.delta(&view, g, 0, 2).await.unwrap();
        assert_eq!(one.bytes().as_ptr(), two.bytes().as_ptr(), "shared bytes");
        let decoded = pb::ConfigUpdate::decode(one.bytes().clone()).unwrap();
        assert_eq!(decoded.base_version, 0);
        assert_eq!(decoded.version, 2);
        assert!(!decoded.snapshot);
        assert_eq!(decoded.upserts.len(), 2);
        assert!(
            cache.delta(&view, g + 1, 0, 2).await.is_none(),
            "other generation"
        );
    }

    #[tokio::test]
    async fn snapshots_hold_every_instance() {
        let view = view();
        view.apply(vec![upsert(1, "a"), upsert(2, "b")]).unwrap();
        let cache = UpdateCache::default();
        let snap = cache.snapshot(&view).await;
        let decoded = pb::ConfigUpdate::decode(snap.bytes().clone()).unwrap();
        assert!(decoded.snapshot);
        assert_eq!(decoded.version, 2);
        assert_eq!(decoded.epoch, "e");
        assert_eq!(decoded.upserts.len(), 2);
        assert!(GatewayConfig::from_json(&decoded.config_json).is_ok());
    }

    #[tokio::test]
    async fn a_hello_is_answered_with_what_the_store_held_when_it_came() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let ttl = Duration::from_secs(30);
        store
            .register(&instance("a").spec, ttl, false)
            .await
            .unwrap();
        let (snapshot, history) = crate::view::load_snapshot(store.as_ref()).await.unwrap();
        let view = View::new(snapshot, history, 100);
        let written = store
            .register(&instance("b").spec, ttl, false)
            .await
            .unwrap();
        // The view reads the change log a moment after the write returned.
        let changes = store.changes_after(view.stamp().version, 10).await.unwrap();
        let lagging = view.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lagging.apply(changes).unwrap();
        });
        let ctx = Arc::new(DiscoveryContext {
            view: view.clone(),
            store,
            replica: "r".into(),
            metrics: Arc::new(Metrics::new()),
            cache: UpdateCache::default(),
            sessions: Sessions::default(),
            status: Arc::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let (tx, mut rx) = mpsc::channel(4);
        let mut session = Session {
            ctx,
            local_id: 0,
            opened: Instant::now(),
            tx,
            sent: None,
            snapshot_sent: None,
            holds_other_history: false,
            withheld: false,
            record: DataPlaneRecord::default(),
            identity: NodeIdentity::Any,
        };
        let hello = pb::Hello {
            node_id: "dp".into(),
            ..pb::Hello::default()
        };
        assert!(session.greet(&hello).await.is_ok());
        let first = rx.recv().await.unwrap().unwrap();
        assert!(first.is_snapshot());
        assert_eq!(first.version(), written.version);
        let decoded = pb::ConfigUpdate::decode(first.bytes().clone()).unwrap();
        assert_eq!(decoded.upserts.len(), 2);
    }

    fn session_of(view: Arc<View>) -> (Session, mpsc::Receiver<Result<EncodedUpdate, Status>>) {
        let ctx = Arc::new(DiscoveryContext {
            view,
            store: Arc::new(crate::store::memory::MemoryStore::new()),
            replica: "r".into(),
            metrics: Arc::new(Metrics::new()),
            cache: UpdateCache::default(),
            sessions: Sessions::default(),
            status: Arc::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let (tx, rx) = mpsc::channel(4);
        let session = Session {
            ctx,
            local_id: 0,
            opened: Instant::now(),
            tx,
            sent: None,
            snapshot_sent: None,
            holds_other_history: false,
            withheld: false,
            record: DataPlaneRecord::default(),
            identity: NodeIdentity::Any,
        };
        (session, rx)
    }

    #[tokio::test]
    async fn a_data_plane_holding_another_history_gets_no_snapshot_of_a_store_without_config() {
        let view = view();
        let (mut session, mut rx) = session_of(view.clone());
        let hello = pb::Hello {
            node_id: "dp".into(),
            epoch: "lost".into(),
            version: 7,
            ..pb::Hello::default()
        };
        assert!(session.greet(&hello).await.is_ok());
        assert!(session.sync().await.is_ok());
        assert!(rx.try_recv().is_err(), "it keeps serving what it holds");

        let yaml = "version: 1\nservices:\n  - name: svc\nroutes:\n  - name: svc\n    match: { path_prefix: /svc }\n    service: svc\n";
        let config = GatewayConfig::load(yaml.as_bytes()).unwrap().to_json();
        view.apply(vec![crate::store::Change {
            version: 1,
            epoch: None,
            delta: Delta {
                config: Some(config),
                ..Delta::default()
            },
        }])
        .unwrap();
        assert!(session.sync().await.is_ok());
        let update = rx.try_recv().unwrap().unwrap();
        assert!(update.is_snapshot(), "a config is applied: it gets it");
        assert_eq!(update.version(), 1);
    }

    #[tokio::test]
    async fn a_new_data_plane_gets_the_snapshot_of_a_store_without_config_as_before() {
        let (mut session, mut rx) = session_of(view());
        let hello = pb::Hello {
            node_id: "dp".into(),
            ..pb::Hello::default()
        };
        assert!(session.greet(&hello).await.is_ok());
        assert!(rx.try_recv().unwrap().unwrap().is_snapshot());
    }

    fn propagations_timed(session: &Session) -> String {
        let text = session.ctx.metrics.encode();
        text.lines()
            .find_map(|l| l.strip_prefix("control_plane_config_propagation_seconds_count "))
            .unwrap_or_default()
            .to_string()
    }

    async fn ack(session: &mut Session, version: u64) {
        let ack = pb::data_plane_message::Kind::Ack(pb::Ack { version });
        let message = pb::DataPlaneMessage { kind: Some(ack) };
        assert!(session.handle(message).await.is_ok());
    }

    #[tokio::test]
    async fn acks_are_timed_from_the_apply_of_the_oldest_version_they_cover() {
        let view = view();
        view.apply(vec![upsert(1, "a")]).unwrap();
        let (mut session, _rx) = session_of(view.clone());
        // Applied before the data plane connected: catching up is not timed.
        ack(&mut session, 1).await;
        assert_eq!(propagations_timed(&session), "0");
        view.apply(vec![upsert(2, "b"), upsert(3, "c")]).unwrap();
        ack(&mut session, 3).await;
        assert_eq!(propagations_timed(&session), "1");
        // The same version again, or an older one, is no new propagation.
        ack(&mut session, 3).await;
        ack(&mut session, 2).await;
        assert_eq!(propagations_timed(&session), "1");
    }

    #[test]
    fn lag_is_measured_against_acks() {
        let sessions = Sessions::default();
        let a = sessions.open();
        let b = sessions.open();
        sessions.ack(a, 10);
        sessions.ack(b, 7);
        assert_eq!(sessions.max_lag(10), 3);
        sessions.close(b);
        assert_eq!(sessions.max_lag(10), 0);
        assert_eq!(sessions.count(), 1);
    }

    #[test]
    fn node_ids_and_reasons_are_bounded() {
        assert!(valid_node_id("dp-1"));
        assert!(!valid_node_id(""));
        assert!(!valid_node_id("a b"));
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
