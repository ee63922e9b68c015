//! Data safety as users meet it: writes keep their file's protection while servers are
//! missing, and what the mount acknowledges is what comes back.

use anyhow::{bail, ensure, Context, Result};
use lattice_common::fs::{Caller, Errno, FileKind, LockKind, LockRange, LockSpace};
use lattice_common::ids::{ClientId, InodeId};
use lattice_common::wire::meta::{
    ChunkserverState, ClusterStatus, FsOp, FsQuery, FsReply, MetaRequest, MetaResponse,
};
use lattice_harness::process::wait_for;
use lattice_harness::Admin;
use lattice_tests::{random_bytes, same_times, same_tree, sh, size_from_env, TestCluster};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Waits until the metaservers see exactly `down` of the chunkservers out of service.
async fn wait_missing(admin: &Admin, down: &[&str]) -> Result<ClusterStatus> {
    wait_for(
        Duration::from_secs(30),
        &format!("{down:?} out of service"),
        || async {
            let s = admin.status().await?;
            let ok = s
                .chunkservers
                .iter()
                .all(|c| (c.state == ChunkserverState::Up) != down.contains(&c.name.as_str()));
            Ok(ok.then_some(s))
        },
    )
    .await
}

/// Writes `data` to a new file and fsyncs it; the error of whichever step failed.
async fn write_synced(path: PathBuf, data: Vec<u8>) -> Result<(), std::io::Error> {
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&data)?;
        f.sync_all()
    })
    .await
    .expect("the writer thread")
}

fn same_bytes(path: &Path, want: &[u8]) -> Result<()> {
    let got = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        got == want,
        "{} differs from what was written",
        path.display()
    );
    Ok(())
}

/// rs:4+2 on six chunkservers. One down: new data lands on the five (one more loss still
/// survivable), fsync succeeds, and the sixth shard is rebuilt once the server returns.
/// Three down: fewer than K+1 servers, so a write fails with EIO after the mount's
/// `io_wait`, the reason in its log, while files of a policy that survives three
/// losses (mirror:4) still read back and the namespace still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_never_land_with_less_protection_than_allowed() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--suspect-after", "1", "--down-after", "4"])?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let impatient = tc.state().join("impatient");
    tc.cluster.start_mount(2, &impatient, "io_wait=8").await?;

    // A directory whose files keep four copies, set through the metadata API.
    std::fs::create_dir(mnt.join("safe"))?;
    let meta = tc.meta_client("admin-tool")?;
    let safe = match meta
        .query(FsQuery::Lookup {
            parent: InodeId::ROOT,
            name: b"safe".to_vec(),
        })
        .await??
    {
        FsReply::Attr(a) => a.ino,
        other => bail!("{other:?}"),
    };
    meta.mutate(FsOp::SetPolicy {
        ino: safe,
        policy: Some("mirror:4".parse()?),
    })
    .await??;
    let kept = random_bytes(3 << 20, 1);
    write_synced(mnt.join("safe/kept"), kept.clone()).await?;
    let before = random_bytes(5 << 20, 2);
    write_synced(mnt.join("before"), before.clone()).await?;

    // One server down: writes succeed, degraded by one shard, then fully redundant again.
    ensure!(tc.cluster.chunkserver(6).kill9());
    wait_missing(&admin, &["chunkserver-6"]).await?;
    let one_down = random_bytes(9 << 20, 3);
    write_synced(mnt.join("one-down"), one_down.clone()).await?;
    let s = admin.status().await?;
    ensure!(
        s.redundancy.degraded_1 > 0 && s.redundancy.lost == 0,
        "{:?}",
        s.redundancy
    );
    tc.cluster.start_chunkserver(6).await?;
    wait_for(Duration::from_secs(60), "full redundancy", || async {
        Ok(admin.status().await?.fully_redundant().then_some(()))
    })
    .await?;
    same_bytes(&mnt.join("one-down"), &one_down)?;

    // Three down: a new rs:4+2 write cannot get five servers and fails, in bounded time.
    for n in [4, 5, 6] {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    wait_missing(&admin, &["chunkserver-4", "chunkserver-5", "chunkserver-6"]).await?;
    let started = Instant::now();
    match write_synced(impatient.join("too-late"), random_bytes(1 << 20, 4)).await {
        Err(e) if e.raw_os_error() == Some(Errno::IO.0) => {}
        other => bail!("a write with three of six servers down gave {other:?}"),
    }
    let waited = started.elapsed();
    ensure!(
        waited < Duration::from_secs(60),
        "the write failed only after {waited:?}"
    );
    let log = tc.cluster.mount_proc(2).log_tail();
    ensure!(log.contains("too few chunkservers"), "mount log: {log}");
    // Everything else still answers: the namespace, and data that survives three losses.
    same_bytes(&mnt.join("safe/kept"), &kept)?;
    let names: Vec<_> = std::fs::read_dir(&mnt)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    ensure!(names.len() == 4, "{names:?}");
    ensure!(std::fs::metadata(mnt.join("before"))?.len() == before.len() as u64);
    Ok(())
}

