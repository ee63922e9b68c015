//! Repair throughput, and what repair costs a foreground sequential reader, on a real local
//! cluster (3 metaservers, 7 chunkservers, rs:4+2, a FUSE mount). Run as root (it drops the
//! page cache between reads). Build the release binaries first:
//! `cargo build --release && cargo bench -p lattice-tests --bench repair`.
//! `REPAIR_BENCH_GIB` sets the data to repair (default 1); `REPAIR_BENCH_RATE` the
//! chunkservers' `--rebuild-rate` in MiB/s (default: theirs).

use anyhow::{ensure, Result};
use lattice_common::wire::meta::{ChunkserverState, JobKind};
use lattice_harness::process::wait_for;
use lattice_tests::{random_bytes, TestCluster};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = (1 << 20) as f64;

fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Reads a file once from a cold cache; MiB/s.
fn read_pass(path: &Path) -> Result<f64> {
    drop_caches();
    let start = Instant::now();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok(total as f64 / MIB / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let gib: usize = std::env::var("REPAIR_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // Down only after 30 s, so degraded reads can be measured before repair starts.
    let mut tc =
        TestCluster::with_metaserver_args(&["--suspect-after", "2", "--down-after", "30"])?;
    let rate = std::env::var("REPAIR_BENCH_RATE").ok();
    if let Some(rate) = &rate {
        tc.cluster.chunkserver_args = vec!["--rebuild-rate".into(), rate.clone()];
    }
    let (admin, mnt) = tc.start_with_mount(7).await?;
    let block = random_bytes(64 << 20, 1);
    for i in 0..gib * 16 {
        std::fs::write(mnt.join(format!("data{i}")), &block)?;
    }
    let reader_file = mnt.join("reader");
    std::fs::write(&reader_file, random_bytes(256 << 20, 2))?;
    let before: Vec<f64> = (0..3)
        .map(|_| read_pass(&reader_file))
        .collect::<Result<_>>()?;

    ensure!(tc.cluster.chunkserver(3).kill9());
    let degraded: Vec<f64> = (0..3)
        .map(|_| read_pass(&reader_file))
        .collect::<Result<_>>()?;
    wait_for(Duration::from_secs(60), "the server to be down", || async {
        let s = admin.status().await?;
        let down = s
            .chunkservers
            .iter()
            .any(|c| c.name == "chunkserver-3" && c.state == ChunkserverState::Down);
        Ok(down.then_some(()))
    })
    .await?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, path) = (stop.clone(), reader_file.clone());
        std::thread::spawn(move || -> Result<Vec<f64>> {
            let mut rates = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                rates.push(read_pass(&path)?);
            }
            Ok(rates)
        })
    };
    let repaired = wait_for(Duration::from_secs(1800), "full redundancy", || async {
        let s = admin.status().await?;
        Ok(s.fully_redundant().then_some(s))
    })
    .await?;
    let took = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = reader.join().expect("reader thread")?;
    let after: Vec<f64> = (0..3)
        .map(|_| read_pass(&reader_file))
        .collect::<Result<_>>()?;
    let rebuilt = repaired.done_bytes(JobKind::Repair);
    let rate = rate.map_or("default".into(), |r| format!("{r} MiB/s per server"));
    println!(
        "repair benchmark: {gib} GiB of rs:4+2 data on 7 chunkservers, one killed; rebuild rate {rate}"
    );
    println!(
        "  repair: {:.0} MiB of shards rebuilt in {took:.1} s = {:.1} MiB/s",
        rebuilt as f64 / MIB,
        rebuilt as f64 / MIB / took
    );
    let (b, g, d, a) = (
        median(before),
        median(degraded),
        median(during.clone()),
        median(after),
    );
    println!("  sequential read of a 256 MiB file, cold cache, median MiB/s:");
    println!("    healthy before the failure       {b:8.1}");
    println!(
        "    degraded, before repair starts   {g:8.1}  ({:.2}x of healthy)",
        g / b
    );
    println!(
        "    degraded, while repair runs      {d:8.1}  ({:.2}x of healthy, {:.2}x of degraded; {} passes)",
        d / b,
        d / g,
        during.len()
    );
    println!("    after repair                     {a:8.1}");
    Ok(())
}
