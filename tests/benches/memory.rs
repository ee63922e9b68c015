//! Metaserver memory per file: a real 3-member group on loopback is given a million empty
//! files (1000 directories of 1000, 64 creators at once), and each member's resident memory
//! and snapshot size are compared before and after.
//! Build the release binaries first: `cargo build --release && cargo bench -p lattice-tests --bench memory`.
//! `LATTICE_BENCH_FILES` sets another count (a multiple of 1000).

use anyhow::{bail, Context, Result};
use futures::future::join_all;
use lattice_common::fs::{Caller, FileKind};
use lattice_common::ids::InodeId;
use lattice_common::wire::meta::{FsOp, FsReply};
use lattice_tests::TestCluster;
use std::sync::Arc;
use std::time::Instant;

const ME: Caller = Caller { uid: 0, gid: 0 };
const PER_DIR: usize = 1000;
const CREATORS: usize = 64;

/// Resident memory of a process now (`VmRSS`) or at its peak (`VmHWM`), in bytes.
fn resident(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no {field}"))?;
    Ok(kib << 10)
}

fn snapshot_bytes(tc: &TestCluster, member: u32) -> u64 {
    let path = tc
        .state()
        .join(format!("metaserver-{member}"))
        .join("raft")
        .join("snapshot");
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let files: usize = match std::env::var("LATTICE_BENCH_FILES") {
        Ok(n) => n.parse().context("LATTICE_BENCH_FILES")?,
        Err(_) => 1_000_000,
    };
    let dirs = files.div_ceil(PER_DIR);
    let tc = TestCluster::new()?;
    tc.start_metaservers(3).await?;
    let meta = Arc::new(tc.meta_client("bench")?);
    let members = [1u32, 2, 3];
    let pids: Vec<i32> = members
        .iter()
        .map(|&n| tc.cluster.metaserver(n).pid().context("metaserver pid"))
        .collect::<Result<_>>()?;
    let before: Vec<u64> = pids
        .iter()
        .map(|&p| resident(p, "VmRSS:"))
        .collect::<Result<_>>()?;
    println!(
        "memory benchmark: {files} files in {dirs} directories, {CREATORS} creators, 3 metaservers"
    );

    let start = Instant::now();
    let mut parents = Vec::with_capacity(dirs);
    for d in 0..dirs {
        let op = FsOp::Mkdir {
            parent: InodeId::ROOT,
            name: format!("d{d:04}").into_bytes(),
            perm: 0o755,
            umask: 0,
            caller: ME,
        };
        match meta.mutate(op).await?? {
            FsReply::Made { attr: a, .. } => parents.push(a.ino),
            other => bail!("{other:?}"),
        }
    }
    let parents = Arc::new(parents);
    let tasks = (0..CREATORS).map(|t| {
        let (meta, parents) = (meta.clone(), parents.clone());
        async move {
            for i in (t..files).step_by(CREATORS) {
                let op = FsOp::Mknod {
                    parent: parents[i / PER_DIR],
                    name: format!("file-{i:07}").into_bytes(),
                    kind: FileKind::File,
                    perm: 0o644,
                    umask: 0,
                    rdev: 0,
                    caller: ME,
                };
                meta.mutate(op).await??;
            }
            anyhow::Ok(())
        }
    });
    for done in join_all(tasks).await {
        done?;
    }
    let took = start.elapsed();
    println!(
        "  created in {:.1} s ({:.0} creates/s)",
        took.as_secs_f64(),
        files as f64 / took.as_secs_f64()
    );
    // A snapshot being taken holds its encoding for a moment: the peak says how large.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let per_file = |bytes: u64, base: u64| bytes.saturating_sub(base) as f64 / files as f64;
    for (i, &member) in members.iter().enumerate() {
        let (now, peak) = (resident(pids[i], "VmRSS:")?, resident(pids[i], "VmHWM:")?);
        println!(
            "  metaserver-{member}: resident {} -> {} MiB (peak {} MiB): {:.0} bytes per file \
             (peak {:.0}); snapshot {:.0} bytes per file",
            before[i] >> 20,
            now >> 20,
            peak >> 20,
            per_file(now, before[i]),
            per_file(peak, before[i]),
            snapshot_bytes(&tc, member) as f64 / files as f64,
        );
    }
    Ok(())
}
