//! Metadata throughput and failover of a real 3-member metaserver group on loopback.
//! Build the release binaries first: `cargo build --release && cargo bench -p lattice-tests --bench metadata`.
//! Prints creates/s and stats/s at several concurrencies, and leader-failover times.

use anyhow::Result;
use futures::future::join_all;
use lattice_common::fs::{Caller, FileKind};
use lattice_common::ids::InodeId;
use lattice_common::wire::meta::{FsOp, FsQuery, FsReply};
use lattice_tests::TestCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ME: Caller = Caller { uid: 0, gid: 0 };

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = Arc::new(tc.meta_client("bench")?);
    println!("metadata benchmark: 3 metaservers on loopback, each change fsynced by a quorum");
    for concurrency in [1usize, 16, 64] {
        let per_task = 4000 / concurrency;

        let dir = match meta
            .mutate(FsOp::Mkdir {
                parent: InodeId::ROOT,
                name: format!("c{concurrency}").into_bytes(),
                perm: 0o755,
                umask: 0,
                caller: ME,
            })
            .await??
        {
            FsReply::Made { attr: a, .. } => a.ino,
            other => anyhow::bail!("{other:?}"),
        };
        let start = Instant::now();
        let tasks = (0..concurrency).map(|t| {
            let meta = meta.clone();
            async move {
                for i in 0..per_task {
                    let name = format!("t{t}-{i}").into_bytes();
                    let op = FsOp::Mknod {
                        parent: dir,
                        name,
                        kind: FileKind::File,
                        perm: 0o644,
                        umask: 0,
                        rdev: 0,
                        caller: ME,
                    };
                    meta.mutate(op).await.expect("reachable").expect("created");
                }
            }
        });
        join_all(tasks).await;
        let creates = (concurrency * per_task) as f64 / start.elapsed().as_secs_f64();

        let start = Instant::now();
        let tasks = (0..concurrency).map(|t| {
            let meta = meta.clone();
            async move {
                for i in 0..per_task {
                    let name = format!("t{t}-{i}").into_bytes();
                    meta.query(FsQuery::Lookup { parent: dir, name })
                        .await
                        .expect("reachable")
                        .expect("found");
                }
            }
        });
        join_all(tasks).await;
        let stats = (concurrency * per_task) as f64 / start.elapsed().as_secs_f64();
        println!("  concurrency {concurrency:>3}: {creates:>8.0} creates/s  {stats:>8.0} stats/s  ({} ops each)", concurrency * per_task);
    }

    let mut failovers = Vec::new();
    for round in 0..5 {
        let leader = admin.status().await?.leader.0 as u32;
        tc.cluster.metaserver(leader).kill9();
        let probe = tc.meta_client(&format!("probe{round}"))?;
        let killed = Instant::now();
        probe
            .mutate(FsOp::Mkdir {
                parent: InodeId::ROOT,
                name: format!("after-kill-{round}").into_bytes(),
                perm: 0o755,
                umask: 0,
                caller: ME,
            })
            .await??;
        failovers.push(killed.elapsed());
        tc.cluster.start_metaserver(leader, 3, None).await?;
        tc.wait_members_agree(&admin).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    failovers.sort();
    println!(
        "  failover (leader kill -9 to first successful change): median {:?}, max {:?} over {} rounds",
        failovers[failovers.len() / 2],
        failovers[failovers.len() - 1],
        failovers.len()
    );
    Ok(())
}
