//! The metaserver group with real processes on loopback: failover under load, restarts
//! from disk, catch-up from snapshots, the cluster map, bad requests, reads at a paused
//! leader, and re-seeding a member whose log is damaged.

use anyhow::{bail, Context, Result};
use lattice_common::fs::{Caller, Errno, FileKind, RenameMode, SetAttr};
use lattice_common::ids::InodeId;
use lattice_common::meta_client::MetaClient;
use lattice_common::pki::Role;
use lattice_common::wire::meta::{
    AdminReply, AdminRequest, ChunkserverState, FsOp, FsQuery, FsReply, MetaRequest, MetaResponse,
};
use lattice_common::wire::ErrorKind;
use lattice_harness::process::{wait_for, Proc};
use lattice_harness::{METASERVER, START_TIMEOUT};
use lattice_tests::{sh, TestCluster};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROOT: InodeId = InodeId::ROOT;
const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn mkdir(name: &str) -> FsOp {
    FsOp::Mkdir {
        parent: ROOT,
        name: name.as_bytes().to_vec(),
        perm: 0o755,
        umask: 0,
        caller: ME,
    }
}

async fn lookup(meta: &MetaClient, parent: InodeId, name: &str) -> Result<Result<InodeId, Errno>> {
    Ok(meta
        .query(FsQuery::Lookup {
            parent,
            name: name.as_bytes().to_vec(),
        })
        .await?
        .map(|r| match r {
            FsReply::Attr(a) => a.ino,
            other => panic!("lookup gave {other:?}"),
        }))
}

async fn list(meta: &MetaClient, dir: InodeId) -> Result<Vec<(Vec<u8>, InodeId)>> {
    let mut out = Vec::new();
    let mut cookie = 0;
    loop {
        match meta
            .query(FsQuery::ReadDir {
                ino: dir,
                cookie,
                limit: 1000,
            })
            .await?
        {
            Ok(FsReply::Entries(e)) if e.is_empty() => return Ok(out),
            Ok(FsReply::Entries(e)) => {
                cookie = e.last().map_or(cookie, |x| x.cookie);
                out.extend(e.into_iter().map(|x| (x.name, x.ino)));
            }
            other => bail!("readdir gave {other:?}"),
        }
    }
}

