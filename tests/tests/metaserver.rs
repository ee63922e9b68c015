//! The metaserver group with real processes on loopback: failover under load, restarts
//! from disk, catch-up from snapshots, the cluster map, and bad requests.

use anyhow::{bail, Result};
use lattice_common::fs::{Caller, Errno, FileKind, RenameMode, SetAttr};
use lattice_common::ids::InodeId;
use lattice_common::meta_client::MetaClient;
use lattice_common::wire::meta::{ChunkserverState, FsOp, FsQuery, FsReply};
use lattice_harness::process::wait_for;
use lattice_tests::TestCluster;
use std::collections::BTreeSet;
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
        FsReply::Attr(a) => a.ino,
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
        FsReply::Attr(a) => a.ino,
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
        FsReply::Attr(a) => a,
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
    match meta.call_at(tc.cluster.meta_addr(1, None)?, &raft).await? {
        MetaResponse::Error(e) => assert_eq!(e.kind, lattice_common::wire::ErrorKind::Denied),
        other => bail!("{other:?}"),
    }
    // Garbage on the wire is an error, and the member keeps serving.
    let node = tc.node(lattice_common::pki::Role::Client, "fuzzer")?;
    let (mut send, mut recv) = node.open(tc.cluster.meta_addr(1, None)?).await?;
    send.write_all(&[7, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await?;
    send.finish()?;
    let resp: MetaResponse = lattice_common::codec::read_frame(&mut recv).await?;
    assert!(matches!(resp, MetaResponse::Error(_)), "{resp:?}");
    assert!(lookup(&meta, ROOT, "d").await?.is_ok());
    Ok(())
}