/// A log written as a journal is: appends of 1000 bytes, each fsynced, the file reopened
/// every ten (as a program that opens, appends and closes does). Every flush is a slice;
/// compaction keeps a chunk's slices few, far from its limit (16,384, which once gave ENOSPC
/// at 16 MB), and the file reads back identical, here and through a fresh mount.
/// `LATTICE_APPENDS` sets the count (default 3,000 for CI's time; 20,000 goes past the
/// old limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fsynced_appends_are_compacted_and_read_back() -> Result<()> {
    let appends: usize = size_from_env("LATTICE_APPENDS", 3_000);
    let tc = TestCluster::new()?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    let path = mnt.join("journal");
    let record = |n: usize| -> Vec<u8> {
        let mut r = format!("record {n:06} ").into_bytes();
        r.resize(1000, b'a' + (n % 26) as u8);
        r
    };
    let writer = path.clone();
    tokio::task::spawn_blocking(move || -> Result<()> {
        for first in (0..appends).step_by(10) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&writer)?;
            for n in first..(first + 10).min(appends) {
                f.write_all(&record(n))?;
                f.sync_data()?;
            }
        }
        Ok(())
    })
    .await??;
    let want: Vec<u8> = (0..appends).flat_map(record).collect();
    same_bytes(&path, &want)?;
    let fresh = tc.state().join("fresh");
    tc.cluster.start_mount(2, &fresh, "").await?;
    same_bytes(&fresh.join("journal"), &want)?;
    let slices = admin.status().await?.slices;
    ensure!(
        slices < 200,
        "{slices} slices hold one file of {appends} appends after compaction"
    );
    Ok(())
}

/// `cp -a` of files with old times keeps the times (a buffered write's later commit once
/// overwrote them with the time of the commit), and a second `rsync -a` finds nothing to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_keep_their_times() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let local = tempfile::tempdir()?;
    let src = local.path().join("src");
    std::fs::create_dir_all(src.join("sub"))?;
    for (i, size) in [0usize, 10, 5000, 300_000, 3 << 20].into_iter().enumerate() {
        std::fs::write(src.join(format!("f{i}")), random_bytes(size, i as u64))?;
        std::fs::write(src.join(format!("sub/g{i}")), random_bytes(size / 3, 9))?;
    }
    std::os::unix::fs::symlink("f1", src.join("link"))?;
    sh(&format!(
        "find {s} -exec touch -h -d '2001-02-03 04:05:06.123456789' {{}} + && touch -d '1999-12-31 23:59:59.5' {s}/f2",
        s = src.display()
    ))?;
    let m = mnt.display();
    sh(&format!("cp -a {} {m}/cp", src.display()))?;
    same_tree(&src, &mnt.join("cp"))?;
    same_times(&src, &mnt.join("cp"))?;
    sh(&format!("rsync -a {}/ {m}/rsync/", src.display()))?;
    same_times(&src, &mnt.join("rsync"))?;
    let again = sh(&format!("rsync -a --stats {}/ {m}/rsync/", src.display()))?;
    ensure!(
        again.contains("Number of regular files transferred: 0"),
        "a second rsync -a sent files again:\n{again}"
    );
    // As another mount sees them, too.
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    same_times(&src, &other.join("cp"))?;
    Ok(())
}

