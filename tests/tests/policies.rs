//! Redundancy policies as users meet them, on a cluster of 26 chunkservers: grid parity set
//! on a directory with `setfattr`, `lattice.layout`, three servers killed at once, repair
//! reading one grid line, a file re-encoded while it is read and written (and the leader
//! killed meanwhile), and reads going around a slow server.

use anyhow::{ensure, Context, Result};
use lattice_common::wire::meta::{ChunkserverState, ClusterStatus, JobKind};
use lattice_harness::Admin;
use lattice_tests::{
    chunkservers_counter, counter, id_of, random_bytes, sh, wait_status, TestCluster,
};
use rand::{Rng, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVERS: u32 = 26;
/// Quick failure detection; re-encoding slow enough that a reader and a writer overlap it;
/// no rebalancing, so that a repair's reads are measured alone (a move can start unseen
/// right after a file is written, and one off a server just killed decodes like a repair);
/// a removed file's data gone soon (it is waited for).
const UPKEEP: &[&str] = &[
    "--balance-tolerance",
    "1000",
    "--session-timeout",
    "3",
    "--suspect-after",
    "2",
    "--down-after",
    "5",
    "--gc-grace",
    "2",
    "--reencode-rate",
    "8",
];
const GET_BYTES: &str = "lattice_chunkserver_get_bytes_total";
const GETS: &str = "lattice_chunkserver_gets_total";

fn getfattr(path: &Path, name: &str) -> Result<String> {
    sh(&format!(
        "getfattr --only-values -n {name} '{}'",
        path.display()
    ))
}

fn set_policy(path: &Path, policy: &str) -> Result<String> {
    sh(&format!(
        "setfattr -n lattice.policy -v '{policy}' '{}'",
        path.display()
    ))
}

/// Each slice's line of `lattice.layout`: (policy, state and shards).
fn slices(path: &Path) -> Result<Vec<(String, String)>> {
    let layout = getfattr(path, "lattice.layout")?;
    Ok(layout
        .lines()
        .filter(|l| l.starts_with("slice "))
        .map(|l| {
            let mut words = l.splitn(6, ' ');
            let policy = words.nth(4).unwrap_or_default().to_string();
            (policy, words.next().unwrap_or_default().to_string())
        })
        .collect())
}

/// Whether every slice of `path` is stored under `policy`, healthy.
fn all_under(path: &Path, policy: &str) -> Result<bool> {
    let s = slices(path)?;
    Ok(!s.is_empty()
        && s.iter()
            .all(|(p, rest)| p == policy && rest.starts_with("healthy:")))
}

/// The chunkserver numbers (1..=SERVERS) named in `path`'s layout.
fn servers_of(path: &Path, status: &ClusterStatus) -> Result<Vec<u32>> {
    let layout = getfattr(path, "lattice.layout")?;
    let mut out = Vec::new();
    for n in 1..=SERVERS {
        let id = id_of(status, &format!("chunkserver-{n}"))?;
        if layout.contains(&format!(":{id} ")) || layout.contains(&format!(":{id}\n")) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Kills chunkserver `n`, waits until the leader has rebuilt everything it held, starts it
/// again; returns (bytes the chunkservers served, bytes rebuilt) meanwhile.
async fn repair_after_losing(tc: &TestCluster, admin: &Admin, n: u32) -> Result<(u64, u64)> {
    let name = format!("chunkserver-{n}");
    // Work already under way (a slice written around a busy server and being repaired)
    // would count its reads before the measurement and its bytes in it.
    let before = wait_status(
        admin,
        Duration::from_secs(120),
        "no shard job under way",
        |s| s.fully_redundant() && s.jobs.iter().all(|j| j.running == 0),
    )
    .await?;
    let victim = id_of(&before, &name)?;
    // What the others served so far (the victim's counter goes with it).
    let victim_metrics = tc.cluster.metrics_addr(&tc.cluster.chunkserver(n));
    let (read0, rebuilt0) = (
        chunkservers_counter(tc, SERVERS, GET_BYTES)? - counter(victim_metrics, GET_BYTES)?,
        before.done_bytes(JobKind::Repair),
    );
    ensure!(tc.cluster.chunkserver(n).kill9());
    let after = wait_status(admin, Duration::from_secs(120), "repair", |s| {
        s.fully_redundant()
            && s.jobs.iter().all(|j| j.running == 0)
            && s.chunkservers.iter().any(|c| {
                c.id == victim && c.state == ChunkserverState::Down && c.placed_shards == 0
            })
    })
    .await?;
    let read = chunkservers_counter(tc, SERVERS, GET_BYTES)? - read0;
    let moved = |s: &ClusterStatus| s.done_bytes(JobKind::Rebalance) + s.done_bytes(JobKind::Drain);
    ensure!(
        moved(&after) == moved(&before),
        "shards were moved during the repair"
    );
    // The job tally lives on the leader: another leader would have counted from zero.
    ensure!(
        after.leader == before.leader && after.term == before.term,
        "leadership moved during the repair (term {} to {})",
        before.term,
        after.term
    );
    let rebuilt = after.done_bytes(JobKind::Repair) - rebuilt0;
    eprintln!(
        "{name} lost: {read} bytes read, {rebuilt} rebuilt; jobs before {:?}, after {:?}",
        before.jobs, after.jobs
    );
    tc.cluster.start_chunkserver(n).await?;
    admin.wait_chunkservers_up(SERVERS as usize).await?;
    Ok((read, rebuilt))
}

/// Reads `path` whole; returns the seconds it took.
fn timed_read(path: &Path, expect: &[u8]) -> Result<f64> {
    let t = Instant::now();
    let got = std::fs::read(path)?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(got == expect, "{} read back different", path.display());
    Ok(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grid_parity_per_directory_reencoded_live_and_read_around_a_slow_server() -> Result<()> {
    let mut tc = TestCluster::with_metaserver_args(UPKEEP)?;
    let admin = tc.start_metaservers(3).await?;
    admin.set_default_policy("rs:4+2".parse()?).await?;
    for n in 1..=SERVERS {
        tc.cluster.start_chunkserver(n).await?;
    }
    admin.wait_chunkservers_up(SERVERS as usize).await?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mnt = tc.state().join("mnt");
    tc.cluster
        .start_mount(1, &mnt, &format!("metrics={metrics}"))
        .await?;

    // A directory set to grid:4x4+1 with setfattr; bad and unplaceable values are refused,
    // and the attribute is not listed (copies do not carry it).
    let grid = mnt.join("grid");
    std::fs::create_dir(&grid)?;
    set_policy(&grid, "grid:4x4+1")?;
    ensure!(getfattr(&grid, "lattice.policy")? == "grid:4x4+1");
    ensure!(
        set_policy(&grid, "grid:4x4").is_err(),
        "a bad policy was taken"
    );
    ensure!(
        set_policy(&grid, "grid:8x8+1").is_err(),
        "a policy needing 81 servers was taken"
    );
    let listed = sh(&format!("getfattr -d -m - '{}'", grid.display()))?;
    ensure!(!listed.contains("lattice."), "listed: {listed}");

    // Files written there are stored under it.
    let a = grid.join("a");
    let a_data = random_bytes(40 << 20, 1);
    std::fs::write(&a, &a_data)?;
    ensure!(all_under(&a, "grid:4x4+1")?, "{:?}", slices(&a)?);

    // Any three servers killed at once: every byte still reads back.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut killed = Vec::new();
    while killed.len() < 3 {
        let n = rng.gen_range(1..=SERVERS);
        if !killed.contains(&n) {
            killed.push(n);
        }
    }
    for &n in &killed {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    timed_read(&a, &a_data).with_context(|| format!("with chunkservers {killed:?} killed"))?;
    for &n in &killed {
        tc.cluster.start_chunkserver(n).await?;
    }
    admin.wait_chunkservers_up(SERVERS as usize).await?;
    wait_status(&admin, Duration::from_secs(120), "full redundancy", |s| {
        s.fully_redundant()
    })
    .await?;

    // Repair after one server dies reads one line per lost shard: about a quarter of what
    // rs:16+3 reads (16 shards per lost one).
    let status = admin.status().await?;
    let holder = servers_of(&a, &status)?[0];
    let (grid_read, grid_rebuilt) = repair_after_losing(&tc, &admin, holder).await?;
    std::fs::remove_file(&a)?;
    // A removed file's data stays until no mount can have it open (the session timeout):
    // until then its slices would be repaired with the next file's, at their own cost.
    wait_status(&admin, Duration::from_secs(60), "removed file gone", |s| {
        s.slices == 0
    })
    .await?;
    let rs = mnt.join("rs");
    std::fs::create_dir(&rs)?;
    set_policy(&rs, "rs:16+3")?;
    let b = rs.join("b");
    let b_data = random_bytes(40 << 20, 2);
    std::fs::write(&b, &b_data)?;
    ensure!(all_under(&b, "rs:16+3")?, "{:?}", slices(&b)?);
    let status = admin.status().await?;
    let holder = servers_of(&b, &status)?[0];
    let (rs_read, rs_rebuilt) = repair_after_losing(&tc, &admin, holder).await?;
    let grid_cost = grid_read as f64 / grid_rebuilt.max(1) as f64;
    let rs_cost = rs_read as f64 / rs_rebuilt.max(1) as f64;
    eprintln!(
        "repair of one server: grid:4x4+1 read {grid_read} bytes for {grid_rebuilt} rebuilt \
         ({grid_cost:.2}x); rs:16+3 read {rs_read} for {rs_rebuilt} ({rs_cost:.2}x); ratio {:.2}",
        grid_cost / rs_cost
    );
    ensure!(grid_rebuilt > 0 && rs_rebuilt > 0, "nothing was repaired");
    ensure!(
        (3.5..6.0).contains(&grid_cost) && (15.0..20.0).contains(&rs_cost),
        "repair reads: grid {grid_cost:.2}x, rs {rs_cost:.2}x per byte rebuilt"
    );
    timed_read(&b, &b_data)?;

    // A file switched to rs:8+3 while a reader and a writer use it ends up stored only
    // under rs:8+3, with exactly what was written.
    let c = grid.join("c");
    let model = Arc::new(std::sync::Mutex::new(random_bytes(24 << 20, 3)));
    std::fs::write(&c, &*model.lock().unwrap())?;
    ensure!(all_under(&c, "grid:4x4+1")?);
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, writes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (path, stop, reads) = (c.clone(), stop.clone(), reads.clone());
        std::thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let got = std::fs::read(&path)?;
                ensure!(got.len() == 24 << 20, "read {} bytes", got.len());
                reads.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let writer = {
        let (path, stop, writes, model) = (c.clone(), stop.clone(), writes.clone(), model.clone());
        std::thread::spawn(move || -> Result<()> {
            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
            let mut rng = rand::rngs::StdRng::seed_from_u64(5);
            while !stop.load(Ordering::Relaxed) {
                let len = rng.gen_range(1..=256 << 10);
                let at = rng.gen_range(0..(24 << 20) - len);
                let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                f.write_at(&data, at as u64)?;
                f.sync_data()?;
                model.lock().unwrap()[at..at + len].copy_from_slice(&data);
                writes.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    set_policy(&c, "rs:8+3")?;
    ensure!(getfattr(&c, "lattice.policy")? == "rs:8+3");
    let started = Instant::now();
    // The leader dies in the middle of it: the next one carries on from the replicated state.
    let busy = wait_status(
        &admin,
        Duration::from_secs(60),
        "re-encoding to start",
        |s| {
            s.jobs
                .iter()
                .any(|j| j.kind == JobKind::Reencode && j.running > 0)
        },
    )
    .await?;
    let leader = busy.leader;
    ensure!(tc.cluster.metaserver(leader.0 as u32).kill9());
    wait_status(&admin, Duration::from_secs(30), "a new leader", |s| {
        s.leader != leader
    })
    .await?;
    tc.cluster
        .start_metaserver(leader.0 as u32, 3, None)
        .await?;
    let seen_running = AtomicBool::new(false);
    lattice_harness::process::wait_for(Duration::from_secs(120), "re-encoding", || async {
        let s = admin.status().await?;
        if s.leader != leader && s.jobs.iter().any(|j| j.kind == JobKind::Reencode) {
            seen_running.store(true, Ordering::Relaxed);
        }
        Ok((started.elapsed() > Duration::from_secs(3) && all_under(&c, "rs:8+3")?).then_some(()))
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    reader.join().expect("reader")?;
    writer.join().expect("writer")?;
    ensure!(all_under(&c, "rs:8+3")?, "{:?}", slices(&c)?);
    ensure!(
        std::fs::read(&c)? == *model.lock().unwrap(),
        "contents differ"
    );
    ensure!(
        seen_running.load(Ordering::Relaxed),
        "the new leader's status never showed the re-encoding"
    );
    let done = admin.status().await?;
    let reencoded = done.jobs.iter().find(|j| j.kind == JobKind::Reencode);
    eprintln!(
        "re-encoded in {:.1}s with {} reads and {} writes meanwhile: {reencoded:?}",
        started.elapsed().as_secs_f64(),
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed)
    );
    ensure!(reads.load(Ordering::Relaxed) > 0 && writes.load(Ordering::Relaxed) > 0);

    // A server made slow (500 ms per read) is read around: it serves almost nothing and
    // read throughput barely changes (quoted, not asserted: timing is for benchmarks). The
    // same file is read before and after: the server holding its first data shard is
    // restarted slow (its shards stay where they are).
    let e = grid.join("e");
    let e_data = random_bytes(64 << 20, 5);
    std::fs::write(&e, &e_data)?;
    let fast: f64 = (0..3)
        .map(|_| timed_read(&e, &e_data))
        .sum::<Result<f64>>()?;
    let status = admin.status().await?;
    let first = slices(&e)?;
    let holder = first
        .first()
        .and_then(|(_, rest)| rest.split(" 0:").nth(1))
        .and_then(|s| s.split([' ', '(']).next())
        .context("no server for data shard 0")?
        .to_string();
    let slow_n = (1..=SERVERS)
        .find(|n| {
            id_of(&status, &format!("chunkserver-{n}")).is_ok_and(|id| id.to_string() == holder)
        })
        .context("the holder is not one of ours")?;
    let slow_id = id_of(&status, &format!("chunkserver-{slow_n}"))?;
    ensure!(tc.cluster.chunkserver(slow_n).kill9());
    tc.cluster.chunkserver_args = vec!["--inject-delay".into(), "500".into()];
    tc.cluster.start_chunkserver(slow_n).await?;
    admin.wait_chunkservers_up(SERVERS as usize).await?;
    let slow_metrics = tc.cluster.metrics_addr(&tc.cluster.chunkserver(slow_n));
    let (gets0, all0) = (
        counter(slow_metrics, GETS)?,
        chunkservers_counter(&tc, SERVERS, GETS)?,
    );
    let hedged0 = counter(Some(metrics), "lattice_client_hedged_reads_total")?
        + counter(Some(metrics), "lattice_client_avoided_reads_total")?;
    let slow: f64 = (0..3)
        .map(|_| timed_read(&e, &e_data))
        .sum::<Result<f64>>()?;
    let slow_gets = counter(slow_metrics, GETS)? - gets0;
    let all_gets = chunkservers_counter(&tc, SERVERS, GETS)? - all0;
    let hedged = counter(Some(metrics), "lattice_client_hedged_reads_total")?
        + counter(Some(metrics), "lattice_client_avoided_reads_total")?
        - hedged0;
    eprintln!(
        "64 MiB read 3 times: {:.0} MiB/s with every server fast, {:.0} MiB/s with {slow_id} \
         answering after 500 ms ({:.2}x); it served {slow_gets} of {all_gets} shard reads; \
         {hedged} reads hedged or planned around it",
        192.0 / fast,
        192.0 / slow,
        fast / slow
    );
    ensure!(hedged > 0, "no read went around the slow server");
    ensure!(
        slow_gets * (SERVERS as u64) * 4 < all_gets,
        "the slow server served {slow_gets} of {all_gets} shard reads"
    );
    Ok(())
}
