//! Shard put and get through one real chunkserver on loopback (QUIC, TLS, checksums, fsync):
//! the costs under every file read and write. Build the release binaries first:
//! `cargo build --release && cargo bench -p lattice-tests --bench shards`.
//! Gets read a warm page cache, so they measure the server's CPU path, not the disk.

use anyhow::{ensure, Result};
use futures::future::try_join_all;
use lattice_common::ids::{ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::pki::Role;
use lattice_common::policy::Policy;
use lattice_common::shard_client::ShardClient;
use lattice_tests::{random_bytes, TestCluster};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: f64 = (1 << 20) as f64;

/// An rs:4+2 layout whose shards are `shard_len` bytes.
fn layout(shard_len: u64) -> Result<SliceLayout> {
    let unit = shard_len.min(256 << 10) as u32;
    let l = SliceLayout::new(
        Policy::ReedSolomon { data: 4, parity: 2 },
        4 * shard_len,
        unit,
    )?;
    ensure!(l.shard_len() == shard_len, "layout gives {}", l.shard_len());
    Ok(l)
}

static NEXT_SLICE: AtomicU64 = AtomicU64::new(1 << 40);

fn next_shard() -> ShardId {
    ShardId::new(SliceId(NEXT_SLICE.fetch_add(1, Ordering::Relaxed)), 0)
}

/// Stores `count` shards of `len` bytes, `concurrency` at a time; prints puts/s and MiB/s.
async fn puts(
    c: &Arc<ShardClient>,
    at: SocketAddr,
    len: u64,
    count: usize,
    concurrency: usize,
) -> Result<()> {
    let l = layout(len)?;
    let data = bytes::Bytes::from(random_bytes(len as usize, len));
    let start = Instant::now();
    try_join_all((0..concurrency).map(|_| {
        let (c, data) = (c.clone(), data.clone());
        async move {
            for _ in 0..count / concurrency {
                c.put(at, next_shard(), l, data.clone()).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let done = (count / concurrency * concurrency) as f64;
    println!(
        "put {:>8} B x{concurrency:<2}: {:>8.0} puts/s {:>7.1} MiB/s  ({:.3} ms each)",
        len,
        done / secs,
        done * len as f64 / MIB / secs,
        secs * 1000.0 / done * concurrency as f64
    );
    Ok(())
}

/// Reads `len`-byte ranges at pseudo-random aligned offsets of `shard`; prints gets/s and MiB/s.
async fn gets(
    c: &Arc<ShardClient>,
    at: SocketAddr,
    shard: ShardId,
    shard_len: u64,
    len: u64,
    count: usize,
    concurrency: usize,
) -> Result<()> {
    let start = Instant::now();
    try_join_all((0..concurrency).map(|t| {
        let c = c.clone();
        async move {
            let slots = shard_len / len;
            for i in 0..count / concurrency {
                let slot = (i as u64 * 7919 + t as u64 * 104_729) % slots;
                let got = c.get(at, shard, slot * len, len).await?;
                ensure!(got.len() as u64 == len);
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let secs = start.elapsed().as_secs_f64();
    let done = (count / concurrency * concurrency) as f64;
    println!(
        "get {:>8} B x{concurrency:<2}: {:>8.0} gets/s {:>7.1} MiB/s",
        len,
        done / secs,
        done * len as f64 / MIB / secs
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(1).await?;
    tc.cluster.start_chunkserver(1).await?;
    admin.wait_chunkservers_up(1).await?;
    let at = tc.cluster.addr(&tc.cluster.chunkserver(1))?;
    let c = Arc::new(ShardClient::new(
        tc.node(Role::Admin, "bench")?,
        Duration::from_secs(60),
    ));
    println!("shard benchmark: one chunkserver on loopback, every put fsynced");
    puts(&c, at, 4 << 10, 400, 1).await?;
    puts(&c, at, 4 << 10, 800, 16).await?;
    puts(&c, at, 1 << 20, 64, 1).await?;
    puts(&c, at, 16 << 20, 8, 1).await?;

    let big = next_shard();
    let len = 16u64 << 20;
    c.put(at, big, layout(len)?, random_bytes(len as usize, 9).into())
        .await?;
    c.get(at, big, 0, len).await?; // into the page cache
    gets(&c, at, big, len, 4 << 10, 5000, 1).await?;
    gets(&c, at, big, len, 4 << 10, 20000, 16).await?;
    gets(&c, at, big, len, 64 << 10, 4000, 4).await?;
    gets(&c, at, big, len, 1 << 20, 256, 1).await?;
    gets(&c, at, big, len, 1 << 20, 512, 4).await?;
    Ok(())
}