/// A write lost in the background (too few servers for `io_wait`) is reported as Linux's
/// errseq does: at the next fsync of every descriptor that was open when it was lost, once
/// each; a descriptor opened after someone heard of it starts clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_write_is_reported_to_every_descriptor() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--suspect-after", "1", "--down-after", "4"])?;
    let (admin, _) = tc.start_with_mount(6).await?;
    let mnt = tc.state().join("impatient");
    tc.cluster
        .start_mount(2, &mnt, "io_wait=3,flush_after=1")
        .await?;
    let path = mnt.join("f");
    write_synced(path.clone(), random_bytes(100_000, 1)).await?;
    let p = path.clone();
    let (mut writer, reader) = tokio::task::spawn_blocking(move || -> Result<_> {
        let w = std::fs::OpenOptions::new().write(true).open(&p)?;
        Ok((w, std::fs::File::open(&p)?))
    })
    .await??;
    for n in [4, 5, 6] {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    wait_missing(&admin, &["chunkserver-4", "chunkserver-5", "chunkserver-6"]).await?;
    writer.write_all(&random_bytes(1 << 20, 2))?;
    // Written out after flush_after, given up after io_wait: lost before any fsync.
    let mount = tc.cluster.mount_proc(2);
    wait_for(
        Duration::from_secs(60),
        "the write to be given up",
        || async { Ok(mount.log_tail().contains("failing the write").then_some(())) },
    )
    .await?;
    let eio_of =
        |r: &std::io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(Errno::IO.0));
    // A child started now shares the descriptors until its exec closes them (close-on-exec
    // sends a FLUSH too): that close must not use up what the writer is told at fsync.
    ensure!(std::process::Command::new("true").status()?.success());
    let first = writer.sync_all();
    ensure!(eio_of(&first), "fsync of the writer: {first:?}, not EIO");
    let first = reader.sync_all();
    ensure!(
        eio_of(&first),
        "fsync of the other descriptor: {first:?}, not EIO"
    );
    ensure!(reader.sync_all().is_ok(), "the error was reported twice");
    ensure!(writer.sync_all().is_ok(), "the error was reported twice");
    let late = std::fs::File::open(&path)?;
    ensure!(
        late.sync_all().is_ok(),
        "a later descriptor heard of an old error"
    );
    Ok(())
}

/// One SQLite writer: `n` small transactions, each committed (journal, fsync, locks), with
/// a busy timeout of 20 s: a lock held or answered far too late fails it. Prints seconds.
const SQLITE_WRITER: &str = r#"
import sqlite3, sys, time
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = sqlite3.connect(path, timeout=20)
t = time.time()
for i in range(n):
    with db:
        db.execute("insert into t values (?, ?, ?)", (who, i, "x" * 200))
print("%.2f" % (time.time() - t))
"#;

