//! fsx, the file system exerciser (`cargo install fsx`, installed by scripts/deps.sh), on a
//! real mount of a real local cluster: random reads, writes, truncations, syncs, mmap,
//! copy_file_range, sendfile and fallocate on one file, every read checked byte for byte
//! against fsx's own copy. The mixes live in tests/fsx/*.toml, shared with scripts/soak.sh.
//! `LATTICE_FSX_SCALE` (default 1) multiplies every run's operation count.

use anyhow::{ensure, Context, Result};
use lattice_common::wire::meta::JobKind;
use lattice_harness::process::wait_for;
use lattice_tests::fsx::{run_many, Run};
use lattice_tests::{same_file, sh, TestCluster};
use std::time::Duration;

/// Every mix with several seeds: about 88,000 operations (with the fault runs below over
/// 100,000), four runs at a time, longest first. Most are the "small" mix, the cheapest per
/// operation and the densest in overlaps, so CI's time allows them. Each file is then read
/// through a second mount, which must see exactly what the first one closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_mixes_on_a_mount() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    let runs = [
        ("small", 7, 8_000),
        ("small", 8, 8_000),
        ("small", 9, 8_000),
        ("small", 11, 8_000),
        ("small", 12, 8_000),
        ("small", 13, 8_000),
        ("small", 14, 8_000),
        ("small", 15, 8_000),
        ("small", 16, 8_000),
        ("chunk", 10, 1_200),
        ("inline", 17, 1_500),
        ("inline", 18, 1_500),
        ("inline", 19, 1_500),
        ("inline", 20, 1_500),
        ("mmap", 3, 2_500),
        ("copy", 5, 2_500),
        ("plain", 1, 2_500),
        ("mmap", 4, 2_500),
        ("copy", 6, 2_500),
        ("plain", 2, 2_500),
    ]
    .map(|(mix, seed, ops)| Run::new(&mnt, mix, seed, ops));
    let done = run_many(&runs, 4).await.with_context(|| mount_log(&tc))?;
    for run in &runs {
        same_file(
            &run.file,
            &other.join(run.file.file_name().expect("a name")),
        )?;
    }
    eprintln!("fsx: {done} operations, 0 mismatches");
    Ok(())
}

/// Runs `fault` over and over until the fsx runs end, then checks the runs passed.
async fn under_faults<F, Fut>(runs: &[Run], fault: F) -> Result<(u64, u32)>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let fsx = run_many(runs, runs.len());
    tokio::pin!(fsx);
    let mut rounds = 0;
    loop {
        tokio::select! {
            done = &mut fsx => return Ok((done?, rounds)),
            faulted = fault(rounds) => {
                faulted?;
                rounds += 1;
            }
        }
    }
}

/// How long a fault lasts in round `round`: 2 to 6 seconds, varying (a fault schedule, not
/// a wait for a condition).
fn hold(round: u32) -> Duration {
    Duration::from_millis(2000 + (u64::from(round) * 1_700) % 4_000)
}

/// rs:4+2 on six chunkservers; round after round two of them are killed with -9, stay down
/// a while (reads decode around them, writes wait for a fifth server), and come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_survives_chunkserver_kills() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--suspect-after", "1", "--down-after", "5"])?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let runs = [
        Run::new(&mnt, "small", 21, 2_500),
        Run::new(&mnt, "copy", 22, 1_500),
    ];
    let (cluster, admin) = (&tc.cluster, &admin);
    let (done, rounds) = under_faults(&runs, |round| async move {
        let a = 1 + round % 6;
        let b = 1 + (round + 1 + round / 6) % 6;
        let b = if b == a { 1 + a % 6 } else { b };
        for n in [a, b] {
            ensure!(
                cluster.chunkserver(n).kill9(),
                "chunkserver-{n} was not running"
            );
        }
        tokio::time::sleep(hold(round)).await;
        for n in [a, b] {
            cluster.start_chunkserver(n).await?;
        }
        admin.wait_chunkservers_up(6).await?;
        tokio::time::sleep(hold(round + 1)).await;
        Ok(())
    })
    .await
    .with_context(|| mount_log(&tc))?;
    eprintln!(
        "fsx: {done} operations over {rounds} rounds of two chunkservers killed, 0 mismatches"
    );
    ensure!(rounds >= 2, "the runs ended before two rounds of faults");
    Ok(())
}

/// Round after round the metaserver leader is killed with -9; another takes over, and the
/// old one restarts and catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_survives_metaserver_leader_kills() -> Result<()> {
    let tc = TestCluster::new()?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let runs = [
        Run::new(&mnt, "small", 31, 6_000),
        Run::new(&mnt, "mmap", 32, 3_000),
    ];
    let (cluster, admin) = (&tc.cluster, &admin);
    let (done, rounds) = under_faults(&runs, |round| async move {
        let leader = admin.status().await?.leader;
        let n = leader.0 as u32;
        ensure!(cluster.metaserver(n).kill9(), "{leader} was not running");
        wait_for(Duration::from_secs(30), "a new leader", || async {
            Ok(admin
                .status()
                .await
                .ok()
                .filter(|s| s.leader != leader)
                .map(drop))
        })
        .await?;
        cluster.start_metaserver(n, 3, None).await?;
        tokio::time::sleep(hold(round)).await;
        Ok(())
    })
    .await
    .with_context(|| mount_log(&tc))?;
    eprintln!("fsx: {done} operations over {rounds} leader kills, 0 mismatches");
    ensure!(rounds >= 2, "the runs ended before two leader kills");
    Ok(())
}

/// Round after round each fsx file's policy is switched (`setfattr lattice.policy`) and the
/// leader re-encodes its slices while fsx reads, writes, truncates and maps it: no write
/// racing a re-encode is lost, no re-encode shows stale bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsx_survives_live_reencoding() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--reencode-rate", "0"])?;
    let (admin, mnt) = tc.start_with_mount(9).await?;
    let runs = [
        Run::new(&mnt, "small", 41, 3_000),
        Run::new(&mnt, "plain", 42, 1_500),
        Run::new(&mnt, "mmap", 43, 1_500),
    ];
    const POLICIES: [&str; 4] = ["grid:2x2+1", "mirror:2", "rs:3+2", "rs:4+2"];
    let runs_ref = &runs;
    let (done, rounds) = under_faults(&runs, |round| async move {
        for run in runs_ref.iter().filter(|r| r.file.exists()) {
            let policy = POLICIES[(round as usize + run.seed as usize) % POLICIES.len()];
            // fsx may be between removing and recreating its file: a miss is no fault.
            let _ = sh(&format!(
                "setfattr -n lattice.policy -v {policy} '{}'",
                run.file.display()
            ));
        }
        tokio::time::sleep(hold(round) / 2).await;
        Ok(())
    })
    .await
    .with_context(|| mount_log(&tc))?;
    let status = admin.status().await?;
    let reencoded = status
        .jobs
        .iter()
        .find(|j| j.kind == JobKind::Reencode)
        .map_or(0, |j| j.done_shards);
    eprintln!(
        "fsx: {done} operations over {rounds} rounds of policy changes, {reencoded} slices \
         re-encoded meanwhile, 0 mismatches"
    );
    ensure!(
        rounds >= 3 && reencoded > 0,
        "too little re-encoding: {rounds} rounds, {reencoded} slices"
    );
    Ok(())
}

/// The mount's last log lines, for a failed run's report: a write error the mount keeps
/// for the next fsync, say, shows only there.
fn mount_log(tc: &TestCluster) -> String {
    let mount = tc.cluster.mount_proc(1);
    format!("{} log, last lines:\n{}", mount.name(), mount.log_tail())
}
