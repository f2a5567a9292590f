//! `gwctl drain ID [--wait] [--timeout]` and `gwctl undrain ID`.

use super::context::{emit, Context};
use super::get::list_data_planes;
use crate::cli::{DrainArgs, UndrainArgs};
use crate::client::{Api, ControlPlane};
use crate::output::{human_duration, structured, Format};
use crate::views::{DataPlaneView, InstanceView};
use gateway_proto::v1 as pb;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Pause between two looks at the data planes while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Data planes report in-flight counts about every 500 ms: a drained state
/// must still hold after one more report before it is trusted.
const SETTLE: Duration = Duration::from_millis(700);

#[derive(Serialize)]
struct DrainView {
    instance: Option<InstanceView>,
    version: u64,
    waited: bool,
}

/// Drains an instance; with `--wait`, waits until no data plane uses it.
pub async fn drain(ctx: &Context, args: DrainArgs) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .drain(pb::DrainRequest {
            instance_id: args.id.clone(),
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    if ctx.format == Format::Table {
        emit(&format!(
            "draining {} (version {})\n",
            args.id, answer.version
        ))?;
    }
    if args.wait {
        wait_drained(&cp, &args.id, answer.version, args.timeout).await?;
        if ctx.format == Format::Table {
            emit(&format!(
                "drained {}: every connected data plane applied version {} and has no request in flight to it\n",
                args.id, answer.version
            ))?;
        }
    }
    if ctx.format != Format::Table {
        let view = DrainView {
            instance: answer.instance.as_ref().map(InstanceView::from_status),
            version: answer.version,
            waited: args.wait,
        };
        emit(&structured(ctx.format, &view)?)?;
    }
    Ok(())
}

/// `gwctl undrain ID`.
pub async fn undrain(ctx: &Context, args: UndrainArgs) -> anyhow::Result<()> {
    let cp = ctx.connect().await?;
    let answer = cp
        .admin()
        .undrain(pb::DrainRequest {
            instance_id: args.id.clone(),
        })
        .await
        .map_err(|s| cp.explain(Api::Admin, s))?
        .into_inner();
    match ctx.format {
        Format::Table => emit(&format!(
            "undrained {} (version {})\n",
            args.id, answer.version
        )),
        format => emit(&structured(
            format,
            &DrainView {
                instance: answer.instance.as_ref().map(InstanceView::from_status),
                version: answer.version,
                waited: false,
            },
        )?),
    }
}

/// Polls the data planes until each connected one acked `version` and has
/// nothing in flight to `id`, and that still holds a report later.
async fn wait_drained(
    cp: &ControlPlane,
    id: &str,
    version: u64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut drained_since: Option<Instant> = None;
    let mut progress = Progress::on_terminal();
    loop {
        let data_planes = list_data_planes(cp).await?;
        let busy = still_busy(&data_planes, id, version);
        progress.show(&busy, started.elapsed());
        if busy.is_empty() {
            let since = *drained_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= SETTLE {
                progress.finish();
                return Ok(());
            }
        } else {
            drained_since = None;
        }
        if Instant::now() >= deadline {
            progress.finish();
            anyhow::bail!(
                "{id} is not drained after {}: {}",
                human_duration(timeout),
                busy.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `drain --wait` shows while it waits: one line on standard error,
/// rewritten in place, and only when standard error is a terminal (nothing
/// when piped or in scripts).
struct Progress {
    enabled: bool,
    shown: bool,
}

impl Progress {
    fn on_terminal() -> Self {
        use std::io::IsTerminal;
        Progress {
            enabled: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Shows what still holds the drain back (nothing: done).
    fn show(&mut self, busy: &[String], waited: Duration) {
        if !self.enabled {
            return;
        }
        // Clear to the end of the line: the previous text may be longer.
        eprint!("\r{}\x1b[K", progress_line(busy, waited));
        self.shown = true;
    }

    /// Ends the progress line, so that what follows starts on its own.
    fn finish(&mut self) {
        if self.shown {
            eprintln!();
            self.shown = false;
        }
    }
}

/// `waiting 3s: dp-1 has 2 in flight, dp-2 acked version 6 < 7`.
fn progress_line(busy: &[String], waited: Duration) -> String {
    let seconds = waited.as_secs();
    if busy.is_empty() {
        format!("waited {seconds}s: no data plane has it in flight")
    } else {
        format!("waiting {seconds}s: {}", busy.join(", "))
    }
}

/// Why each connected data plane still counts as using the instance.
fn still_busy(data_planes: &[DataPlaneView], id: &str, version: u64) -> Vec<String> {
    data_planes
        .iter()
        .filter(|d| d.connected)
        .filter_map(|d| {
            let in_flight = d.in_flight.get(id).copied().unwrap_or(0);
            if d.acked_version < version {
                Some(format!(
                    "{} acked version {} < {version}",
                    d.node_id, d.acked_version
                ))
            } else if in_flight > 0 {
                Some(format!("{} has {in_flight} in flight", d.node_id))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn dp(name: &str, acked: u64, in_flight: u64, connected: bool) -> DataPlaneView {
        DataPlaneView {
            node_id: name.into(),
            replica: String::new(),
            acked_version: acked,
            nacked_version: 0,
            nack_reason: String::new(),
            connected,
            connected_at_unix_ms: 0,
            last_seen_unix_ms: 0,
            in_flight_total: in_flight,
            in_flight: BTreeMap::from([("a".to_string(), in_flight)]),
            breakers: BTreeMap::new(),
            version: String::new(),
        }
    }

    #[test]
    fn busy_until_acked_and_idle() {
        let planes = [
            dp("old", 4, 0, true),
            dp("busy", 5, 2, true),
            dp("done", 6, 0, true),
            dp("gone", 1, 9, false),
        ];
        assert_eq!(
            still_busy(&planes, "a", 5),
            vec!["old acked version 4 < 5", "busy has 2 in flight"]
        );
        assert!(still_busy(&planes[2..], "a", 5).is_empty());
    }

    #[test]
    fn the_progress_line_names_what_holds_the_drain_back() {
        let busy = vec!["busy has 2 in flight".to_string()];
        assert_eq!(
            progress_line(&busy, Duration::from_millis(3_400)),
            "waiting 3s: busy has 2 in flight"
        );
        assert_eq!(
            progress_line(&[], Duration::from_secs(5)),
            "waited 5s: no data plane has it in flight"
        );
    }
}
