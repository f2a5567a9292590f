//! The data plane's config cache: the last config applied from a control
//! plane, kept on local disk so that a data plane restarted while no control
//! plane answers still serves (static stability).
//!
//! The file holds one snapshot (a `ConfigUpdate` with `snapshot` set: epoch,
//! version, config JSON, every instance with its state) in an envelope: a
//! tag naming the format, the time it was written, the payload's length and
//! a SHA-256 of everything before the digest. A file that is truncated,
//! altered or of another format is refused whole, never half applied.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename,
//! fsync of the directory) and happen off the Discovery task: a writer task
//! writes the latest version applied from a control plane, at most once per
//! [`MIN_WRITE_GAP`], so versions that arrive faster are coalesced. A
//! failed write is logged (at most once per [`FAILURE_LOG_GAP`]), counted
//! and shown in `/health`; it never stops the data plane.

use crate::config::runtime::{Change, ConfigSource, Runtime};
use crate::ops::metrics::Metrics;
use gateway_proto::v1 as pb;
use parking_lot::Mutex;
use prost::Message as _;
use ring::digest::{digest, SHA256};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Default directory of the cache (what systemd's
/// `StateDirectory=gateway/data-plane` creates).
pub const DEFAULT_DIR: &str = "/var/lib/gateway/data-plane";
/// Default time a starting data plane waits for a control plane before
/// it reports ready with the cached config.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(2);
/// Name of the cache file in its directory.
pub const FILE_NAME: &str = "config.cache";
/// Shortest time between two writes.
pub const MIN_WRITE_GAP: Duration = Duration::from_secs(1);
/// A failing write is logged at most this often.
pub const FAILURE_LOG_GAP: Duration = Duration::from_secs(60);

/// Format tag at the start of the file (format 1).
const MAGIC: [u8; 8] = *b"GWCFGC01";
/// Tag, written-at (ms since the epoch, LE), payload length (LE).
const HEADER_LEN: usize = 24;
const DIGEST_LEN: usize = 32;
/// Leftover temporary files older than this are removed at start.
const STALE_TEMP: Duration = Duration::from_secs(300);

/// Why a cache file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file could not be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// Larger than any config update accepted.
    #[error("{0} bytes is more than a config update may hold")]
    TooLarge(u64),
    /// Not a config cache file, or one of another format.
    #[error("not a config cache file of this format")]
    Format,
    /// Shorter or longer than its header says.
    #[error("{actual} bytes where the header announces {expected}: truncated or extended")]
    Length {
        /// Size the header announces.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// The digest does not match the content.
    #[error("checksum mismatch: the file is corrupt")]
    Checksum,
    /// The payload is not a config update.
    #[error("the snapshot does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The payload is not a whole snapshot.
    #[error("the payload is not a whole snapshot")]
    NotSnapshot,
}

/// What a cache file holds.
#[derive(Debug)]
pub struct Cached {
    /// The snapshot.
    pub update: pb::ConfigUpdate,
    /// When it was written.
    pub written_at: SystemTime,
}

/// The file's bytes for `update`, written at `written_at`.
pub fn encode(update: &pb::ConfigUpdate, written_at: SystemTime) -> Vec<u8> {
    let payload = update.encode_to_vec();
    let mut bytes = Vec::with_capacity(HEADER_LEN + payload.len() + DIGEST_LEN);
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&unix_ms(written_at).to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    let sum = digest(&SHA256, &bytes);
    bytes.extend_from_slice(sum.as_ref());
    bytes
}

/// Reads a file's bytes, checking the format, length and checksum before
/// anything is decoded.
pub fn decode(bytes: &[u8]) -> Result<Cached, CacheError> {
    if bytes.len() < HEADER_LEN + DIGEST_LEN || bytes[..MAGIC.len()] != MAGIC {
        return Err(CacheError::Format);
    }
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let written_ms = word(8);
    let payload_len = word(16);
    let expected = payload_len.saturating_add((HEADER_LEN + DIGEST_LEN) as u64);
    if expected != bytes.len() as u64 {
        return Err(CacheError::Length {
            expected,
            actual: bytes.len() as u64,
        });
    }
    let (body, sum) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if digest(&SHA256, body).as_ref() != sum {
        return Err(CacheError::Checksum);
    }
    let update = pb::ConfigUpdate::decode(&body[HEADER_LEN..])?;
    if !update.snapshot || update.version == 0 {
        return Err(CacheError::NotSnapshot);
    }
    Ok(Cached {
        update,
        written_at: UNIX_EPOCH + Duration::from_millis(written_ms),
    })
}

fn unix_ms(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// A version in the cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// Store history of the version.
    pub epoch: String,
    /// Config version.
    pub version: u64,
    /// When the file was written.
    pub written_at: SystemTime,
}

/// What `/health` shows of the cache.
#[derive(Debug, Clone, Default)]
pub struct CacheState {
    /// What was read at start, if anything.
    pub loaded: Option<CacheEntry>,
    /// The last version written.
    pub written: Option<CacheEntry>,
    /// Why the last write failed (cleared by the next good one).
    pub error: Option<String>,
}

/// The cache's state, shared with `/health`.
#[derive(Debug)]
pub struct CacheStatus {
    path: PathBuf,
    state: Mutex<CacheState>,
}

impl CacheStatus {
    /// The cache file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A copy of the state now.
    pub fn state(&self) -> CacheState {
        self.state.lock().clone()
    }
}

/// The cache file of one data plane.
#[derive(Debug)]
pub struct ConfigCache {
    dir: PathBuf,
    path: PathBuf,
    temp: PathBuf,
    status: Arc<CacheStatus>,
}

impl ConfigCache {
    /// The cache kept in `dir`. Nothing is touched yet.
    pub fn new(dir: &Path) -> Self {
        let path = dir.join(FILE_NAME);
        Self {
            dir: dir.to_path_buf(),
            temp: dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id())),
            status: Arc::new(CacheStatus {
                path: path.clone(),
                state: Mutex::default(),
            }),
            path,
        }
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its state, for `/health`.
    pub fn status(&self) -> &Arc<CacheStatus> {
        &self.status
    }

    /// Reads the cache file: `None` when there is none.
    pub fn read(&self) -> Result<Option<Cached>, CacheError> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let size = file.metadata()?.len();
        let limit = (crate::config::discovery::MAX_UPDATE_BYTES + HEADER_LEN + DIGEST_LEN) as u64;
        if size > limit {
            return Err(CacheError::TooLarge(size));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        std::io::Read::read_to_end(&mut file, &mut bytes)?;
        decode(&bytes).map(Some)
    }

    /// Puts the cached config in force in `runtime` (source `cache`, not
    /// yet ready), when the file holds one that applies. Whatever stands
    /// in the way is logged and the data plane starts without it.
    pub fn restore(&self, runtime: &Runtime) {
        self.remove_stale_temp_files();
        let cached = match self.read() {
            Ok(Some(cached)) => cached,
            Ok(None) => {
                tracing::info!(path = %self.path.display(), "no cached config");
                return;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "config cache ignored");
                return;
            }
        };
        let update = &cached.update;
        let applied = Change::from_proto(update, ConfigSource::Cache)
            .and_then(|change| runtime.apply(change));
        if let Err(e) = applied {
            tracing::warn!(path = %self.path.display(), version = update.version, error = %e, "cached config refused; ignored");
            return;
        }
        let entry = CacheEntry {
            epoch: update.epoch.clone(),
            version: update.version,
            written_at: cached.written_at,
        };
        let age = SystemTime::now()
            .duration_since(cached.written_at)
            .unwrap_or_default();
        tracing::info!(
            path = %self.path.display(),
            epoch = %entry.epoch,
            version = entry.version,
            instances = update.upserts.len(),
            written_at = %crate::edge::errors::iso8601(cached.written_at),
            age_s = age.as_secs(),
            "serving the cached config until a control plane answers"
        );
        let mut state = self.status.state.lock();
        state.written = Some(entry.clone());
        state.loaded = Some(entry);
    }

    /// Writes `update` atomically: a temporary file, fsync, rename over the
    /// cache file, fsync of the directory.
    pub fn write(&self, update: &pb::ConfigUpdate) -> std::io::Result<SystemTime> {
        let written_at = SystemTime::now();
        let bytes = encode(update, written_at);
        std::fs::create_dir_all(&self.dir)?;
        let result = self.replace_with(&bytes);
        if result.is_err() {
            let _ = std::fs::remove_file(&self.temp);
        }
        result.map(|()| written_at)
    }

    fn replace_with(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut file = std::fs::File::create(&self.temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp, &self.path)?;
        // The rename itself is durable once the directory is.
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Removes temporary files a crashed writer left (old enough that no
    /// live writer sharing the directory can still be writing them).
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!(".{FILE_NAME}.tmp-");
        for entry in entries.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|at| at.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if stale && entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn record(&self, update: &pb::ConfigUpdate, result: &std::io::Result<SystemTime>) {
        let mut state = self.status.state.lock();
        match result {
            Ok(written_at) => {
                state.written = Some(CacheEntry {
                    epoch: update.epoch.clone(),
                    version: update.version,
                    written_at: *written_at,
                });
                state.error = None;
            }
            Err(e) => state.error = Some(e.to_string()),
        }
    }

    fn is_written(&self, update: &pb::ConfigUpdate) -> bool {
        self.status
            .state
            .lock()
            .written
            .as_ref()
            .is_some_and(|w| w.epoch == update.epoch && w.version == update.version)
    }
}

/// Tells the cache writer that a version from a control plane was applied
/// (one watch update: no I/O on the caller's task).
#[derive(Debug)]
pub struct Applied(watch::Sender<u64>);

impl Applied {
    /// A notifier and the receiver [`run_writer`] waits on.
    pub fn channel() -> (Self, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        (Self(tx), rx)
    }

    /// Version `version` is in force.
    pub fn notify(&self, version: u64) {
        self.0.send_replace(version);
    }
}

/// Writes the config in force each time a version is applied, at most once
/// per [`MIN_WRITE_GAP`] (the latest one); on shutdown, writes a version
/// still pending.
pub async fn run_writer(
    cache: Arc<ConfigCache>,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    mut applied: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = FailureLog::default();
    let mut last_write: Option<Instant> = None;
    loop {
        let stopping = tokio::select! {
            changed = applied.changed() => changed.is_err(),
            _ = crate::edge::shutdown::stopped(&mut stop) => true,
        };
        if stopping {
            if applied.has_changed().unwrap_or(false) {
                write_in_force(&cache, &runtime, &metrics, &mut failures).await;
            }
            return;
        }
        if let Some(at) = last_write {
            let wait = MIN_WRITE_GAP.saturating_sub(at.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::edge::shutdown::stopped(&mut stop) => {}
            }
        }
        applied.borrow_and_update();
        last_write = Some(Instant::now());
        write_in_force(&cache, &runtime, &metrics, &mut failures).await;
    }
}

async fn write_in_force(
    cache: &Arc<ConfigCache>,
    runtime: &Arc<Runtime>,
    metrics: &Metrics,
    failures: &mut FailureLog,
) {
    let (cache_, runtime_) = (cache.clone(), runtime.clone());
    // Exporting a large fleet and fsync block: off the async workers.
    let written = tokio::task::spawn_blocking(move || {
        let update = runtime_.export()?;
        if cache_.is_written(&update) {
            return None;
        }
        let result = cache_.write(&update);
        cache_.record(&update, &result);
        Some((update.epoch, update.version, result))
    })
    .await;
    let Ok(Some((epoch, version, result))) = written else {
        return;
    };
    metrics.count_cache_write(result.is_ok());
    match result {
        Ok(_) => {
            if let Some(missed) = failures.recovered() {
                tracing::info!(path = %cache.path().display(), version, failed_writes = missed, "config cache written again");
            }
            tracing::debug!(path = %cache.path().display(), %epoch, version, "config cache written");
        }
        Err(e) => {
            if let Some(suppressed) = failures.failed() {
                tracing::warn!(path = %cache.path().display(), version, error = %e, suppressed, "cannot write the config cache; a restart without a control plane would serve an older config or none");
            }
        }
    }
}

/// Rate-limits the log of failing writes.
#[derive(Debug, Default)]
struct FailureLog {
    last_logged: Option<Instant>,
    since_logged: u64,
    failing: u64,
}

impl FailureLog {
    /// A write failed: `Some(failures not logged since the last line)`
    /// when this one should be logged.
    fn failed(&mut self) -> Option<u64> {
        self.failing += 1;
        if self
            .last_logged
            .is_some_and(|at| at.elapsed() < FAILURE_LOG_GAP)
        {
            self.since_logged += 1;
            return None;
        }
        self.last_logged = Some(Instant::now());
        Some(std::mem::take(&mut self.since_logged))
    }

    /// A write succeeded: `Some(failed writes)` after a failing spell.
    fn recovered(&mut self) -> Option<u64> {
        let failing = std::mem::take(&mut self.failing);
        self.since_logged = 0;
        self.last_logged = None;
        (failing > 0).then_some(failing)
    }
}

/// After `grace`, serves the cached config as ready if it is still in
/// force (no control plane has sent anything, nor confirmed it).
pub async fn serve_after_grace(
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    grace: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        _ = tokio::time::sleep(grace) => {}
        _ = crate::edge::shutdown::stopped(&mut stop) => return,
    }
    let Some(version) = runtime.serve_cached() else {
        return;
    };
    let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
    if metrics.control_plane_connected.get() > 0 {
        tracing::info!(
            version,
            grace_ms,
            "ready on the cached config; the control plane is connected and has sent nothing yet"
        );
    } else {
        tracing::warn!(
            version,
            grace_ms,
            "no control plane answered in time; serving the cached config"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"version":1,"services":[{"name":"a"}],"routes":[{"name":"a","match":{"path_prefix":"/a"},"service":"a"}]}"#;

    fn update(version: u64) -> pb::ConfigUpdate {
        pb::ConfigUpdate {
            epoch: "ep".into(),
            version,
            snapshot: true,
            config_json: CONFIG.into(),
            upserts: vec![pb::Instance {
                id: "a1".into(),
                service: "a".into(),
                address: "127.0.0.1".into(),
                port: 8080,
                weight: 2,
                zone: "z".into(),
                metadata: [("k".to_string(), "v".to_string())].into(),
                health: pb::HealthState::Healthy as i32,
                draining: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gw-config-cache-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_snapshot_round_trips_with_its_write_time() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let cached = decode(&encode(&update(7), at)).unwrap();
        assert_eq!(cached.update, update(7));
        assert_eq!(cached.written_at, at);
    }

    #[test]
    fn every_truncation_and_every_flipped_byte_is_refused() {
        let bytes = encode(&update(7), SystemTime::now());
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_err(), "byte {at} flipped");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(CacheError::Length { .. })));
        let mut other = bytes;
        other[7] = b'2';
        assert!(matches!(decode(&other), Err(CacheError::Format)));
    }

    #[test]
    fn a_delta_or_version_zero_is_not_a_cache() {
        let mut delta = update(7);
        delta.snapshot = false;
        let bytes = encode(&delta, SystemTime::now());
        assert!(matches!(decode(&bytes), Err(CacheError::NotSnapshot)));
        let bytes = encode(&update(0), SystemTime::now());
        assert!(matches!(decode(&bytes), Err(CacheError::NotSnapshot)));
    }

    #[test]
    fn writes_replace_the_file_and_leave_no_temporary_file() {
        let dir = temp_dir().join("nested");
        let cache = ConfigCache::new(&dir);
        assert!(cache.read().unwrap().is_none());
        cache.write(&update(1)).unwrap();
        cache.write(&update(2)).unwrap();
        assert_eq!(cache.read().unwrap().unwrap().update.version, 2);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_string()]);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_write_into_an_unusable_directory_fails_without_panicking() {
        let dir = temp_dir();
        let blocker = dir.join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let cache = ConfigCache::new(&blocker.join("below"));
        assert!(cache.write(&update(1)).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn restore_serves_the_cache_unready_and_refuses_a_corrupt_file() {
        let dir = temp_dir();
        let cache = ConfigCache::new(&dir);
        cache.write(&update(9)).unwrap();
        let runtime = Runtime::new(Arc::new(Metrics::new()));
        cache.restore(&runtime);
        assert_eq!(runtime.source(), ConfigSource::Cache);
        assert_eq!(runtime.version(), ("ep".to_string(), 9));
        assert!(!runtime.is_ready());
        assert_eq!(cache.status().state().loaded.unwrap().version, 9);
        // Only a control plane's config is exported (and so written).
        assert!(runtime.export().is_none());
        assert!(runtime.confirm_cached("ep", 9));
        assert!(runtime.is_ready());
        let exported = runtime.export().unwrap();
        assert_eq!(exported.upserts, update(9).upserts);
        assert_eq!(
            gateway_common::GatewayConfig::from_json(&exported.config_json).unwrap(),
            gateway_common::GatewayConfig::from_json(CONFIG).unwrap()
        );

        let mut bytes = std::fs::read(cache.path()).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        std::fs::write(cache.path(), &bytes).unwrap();
        let fresh = Runtime::new(Arc::new(Metrics::new()));
        cache.restore(&fresh);
        assert_eq!(fresh.source(), ConfigSource::None);
        assert_eq!(fresh.version().1, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn the_cached_config_is_ready_after_the_grace_unless_replaced() {
        let runtime = Runtime::new(Arc::new(Metrics::new()));
        assert_eq!(runtime.serve_cached(), None);
        runtime
            .apply(Change::from_proto(&update(3), ConfigSource::Cache).unwrap())
            .unwrap();
        assert!(!runtime.is_ready());
        assert!(!runtime.confirm_cached("ep", 2), "another version");
        assert_eq!(runtime.serve_cached(), Some(3));
        assert!(runtime.is_ready());
        assert_eq!(runtime.source(), ConfigSource::Cache);
        runtime.apply_update(&update(4)).unwrap();
        assert_eq!(runtime.source(), ConfigSource::ControlPlane);
        assert_eq!(runtime.serve_cached(), None);
    }

    #[test]
    fn failing_writes_are_logged_once_per_gap() {
        let mut log = FailureLog::default();
        assert_eq!(log.failed(), Some(0));
        assert_eq!(log.failed(), None);
        assert_eq!(log.failed(), None);
        assert_eq!(log.recovered(), Some(3));
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failed(), Some(0));
    }
}
