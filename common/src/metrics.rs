//! Metrics both planes export the same way: what build runs
//! (`<prefix>_build_info{version,commit}`) and the process's own resources
//! (`process_*`, unprefixed, under the names every Prometheus client uses).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The crate version of this build (the workspace's version).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this build was made from: `GATEWAY_BUILD_COMMIT` at build time,
/// else `git rev-parse --short HEAD`, else `unknown` (see `common/build.rs`).
pub const BUILD_COMMIT: &str = env!("GATEWAY_BUILD_COMMIT");

/// Labels of `*_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// [`BUILD_VERSION`].
    pub version: &'static str,
    /// [`BUILD_COMMIT`].
    pub commit: &'static str,
}

/// Labels of the Discovery update series of both planes (sent by the
/// control plane, received by a data plane).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateKindLabel {
    /// `snapshot` or `delta`.
    pub kind: &'static str,
}

impl UpdateKindLabel {
    /// The label of a snapshot (`true`) or a delta.
    pub fn of(snapshot: bool) -> Self {
        Self {
            kind: if snapshot { "snapshot" } else { "delta" },
        }
    }
}

/// Registers `build_info` (an OpenMetrics info metric, value 1, under the
/// registry's prefix) and, on Linux, the `process_*` metrics, which carry no
/// prefix: `root` must be the registry without one.
pub fn register_common(root: &mut Registry, prefix: &str) {
    root.sub_registry_with_prefix(prefix).register(
        "build",
        "Version and commit of the running build (value 1)",
        Info::new(BuildLabels {
            version: BUILD_VERSION,
            commit: BUILD_COMMIT,
        }),
    );
    if cfg!(target_os = "linux") {
        root.register_collector(Box::new(ProcessCollector));
    }
}

/// Reads the process's CPU time, memory and file descriptors from `/proc`
/// at every scrape (Linux only).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A value that cannot be read is left out of this scrape.
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(stats.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            counter.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                Some(stats.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                Some(stats.virtual_bytes),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stats.start_time_seconds,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        Ok(())
    }
}

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: f64,
    /// Virtual memory size.
    pub virtual_bytes: f64,
    /// Start of the process, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// The soft limit of open file descriptors.
    pub max_fds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where it cannot be read (not Linux).
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let system = std::fs::read_to_string("/proc/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            // The directory handle being read is itself one of the entries.
            .map(|dir| dir.count().saturating_sub(1) as f64);
        let units = Units::of_system()?;
        let mut stats = parse_stat(&stat, units)?;
        stats.start_time_seconds = system
            .as_deref()
            .and_then(boot_time)
            .zip(start_ticks(&stat))
            .map(|(boot, ticks)| boot + ticks / units.ticks_per_second);
        stats.open_fds = open_fds;
        stats.max_fds = limits.as_deref().and_then(max_open_files);
        Some(stats)
    }
}

/// Clock ticks per second and page size, as the kernel counts them.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Units {
    ticks_per_second: f64,
    page_bytes: f64,
}

impl Units {
    #[cfg(target_os = "linux")]
    fn of_system() -> Option<Self> {
        // SAFETY: sysconf only reads configuration values.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        (ticks > 0 && page > 0).then_some(Units {
            ticks_per_second: ticks as f64,
            page_bytes: page as f64,
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn of_system() -> Option<Self> {
        None
    }
}

/// The fields of `/proc/self/stat` after the command name (which may hold
/// spaces and parentheses, so the split is at the last `)`); field 3 (state)
/// is the first of them.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Field `n` (1-based, as in proc(5)) of `/proc/self/stat`.
fn stat_field(fields: &[&str], n: usize) -> Option<f64> {
    fields.get(n.checked_sub(3)?)?.parse().ok()
}

fn parse_stat(stat: &str, units: Units) -> Option<ProcessStats> {
    let fields = stat_fields(stat)?;
    let utime = stat_field(&fields, 14)?;
    let stime = stat_field(&fields, 15)?;
    let vsize = stat_field(&fields, 23)?;
    let rss_pages = stat_field(&fields, 24)?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / units.ticks_per_second,
        resident_bytes: rss_pages * units.page_bytes,
        virtual_bytes: vsize,
        start_time_seconds: None,
        open_fds: None,
        max_fds: None,
    })
}

/// Field 22 of `/proc/self/stat`: clock ticks from boot to the start.
fn start_ticks(stat: &str) -> Option<f64> {
    stat_field(&stat_fields(stat)?, 22)
}

/// `btime` of `/proc/stat`: the boot time, seconds since the Unix epoch.
fn boot_time(system: &str) -> Option<f64> {
    system
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/self/limits`.
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    // "unlimited" has no number; leave the metric out then.
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS: Units = Units {
        ticks_per_second: 100.0,
        page_bytes: 4096.0,
    };

    // A command name with spaces and a parenthesis, as a thread may rename itself.
    const STAT: &str = "4242 (data plane) x) S 1 4242 4242 0 -1 4194560 3000 0 0 0 250 50 0 0 20 0 9 0 12345 987654321 2500 18446744073709551615 1 1 0 0 0 0 0 4096 17642 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let stats = parse_stat(STAT, UNITS).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.virtual_bytes, 987_654_321.0);
        assert_eq!(stats.resident_bytes, 2500.0 * 4096.0);
        assert_eq!(start_ticks(STAT), Some(12345.0));
        assert_eq!(parse_stat("4242 (cut short) S 1 2", UNITS), None);
        assert_eq!(parse_stat("no parenthesis at all", UNITS), None);
    }

    #[test]
    fn boot_time_and_fd_limit_are_parsed() {
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(boot_time("cpu  1 2 3\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024.0));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_collector_exposes_the_standard_names_unprefixed() {
        let mut root = Registry::default();
        register_common(&mut root, "gateway");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &root).unwrap();
        assert!(
            text.contains(&format!(
                "gateway_build_info{{version=\"{BUILD_VERSION}\",commit=\"{BUILD_COMMIT}\"}} 1"
            )),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_virtual_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
            "process_max_fds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing:\n{text}"
            );
        }
        let stats = ProcessStats::read().unwrap();
        assert!(stats.resident_bytes > 0.0);
        assert!(stats.open_fds.unwrap() >= 3.0, "{stats:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = stats.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{started}"
        );
    }
}
