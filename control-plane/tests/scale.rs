//! Scale check (ignored by default; run with `--ignored`, preferably with
//! `--release`): 1,000 services, 10,000 registered instances, 50 data
//! planes, on a private redis-server.

mod common;

use common::*;
use gateway_proto::v1 as pb;
use gateway_tests::RedisServer;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const SERVICES: usize = 1_000;
const INSTANCES: usize = 10_000;
const DATA_PLANES: usize = 50;
const WRITERS: usize = 50;

fn config() -> String {
    gateway_tests::fleet::numbered_config(SERVICES)
}

/// Applies updates like a data plane would, returning when it holds
/// `INSTANCES` instances at `version`.
async fn follow(mut dp: DataPlane, version: u64) -> (usize, usize) {
    let mut held: HashSet<String> = HashSet::new();
    let mut messages = 0;
    loop {
        let update = dp.next(Duration::from_secs(120)).await;
        messages += 1;
        if update.snapshot {
            held.clear();
        }
        for removal in &update.removals {
            held.remove(removal);
        }
        held.extend(update.upserts.into_iter().map(|i| i.id));
        dp.ack(update.version).await;
        if update.version >= version && held.len() == INSTANCES {
            return (messages, held.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "scale check; run with --ignored --release"]
async fn ten_thousand_instances_fifty_data_planes() {
    let redis = RedisServer::start();
    let cp = start(Some(redis.url())).await;
    let mut adm = admin(&cp).await;
    let started = Instant::now();
    adm.apply_config(pb::ApplyConfigRequest {
        document: config().into_bytes(),
        dry_run: false,
    })
    .await
    .unwrap();
    println!(
        "config of {SERVICES} services applied in {:?}",
        started.elapsed()
    );

    let mut planes = Vec::new();
    for n in 0..DATA_PLANES {
        let mut dp = DataPlane::connect(&cp, &format!("dp-{n}"), "", 0)
            .await
            .unwrap();
        let snap = dp.next(Duration::from_secs(10)).await;
        dp.ack(snap.version).await;
        planes.push(dp);
    }

    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut reg = registry(&cp).await;
        writers.push(tokio::spawn(async move {
            let mut last = 0;
            for i in (w..INSTANCES).step_by(WRITERS) {
                let svc = format!("svc-{}", i % SERVICES);
                let r = reg
                    .register(registration(&svc, &format!("{svc}-{i}"), 10_000 + i as u32))
                    .await
                    .unwrap()
                    .into_inner();
                last = last.max(r.version);
            }
            last
        }));
    }
    let mut final_version = 0;
    for w in writers {
        final_version = final_version.max(w.await.unwrap());
    }
    let registering = started.elapsed();
    println!(
        "{INSTANCES} registrations in {registering:?} ({:.0}/s)",
        INSTANCES as f64 / registering.as_secs_f64()
    );
    let followers: Vec<_> = planes
        .into_iter()
        .map(|dp| tokio::spawn(follow(dp, final_version)))
        .collect();
    let mut total_messages = 0;
    for f in followers {
        let (messages, held) = f.await.unwrap();
        assert_eq!(held, INSTANCES);
        total_messages += messages;
    }
    println!(
        "all {DATA_PLANES} data planes at version {final_version} after {:?} ({} updates in all, {:.1} per data plane)",
        started.elapsed(),
        total_messages,
        total_messages as f64 / DATA_PLANES as f64
    );

    let started = Instant::now();
    let mut late = DataPlane::connect(&cp, "late", "", 0).await.unwrap();
    let snapshot = late.next(Duration::from_secs(30)).await;
    assert_eq!(snapshot.upserts.len(), INSTANCES);
    println!(
        "a snapshot of {INSTANCES} instances ({} bytes) in {:?}",
        prost::Message::encoded_len(&snapshot),
        started.elapsed()
    );
    let started = Instant::now();
    let topology = adm
        .get_topology(pb::TopologyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(topology.data_planes.len(), DATA_PLANES + 1);
    println!("topology in {:?}", started.elapsed());
    cp.shutdown().await;
}