/// Runs SQLite writers at once, `(database, name)` each; returns their times in seconds.
async fn sqlite_writers(writers: &[(PathBuf, &str)], n: usize) -> Result<Vec<f64>> {
    let runs = writers.iter().map(|(db, who)| {
        let (db, who) = (db.clone(), who.to_string());
        tokio::task::spawn_blocking(move || -> Result<f64> {
            let out = std::process::Command::new("python3")
                .args(["-c", SQLITE_WRITER])
                .arg(&db)
                .arg(&who)
                .arg(n.to_string())
                .output()?;
            ensure!(
                out.status.success(),
                "writer {who} on {}: {}",
                db.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
        })
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r?)
        .collect()
}

/// `pragma integrity_check` and the rows each writer added.
fn sqlite_check(db: &Path) -> Result<String> {
    sh(&format!(
        "python3 -c \"import sqlite3; d = sqlite3.connect('{}'); print(d.execute('pragma integrity_check').fetchone()[0], d.execute('select who, count(*) from t group by who order by who').fetchall())\"",
        db.display()
    ))
}

/// Two SQLite processes write one database, on one mount and then from two mounts: every
/// transaction lands, the database stays intact, and no lock is held or answered so late
/// that a 20 s busy timeout runs out (two writers once took about 12 s per transaction,
/// then hung on a lock whose cache invalidation waited for a read it was blocking).
/// `LATTICE_SQLITE_TXNS` sets the transactions per writer (default 50).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_writers_share_a_database() -> Result<()> {
    let n: usize = size_from_env("LATTICE_SQLITE_TXNS", 50);
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    let create = |db: &Path| {
        sh(&format!(
            "python3 -c \"import sqlite3; sqlite3.connect('{}').execute('create table t (who text, n integer, pad text)')\"",
            db.display()
        ))
    };
    create(&mnt.join("solo.db"))?;
    let solo = sqlite_writers(&[(mnt.join("solo.db"), "solo")], n).await?;
    create(&mnt.join("one.db"))?;
    let one_mount =
        sqlite_writers(&[(mnt.join("one.db"), "a"), (mnt.join("one.db"), "b")], n).await?;
    create(&mnt.join("two.db"))?;
    let two_mounts =
        sqlite_writers(&[(mnt.join("two.db"), "a"), (other.join("two.db"), "b")], n).await?;
    let want = format!("ok [('a', {n}), ('b', {n})]");
    for db in [mnt.join("one.db"), other.join("two.db"), mnt.join("two.db")] {
        let got = sqlite_check(&db)?;
        ensure!(got.trim() == want, "{}: {got}", db.display());
    }
    eprintln!(
        "sqlite, {n} transactions per writer: one writer {:.1} s; two on one mount {:.1} s; two on two mounts {:.1} s",
        solo[0],
        one_mount.iter().cloned().fold(0.0, f64::max),
        two_mounts.iter().cloned().fold(0.0, f64::max)
    );
    Ok(())
}

/// A request sent again after its client was silent longer than the session timeout (its
/// reply lost, say) gets the first reply: never EEXIST for its own create. The silence
/// cost it its locks: its next lock request fails (ENOLCK) until it says it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_a_long_silence_gets_its_first_reply() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--session-timeout", "2"])?;
    tc.start_metaservers(3).await?;
    let (meta, other) = (tc.meta_client("silent")?, tc.meta_client("other")?);
    let me = ClientId(0x5eed);
    // The reply to the create (seq 1) never arrived: nothing is acknowledged.
    let mutate = |seq: u64, op: FsOp| MetaRequest::Mutate {
        client: me,
        seq,
        acked_below: 1,
        op,
    };
    let fs = |r: MetaResponse| match r {
        MetaResponse::Fs(r) => Ok(r),
        other => bail!("{other:?}"),
    };
    let create = mutate(
        1,
        FsOp::Mknod {
            parent: InodeId::ROOT,
            name: b"mine".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: Caller { uid: 0, gid: 0 },
        },
    );
    let first = fs(meta.call(&create).await?)?;
    let Ok(FsReply::Made { attr, .. }) = &first else {
        bail!("create gave {first:?}");
    };
    let whole = |kind| LockRange {
        space: LockSpace::Record,
        kind,
        start: 0,
        end: u64::MAX,
        pid: 1,
    };
    let lock = |seq| {
        mutate(
            seq,
            FsOp::SetLock {
                ino: attr.ino,
                owner: 1,
                lock: whole(LockKind::Write),
            },
        )
    };
    ensure!(fs(meta.call(&lock(2)).await?)?.is_ok());
    // Silent now: once the session times out, another client gets the lock.
    wait_for(
        Duration::from_secs(30),
        "the silent client's lock to go",
        || async {
            let taken = other
                .mutate(FsOp::SetLock {
                    ino: attr.ino,
                    owner: 9,
                    lock: whole(LockKind::Write),
                })
                .await?;
            Ok(taken.is_ok().then_some(()))
        },
    )
    .await?;
    ensure!(
        fs(meta.call(&create).await?)? == first,
        "the retry got another reply"
    );
    ensure!(fs(meta.call(&lock(3)).await?)? == Err(Errno::NOLCK));
    meta.call(&MetaRequest::ResumeSession { client: me })
        .await?;
    ensure!(
        fs(meta.call(&lock(4)).await?)? == Err(Errno::AGAIN),
        "the other client's lock is in the way"
    );
    Ok(())
}

/// A mount stopped (SIGSTOP) longer than the session timeout loses its locks to another
/// mount; when it runs again, the process that held one is told: its next lock operation,
/// write and fsync on that file fail with EIO, and after closing it the file works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_cut_off_too_long_tells_its_lock_holders() -> Result<()> {
    const HOLDER: &str = r#"