/// The member the group currently follows.
async fn leader(tc: &TestCluster, admin: &lattice_harness::Admin) -> Result<u32> {
    let l = admin.status().await?.leader.0 as u32;
    assert!(
        tc.cluster.metaserver(l).pid().is_some(),
        "the leader {l} does not run"
    );
    Ok(l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_under_load_loses_nothing_acknowledged() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = Arc::new(tc.meta_client("loader")?);
    const WORKERS: usize = 4;
    const PER_WORKER: usize = 750;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (meta, acked, done) = (meta.clone(), acked.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..PER_WORKER {
                let name = format!("w{w}-{i}");
                match meta.mutate(mkdir(&name)).await {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().insert(name);
                    }
                    Ok(Err(e)) => panic!("mkdir {name}: {e}"),
                    // Not acknowledged: it may or may not exist; nothing is promised.
                    Err(e) => eprintln!("mkdir {name} unacknowledged: {e}"),
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    wait_for(Duration::from_secs(60), "a third of the load", || async {
        Ok((done.load(Ordering::Relaxed) >= WORKERS * PER_WORKER / 3).then_some(()))
    })
    .await?;
    let old = leader(&tc, &admin).await?;
    assert!(tc.cluster.metaserver(old).kill9());
    let killed = Instant::now();
    let probe = tc.meta_client("probe")?;
    probe.mutate(mkdir("probe-after-failover")).await??;
    eprintln!(
        "failover: leader {old} killed -> first successful op after {:?}",
        killed.elapsed()
    );
    for w in workers {
        w.await?;
    }
    let new = leader(&tc, &admin).await?;
    assert_ne!(new, old, "a new leader was elected");

    tc.cluster.start_metaserver(old, 3, None).await?;
    tc.wait_members_agree(&admin).await?;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > WORKERS * PER_WORKER * 9 / 10,
        "only {} ops acknowledged",
        acked.len()
    );
    let present: BTreeSet<String> = list(&meta, ROOT)
        .await?
        .into_iter()
        .map(|(n, _)| String::from_utf8(n).unwrap())
        .collect();
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(missing.is_empty(), "acknowledged but missing: {missing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_restarted_from_disk_agree() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = tc.meta_client("writer")?;
    let dir = match meta.mutate(mkdir("d")).await?? {
        FsReply::Made { attr: a, .. } => a.ino,
        other => bail!("{other:?}"),
    };
    for i in 0..200 {
        let name = format!("f{i}").into_bytes();
        meta.mutate(FsOp::Mknod {
            parent: dir,
            name: name.clone(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: ME,
        })
        .await??;
        match i % 4 {
            0 => drop(meta.mutate(FsOp::Unlink { parent: dir, name }).await??),
            1 => drop(
                meta.mutate(FsOp::Rename {
                    parent: dir,
                    name,
                    new_parent: ROOT,
                    new_name: format!("moved{i}").into_bytes(),
                    mode: RenameMode::Replace,
                })
                .await??,
            ),
            2 => {
                let ino = lookup(&meta, dir, &format!("f{i}")).await??;
                meta.mutate(FsOp::SetAttr {
                    ino,
                    set: SetAttr {
                        perm: Some(0o600),
                        ..Default::default()
                    },
                })
                .await??;
            }
            _ => {}
        }
    }
    let before = (list(&meta, ROOT).await?, list(&meta, dir).await?);
    let applied = tc.wait_members_agree(&admin).await?;

    for n in 1..=3 {
        assert!(tc.cluster.metaserver(n).kill9());
    }
    for n in 1..=3 {
        tc.cluster.start_metaserver(n, 3, None).await?;
    }
    let after = (list(&meta, ROOT).await?, list(&meta, dir).await?);
    assert_eq!(before, after);
    let again = tc.wait_members_agree(&admin).await?;
    assert!(again >= applied);
    Ok(())
}

/// Members keep one stream of Raft messages open to each other. A member killed and
/// restarted no longer knows the connection its peers' streams were on: they must notice
/// its restart and open new ones, not go on writing into the old connection until it times
/// out (15 s without an answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_is_reached_again_without_waiting_out_its_old_connection() -> Result<()>
{
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = tc.meta_client("writer")?;
    for round in 0..2 {
        meta.mutate(mkdir(&format!("before{round}"))).await??;
        tc.wait_members_agree(&admin).await?;
        let current = leader(&tc, &admin).await?;
        let follower = (1..=3).find(|&n| n != current).unwrap();
        assert!(tc.cluster.metaserver(follower).kill9());
        tc.cluster.start_metaserver(follower, 3, None).await?;
        meta.mutate(mkdir(&format!("after{round}"))).await??;
        // A new admin: the old one's connection to the member is dead too.
        let fresh = tc.cluster.admin()?;
        tc.wait_members_agree_within(&fresh, Duration::from_secs(8))
            .await
            .with_context(|| format!("round {round}: member {follower} restarted"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_and_new_members_catch_up_from_snapshots() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--snapshot-every", "50"])?;
    let admin = tc.start_metaservers(3).await?;
    let meta = tc.meta_client("writer")?;
    meta.mutate(mkdir("before")).await??;
    // Member 3 misses 300 operations: the others compact their logs past them meanwhile.
    let current = leader(&tc, &admin).await?;
    let lagging = (1..=3).find(|&n| n != current).unwrap();
    assert!(tc.cluster.metaserver(lagging).kill9());
    for i in 0..300 {
        meta.mutate(mkdir(&format!("d{i}"))).await??;
    }
    let status = admin.status().await?;
    assert!(
        status.snapshot_index > 100,
        "the leader never compacted: {status:?}"
    );
    tc.cluster.start_metaserver(lagging, 3, None).await?;
    tc.wait_members_agree(&admin).await?;

    // A fourth member joins the running group and catches up the same way.
    tc.cluster.start_metaserver(4, 3, None).await?;
    admin.add_member(4, tc.cluster.meta_addr(4, None)?).await?;
    meta.mutate(mkdir("after-join")).await??;
    tc.wait_members_agree(&admin).await?;
    let status = admin.status().await?;
    assert_eq!(status.members.len(), 4);
    assert!(tc.cluster.metaserver(4).log_tail().contains("snapshot") || status.snapshot_index > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunkservers_register_heartbeat_and_go_down() -> Result<()> {
    let tc = TestCluster::with_metaserver_args(&["--suspect-after", "1", "--down-after", "3"])?;
    let admin = tc.start_metaservers(3).await?;
    for n in 1..=3 {
        tc.cluster.start_chunkserver(n).await?;
    }
    let status = admin.wait_chunkservers_up(3).await?;
    assert_eq!(status.chunkservers.len(), 3);
    // The first leader records its --default-policy (rs:4+2); an admin changes it.
    let recorded = wait_for(Duration::from_secs(10), "a default policy", || async {
        Ok(admin.status().await?.default_policy)
    })
    .await?;
    assert_eq!(recorded, "rs:4+2".parse()?);
    admin.set_default_policy("mirror:3".parse()?).await?;
    assert_eq!(
        admin.status().await?.default_policy,
        Some("mirror:3".parse()?)
    );
    let meta = tc.meta_client("client")?;
    match meta.query(FsQuery::StatFs).await?? {
        FsReply::StatFs(s) => assert!(s.total_bytes > 0 && s.free_bytes > 0, "{s:?}"),
        other => bail!("{other:?}"),
    }
    // A file gets a slice placed on three distinct servers (mirror:3 on three servers).
    let file = match meta
        .mutate(FsOp::Mknod {
            parent: ROOT,
            name: b"f".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: ME,
        })
        .await??
    {
        FsReply::Made { attr: a, .. } => a.ino,
        other => bail!("{other:?}"),
    };
    let (slice, layout, placement) = match meta
        .mutate(FsOp::AllocateSlice {
            ino: file,
            len: 1000,
            avoid: vec![],
        })
        .await??
    {
        FsReply::Allocated {
            slice,
            layout,
            placement,
            ..
        } => (slice, layout, placement),
        other => bail!("{other:?}"),
    };
    assert_eq!(layout.policy.to_string(), "mirror:3");
    let distinct: BTreeSet<_> = placement.iter().flatten().map(|p| p.id).collect();
    assert_eq!(distinct.len(), 3);
    let slice_ref = lattice_common::chunk_map::SliceRef {
        slice,
        layout,
        placement: placement.iter().map(|p| p.as_ref().map(|p| p.id)).collect(),
        chunk_offset: 10,
        skip: 0,
        len: 1000,
    };
    let attr = match meta
        .mutate(FsOp::CommitSlice {
            ino: file,
            chunk: 0,
            slice: slice_ref.clone(),
        })
        .await??
    {
        FsReply::Committed { attr, slices: 1 } => attr,
        other => bail!("{other:?}"),
    };
    assert_eq!(attr.size, 1010);
    match meta
        .query(FsQuery::Slices {
            ino: file,
            first: 0,
            last: 0,
        })
        .await??
    {
        FsReply::Slices {
            chunks, servers, ..
        } => {
            assert_eq!(chunks, vec![(0, vec![slice_ref.clone()])]);
            assert_eq!(servers.len(), 3);
        }
        other => bail!("{other:?}"),
    }
    // Committing it twice (a new request, not a retry) is refused: the allocation is spent.
    assert_eq!(
        meta.mutate(FsOp::CommitSlice {
            ino: file,
            chunk: 0,
            slice: slice_ref
        })
        .await?,
        Err(Errno::STALE)
    );

    // A killed chunkserver goes suspect, then down.
    assert!(tc.cluster.chunkserver(2).kill9());
    wait_for(Duration::from_secs(20), "chunkserver 2 down", || async {
        let s = admin.status().await?;
        Ok(s.chunkservers
            .iter()
            .any(|c| c.name == "chunkserver-2" && c.state == ChunkserverState::Down)
            .then_some(()))
    })
    .await?;
    // With two servers up, a new slice keeps its policy and lands degraded on two (one
    // more loss survivable); with one up, none is placed: EAGAIN, the writer waits.
    match meta
        .mutate(FsOp::AllocateSlice {
            ino: file,
            len: 10,
            avoid: vec![],
        })
        .await??
    {
        FsReply::Allocated {
            layout, placement, ..
        } => {
            assert_eq!(layout.policy.to_string(), "mirror:3");
            assert_eq!(placement.iter().flatten().count(), 2, "{placement:?}");
        }
        other => bail!("{other:?}"),
    }
    assert!(tc.cluster.chunkserver(3).kill9());
    wait_for(Duration::from_secs(20), "chunkserver 3 down", || async {
        let s = admin.status().await?;
        Ok(s.chunkservers
            .iter()
            .any(|c| c.name == "chunkserver-3" && c.state != ChunkserverState::Up)
            .then_some(()))
    })
    .await?;
    let refused = meta
        .mutate(FsOp::AllocateSlice {
            ino: file,
            len: 10,
            avoid: vec![],
        })
        .await?;
    assert_eq!(refused, Err(Errno::AGAIN));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors() -> Result<()> {
    let tc = TestCluster::new()?;
    let _admin = tc.start_metaservers(1).await?;
    let meta = tc.meta_client("client")?;
    let long = "x".repeat(256);
    assert_eq!(meta.mutate(mkdir(&long)).await?, Err(Errno::NAMETOOLONG));
    assert_eq!(
        lookup(&meta, InodeId(999_999), "a").await?,
        Err(Errno::NOENT)
    );
    assert_eq!(meta.mutate(mkdir("a/b")).await?, Err(Errno::INVAL));
    meta.mutate(mkdir("d")).await??;
    assert_eq!(meta.mutate(mkdir("d")).await?, Err(Errno::EXIST));
    let d = lookup(&meta, ROOT, "d").await??;
    meta.mutate(mkdir("e")).await??;
    meta.mutate(FsOp::Mkdir {
        parent: d,
        name: b"sub".to_vec(),
        perm: 0o755,
        umask: 0,
        caller: ME,
    })
    .await??;
    assert_eq!(
        meta.mutate(FsOp::Rmdir {
            parent: ROOT,
            name: b"d".to_vec()
        })
        .await?,
        Err(Errno::NOTEMPTY)
    );
    assert_eq!(
        meta.mutate(FsOp::Rename {
            parent: ROOT,
            name: b"e".to_vec(),
            new_parent: ROOT,
            new_name: b"d".to_vec(),
            mode: RenameMode::NoReplace
        })
        .await?,
        Err(Errno::EXIST)
    );
    assert_eq!(
        meta.query(FsQuery::Slices {
            ino: d,
            first: 0,
            last: 1
        })
        .await?,
        Err(Errno::ISDIR)
    );
    assert_eq!(
        meta.query(FsQuery::Slices {
            ino: d,
            first: 5,
            last: 1
        })
        .await?,
        Err(Errno::INVAL)
    );

    // A mount may not speak Raft to a member, nor register as a chunkserver.
    use lattice_common::wire::meta::{MetaRequest, MetaResponse};
    let raft = MetaRequest::Raft {
        from: lattice_common::ids::MetaserverId(9),
        addr: "127.0.0.1:1".parse()?,
        sizes: vec![],
    };
    let stream = MetaRequest::RaftStream {
        from: lattice_common::ids::MetaserverId(9),
        addr: "127.0.0.1:1".parse()?,
        incarnation: 1,
    };
    for req in [raft, stream] {
        match meta.call_at(tc.cluster.meta_addr(1, None)?, &req).await? {
            MetaResponse::Error(e) => assert_eq!(e.kind, lattice_common::wire::ErrorKind::Denied),
            other => bail!("{other:?}"),
        }
    }
    // Garbage on the wire is an error, and the member keeps serving.
    let node = tc.node(lattice_common::pki::Role::Client, "fuzzer")?;
    let (mut send, mut recv) = node
        .open(
            tc.cluster.meta_addr(1, None)?,
            lattice_common::pki::Role::Metaserver,
        )
        .await?;
    send.write_all(&[7, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await?;
    send.finish()?;
    let resp: MetaResponse = lattice_common::codec::read_frame(&mut recv).await?;
    assert!(matches!(resp, MetaResponse::Error(_)), "{resp:?}");
    assert!(lookup(&meta, ROOT, "d").await?.is_ok());
    Ok(())
}

/// A process stopped with SIGSTOP, as a busy host or a debugger would; continued when dropped,
/// so a failing test leaves nothing stopped.
struct Stopped(i32);

impl Stopped {
    fn new(p: &Proc) -> Result<Stopped> {
        let pid = p
            .pid()
            .with_context(|| format!("{} does not run", p.name()))?;
        sh(&format!("kill -STOP {pid}"))?;
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if let Err(e) = sh(&format!("kill -CONT {}", self.0)) {
            eprintln!("continuing {}: {e:#}", self.0);
        }
    }
}

/// What one member said to a lookup sent to it alone.
#[derive(Debug, PartialEq)]
enum Said {
    /// It answered from its state: whether the name exists.
    Found(bool),
    NotLeader,
    /// Retry later, or no answer.
    Nothing,
}

async fn lookup_at(client: &MetaClient, addr: SocketAddr, name: &str) -> Result<Said> {
    let query = MetaRequest::Query(FsQuery::Lookup {
        parent: ROOT,
        name: name.as_bytes().to_vec(),
    });
    match client.call_at(addr, &query).await {
        Ok(MetaResponse::Fs(Ok(FsReply::Attr(_)))) => Ok(Said::Found(true)),
        Ok(MetaResponse::Fs(Err(Errno::NOENT))) => Ok(Said::Found(false)),
        Ok(MetaResponse::NotLeader { .. }) => Ok(Said::NotLeader),
        Ok(MetaResponse::Error(e)) if e.kind == ErrorKind::Unavailable => Ok(Said::Nothing),
        Err(_) => Ok(Said::Nothing),
        Ok(other) => bail!("lookup at {addr} gave {other:?}"),
    }
}

/// Clients reading from a leader as it resumes; pause rounds (each catches a lease-based
/// leader answering from its old state about two times in three).
const READERS: usize = 32;
const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_never_answers_a_read_from_its_old_state() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = tc.meta_client("writer")?;
    meta.mutate(mkdir("before")).await??;
    let reader = Arc::new(tc.meta_client("reader")?);
    for round in 0..ROUNDS {
        let (old, old_addr) = wait_for(Duration::from_secs(30), "a leader", || async {
            let l = admin.status().await?.leader.0 as u32;
            let addr = tc.cluster.meta_addr(l, None)?;
            // Connected before the pause: a read after it is a single packet away.
            let said = lookup_at(&reader, addr, "before").await?;
            Ok((said == Said::Found(true)).then_some((l, addr)))
        })
        .await?;

        let stopped = Stopped::new(&tc.cluster.metaserver(old))?;
        let others: Vec<SocketAddr> = (1..=3)
            .filter(|&n| n != old)
            .map(|n| tc.cluster.meta_addr(n, None))
            .collect::<Result<_>>()?;
        wait_for(Duration::from_secs(30), "another leader", || async {
            for &addr in &others {
                let digest = MetaRequest::Admin(AdminRequest::Digest);
                if let Ok(MetaResponse::Admin(AdminReply::Digest {
                    leader: Some(l), ..
                })) = admin.meta.call_at(addr, &digest).await
                {
                    if l.0 != u64::from(old) {
                        return Ok(Some(()));
                    }
                }
            }
            Ok(None)
        })
        .await?;
        let name = format!("after-{round}");
        meta.mutate(mkdir(&name)).await??;

        // Reads reach it as it resumes (the first ones are sent while it is still stopped),
        // until it answers from its state or says it no longer leads.
        let deadline = Instant::now() + Duration::from_secs(30);
        let readers: Vec<_> = (0..READERS)
            .map(|_| {
                let (reader, name) = (reader.clone(), name.clone());
                tokio::spawn(async move {
                    loop {
                        match lookup_at(&reader, old_addr, &name).await? {
                            Said::Nothing if Instant::now() < deadline => {}
                            said => return Ok::<Said, anyhow::Error>(said),
                        }
                    }
                })
            })
            .collect();
        drop(stopped);
        for said in futures::future::join_all(readers).await {
            match said?? {
                Said::Found(true) | Said::NotLeader => {}
                Said::Found(false) => bail!("round {round}: {old} answered from its old state"),
                Said::Nothing => bail!("round {round}: {old} never answered"),
            }
        }
    }
    Ok(())
}

/// `metaserver ARGS --meta ... --certs <admin>`, as an admin runs it; fails if it fails.
fn admin_cli(tc: &TestCluster, args: &[&str]) -> Result<()> {
    let meta: Vec<String> = tc
        .cluster
        .meta_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    let mut cmd = Command::new(tc.cluster.binary(METASERVER)?);
    cmd.args(args)
        .arg("--meta")
        .arg(meta.join(","))
        .arg("--certs")
        .arg(tc.cluster.certs(Role::Admin, "admin")?);
    tc.cluster.run_to_end(cmd)
}

/// The (start, end) of each record of a Raft log ([len u32][crc u32][body]), up to the
/// zeros written ahead of them.
fn records(log: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let len = u32::from_le_bytes(log.get(start..start + 4)?.try_into().unwrap()) as usize;
        let record = (start, (start + 8 + len).min(log.len()));
        start = record.1;
        (len > 0).then_some(record)
    })
}

/// Where the record holding byte `at` of a Raft log starts.
fn record_start(log: &[u8], at: usize) -> usize {
    records(log).find(|&(_, end)| end > at).unwrap().0
}

/// Where a log file's records end and the zeros written ahead of them begin.
fn records_end(log: &[u8]) -> usize {
    records(log).last().map_or(0, |(_, end)| end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_damaged_log_refuses_to_start_and_is_reseeded_from_its_peers() -> Result<()>
{
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(3).await?;
    let meta = tc.meta_client("writer")?;
    for i in 0..50 {
        meta.mutate(mkdir(&format!("d{i}"))).await??;
    }
    tc.wait_members_agree(&admin).await?;
    let current = leader(&tc, &admin).await?;
    let victim = (1..=3).find(|&n| n != current).unwrap();
    tc.cluster
        .metaserver(victim)
        .stop(Duration::from_secs(10))?;

    // A bit flips in the middle of its log's records, records after it intact.
    let data = tc.state().join(format!("metaserver-{victim}"));
    let log_path = data.join("raft").join("log");
    let mut log = std::fs::read(&log_path)?;
    let middle = records_end(&log) / 2;
    log[middle] ^= 0x08;
    std::fs::write(&log_path, &log)?;
    let refused = tc.cluster.start_metaserver(victim, 3, None).await;
    let why = format!("{:#}", refused.err().context("a damaged member started")?);
    let at = record_start(&log, middle);
    assert!(
        why.contains(&format!("{} is damaged at byte {at}:", log_path.display())),
        "{why}"
    );
    assert_eq!(
        std::fs::read(&log_path)?,
        log,
        "the damaged log is kept as it was"
    );

    // Re-seeded as the README says: removed, emptied, back under a new id at its address.
    admin_cli(&tc, &["member", "remove", "--id", &victim.to_string()])?;
    std::fs::remove_dir_all(&data)?;
    let addr = tc.cluster.meta_addr(victim, None)?;
    let reseeded = tc.cluster.metaserver(4);
    let addr_file = tc.state().join(format!("{}.addr", reseeded.name()));
    let mut cmd = Command::new(tc.cluster.binary(METASERVER)?);
    cmd.args([
        "serve",
        "--id",
        "4",
        "--join",
        "--listen",
        &addr.to_string(),
    ])
    .arg("--data")
    .arg(&data)
    .arg("--certs")
    .arg(
        tc.cluster
            .certs(Role::Metaserver, &format!("metaserver-{victim}"))?,
    )
    .arg("--addr-file")
    .arg(&addr_file);
    reseeded.spawn(cmd)?;
    wait_for(START_TIMEOUT, "the re-seeded member to serve", || async {
        reseeded.check_running()?;
        Ok(addr_file.exists().then_some(()))
    })
    .await?;
    admin_cli(
        &tc,
        &["member", "add", "--id", "4", "--addr", &addr.to_string()],
    )?;
    meta.mutate(mkdir("after-reseed")).await??;
    // A new admin client: the old one holds a connection to the member that was there.
    let admin = tc.cluster.admin()?;
    tc.wait_members_agree(&admin).await?;
    let members: BTreeSet<u64> = admin
        .status()
        .await?
        .members
        .iter()
        .map(|m| m.id.0)
        .collect();
    let expected: BTreeSet<u64> = (1..=4).filter(|&n| n != u64::from(victim)).collect();
    assert_eq!(members, expected);
    assert_eq!(list(&meta, ROOT).await?.len(), 51);
    Ok(())
}
