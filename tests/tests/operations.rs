//! What an admin does with a live cluster, while users keep using the mount: join, drain,
//! repair after failures, scrub, predictive drain.

use anyhow::{bail, ensure, Context, Result};
use lattice_common::ids::{InodeId, ShardId};
use lattice_common::pki::Role;
use lattice_common::shard_client::ShardClient;
use lattice_common::wire::meta::{ChunkserverState, ClusterStatus, FsQuery, FsReply, JobKind};
use lattice_harness::process::wait_for;
use lattice_harness::Admin;
use lattice_tests::{http_get, id_of, random_bytes, sh, wait_status, TestCluster};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fast failure detection and short grace periods, so a test sees the whole cycle.
const QUICK_UPKEEP: &[&str] = &[
    "--suspect-after",
    "2",
    "--down-after",
    "5",
    "--gc-grace",
    "2",
    "--reconcile-every",
    "5",
    "--orphan-grace",
    "3",
];

async fn wait_fully_redundant(admin: &Admin) -> Result<ClusterStatus> {
    let limit = Duration::from_secs(60);
    wait_status(
        admin,
        limit,
        "full redundancy",
        ClusterStatus::fully_redundant,
    )
    .await
}

/// Files written with known contents, to check at the end.
fn write_files(dir: &Path, prefix: &str, sizes: &[usize]) -> Result<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let path = dir.join(format!("{prefix}{i}"));
        let seed = (prefix.len() * 1000 + i) as u64;
        std::fs::write(&path, random_bytes(size, seed))?;
        out.push((path, seed));
    }
    Ok(out)
}

fn check_files(files: &[(PathBuf, u64)], in_dir: &Path) -> Result<()> {
    for (path, seed) in files {
        let path = in_dir.join(path.file_name().expect("a file name"));
        let got = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            got == random_bytes(got.len(), *seed) && !got.is_empty(),
            "{} differs from what was written",
            path.display()
        );
    }
    Ok(())
}

/// Keeps writing new files (fsynced) until stopped; returns what it wrote.
fn writer(
    dir: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<Vec<(PathBuf, u64)>>> {
    std::thread::spawn(move || {
        use std::io::Write;
        let mut written = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let path = dir.join(format!("w{i}"));
            let seed = 1_000_000 + i;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&random_bytes((3 << 20) + i as usize * 4099, seed))?;
            f.sync_all()
                .with_context(|| format!("fsync of {}", path.display()))?;
            written.push((path, seed));
            i += 1;
        }
        Ok(written)
    })
}