import fcntl, os, sys
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
out = []
for what, op in [("relock", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
                 ("write", lambda: os.pwrite(fd, b"late", 0)),
                 ("fsync", lambda: os.fsync(fd))]:
    try:
        op()
        out.append(what + " ok")
    except OSError as e:
        out.append("%s %d" % (what, e.errno))
os.close(fd)
fd = os.open(path, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
os.pwrite(fd, b"again", 0)
os.fsync(fd)
out.append("reopened ok")
print(" ".join(out), flush=True)
"#;
    const TAKER: &str = r#"
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
deadline = time.time() + 60
while True:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("the lock never came free")
        time.sleep(0.2)
fcntl.lockf(fd, fcntl.LOCK_UN)
"#;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let tc = TestCluster::with_metaserver_args(&["--session-timeout", "3"])?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    let mut holder = Command::new("python3")
        .args(["-c", HOLDER])
        .arg(mnt.join("locked"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut said = BufReader::new(holder.stdout.take().context("stdout")?);
    let mut line = String::new();
    said.read_line(&mut line)?;
    ensure!(line.trim() == "locked", "holder said {line:?}");
    let mount = tc.cluster.mount_proc(1);
    ensure!(mount.signal(nix::sys::signal::Signal::SIGSTOP));
    let taken = tokio::task::spawn_blocking({
        let path = other.join("locked");
        move || sh(&format!("python3 -c '{TAKER}' {}", path.display()))
    })
    .await?;
    ensure!(mount.signal(nix::sys::signal::Signal::SIGCONT));
    taken?;
    let mut stdin = holder.stdin.take().context("stdin")?;
    stdin.write_all(b"go\n")?;
    line.clear();
    said.read_line(&mut line)?;
    ensure!(holder.wait()?.success(), "holder failed: {line}");
    let eio = Errno::IO.0;
    ensure!(
        line.trim() == format!("relock {eio} write {eio} fsync {eio} reopened ok"),
        "holder said {line:?}"
    );
    Ok(())
}

/// A mount told to stop (SIGTERM, what `cluster.sh down` sends) while a process has its
/// directory in it and another waits on a read that cannot be served (three of six
/// chunkservers gone): it detaches, fails the waiting read, and exits. Nobody hangs (a
/// mount that could not unmount once stayed, and its callers with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_mount_leaves_nobody_hanging() -> Result<()> {
    use std::process::{Command, Stdio};
    let tc = TestCluster::with_metaserver_args(&["--suspect-after", "1", "--down-after", "4"])?;
    let (admin, mnt) = tc.start_with_mount(6).await?;
    write_synced(mnt.join("data"), random_bytes(4 << 20, 1)).await?;
    let mut busy = lattice_tests::Group::spawn(Command::new("sleep").arg("600").current_dir(&mnt))?;
    for n in [4, 5, 6] {
        ensure!(tc.cluster.chunkserver(n).kill9());
    }
    wait_missing(&admin, &["chunkserver-4", "chunkserver-5", "chunkserver-6"]).await?;
    let reader = Command::new("cat")
        .arg(mnt.join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let wchan = format!("/proc/{}/wchan", reader.id());
    wait_for(
        Duration::from_secs(20),
        "the reader to wait on the mount",
        || async {
            let at = std::fs::read_to_string(&wchan).unwrap_or_default();
            let waits = ["request_wait_answer", "folio_wait", "fuse"];
            Ok(waits.iter().any(|w| at.contains(w)).then_some(()))
        },
    )
    .await?;
    let mount = tc.cluster.mount_proc(1);
    ensure!(mount.signal(nix::sys::signal::Signal::SIGTERM));
    let reader = std::sync::Mutex::new(reader);
    let stopped = wait_for(Duration::from_secs(40), "the mount to stop", || async {
        let read = reader.lock().expect("one test thread").try_wait()?;
        Ok(
            (mount.pid().is_none() && !lattice_harness::is_mounted(&mnt))
                .then_some(read)
                .flatten(),
        )
    })
    .await;
    let mut reader = reader.into_inner().expect("one test thread");
    busy.stop();
    let status = match stopped {
        Ok(status) => status,
        Err(e) => {
            let _ = reader.kill();
            let _ = reader.wait();
            return Err(e.context(mount.log_tail()));
        }
    };
    ensure!(!status.success(), "the read of lost data succeeded");
    Ok(())
}
