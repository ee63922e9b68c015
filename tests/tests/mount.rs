//! A real mount of a real local cluster, used with ordinary tools.

use anyhow::{ensure, Result};
use lattice_tests::{random_bytes, same_file, same_tree, sh, TestCluster};
use std::path::Path;
use std::time::{Duration, Instant};

const CHUNK: usize = 64 << 20;

/// A tree of mixed files: empty, tiny, around block and chunk boundaries, large, a
/// symlink, a nested directory, several modes.
fn mixed_tree(root: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("nested/deeper"))?;
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        (1 << 20) + 1,
        CHUNK - 1,
        CHUNK + 1,
        200 << 20,
    ];
    for (i, size) in sizes.iter().enumerate() {
        std::fs::write(
            root.join(format!("f{i}-{size}")),
            random_bytes(*size, i as u64),
        )?;
    }
    std::fs::write(root.join("nested/deeper/leaf"), b"leaf\n")?;
    std::fs::set_permissions(
        root.join("nested/deeper/leaf"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    std::fs::write(root.join("nested/tool.sh"), b"#!/bin/sh\necho hi\n")?;
    std::fs::set_permissions(
        root.join("nested/tool.sh"),
        std::fs::Permissions::from_mode(0o755),
    )?;
    std::os::unix::fs::symlink("nested/deeper/leaf", root.join("link"))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ordinary_tools_work_on_a_mount() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let local = tempfile::tempdir()?;
    let src = local.path().join("src");
    mixed_tree(&src)?;
    let m = mnt.display();

    // The mount is known by what was mounted: its metaservers (findmnt, mount, df).
    let addrs: Vec<String> = tc
        .cluster
        .meta_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let source = sh(&format!("findmnt -n -o SOURCE {m}"))?;
    ensure!(source.trim() == addrs.join(","), "findmnt shows {source:?}");

    // cp -a of mixed files, including sizes on both sides of a chunk boundary.
    sh(&format!("cp -a {} {m}/cp", src.display()))?;
    same_tree(&src, &mnt.join("cp"))?;
    // Read back through a cold cache too: a fresh mount of the same cluster.
    let cold = tc.state().join("cold");
    tc.cluster.start_mount(2, &cold, "").await?;
    same_tree(&src, &cold.join("cp"))?;

    // A directory longer than one listing page (512) lists whole, with each file's size
    // (attributes come with the listing) and `..`; a name another mount adds shows next time.
    let many = mnt.join("many");
    std::fs::create_dir(&many)?;
    for i in 0..1100 {
        std::fs::write(many.join(format!("e{i}")), vec![b'x'; i % 7])?;
    }
    let long = sh(&format!("ls -ln {}", many.display()))?;
    let mut sizes: Vec<(String, usize)> = long
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[f.len() - 1].to_string(),
                f[4].parse().unwrap_or(usize::MAX),
            )
        })
        .collect();
    sizes.sort();
    let mut expected: Vec<(String, usize)> = (0..1100).map(|i| (format!("e{i}"), i % 7)).collect();
    expected.sort();
    ensure!(
        sizes == expected,
        "ls -l of 1100 files: {} lines",
        sizes.len()
    );
    let dots = sh(&format!("ls -ai {} | head -2", many.display()))?;
    ensure!(
        dots.split_whitespace().collect::<Vec<_>>()
            == [
                sh(&format!("stat -c %i {}", many.display()))?.trim(),
                ".",
                "1",
                ".."
            ],
        "ls -ai shows {dots:?}"
    );
    std::fs::write(cold.join("many/late"), "z")?;
    ensure!(sh(&format!("ls {} | wc -l", many.display()))?.trim() == "1101");

    // rsync -a and tar c | tar x of a source tree.
    let code = Path::new(env!("CARGO_MANIFEST_DIR")).join("../common");
    sh(&format!("rsync -a {}/ {m}/rsync/", code.display()))?;
    same_tree(&code, &mnt.join("rsync"))?;
    sh(&format!(
        "mkdir {m}/tar && tar -C {} -cf - . | tar -C {m}/tar -xf -",
        code.display()
    ))?;
    same_tree(&code, &mnt.join("tar"))?;

    // git init/add/commit/log.
    let log = sh(&format!(
        "cd {m} && mkdir repo && cd repo && git init -q && cp -a {}/src . && git add . && \
         git -c user.name=t -c user.email=t@t commit -qm 'first commit' && \
         echo change >> src/lib.rs && git -c user.name=t -c user.email=t@t commit -qam second && \
         git log --oneline && git fsck --strict",
        code.display()
    ))?;
    ensure!(
        log.contains("first commit") && log.contains("second"),
        "git log: {log}"
    );

    // Hard links, symlinks, rename over an existing file.
    sh(&format!(
        "cd {m} && echo one > a && ln a b && ln -s a c && echo two > d && mv d a"
    ))?;
    ensure!(sh(&format!("cat {m}/a {m}/b {m}/c"))? == "two\none\ntwo\n");
    ensure!(sh(&format!("stat -c %h {m}/b"))?.trim() == "1");

    // Truncate down and up: the cut bytes come back as zeros.
    let big = mnt.join("cp").join(format!("f9-{}", 200 << 20));
    sh(&format!(
        "truncate -s 1000 {0} && truncate -s 5000 {0}",
        big.display()
    ))?;
    let bytes = std::fs::read(&big)?;
    ensure!(
        bytes.len() == 5000
            && bytes[..1000] == random_bytes(200 << 20, 9)[..1000]
            && bytes[1000..].iter().all(|&b| b == 0)
    );

    // Sparse writes with dd seek=: the hole reads as zeros.
    sh(&format!(
        "dd if=/dev/urandom of={m}/sparse bs=4096 count=2 seek=70000 2>/dev/null"
    ))?;
    let sparse = std::fs::read(mnt.join("sparse"))?;
    ensure!(sparse.len() == 70002 * 4096 && sparse[..70000 * 4096].iter().all(|&b| b == 0));
    ensure!(sparse[70000 * 4096..].iter().any(|&b| b != 0));

    // A file whose name a rename replaced stays usable through its open descriptor until
    // closed: fstat says nlink 0, reads see its bytes, writes and fsync work.
    std::fs::write(mnt.join("new"), "hello\n")?;
    std::fs::write(mnt.join("old"), "world\n")?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("old"))?;
    std::fs::rename(mnt.join("new"), mnt.join("old"))?;
    std::thread::sleep(Duration::from_millis(1500)); // past the attribute cache (1 s)
    use std::os::unix::fs::{FileExt, MetadataExt};
    let meta = f.metadata()?;
    ensure!(meta.nlink() == 0 && meta.len() == 6, "fstat: {meta:?}");
    let mut buf = [0u8; 6];
    f.read_exact_at(&mut buf, 0)?;
    ensure!(&buf == b"world\n");
    f.write_all_at(b"again\n", 6)?;
    f.sync_all()?;
    ensure!(f.metadata()?.len() == 12);
    drop(f);
    ensure!(std::fs::read(mnt.join("old"))? == b"hello\n");

    // Concurrent writers to distinct files.
    let writers: Vec<_> = (0..8u64)
        .map(|i| {
            let path = mnt.join(format!("w{i}"));
            std::thread::spawn(move || {
                std::fs::write(path, random_bytes((3 << 20) + i as usize, 100 + i))
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread")?;
    }
    for i in 0..8u64 {
        let local_copy = local.path().join(format!("w{i}"));
        std::fs::write(&local_copy, random_bytes((3 << 20) + i as usize, 100 + i))?;
        same_file(&local_copy, &mnt.join(format!("w{i}")))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn locks_are_cluster_wide_and_die_with_their_client() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--session-timeout", "3"])?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let mnt2 = tc.state().join("mnt2");
    tc.cluster.start_mount(2, &mnt2, "").await?;
    let (a, b) = (mnt.display(), mnt2.display());
    std::fs::write(mnt.join("lockfile"), b"x")?;

    // flock through mount 1 blocks the same lock through mount 2 until released.
    let holder = std::process::Command::new("flock")
        .args([
            "-x",
            &format!("{a}/lockfile"),
            "-c",
            &format!("touch {a}/held; sleep 2"),
        ])
        .spawn()?;
    lattice_harness::process::wait_until(Duration::from_secs(10), "the first lock", || {
        Ok(mnt.join("held").exists())
    })?;
    ensure!(
        sh(&format!("flock -n -x {b}/lockfile true")).is_err(),
        "mount 2 took a lock mount 1 holds"
    );
    let start = Instant::now();
    sh(&format!("flock -x -w 20 {b}/lockfile true"))?;
    ensure!(
        start.elapsed() > Duration::from_millis(500),
        "mount 2 did not wait for the lock"
    );
    let mut holder = holder;
    holder.wait()?;

    // fcntl byte-range locks, and SQLite from both mounts at once.
    sh(&format!(
        "python3 -c 'import fcntl,os,subprocess,sys
fd=os.open(\"{a}/lockfile\",os.O_RDWR); fcntl.lockf(fd,fcntl.LOCK_EX,10,0)
other=\"import fcntl,os\\nfd=os.open(\\\"{b}/lockfile\\\",os.O_RDWR)\\ntry:\\n fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,10,0); print(\\\"taken\\\")\\nexcept OSError: print(\\\"refused\\\")\\nfcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB,10,20)\"
out=subprocess.run([sys.executable,\"-c\",other],capture_output=True,text=True,check=True).stdout
assert out.strip()==\"refused\", out'"
    ))?;
    sh(&format!("python3 -c 'import sqlite3; c=sqlite3.connect(\"{a}/db\"); c.execute(\"create table t(x)\"); c.commit()'"))?;
    let insert = |dir: String, tag: u32| {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import sqlite3\nc=sqlite3.connect('{dir}/db', timeout=60)\nfor i in range(150):\n  c.execute('insert into t values (?)', ({tag},))\n  c.commit()\n"
            ))
            .spawn()
    };
    let (mut p1, mut p2) = (insert(a.to_string(), 1)?, insert(b.to_string(), 2)?);
    ensure!(
        p1.wait()?.success() && p2.wait()?.success(),
        "a SQLite writer failed"
    );
    let check = sh(&format!(
        "python3 -c 'import sqlite3; c=sqlite3.connect(\"{b}/db\"); print(c.execute(\"pragma integrity_check\").fetchone()[0], c.execute(\"select count(*) from t\").fetchone()[0])'"
    ))?;
    ensure!(check.trim() == "ok 300", "after two writers: {check}");

    // A client that dies holding a lock loses it once its session times out.
    let mut stuck = lattice_tests::Group::spawn(
        std::process::Command::new("flock")
            .args([
                "-x",
                &format!("{b}/lockfile"),
                "-c",
                &format!("touch {b}/held2; exec sleep 600"),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )?;
    lattice_harness::process::wait_until(Duration::from_secs(10), "the lock in mount 2", || {
        Ok(mnt.join("held2").exists())
    })?;
    ensure!(sh(&format!("flock -n -x {a}/lockfile true")).is_err());
    assert!(tc.cluster.mount_proc(2).kill9());
    let acquired = sh(&format!("flock -x -w 30 {a}/lockfile true"));
    stuck.stop();
    acquired?;
    Ok(())
}

/// A sparse file stores only its data: `du`, `stat`'s blocks, `SEEK_DATA` / `SEEK_HOLE`,
/// and the tools that use them (`cp --sparse`, `tar -S`, `rsync -S`) see the holes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sparse_files_store_and_show_only_their_data() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let m = mnt.display();
    sh(&format!(
        "truncate -s 1G {m}/sparse && dd if=/dev/urandom of={m}/sparse bs=4k count=1 seek=1000 conv=notrunc status=none"
    ))?;
    let stat = sh(&format!("stat -c '%s %b' {m}/sparse"))?;
    ensure!(stat.trim() == "1073741824 8", "size and blocks: {stat}");
    let du = |name: &str| -> Result<u64> {
        let out = sh(&format!("du -k {m}/{name}"))?;
        Ok(out.split_whitespace().next().unwrap_or("").parse()?)
    };
    ensure!(
        du("sparse")? < 1024,
        "du of the sparse file: {} KiB",
        du("sparse")?
    );
    let seeks = sh(&format!(
        "python3 -c 'import os
fd = os.open(\"{m}/sparse\", os.O_RDONLY)
print(os.lseek(fd, 0, os.SEEK_DATA), os.lseek(fd, 0, os.SEEK_HOLE), os.lseek(fd, 4096000, os.SEEK_HOLE))
try:
    os.lseek(fd, 4100096, os.SEEK_DATA)
except OSError as e:
    print(e.errno)'"
    ))?;
    ensure!(
        seeks.split_whitespace().collect::<Vec<_>>() == ["4096000", "0", "4100096", "6"],
        "SEEK_DATA / SEEK_HOLE: {seeks}"
    );
    sh(&format!(
        "cp --sparse=always {m}/sparse {m}/always && cp {m}/sparse {m}/auto && rsync -S {m}/sparse {m}/rsynced && tar -C {m} -cSf {m}/sparse.tar sparse"
    ))?;
    for copy in ["always", "auto", "rsynced"] {
        same_file(&mnt.join("sparse"), &mnt.join(copy))?;
        ensure!(du(copy)? < 1024, "{copy}: {} KiB", du(copy)?);
    }
    let tar_len = std::fs::metadata(mnt.join("sparse.tar"))?.len();
    ensure!(tar_len < 1 << 20, "tar -S made {tar_len} bytes");
    // Truncating below the data gives its blocks back; writing fills them again.
    sh(&format!("truncate -s 1M {m}/sparse"))?;
    ensure!(sh(&format!("stat -c %b {m}/sparse"))?.trim() == "0");
    sh(&format!(
        "dd if=/dev/zero of={m}/sparse bs=64k count=2 conv=notrunc status=none"
    ))?;
    ensure!(sh(&format!("stat -c %b {m}/sparse"))?.trim() == "256");

    // Punching a hole and zeroing a range: the bytes read as those ranges zeroed (the size
    // growing with the zeroed range), and the punched blocks are given back. (Against a
    // model, not a local file: tmpfs, where tests keep their files, cannot zero a range.)
    let mut want = random_bytes(8 << 20, 5);
    std::fs::write(mnt.join("holes"), &want)?;
    sh(&format!(
        "fallocate -p -o 1M -l 3M {m}/holes && fallocate -z -o 6M -l 4M {m}/holes"
    ))?;
    want[1 << 20..4 << 20].fill(0);
    want.resize(10 << 20, 0);
    want[6 << 20..].fill(0);
    ensure!(
        std::fs::read(mnt.join("holes"))? == want,
        "a punched or zeroed range does not read as zeros"
    );
    let blocks = sh(&format!("stat -c %b {m}/holes"))?;
    ensure!(
        blocks.trim() == "6144",
        "blocks after punching 3 MiB and zeroing 2 MiB of 8: {blocks}"
    );
    Ok(())
}

/// An OFD lock helper: `hold FILE` takes a whole-file write lock, says "held", and on a
/// line from stdin closes the file (which must drop the lock) and prints the time;
/// `wait FILE` waits for the same lock in F_OFD_SETLKW and prints the time it got it;
/// `alarm FILE` waits for it with a 1 s alarm whose handler raises.
const OFD_HELPER: &str = r#"
import fcntl, os, signal, struct, sys, time
lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0)
what, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
if what == "hold":
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, lock)
    print("held", flush=True)
    sys.stdin.readline()
    t = time.time()
    os.close(fd)
    print(t, flush=True)
elif what == "wait":
    signal.alarm(30)  # a lock never released ends the test, not CI
    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, lock)
    print(time.time(), flush=True)
else:
    def ring(*_):
        raise TimeoutError
    signal.signal(signal.SIGALRM, ring)
    signal.alarm(1)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, lock)
        print("taken")
    except TimeoutError:
        print("interrupted")
"#;

/// Lock kinds as Linux keeps them, across two mounts: a `flock` and `fcntl` record locks
/// (OFD and POSIX) on one file never meet; an OFD lock goes when its file is closed; a
/// waiting OFD lock is granted at once when freed; waits end on a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_kinds_stay_apart_and_waits_end_when_freed_or_signalled() -> Result<()> {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let mnt2 = tc.state().join("mnt2");
    tc.cluster.start_mount(2, &mnt2, "").await?;
    let (a, b) = (mnt.display(), mnt2.display());
    std::fs::write(mnt.join("f"), b"x")?;
    let helper = tc.state().join("ofd.py");
    std::fs::write(&helper, OFD_HELPER)?;
    let ofd = |what: &str, path: String| {
        Command::new("python3")
            .arg(&helper)
            .args([what, &path])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
    };

    // A flock on mount 1; record locks through mount 2 and mount 1 are not in its way.
    let mut flock = lattice_tests::Group::spawn(Command::new("flock").args([
        "-x",
        &format!("{a}/f"),
        "-c",
        &format!("touch {a}/held; exec sleep 600"),
    ]))?;
    lattice_harness::process::wait_until(Duration::from_secs(10), "the flock", || {
        Ok(mnt.join("held").exists())
    })?;
    let out = sh(&format!(
        "python3 -c 'import fcntl,os,struct
fd=os.open(\"{b}/f\",os.O_RDWR); fcntl.fcntl(fd,fcntl.F_OFD_SETLK,struct.pack(\"hhqqi4x\",fcntl.F_WRLCK,0,0,0,0))
print(\"ofd taken\")'"
    ))?;
    ensure!(out.trim() == "ofd taken", "{out}");
    sh(&format!(
        "python3 -c 'import fcntl,os; fd=os.open(\"{a}/f\",os.O_RDWR); fcntl.lockf(fd,fcntl.LOCK_EX|fcntl.LOCK_NB)'"
    ))?;
    // /proc/locks cannot show locks a FUSE filesystem keeps; lattice.locks shows them, from
    // any mount.
    let locks = sh(&format!("getfattr --only-values -n lattice.locks {b}/f"))?;
    ensure!(
        locks
            .lines()
            .any(|l| l.contains("FLOCK WRITE") && l.ends_with(" 0 EOF")),
        "lattice.locks: {locks}"
    );
    // The flock itself still holds against other flocks, and a wait for it ends on the
    // alarm of `flock -w` (SIGALRM interrupts the waiting request).
    ensure!(
        sh(&format!("flock -n -x {b}/f true")).is_err(),
        "a second flock was granted"
    );
    let started = Instant::now();
    ensure!(
        sh(&format!("flock -x -w 1 {b}/f true")).is_err(),
        "a second flock was granted"
    );
    println!("flock -w 1 gave up after {:?}", started.elapsed());
    flock.stop();

    // An OFD lock on mount 1; a waiter on mount 2 gets it as soon as the holder closes.
    let mut holder = ofd("hold", format!("{a}/f"))?;
    let mut held = std::io::BufReader::new(holder.stdout.take().expect("piped"));
    let mut line = String::new();
    held.read_line(&mut line)?;
    ensure!(line.trim() == "held", "holder said {line:?}");
    let interrupted = sh(&format!("python3 {} alarm {b}/f", helper.display()))?;
    ensure!(
        interrupted.trim() == "interrupted",
        "waiter with an alarm: {interrupted}"
    );
    let waiter = ofd("wait", format!("{b}/f"))?;
    let wchan = format!("/proc/{}/wchan", waiter.id());
    lattice_harness::process::wait_until(Duration::from_secs(10), "the waiter to block", || {
        Ok(std::fs::read_to_string(&wchan)?.contains("request_wait_answer"))
    })?;
    writeln!(holder.stdin.take().expect("piped"), "release")?;
    line.clear();
    held.read_line(&mut line)?;
    let released: f64 = line.trim().parse()?;
    let got = waiter.wait_with_output()?;
    let granted: f64 = String::from_utf8_lossy(&got.stdout).trim().parse()?;
    holder.wait()?;
    println!(
        "OFD lock granted on mount 2 {:.3} s after mount 1 closed its file",
        granted - released
    );
    ensure!(
        granted - released < 1.0,
        "the waiter got the lock {:.3} s after its release",
        granted - released
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_keeps_reading_while_two_chunkservers_die() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let data = random_bytes(96 << 20, 77);
    std::fs::write(mnt.join("data"), &data)?;
    let path = mnt.join("data");
    let reader = std::thread::spawn(move || -> Result<u32> {
        use std::io::{Read, Seek};
        let mut passes = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline || passes < 3 {
            let mut f = std::fs::File::open(&path)?;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0usize;
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ensure!(
                    buf[..n] == data[at..at + n],
                    "pass {passes}: bytes differ at {at}"
                );
                at += n;
            }
            ensure!(at == data.len(), "pass {passes}: read {at} bytes");
            f.seek(std::io::SeekFrom::Start(0))?;
            passes += 1;
        }
        Ok(passes)
    });
    std::thread::sleep(Duration::from_secs(2));
    for n in [2, 5] {
        assert!(
            tc.cluster.chunkserver(n).kill9(),
            "chunkserver {n} was not running"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let passes = reader.join().expect("reader thread")?;
    ensure!(passes >= 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounting_an_unreachable_cluster_fails_clearly() -> Result<()> {
    let tc = TestCluster::new()?;
    let certs = tc
        .cluster
        .certs(lattice_common::pki::Role::Client, "lonely")?;
    let mnt = tc.state().join("nowhere");
    std::fs::create_dir_all(&mnt)?;
    let out = std::process::Command::new(tc.cluster.binary("fs-client")?)
        .arg("127.0.0.1:9")
        .arg(&mnt)
        .arg("-o")
        .arg(format!("certs={}", certs.display()))
        .output()?;
    ensure!(!out.status.success(), "mounted an unreachable cluster");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        err.contains("cannot reach any metaserver at 127.0.0.1:9"),
        "unclear error: {err}"
    );
    ensure!(!lattice_harness::is_mounted(&mnt));
    Ok(())
}

/// A small file's bytes are held inline by the metaservers (no slice, no chunkserver):
/// another mount reads them; growing past the inline limit moves them to a slice without
/// losing a byte; cut to nothing and rewritten, the file is inline again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_files_are_held_inline_until_they_grow() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(6).await?;
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    let layout = |p: &Path| {
        sh(&format!(
            "getfattr --only-values -n lattice.layout '{}'",
            p.display()
        ))
    };
    let f = mnt.join("small");
    let mut data = random_bytes(5000, 3);
    std::fs::write(&f, &data)?;
    let shown = layout(&f)?;
    ensure!(
        shown.contains("5000 bytes inline"),
        "layout of a small file: {shown}"
    );
    ensure!(
        std::fs::read(other.join("small"))? == data,
        "the other mount's read"
    );
    // Appends: still inline up to 16 KiB, then a slice holds the first bytes too.
    for seed in 0..4 {
        let more = random_bytes(4000, 10 + seed);
        let mut file = std::fs::OpenOptions::new().append(true).open(&f)?;
        std::io::Write::write_all(&mut file, &more)?;
        file.sync_all()?;
        data.extend(more);
    }
    let shown = layout(&f)?;
    ensure!(
        shown.contains("21000 in ") && !shown.contains("inline"),
        "layout once grown: {shown}"
    );
    ensure!(
        std::fs::read(other.join("small"))? == data,
        "the grown file"
    );
    ensure!(std::fs::read(&f)? == data, "the grown file, where written");
    // Truncated to nothing, it may be inline again.
    std::fs::write(&f, b"again")?;
    ensure!(layout(&f)?.contains("5 bytes inline"), "{}", layout(&f)?);
    ensure!(std::fs::read(other.join("small"))? == b"again", "rewritten");
    Ok(())
}

/// Three metaservers, three chunkservers and mount 1 at `mnt` in the state directory, its
/// metrics served at the address returned; `opts` go after `metrics=` (`,name=value...`).
async fn mount_with_metrics(
    tc: &TestCluster,
    opts: &str,
) -> Result<(std::path::PathBuf, std::net::SocketAddr)> {
    let admin = tc.start_metaservers(3).await?;
    for n in 1..=3 {
        tc.cluster.start_chunkserver(n).await?;
    }
    admin.wait_chunkservers_up(3).await?;
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mnt = tc.state().join("mnt");
    tc.cluster
        .start_mount(1, &mnt, &format!("metrics={metrics}{opts}"))
        .await?;
    Ok((mnt, metrics))
}

/// As [`mount_with_metrics`], and mount 2 (no metrics) at `other` in the state directory.
async fn two_mounts_with_metrics(
    tc: &TestCluster,
    opts: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf, std::net::SocketAddr)> {
    let (mnt, metrics) = mount_with_metrics(tc, opts).await?;
    let other = tc.state().join("other");
    tc.cluster.start_mount(2, &other, "").await?;
    Ok((mnt, other, metrics))
}

/// Runs `cmd` with `sh` as uid and gid 1000, no supplementary groups.
fn as_user_1000(cmd: &str) -> Result<String> {
    let quoted = cmd.replace('\'', r"'\''");
    sh(&format!(
        "setpriv --reuid=1000 --regid=1000 --clear-groups sh -c '{quoted}'"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acls_decide_for_other_users_and_absent_ones_cost_no_round_trip() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tc = TestCluster::new()?;
    // uid 1000 must reach the mount point.
    std::fs::set_permissions(tc.state(), std::fs::Permissions::from_mode(0o755))?;
    let (mnt, metrics) = mount_with_metrics(&tc, "").await?;
    let m = mnt.display();

    // A root-owned 0600 file: an ACL entry lets uid 1000 read it, and removing the entry
    // takes that back at once.
    sh(&format!("echo secret > {m}/f && chmod 600 {m}/f"))?;
    let read = || as_user_1000(&format!("cat {m}/f"));
    ensure!(read().is_err(), "uid 1000 read a 0600 root file");
    sh(&format!("setfacl -m u:1000:r {m}/f"))?;
    ensure!(read()? == "secret\n");
    sh(&format!("setfacl -x u:1000 {m}/f"))?;
    ensure!(
        read().is_err(),
        "uid 1000 still reads after its ACL entry went"
    );

    // A directory's default ACL is inherited by what uid 1000 creates in it.
    sh(&format!(
        "mkdir {m}/shared && chmod 700 {m}/shared && setfacl -m u:1000:rwx {m}/shared && \
         setfacl -d -m u:1000:rwx,u:2000:r {m}/shared"
    ))?;
    as_user_1000(&format!("echo mine > {m}/shared/new"))?;
    let acl = sh(&format!("getfacl -c {m}/shared/new"))?;
    ensure!(acl.contains("user:2000:r--"), "inherited ACL: {acl}");

    // Files without ACLs: the kernel reads each one's ACL before letting uid 1000 at it,
    // and the mount answers from the attributes the lookup brought.
    sh(&format!(
        "mkdir {m}/many && for i in $(seq 100); do echo $i > {m}/many/$i; done"
    ))?;
    let answered = "lattice_client_acl_reads_answered_total";
    let before = lattice_tests::counter(Some(metrics), answered)?;
    as_user_1000(&format!("cat {m}/many/* > /dev/null"))?;
    let after = lattice_tests::counter(Some(metrics), answered)?;
    ensure!(
        after - before >= 100,
        "{} ACL reads answered for 100 files",
        after - before
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lookups_in_a_big_directory_are_fetched_ahead_and_changes_still_show() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tc = TestCluster::new()?;
    // A long attribute timeout: what is fetched ahead stays usable through the whole test,
    // so a name this mount changed could only be right if it was forgotten.
    let (mnt, other, metrics) = two_mounts_with_metrics(&tc, ",attr_timeout=60").await?;
    let dir = mnt.join("d");
    // Written by the other mount: this one has looked nothing up yet.
    std::fs::create_dir(other.join("d"))?;
    for i in 0..600 {
        std::fs::write(other.join(format!("d/f{i}")), format!("{i}"))?;
    }
    let f = |i: u32| dir.join(format!("f{i}"));
    let hits = || lattice_tests::counter(Some(metrics), "lattice_client_statahead_hits_total");
    let fetches =
        || lattice_tests::counter(Some(metrics), "lattice_client_statahead_fetches_total");

    // Names this mount will change while their entries sit fetched ahead: the kernel knows
    // them, so changing them needs no lookup that would use the entries up.
    let (f40, f41) = (std::fs::metadata(f(40))?, std::fs::metadata(f(41))?);
    let f50 = std::fs::metadata(f(50))?;
    std::fs::metadata(f(30))?;
    for i in 0..8 {
        std::fs::metadata(f(i))?;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fetches()? == 0 {
        ensure!(
            Instant::now() < deadline,
            "no window fetched after 11 lookups"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_file(f(30))?;
    std::fs::rename(f(40), f(41))?;
    let mut w = std::fs::OpenOptions::new().write(true).open(f(50))?;
    std::io::Write::write_all(&mut w, b"written here")?;
    drop(w);
    sh("echo 3 > /proc/sys/vm/drop_caches")?;
    let now50 = std::fs::metadata(f(50))?;
    ensure!(
        now50.len() == 12 && now50.modified()? != f50.modified()?,
        "a file written here shows its old times from the window"
    );
    ensure!(
        !f(30).exists(),
        "an unlinked name came back from the window"
    );
    ensure!(!f(40).exists(), "a renamed name came back from the window");
    let now41 = std::fs::metadata(f(41))?;
    ensure!(
        now41.ino() == f40.ino() && now41.ino() != f41.ino(),
        "the name a rename replaced shows its old inode"
    );

    // A name the other mount creates shows at once: missing names are always asked for.
    std::fs::write(other.join("d/new"), "new")?;
    ensure!(std::fs::read(dir.join("new"))? == b"new");

    // Stat of every name after the kernel forgot them: nearly all come from windows, and
    // every one is right.
    sh("echo 3 > /proc/sys/vm/drop_caches")?;
    let before = hits()?;
    for i in (0..600).filter(|i| ![30, 40].contains(i)) {
        let m = std::fs::metadata(f(i))?;
        let want = match i {
            41 => 2,
            50 => 12,
            _ => format!("{i}").len() as u64,
        };
        ensure!(m.len() == want, "f{i}: size {} instead of {want}", m.len());
    }
    let answered = hits()? - before;
    ensure!(
        answered >= 500,
        "{answered} of 598 lookups answered from windows"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_drops_file_capabilities_and_checking_for_none_costs_no_round_trip() -> Result<()> {
    use std::os::unix::fs::FileExt;
    let tc = TestCluster::new()?;
    let (mnt, metrics) = mount_with_metrics(&tc, "").await?;
    let m = mnt.display();
    // The kernel reads security.capability before every write to a file: with none set,
    // the mount answers from the attributes it holds.
    let answered = "lattice_client_acl_reads_answered_total";
    let f = std::fs::File::create(mnt.join("f"))?;
    let before = lattice_tests::counter(Some(metrics), answered)?;
    for i in 0..100 {
        f.write_all_at(b"data", i * 4)?;
    }
    let after = lattice_tests::counter(Some(metrics), answered)?;
    ensure!(
        after - before >= 100,
        "{} capability reads answered for 100 writes",
        after - before
    );
    drop(f);
    // One that is set is reported, so a write drops it, as on any filesystem.
    sh(&format!("echo x > {m}/g && setcap cap_net_raw+ep {m}/g"))?;
    ensure!(sh(&format!("getcap {m}/g"))?.contains("cap_net_raw"));
    sh(&format!("echo y >> {m}/g"))?;
    let left = sh(&format!("getcap {m}/g"))?;
    ensure!(
        left.trim().is_empty(),
        "capabilities left after a write: {left}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unlinks_are_answered_at_once_sent_in_batches_and_land_in_order() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tc = TestCluster::new()?;
    // A long attribute timeout: the kernel keeps the entries it was given for the whole test
    // (the end needs an entry older than another mount's change of it).
    let (mnt, other, metrics) = two_mounts_with_metrics(&tc, ",attr_timeout=60").await?;
    let counter = |name: &str| lattice_tests::counter(Some(metrics), name);
    let dir = mnt.join("d");
    std::fs::create_dir(&dir)?;
    for i in 0..300 {
        std::fs::write(dir.join(format!("f{i}")), format!("{i}"))?;
    }
    // Hard links: the survivor's link count is right the moment its twin is gone.
    std::fs::write(mnt.join("a"), "a")?;
    std::fs::hard_link(mnt.join("a"), mnt.join("b"))?;
    std::fs::remove_file(mnt.join("a"))?;
    ensure!(std::fs::metadata(mnt.join("b"))?.nlink() == 1);
    ensure!(!mnt.join("a").exists(), "an unlinked name is still there");

    let (answered0, batches0) = (
        counter("lattice_client_unlinks_answered_total")?,
        counter("lattice_client_unlink_batches_total")?,
    );
    for i in 0..300 {
        std::fs::remove_file(dir.join(format!("f{i}")))?;
    }
    // What this mount shows is exact at once: no names, a directory that can go, a name
    // that can be made again.
    ensure!(std::fs::read_dir(&dir)?.next().is_none(), "names left");
    std::fs::write(dir.join("f7"), "again")?;
    ensure!(std::fs::read(dir.join("f7"))? == b"again");
    std::fs::remove_file(dir.join("f7"))?;
    std::fs::remove_dir(&dir)?;
    let answered = counter("lattice_client_unlinks_answered_total")? - answered0;
    let batches = counter("lattice_client_unlink_batches_total")? - batches0;
    ensure!(
        answered == 301,
        "{answered} of 301 unlinks answered at once"
    );
    ensure!(
        batches < answered,
        "{batches} batches for {answered} unlinks: none shared a Raft round"
    );

    // Once a directory fsync returns, another mount sees the names gone.
    std::fs::create_dir(mnt.join("e"))?;
    for i in 0..20 {
        std::fs::write(mnt.join(format!("e/g{i}")), "x")?;
    }
    for i in 0..20 {
        std::fs::remove_file(mnt.join(format!("e/g{i}")))?;
    }
    std::fs::File::open(mnt.join("e"))?.sync_all()?;
    let seen: Vec<_> = std::fs::read_dir(other.join("e"))?.collect();
    ensure!(seen.is_empty(), "the other mount still lists {seen:?}");

    // A file the other mount put in place of one this mount knew stays: the unlink named
    // the file this mount knew.
    std::fs::write(mnt.join("e/x"), "old")?;
    std::fs::write(other.join("e/x.new"), "new")?;
    std::fs::rename(other.join("e/x.new"), other.join("e/x"))?;
    std::fs::remove_file(mnt.join("e/x"))?;
    std::fs::File::open(mnt.join("e"))?.sync_all()?;
    ensure!(std::fs::read(other.join("e/x"))? == b"new");
    ensure!(std::fs::read(mnt.join("e/x"))? == b"new");

    // rm -rf lists each directory before removing it: directories emptied here go as
    // unlinks do, and the parent's link count and listing are exact at once.
    sh(&format!(
        "mkdir -p {t}/a/b {t}/c && for d in a a/b c; do for i in 1 2 3; do \
         echo $i > {t}/$d/f$i; mkdir {t}/$d/s$i; done; done",
        t = mnt.join("t").display()
    ))?;
    let answered0 = counter("lattice_client_unlinks_answered_total")?;
    sh(&format!("rm -rf {}", mnt.join("t/a").display()))?;
    ensure!(
        std::fs::metadata(mnt.join("t"))?.nlink() == 3,
        "t still counts a"
    );
    let left: Vec<_> = std::fs::read_dir(mnt.join("t"))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(left == ["c"], "t holds {left:?}");
    let answered = counter("lattice_client_unlinks_answered_total")? - answered0;
    // 6 files, 6 subdirectories, b and a.
    ensure!(answered == 14, "{answered} of 14 removals answered at once");

    // A directory another mount filled after this one listed it empty stays, and the
    // next fsync of a directory here says so.
    std::fs::create_dir(mnt.join("t/c/s1/x"))?;
    ensure!(std::fs::read_dir(mnt.join("t/c/s1/x"))?.next().is_none());
    std::fs::write(other.join("t/c/s1/x/late"), "late")?;
    std::fs::remove_dir(mnt.join("t/c/s1/x"))?;
    let synced = std::fs::File::open(mnt.join("t"))?.sync_all();
    ensure!(
        synced.as_ref().err().and_then(|e| e.raw_os_error()) == Some(libc::ENOTEMPTY),
        "fsync after a refused rmdir: {synced:?}"
    );
    ensure!(std::fs::read(mnt.join("t/c/s1/x/late"))? == b"late");
    std::fs::File::open(mnt.join("t"))?.sync_all()?;
    Ok(())
}

/// A file's size as another process sees it while one appends to it never goes below what
/// was already written: attributes asked for before a batch of writes was committed, and
/// answered after, must not hide it. (A size that goes back kills a process that has the
/// file mapped with SIGBUS; fsx found it.) Forced stats (`statx` with
/// `AT_STATX_FORCE_SYNC`) ask the mount every time; the writer commits often, with fsync
/// or by closing the file after each write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_growing_file_never_looks_shorter_than_what_was_written() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    for reopen in [false, true] {
        let path = mnt.join(format!("growing-{reopen}"));
        let (shorter, stats) =
            tokio::task::spawn_blocking(move || sizes_seen_while_appending(&path, reopen))
                .await??;
        ensure!(
            shorter.is_empty(),
            "reopen {reopen}: {} of {stats} stats showed less than written, e.g. (size, written) {:?}",
            shorter.len(),
            &shorter[..shorter.len().min(5)]
        );
    }
    Ok(())
}

/// Appends 2000 blocks of 4 KiB to `path` (fsync after every other one, or a close and
/// reopen after each) while this thread stats it; returns the (size, written) pairs that
/// showed less than was written, and how many stats were made.
fn sizes_seen_while_appending(path: &Path, reopen: bool) -> Result<(Vec<(u64, u64)>, u64)> {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const BLOCK: usize = 4096;
    let written = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> Result<()> {
            let result = (|| {
                let open = || {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                };
                let mut file = open()?;
                for i in 0..2000u64 {
                    file.write_all(&[b'x'; BLOCK])?;
                    if reopen {
                        drop(file);
                        file = open()?;
                    } else if i % 2 == 0 {
                        file.sync_data()?;
                    }
                    written.store((i + 1) * BLOCK as u64, Ordering::SeqCst);
                }
                Ok(())
            })();
            done.store(true, Ordering::SeqCst);
            result
        });
        let (mut shorter, mut stats) = (Vec::new(), 0u64);
        while !done.load(Ordering::SeqCst) {
            let before = written.load(Ordering::SeqCst);
            if let Ok((_, _, size, _, _)) = statx_forced(path) {
                stats += 1;
                if size < before {
                    shorter.push((size, before));
                }
            }
        }
        writer.join().expect("writer thread")?;
        Ok((shorter, stats))
    })
}

/// `cp -a`, `tar x` and `rsync -a` set a small file's times right after writing it: the
/// times ride with the commit of its bytes (one Raft round, not two) and land as set, seen
/// from another mount too (files too big to be held inline: `integrity::copies_keep_their_times`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn times_set_after_a_small_write_ride_with_its_commit() -> Result<()> {
    let tc = TestCluster::new()?;
    let (mnt, other, metrics) = two_mounts_with_metrics(&tc, "").await?;
    let local = tempfile::tempdir()?;
    let src = local.path().join("src");
    std::fs::create_dir(&src)?;
    for i in 0..20 {
        std::fs::write(
            src.join(format!("s{i}")),
            random_bytes(100 * i + 1, i as u64),
        )?;
    }
    sh(&format!(
        "touch -d '2001-02-03 04:05:06.123456789' {s}/* && touch -d '1999-12-31 23:59:59.5' {s}/s3",
        s = src.display()
    ))?;
    sh(&format!("cp -a {} {}/cp", src.display(), mnt.display()))?;
    for copy in [mnt.join("cp"), other.join("cp")] {
        same_tree(&src, &copy)?;
        lattice_tests::same_times(&src, &copy)?;
    }
    let rode = lattice_tests::counter(Some(metrics), "lattice_client_times_with_writes_total")?;
    ensure!(
        rode >= 20,
        "{rode} of 20 small files had their times ride with their bytes"
    );
    Ok(())
}

/// The kernel asks again for a directory's attributes after each entry made in it (to check
/// search permission on the next path through it). The mount answers from what the change's
/// own answer said: what another mount hears from the metaservers, mode, links, size and
/// times alike, after every kind of change made here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_changed_here_shows_what_the_metaservers_hold() -> Result<()> {
    let tc = TestCluster::new()?;
    let (mnt, other, metrics) = two_mounts_with_metrics(&tc, "").await?;
    let hits = || lattice_tests::counter(Some(metrics), "lattice_client_dir_attrs_kept_hits_total");
    let (here, there) = (mnt.join("d"), other.join("d"));
    std::fs::create_dir(&here)?;
    let steps = [
        ("create", "echo x > d/f"),
        ("mkdir", "mkdir d/s"),
        ("symlink", "ln -s f d/l"),
        ("link", "ln d/f d/h"),
        ("chmod", "chmod 700 d"),
        ("mknod", "mkfifo d/p"),
        ("rename", "mv d/s d/s2"),
        ("rmdir", "rmdir d/s2"),
        ("unlink", "rm d/h"),
    ];
    for (what, cmd) in steps {
        sh(&format!("cd '{}' && {cmd}", mnt.display()))?;
        // An unlink answered here reaches the metaservers a batch later.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (a, b) = (statx_forced(&here)?, statx_forced(&there)?);
            if a == b {
                break;
            }
            ensure!(
                what == "unlink" && Instant::now() < deadline,
                "after {what}: here {a:?}, on the other mount {b:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ensure!(
        hits()? >= 4,
        "directory attributes after a change were asked of the metaservers"
    );
    Ok(())
}

/// Mode, links, size, and modification and change times (seconds, nanoseconds).
type Stat = (u16, u32, u64, (i64, u32), (i64, u32));

/// What `statx` with `AT_STATX_FORCE_SYNC` (the mount is asked, whatever the kernel holds)
/// says of `path`.
fn statx_forced(path: &Path) -> Result<Stat> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a zeroed statx is a valid out-buffer; the path is NUL-terminated.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut sx,
        )
    };
    ensure!(
        rc == 0,
        "statx {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    let t = |t: libc::statx_timestamp| (t.tv_sec, t.tv_nsec);
    Ok((
        sx.stx_mode,
        sx.stx_nlink,
        sx.stx_size,
        t(sx.stx_mtime),
        t(sx.stx_ctime),
    ))
}

/// `mkdir -p` makes the kernel ask the mount again for every directory on every path it is
/// given (it looks each name up before making it, and such a lookup always asks): the
/// directories this mount made or looked up within the attribute timeout are answered
/// without a metaserver. Another mount's rmdir shows here once that timeout is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directories_known_here_are_answered_here_within_the_attribute_timeout() -> Result<()> {
    let tc = TestCluster::new()?;
    let (mnt, other, metrics) = two_mounts_with_metrics(&tc, "").await?;
    let hits = || lattice_tests::counter(Some(metrics), "lattice_client_known_dir_hits_total");
    let leaves: Vec<String> = (0..4)
        .flat_map(|i| (0..4).map(move |j| format!("t/{i}/{j}")))
        .collect();
    sh(&format!(
        "cd '{}' && mkdir -p {}",
        mnt.display(),
        leaves.join(" ")
    ))?;
    ensure!(
        hits()? > 0,
        "no lookup of a known directory was answered here"
    );
    for leaf in &leaves {
        ensure!(other.join(leaf).is_dir(), "{leaf} on the other mount");
    }
    std::fs::remove_dir(other.join("t/3/3"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while mnt.join("t/3/3").exists() {
        ensure!(
            Instant::now() < deadline,
            "a removed directory still shows after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sh(&format!("mkdir -p '{}'", mnt.join("t/3/3").display()))?;
    ensure!(other.join("t/3/3").is_dir(), "made again");
    Ok(())
}