/// Keeps reading `files` and checking every byte until stopped; returns the passes made.
fn reader(
    files: Vec<(PathBuf, u64)>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Result<u32>> {
    std::thread::spawn(move || {
        let mut passes = 0;
        while !stop.load(Ordering::Relaxed) || passes == 0 {
            check_files(&files, files[0].0.parent().expect("a directory"))
                .with_context(|| format!("read pass {passes}"))?;
            passes += 1;
        }
        Ok(passes)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_and_drain_while_the_mount_is_in_use() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(QUICK_UPKEEP)?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let files = write_files(&mnt, "r", &[8 << 20, 20 << 20, 1, 70 << 20, 5 << 20])?;
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(mnt.clone(), stop.clone());
    let r = reader(files.clone(), stop.clone());

    // Two new servers join through the real `chunkserver join` and receive shards.
    for _ in 0..2 {
        tc.cluster.join_chunkserver().await?;
    }
    let status = wait_status(
        &admin,
        Duration::from_secs(120),
        "shards to move onto the new servers",
        |s| {
            ["chunkserver-7", "chunkserver-8"].iter().all(|name| {
                s.chunkservers.iter().any(|c| {
                    c.name == *name && c.state == ChunkserverState::Up && c.placed_shards > 0
                })
            })
        },
    )
    .await?;

    // Two original servers are drained with the real `chunkserver drain ID --wait`, then
    // stopped.
    let drains: Vec<(u32, std::process::Child)> = [2u32, 5]
        .into_iter()
        .map(|n| {
            let id = id_of(&status, &format!("chunkserver-{n}"))?;
            let child = tc
                .cluster
                .drain_command(id.0)?
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            Ok((n, child))
        })
        .collect::<Result<_>>()?;
    for (n, child) in drains {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
        ensure!(
            out.status.success(),
            "draining chunkserver-{n} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tc.cluster.chunkserver(n).stop(Duration::from_secs(10))?;
    }
    let status = admin.status().await?;
    for n in [2, 5] {
        let row = status
            .chunkservers
            .iter()
            .find(|c| c.name == format!("chunkserver-{n}"))
            .context("drained server listed")?;
        ensure!(
            row.state == ChunkserverState::Drained && row.placed_shards == 0,
            "{row:?}"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let passes = r.join().expect("reader thread")?;
    let written = w.join().expect("writer thread")?;
    ensure!(passes >= 1 && !written.is_empty());
    // Every byte, through a fresh mount with a cold cache.
    let cold = tc.state().join("cold");
    tc.cluster.start_mount(2, &cold, "").await?;
    check_files(&files, &cold)?;
    check_files(&written, &cold)?;
    wait_fully_redundant(&admin).await?;
    eprintln!(
        "reader passes: {passes}, files written meanwhile: {}",
        written.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_server_is_repaired_across_a_leader_failover_then_two_more_may_die() -> Result<()> {
    let mut tc = TestCluster::with_metaserver_args(QUICK_UPKEEP)?;
    // Slow rebuilds, so the metaserver leader can be killed while repair is under way.
    tc.cluster.chunkserver_args = vec!["--rebuild-rate".into(), "2".into()];
    // Seven servers: after one dies, rs:4+2 still has six distinct servers to repair onto.
    let (admin, mnt) = tc.start_with_mount(7).await?;
    let files = write_files(&mnt, "f", &[(64 << 20) + 1, 10 << 20, 4096, 33 << 20])?;
    let before = admin.status().await?;
    ensure!(before.fully_redundant(), "{:?}", before.redundancy);

    let victim = id_of(&before, "chunkserver-3")?;
    ensure!(tc.cluster.chunkserver(3).kill9());
    let killed = Instant::now();
    wait_status(
        &admin,
        Duration::from_secs(30),
        "the dead server to be down",
        |s| {
            s.chunkservers
                .iter()
                .any(|c| c.id == victim && c.state == ChunkserverState::Down)
        },
    )
    .await?;
    let down = Instant::now();
    let repairing = wait_status(&admin, Duration::from_secs(30), "repair to start", |s| {
        s.jobs
            .iter()
            .any(|j| j.kind == JobKind::Repair && j.running > 0)
    })
    .await?;
    let leader = repairing.leader;
    ensure!(tc.cluster.metaserver(leader.0 as u32).kill9());
    let repaired = wait_status(
        &admin,
        Duration::from_secs(180),
        "repair to full redundancy",
        |s| {
            s.fully_redundant()
                && s.chunkservers
                    .iter()
                    .all(|c| c.id != victim || c.placed_shards == 0)
        },
    )
    .await?;
    let rebuilt = repaired.done_bytes(JobKind::Repair);
    ensure!(
        repaired.leader != leader,
        "{leader} still leads after kill -9"
    );
    eprintln!(
        "down after {:.1}s; the new leader rebuilt {:.1} MiB; full redundancy {:.1}s after down ({:.1} MiB/s)",
        (down - killed).as_secs_f64(),
        rebuilt as f64 / (1 << 20) as f64,
        down.elapsed().as_secs_f64(),
        rebuilt as f64 / (1 << 20) as f64 / down.elapsed().as_secs_f64()
    );

    // The dead server comes back: its shards were rebuilt elsewhere, so its stale copies
    // go (what it holds becomes what the metadata places on it, as it is rebalanced).
    tc.cluster.start_chunkserver(3).await?;
    let settled = |s: &ClusterStatus| {
        s.fully_redundant()
            && s.jobs.iter().all(|j| j.running == 0)
            && s.chunkservers.iter().any(|c| {
                c.id == victim && c.state == ChunkserverState::Up && c.shards == c.placed_shards
            })
    };
    let what = "the returning server's stale shards to go";
    wait_status(&admin, Duration::from_secs(90), what, settled).await?;

    for n in [1, 6] {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    let cold = tc.state().join("cold");
    tc.cluster.start_mount(2, &cold, "").await?;
    check_files(&files, &cold)?;
    Ok(())
}

/// The path of one shard file of `server`'s data directory (the largest, so it has data).
fn a_shard_file(tc: &TestCluster, server: u32) -> Result<PathBuf> {
    let shards = tc.state().join(format!("chunkserver-{server}/data/shards"));
    let mut best: Option<(u64, PathBuf)> = None;
    for dir in std::fs::read_dir(&shards)? {
        for f in std::fs::read_dir(dir?.path())? {
            let f = f?;
            let len = f.metadata()?.len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, f.path()));
            }
        }
    }
    match best {
        Some((_, p)) => Ok(p),
        None => bail!("chunkserver-{server} holds no shard"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrub_repairs_a_flipped_byte_and_a_failing_server_is_drained() -> Result<()> {
    let mut args = QUICK_UPKEEP.to_vec();
    args.extend(["--drain-on-io-errors", "5"]);
    let mut tc = TestCluster::with_metaserver_args(&args)?;
    tc.cluster.chunkserver_args = ["--scrub-every", "2", "--scrub-rate", "64"]
        .map(String::from)
        .to_vec();
    let (admin, mnt) = tc.start_with_mount(6).await?;
    // A seventh server whose disk fails a third of its reads.
    tc.cluster
        .chunkserver_args
        .extend(["--inject-read-errors", "0.3"].map(String::from));
    tc.cluster.start_chunkserver(7).await?;
    admin.wait_chunkservers_up(7).await?;
    let files = write_files(&mnt, "s", &[24 << 20, 12 << 20, 6 << 20])?;

    // A byte flipped on disk is found by scrub and the shard rewritten from parity.
    let shard = a_shard_file(&tc, 1)?;
    let original = std::fs::read(&shard)?;
    let mut flipped = original.clone();
    *flipped.last_mut().expect("a non-empty shard") ^= 0x40;
    std::fs::write(&shard, &flipped)?;
    wait_for(
        Duration::from_secs(60),
        "scrub to repair the flipped byte",
        || async { Ok((std::fs::read(&shard).ok().as_ref() == Some(&original)).then_some(())) },
    )
    .await?;
    let status = admin.status().await?;
    let cs1 = status
        .chunkservers
        .iter()
        .find(|c| c.name == "chunkserver-1")
        .context("chunkserver-1 listed")?;
    ensure!(
        cs1.scrub.damaged >= 1 && cs1.health.checksum_errors >= 1,
        "{cs1:?}"
    );

    // The failing server is drained by the metaserver on its own, and status says why.
    let status = wait_status(
        &admin,
        Duration::from_secs(120),
        "the failing server to be drained",
        |s| {
            s.chunkservers
                .iter()
                .any(|c| c.name == "chunkserver-7" && c.state == ChunkserverState::Drained)
        },
    )
    .await?;
    let row = status
        .chunkservers
        .iter()
        .find(|c| c.name == "chunkserver-7")
        .context("chunkserver-7 listed")?;
    let reason = row.reason.as_deref().unwrap_or_default();
    ensure!(
        reason.contains("predictive drain") && reason.contains("I/O errors"),
        "{row:?}"
    );
    // Every server tells Prometheus the same story.
    let cs1 = tc
        .cluster
        .metrics_addr(&tc.cluster.chunkserver(1))
        .context("cs1 metrics")?;
    let text = http_get(cs1, "/metrics")?;
    ensure!(
        text.lines().any(
            |l| l.starts_with("lattice_chunkserver_checksum_errors_total ") && !l.ends_with(" 0")
        ),
        "{text}"
    );
    let mut leaders = 0;
    for p in tc.cluster.procs(lattice_harness::METASERVER) {
        let addr = tc.cluster.metrics_addr(&p).context("metaserver metrics")?;
        let text = http_get(addr, "/metrics")?;
        if text.lines().any(|l| l == "lattice_meta_is_leader 1") {
            leaders += 1;
            ensure!(
                text.contains("lattice_meta_chunkservers{state=\"drained\"} 1"),
                "{text}"
            );
        }
    }
    ensure!(leaders == 1, "{leaders} metaservers say they lead");
    check_files(&files, &mnt)?;
    wait_fully_redundant(&admin).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_disk_is_added_and_another_emptied_while_serving() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let files = write_files(&mnt, "d", &[16 << 20, 3 << 20, 100])?;
    let cs = tc.cluster.chunkserver(1);
    let server = tc.cluster.addr(&cs)?.to_string();
    let certs = tc
        .cluster
        .certs(lattice_common::pki::Role::Admin, "admin")?;
    let (old, new) = (
        tc.state().join("chunkserver-1/data"),
        tc.state().join("chunkserver-1/second-disk"),
    );
    let before = std::fs::read_dir(old.join("shards"))?.count();
    ensure!(before > 0);
    for (verb, dir) in [("add", &new), ("remove", &old)] {
        let out = std::process::Command::new(tc.cluster.binary(lattice_harness::CHUNKSERVER)?)
            .args(["disk", verb])
            .arg(dir)
            .args(["--server", &server, "--certs"])
            .arg(&certs)
            .output()?;
        ensure!(
            out.status.success(),
            "disk {verb}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shard_files = |root: &Path| -> Result<usize> {
        let mut n = 0;
        for d in std::fs::read_dir(root.join("shards"))? {
            n += std::fs::read_dir(d?.path())?.count();
        }
        Ok(n)
    };
    ensure!(shard_files(&old)? == 0, "shards left on the removed disk");
    ensure!(shard_files(&new)? > 0, "nothing moved to the new disk");
    // With two other servers dead, every read needs chunkserver-1's moved shards.
    for n in [2, 3] {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    let cold = tc.state().join("cold");
    tc.cluster.start_mount(2, &cold, "").await?;
    check_files(&files, &cold)?;
    Ok(())
}

/// A shard replaced by other bytes with fresh checksums (what a bug, or a misused
/// certificate, could do) passes every checksum, so reads return the wrong bytes; the deep
/// scrub finds that it disagrees with the parity of its slice and has it rebuilt in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deep_scrub_rebuilds_a_shard_that_disagrees_with_its_parity() -> Result<()> {
    let mut args = QUICK_UPKEEP.to_vec();
    args.extend(["--deep-scrub-every", "2", "--deep-scrub-rate", "64"]);
    let tc = TestCluster::with_metaserver_args(&args)?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let data = random_bytes(3 << 20, 9);
    std::fs::write(mnt.join("f"), &data)?;

    // Data shard 1 of the file's slice, replaced through the chunkserver protocol.
    let meta = tc.meta_client("inspector")?;
    let lookup = FsQuery::Lookup {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
    };
    let FsReply::Attr(attr) = meta.query(lookup).await?? else {
        bail!("no attributes for f");
    };
    let query = FsQuery::Slices {
        ino: attr.ino,
        first: 0,
        last: 0,
    };
    let FsReply::Slices {
        chunks, servers, ..
    } = meta.query(query).await??
    else {
        bail!("no slices for f");
    };
    let slice = chunks[0].1[0].clone();
    let holder = slice.placement[1].context("shard 1 unplaced")?;
    let addr = servers
        .iter()
        .find(|s| s.id == holder)
        .context("no address")?
        .addr;
    let shards = ShardClient::new(
        tc.node(Role::Chunkserver, "chunkserver-1")?,
        Duration::from_secs(10),
    );
    let shard = ShardId::new(slice.slice, 1);
    let len = slice.layout.shard_len();
    let good = shards.get(addr, shard, 0, len).await?;
    let mut bad = good.clone();
    bad.iter_mut().take(5000).for_each(|b| *b ^= 0x5a);
    shards.put(addr, shard, slice.layout, bad.into()).await?;
    ensure!(
        std::fs::read(mnt.join("f"))? != data,
        "the replaced shard was not read"
    );

    let found = wait_status(
        &admin,
        Duration::from_secs(60),
        "a deep scrub mismatch",
        |s| {
            s.jobs
                .iter()
                .any(|j| j.kind == JobKind::DeepScrub && j.failed > 0)
        },
    )
    .await?;
    wait_for(
        Duration::from_secs(60),
        "the shard rebuilt in place",
        || async { Ok((shards.get(addr, shard, 0, len).await? == good).then_some(())) },
    )
    .await?;
    ensure!(std::fs::read(mnt.join("f"))? == data, "still wrong bytes");
    let row = found.jobs.iter().find(|j| j.kind == JobKind::DeepScrub);
    eprintln!("deep scrub: {row:?}");
    Ok(())
}

/// A file switched to a policy that needs every server while one is down is not re-encoded
/// degraded (that would leave it less protected than before): it stays as it was, healthy,
/// until the server is back, and is then re-encoded whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reencode_waits_for_enough_servers_rather_than_landing_degraded() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(QUICK_UPKEEP)?;
    let (admin, mnt) = tc.start_with_mount(9).await?;
    let f = mnt.join("f");
    let data = random_bytes(5 << 20, 12);
    std::fs::write(&f, &data)?;
    let layout = |f: &Path| {
        sh(&format!(
            "getfattr --only-values -n lattice.layout '{}'",
            f.display()
        ))
    };
    // A server holding none of its shards goes down: the file stays healthy.
    let status = admin.status().await?;
    let held = layout(&f)?;
    let idle = (1..=9)
        .find(|n| {
            id_of(&status, &format!("chunkserver-{n}")).is_ok_and(|id| {
                !held.contains(&format!(":{id} ")) && !held.contains(&format!(":{id}\n"))
            })
        })
        .context("every server holds a shard")?;
    ensure!(tc.cluster.chunkserver(idle).kill9());
    sh(&format!(
        "setfattr -n lattice.policy -v grid:2x2+1 '{}'",
        f.display()
    ))?;
    wait_status(
        &admin,
        Duration::from_secs(60),
        "a refused re-encode",
        |s| {
            s.jobs
                .iter()
                .any(|j| j.kind == JobKind::Reencode && j.failed > 0)
        },
    )
    .await?;
    let before = layout(&f)?;
    ensure!(before.contains(" rs:4+2 healthy, re-encoding:"), "{before}");
    tc.cluster.start_chunkserver(idle).await?;
    wait_for(
        Duration::from_secs(90),
        "the re-encode once all are up",
        || async {
            let l = layout(&f)?;
            Ok((!l.contains("re-encoding") && l.contains("grid:2x2+1 healthy")).then_some(()))
        },
    )
    .await?;
    ensure!(std::fs::read(&f)? == data, "contents differ");
    Ok(())
}
