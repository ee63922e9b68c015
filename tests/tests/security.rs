//! What a certificate may do and what a peer may cost a server, with real processes on
//! loopback.

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use futures::future::join_all;
use lattice_common::codec;
use lattice_common::fs::{Caller, Errno, FileKind, SetAttr};
use lattice_common::ids::{ClientId, InodeId, ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::meta_client::{MetaClient, MetaError};
use lattice_common::mount_user::MountUser;
use lattice_common::pki::{self, Role};
use lattice_common::shard_client::{ShardClient, ShardError};
use lattice_common::transport::{Identity, Node, MAX_CONNECTIONS_PER_PEER};
use lattice_common::wire::meta::{
    FsOp, FsQuery, FsReply, MetaRequest, MetaResponse, MAX_SESSIONS_PER_CERTIFICATE,
};
use lattice_common::wire::{ChunkResponse, ErrorKind};
use lattice_harness::process::wait_for;
use lattice_tests::{random_bytes, TestCluster};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A server on loopback holding `role:name`'s certificate from the cluster's CA, counting
/// the requests that reach it.
fn impostor(tc: &TestCluster, role: Role, name: &str) -> Result<(SocketAddr, Arc<AtomicUsize>)> {
    let identity = Identity::load(&tc.cluster.certs(role, name)?)?;
    let node = Node::server("127.0.0.1:0".parse()?, &identity)?;
    let addr = node.local_addr()?;
    let reached = Arc::new(AtomicUsize::new(0));
    let count = reached.clone();
    tokio::spawn(node.serve(move |_, _, _| {
        count.fetch_add(1, Ordering::SeqCst);
        async {}
    }));
    Ok((addr, reached))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_serves_only_as_its_role() -> Result<()> {
    let tc = TestCluster::new()?;
    let admin = tc.start_metaservers(1).await?;
    tc.cluster.start_chunkserver(1).await?;
    admin.wait_chunkservers_up(1).await?;
    let chunkserver = tc.cluster.addr(&tc.cluster.chunkserver(1))?;

    // A mount's certificate cannot authenticate a server at all; a chunkserver's cannot pass
    // for a metaserver, nor a metaserver's for a chunkserver.
    let mount = tc.node(Role::Client, "mount")?;
    let meta_via = |addr: SocketAddr| MetaClient::new(mount.clone(), vec![addr], TIMEOUT);
    let shards = ShardClient::new(mount.clone(), TIMEOUT);
    for (role, name, as_meta) in [
        (Role::Client, "stolen", true),
        (Role::Client, "stolen-too", false),
        (Role::Chunkserver, "rogue-cs", true),
        (Role::Metaserver, "rogue-ms", false),
    ] {
        let (addr, reached) = impostor(&tc, role, name)?;
        let refused = if as_meta {
            let got = meta_via(addr).call_at(addr, &ping()).await;
            got.err().map(|e| e.to_string())
        } else {
            shards.ping(addr).await.err().map(|e| e.to_string())
        };
        let why = refused.ok_or_else(|| anyhow::anyhow!("{role}:{name} was taken for a server"))?;
        let posing = if as_meta { "metaserver" } else { "chunkserver" };
        eprintln!("{role}:{name} posing as a {posing}: {why}");
        ensure!(
            reached.load(Ordering::SeqCst) == 0,
            "a request reached {role}:{name}"
        );
    }
    // The genuine servers are still reached through the same client.
    ensure!(shards.ping(chunkserver).await? == "chunkserver-1");
    let meta = tc.cluster.meta_addr(1, None)?;
    ensure!(matches!(
        meta_via(meta).call_at(meta, &ping()).await?,
        MetaResponse::Fs(_)
    ));
    Ok(())
}

fn ping() -> lattice_common::wire::meta::MetaRequest {
    lattice_common::wire::meta::MetaRequest::Query(FsQuery::GetAttr { ino: InodeId::ROOT })
}

/// Lets this process hold more descriptors than the usual 1024 (one UDP socket per node).
fn allow_descriptors(n: u64) -> Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, n.min(hard), hard)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_senders_do_not_stop_a_mount() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let chunkserver = tc.cluster.addr(&tc.cluster.chunkserver(1))?;
    let metas = tc.cluster.meta_addrs();
    allow_descriptors(4096)?;

    // 1,000 connections to a chunkserver and to every metaserver, from 50 certificates,
    // each opened by a request, then left idle. At 20 each, a certificate holds 4 more
    // than it may: its oldest are closed again, and requests on them may fail.
    let mut idle = Vec::new();
    for i in 0..50 {
        let dir = tc.cluster.certs(Role::Client, &format!("idle-{i}"))?;
        let identity = Identity::load(&dir)?;
        for _ in 0..20 {
            idle.push(Node::client(&identity)?);
        }
    }
    let opened = join_all(idle.iter().map(|node| {
        let (node, metas) = (node.clone(), metas.clone());
        async move {
            let shards = ShardClient::new(node.clone(), TIMEOUT);
            let meta = MetaClient::new(node, metas.clone(), TIMEOUT);
            let mut ok = shards.ping(chunkserver).await.is_ok() as usize;
            for addr in metas {
                ok += meta.call_at(addr, &ping()).await.is_ok() as usize;
            }
            ok
        }
    }))
    .await;
    let answered: usize = opened.iter().sum();
    eprintln!(
        "{answered} of {} requests on fresh connections answered",
        4 * idle.len()
    );

    // Slow senders: a request frame started and never finished, on every server.
    let slow = tc.node(Role::Client, "slow")?;
    let mut stalled = Vec::new();
    for (addr, role) in metas
        .iter()
        .map(|a| (*a, Role::Metaserver))
        .chain([(chunkserver, Role::Chunkserver)])
    {
        let (mut send, recv) = slow.open(addr, role).await?;
        send.write_all(&[200, 0, 0, 0, 6]).await?;
        stalled.push((send, recv, role));
    }

    // Meanwhile the mount works as ever.
    let data = random_bytes(3 << 20, 7);
    std::fs::create_dir(mnt.join("d"))?;
    std::fs::write(mnt.join("d/f"), &data)?;
    ensure!(
        std::fs::read(mnt.join("d/f"))? == data,
        "the mount read back other bytes"
    );
    ensure!(std::fs::read_dir(mnt.join("d"))?.count() == 1);

    // The slow senders are answered with an error and cut off within the deadline.
    let started = Instant::now();
    for (_send, mut recv, role) in stalled {
        let limit = codec::REQUEST_DEADLINE + Duration::from_secs(10);
        let answer = tokio::time::timeout(limit, async {
            match role {
                Role::Chunkserver => codec::read_frame::<_, ChunkResponse>(&mut recv)
                    .await
                    .map(|r| format!("{r:?}")),
                _ => codec::read_frame::<_, MetaResponse>(&mut recv)
                    .await
                    .map(|r| format!("{r:?}")),
            }
        })
        .await;
        let answer = answer.map_err(|_| anyhow::anyhow!("a slow {role} stream was kept"))?;
        ensure!(
            answer.as_ref().is_ok_and(|a| a.contains("Error")),
            "a slow {role} stream got {answer:?}"
        );
    }
    eprintln!("slow streams cut off after {:?}", started.elapsed());

    // A certificate holds at most its share of connections on a server: the old ones of a
    // peer that keeps connecting are closed, and every server still answers.
    let burst = Identity::load(&tc.cluster.certs(Role::Client, "burst")?)?;
    let nodes: Vec<_> = (0..MAX_CONNECTIONS_PER_PEER + 4)
        .map(|_| Node::client(&burst))
        .collect::<Result<_, _>>()?;
    for node in &nodes {
        ShardClient::new(node.clone(), TIMEOUT)
            .ping(chunkserver)
            .await?;
    }
    let closed = || async { Ok((!nodes[0].connected(chunkserver)).then_some(())) };
    wait_for(
        Duration::from_secs(10),
        "the oldest connection to close",
        closed,
    )
    .await?;
    let newest = ShardClient::new(nodes[nodes.len() - 1].clone(), TIMEOUT);
    ensure!(newest.ping(chunkserver).await? == "chunkserver-1");
    for p in ["d/f", "d"] {
        let path = mnt.join(p);
        if path.is_dir() {
            std::fs::remove_dir(path)?;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    drop(idle);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_is_refused_and_cut_off_within_seconds() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    std::fs::write(mnt.join("before"), b"written before the revocation")?;
    let chunkserver = tc.cluster.addr(&tc.cluster.chunkserver(1))?;
    let metas = tc.cluster.meta_addrs();

    // A stolen certificate, connected to every server, and an honest one.
    let connect = |name: &str| -> Result<(Arc<Node>, std::path::PathBuf)> {
        let dir = tc.cluster.certs(Role::Client, name)?;
        Ok((Node::client(&Identity::load(&dir)?)?, dir))
    };
    let (stolen, stolen_dir) = connect("stolen")?;
    let (honest, _) = connect("honest")?;
    for node in [&stolen, &honest] {
        ShardClient::new(node.clone(), TIMEOUT)
            .ping(chunkserver)
            .await?;
        let meta = MetaClient::new(node.clone(), metas.clone(), TIMEOUT);
        for addr in &metas {
            meta.call_at(*addr, &ping()).await?;
        }
    }

    // Revoked from the command line: the mount's certificate by name, the stolen one by
    // its serial.
    let serial = lattice_common::pki::serial_of(&stolen_dir)?;
    let meta_arg: Vec<String> = metas.iter().map(|a| a.to_string()).collect();
    let admin_certs = tc.cluster.certs(Role::Admin, "admin")?;
    for what in [
        vec!["client:fs-client-1".to_string()],
        vec!["--serial".into(), serial.clone()],
    ] {
        let out = std::process::Command::new(tc.cluster.binary("metaserver")?)
            .args(["ca", "revoke", "--ca"])
            .arg(tc.cluster.ca_dir())
            .args(["--meta", &meta_arg.join(","), "--certs"])
            .arg(&admin_certs)
            .args(&what)
            .output()?;
        ensure!(
            out.status.success(),
            "revoke {what:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let revoked_at = Instant::now();

    // Its open connections close on every server within 10 s; the honest ones stay.
    let cut_off = || async {
        let open = metas
            .iter()
            .chain([&chunkserver])
            .filter(|a| stolen.connected(**a))
            .count();
        Ok((open == 0).then_some(()))
    };
    wait_for(
        Duration::from_secs(10),
        "the revoked connections to close",
        cut_off,
    )
    .await?;
    eprintln!(
        "revoked connections closed after {:?}",
        revoked_at.elapsed()
    );
    ensure!(ShardClient::new(stolen.clone(), TIMEOUT)
        .ping(chunkserver)
        .await
        .is_err());
    let stolen_meta = MetaClient::new(stolen.clone(), metas.clone(), TIMEOUT);
    for addr in &metas {
        ensure!(
            stolen_meta.call_at(*addr, &ping()).await.is_err(),
            "{addr} still serves it"
        );
    }
    ensure!(
        ShardClient::new(honest.clone(), TIMEOUT)
            .ping(chunkserver)
            .await?
            == "chunkserver-1"
    );

    // The revoked mount cannot mount again; another mount works and sees the data.
    let mount = tc.cluster.mount_proc(1);
    tc.cluster.stop_mount(&mount)?;
    ensure!(
        tc.cluster.start_mount(1, &mnt, "").await.is_err(),
        "a revoked certificate mounted"
    );
    let other = tc.state().join("mnt2");
    tc.cluster.start_mount(2, &other, "").await?;
    ensure!(std::fs::read(other.join("before"))? == b"written before the revocation");

    // Status lists both.
    let out = std::process::Command::new(tc.cluster.binary("metaserver")?)
        .args(["status", "--json", "--meta", &meta_arg.join(","), "--certs"])
        .arg(&admin_certs)
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        status["revoked"]["names"][0] == "client:fs-client-1",
        "{}",
        status["revoked"]
    );
    ensure!(
        status["revoked"]["serials"][0] == serial.as_str(),
        "{}",
        status["revoked"]
    );
    tc.cluster.stop_mount(&tc.cluster.mount_proc(2))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_certificate_reaches_shards_only_with_grants() -> Result<()> {
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    let data = random_bytes(1 << 20, 3);
    std::fs::write(mnt.join("victim"), &data)?;
    let operator = ShardClient::new(tc.node(Role::Admin, "operator")?, TIMEOUT);
    let cs = tc.cluster.addr(&tc.cluster.chunkserver(1))?;
    let (stored, _) = operator.list(cs, None, 10).await?;
    let victim = stored
        .first()
        .ok_or_else(|| anyhow::anyhow!("no shard on chunkserver-1"))?;
    let before = operator
        .get(cs, victim.shard, 0, victim.layout.shard_len())
        .await?;

    // A mount's certificate without grants: no reads, no writes, no listing.
    let thief_node = tc.node(Role::Client, "thief")?;
    let thief = ShardClient::new(thief_node.clone(), TIMEOUT);
    let denied = |r: Result<_, ShardError>| matches!(r, Err(ShardError::Remote(e)) if e.kind == ErrorKind::Denied);
    ensure!(
        denied(thief.get(cs, victim.shard, 0, 100).await.map(drop)),
        "read without a grant"
    );
    let zeros = Bytes::from(vec![0u8; victim.layout.shard_len() as usize]);
    ensure!(
        denied(
            thief
                .put(cs, victim.shard, victim.layout, zeros.clone())
                .await
        ),
        "overwrote a shard without a grant"
    );
    let fresh = ShardId::new(SliceId(u64::MAX / 2), 0);
    ensure!(
        denied(thief.put(cs, fresh, victim.layout, zeros.clone()).await),
        "stored without a grant"
    );
    ensure!(
        denied(thief.list(cs, None, 10).await.map(drop)),
        "listed shards"
    );
    ensure!(
        denied(thief.stat(cs, victim.shard).await.map(drop)),
        "stat of a shard"
    );

    // With a genuine write grant for a slice of its own, still nothing else.
    let meta = MetaClient::new(thief_node, tc.cluster.meta_addrs(), Duration::from_secs(20));
    let made = meta
        .mutate(FsOp::Mknod {
            parent: InodeId::ROOT,
            name: b"thief".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: Caller { uid: 0, gid: 0 },
        })
        .await??;
    let FsReply::Made { attr, .. } = made else {
        bail!("mknod: {made:?}")
    };
    let allocated = meta
        .mutate(FsOp::AllocateSlice {
            ino: attr.ino,
            len: 4 * victim.layout.shard_len(),
            avoid: vec![],
        })
        .await??;
    let FsReply::Allocated {
        slice,
        layout,
        placement,
        grant: Some(grant),
    } = allocated
    else {
        bail!("allocate: {allocated:?}")
    };
    thief.hold_grants([grant.clone()]);
    ensure!(
        denied(
            thief
                .put(cs, victim.shard, victim.layout, zeros.clone())
                .await
        ),
        "a grant for one slice overwrote another's shard"
    );
    let own = placement[0]
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("unplaced"))?;
    let body = Bytes::from(vec![7u8; layout.shard_len() as usize]);
    // Only where the allocation placed each shard: not shard 0 on another server, nor
    // another shard on shard 0's server.
    let elsewhere = placement
        .iter()
        .flatten()
        .find(|s| s.id != own.id)
        .ok_or_else(|| anyhow::anyhow!("one server placed everything"))?;
    ensure!(
        denied(
            thief
                .put(elsewhere.addr, ShardId::new(slice, 0), layout, body.clone())
                .await
        ),
        "a grant stored shard 0 off its placement"
    );
    let unplaced_here = (0..layout.policy.total_shards() as u16 + 2)
        .find(|&i| {
            placement
                .get(i as usize)
                .is_none_or(|p| p.as_ref() != Some(own))
        })
        .ok_or_else(|| anyhow::anyhow!("every shard on one server"))?;
    ensure!(
        denied(
            thief
                .put(
                    own.addr,
                    ShardId::new(slice, unplaced_here),
                    layout,
                    body.clone()
                )
                .await
        ),
        "a grant stored shard {unplaced_here} on a server not placed for it"
    );
    // Nor more disk than the allocation was for.
    let bigger = SliceLayout::new(layout.policy, 2 * layout.data_len, layout.stripe_unit)?;
    ensure!(bigger.shard_len() > layout.shard_len());
    let huge = vec![1u8; bigger.shard_len() as usize];
    ensure!(
        denied(
            thief
                .put(own.addr, ShardId::new(slice, 0), bigger, huge.into())
                .await
        ),
        "a grant stored a shard larger than allocated"
    );
    thief
        .put(own.addr, ShardId::new(slice, 0), layout, body.clone())
        .await?;
    ensure!(
        denied(
            thief
                .put(own.addr, ShardId::new(slice, 0), layout, body.clone())
                .await
        ),
        "a stored shard was replaced by a mount"
    );
    // A grant is bound to the certificate it was issued to.
    let other = ShardClient::new(tc.node(Role::Client, "accomplice")?, TIMEOUT);
    other.hold_grants([grant]);
    ensure!(
        denied(
            other
                .get(own.addr, ShardId::new(slice, 0), 0, 10)
                .await
                .map(drop)
        ),
        "a grant worked for another certificate"
    );

    // The victim's bytes are untouched, and the mount (with its grants) reads them.
    let after = operator
        .get(cs, victim.shard, 0, victim.layout.shard_len())
        .await?;
    ensure!(after == before, "the victim shard changed");
    ensure!(std::fs::read(mnt.join("victim"))? == data);
    Ok(())
}

/// A mount whose certificate names uid 1000 acts as that user whatever its machine sends,
/// root included: the metaserver decides, not the mount's kernel (this test runs as root,
/// which the mount's kernel lets do anything) nor a client that skips checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_limited_to_one_user_has_only_that_users_rights() -> Result<()> {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
    let tc = TestCluster::new()?;
    let (_admin, mnt) = tc.start_with_mount(3).await?;
    // Through a trusted mount, as root: a home for uid 1000 and another user's private file.
    let home = mnt.join("home");
    std::fs::create_dir(&home)?;
    chown(&home, Some(1000), Some(1000))?;
    let secret = mnt.join("secret");
    std::fs::write(&secret, b"not for uid 1000")?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    chown(&secret, Some(2000), Some(2000))?;

    let limited = tc.cluster.mount_proc(2).name();
    let certs = tc.state().join("certs").join(&limited);
    let user: MountUser = "uid=1000 gid=1000".parse()?;
    pki::issue_as(&tc.cluster.ca_dir(), Role::Client, &limited, &user, &certs)?;
    let mnt2 = tc.state().join("mnt2");
    tc.cluster.start_mount(2, &mnt2, "").await?;
    let refused = |what: &str, r: std::io::Result<()>, errno: i32| match r {
        Err(e) if e.raw_os_error() == Some(errno) => Ok(()),
        other => Err(anyhow::anyhow!("{what}: {other:?}, not errno {errno}")),
    };
    let theirs = mnt2.join("secret");
    refused("read", std::fs::read(&theirs).map(drop), libc::EACCES)?;
    refused("overwrite", std::fs::write(&theirs, b"x"), libc::EACCES)?;
    let open_up = std::fs::Permissions::from_mode(0o644);
    refused(
        "chmod",
        std::fs::set_permissions(&theirs, open_up),
        libc::EPERM,
    )?;
    refused("chown", chown(&theirs, Some(1000), None), libc::EPERM)?;
    refused("unlink", std::fs::remove_file(&theirs), libc::EACCES)?;
    refused(
        "mkdir",
        std::fs::create_dir(mnt2.join("mine")),
        libc::EACCES,
    )?;
    ensure!(std::fs::read(&secret)? == b"not for uid 1000");

    // What uid 1000 may do, it does, and what it makes is its own.
    std::fs::write(mnt2.join("home/notes"), b"mine")?;
    std::fs::set_permissions(
        mnt2.join("home/notes"),
        std::fs::Permissions::from_mode(0o600),
    )?;
    let notes = std::fs::metadata(mnt.join("home/notes"))?;
    ensure!(
        (notes.uid(), notes.gid(), notes.mode() & 0o777) == (1000, 1000, 0o600),
        "notes: {notes:?}"
    );
    ensure!(std::fs::read(mnt.join("home/notes"))? == b"mine");

    // Bytes written, then times set to a chosen time (root may, on this machine): the
    // metaservers refuse uid 1000 the times on a file it does not own, never the bytes it
    // may write, even when the file got slices since it was opened (the trusted mount
    // grew it) and the bytes can no longer go inline.
    let shared = mnt.join("shared");
    let mut expected = random_bytes(100, 7);
    std::fs::write(&shared, &expected)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666))?;
    {
        use std::io::Write;
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt2.join("shared"))?;
        let more = random_bytes(40_000, 8);
        let mut grow = std::fs::OpenOptions::new().append(true).open(&shared)?;
        grow.write_all(&more)?;
        drop(grow);
        expected.extend(more);
        f.write_all_at(b"0123456789", 0)?;
        let chosen = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let times = std::fs::FileTimes::new().set_modified(chosen);
        refused("times", f.set_times(times), libc::EPERM)?;
        f.sync_all()?;
    }
    expected[..10].copy_from_slice(b"0123456789");
    ensure!(
        std::fs::read(mnt2.join("shared"))? == expected,
        "the bytes written before refused times"
    );

    // A client that claims to be root and checks nothing itself gets no further.
    let node = Node::client(&Identity::load(&certs)?)?;
    let meta = MetaClient::new(node, tc.cluster.meta_addrs(), Duration::from_secs(20));
    let found = meta
        .query(FsQuery::Lookup {
            parent: InodeId::ROOT,
            name: b"secret".to_vec(),
        })
        .await??;
    let FsReply::Attr(attr) = found else {
        bail!("lookup: {found:?}")
    };
    let ino = attr.ino;
    let give = SetAttr {
        uid: Some(1000),
        perm: Some(0o666),
        ..SetAttr::default()
    };
    let r = meta.mutate(FsOp::SetAttr { ino, set: give }).await?;
    ensure!(r == Err(Errno::PERM), "setattr as a claimed root: {r:?}");
    let r = meta
        .query(FsQuery::Slices {
            ino,
            first: 0,
            last: 0,
        })
        .await?;
    ensure!(r.is_err_and(|e| e == Errno::ACCES), "slices read");
    let made = meta
        .mutate(FsOp::Mknod {
            parent: attr_of(&meta, b"home").await?,
            name: b"claimed".to_vec(),
            kind: FileKind::File,
            perm: 0o4755,
            umask: 0,
            rdev: 0,
            caller: Caller::ROOT,
        })
        .await??;
    let FsReply::Made { attr: made, .. } = made else {
        bail!("mknod: {made:?}")
    };
    ensure!((made.uid, made.gid) == (1000, 1000), "made as {made:?}");
    Ok(())
}

async fn attr_of(meta: &MetaClient, name: &[u8]) -> Result<InodeId> {
    match meta
        .query(FsQuery::Lookup {
            parent: InodeId::ROOT,
            name: name.to_vec(),
        })
        .await??
    {
        FsReply::Attr(a) => Ok(a.ino),
        other => bail!("lookup: {other:?}"),
    }
}

fn mkdir(name: &str) -> FsOp {
    FsOp::Mkdir {
        parent: InodeId::ROOT,
        name: name.as_bytes().to_vec(),
        perm: 0o755,
        umask: 0,
        caller: Caller::ROOT,
    }
}

/// A mkdir sent as request `seq` of session `client`, whatever session the sender owns.
fn as_session(client: ClientId, seq: u64, name: &str) -> MetaRequest {
    MetaRequest::Mutate {
        client,
        seq,
        acked_below: seq,
        op: mkdir(name),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_their_certificate_and_are_capped() -> Result<()> {
    let tc = TestCluster::new()?;
    tc.start_metaservers(3).await?;
    let meta_as = |name: &str| -> Result<MetaClient> {
        let identity = Identity::load(&tc.cluster.certs(Role::Client, name)?)?;
        Ok(MetaClient::new(
            Node::client(&identity)?,
            tc.cluster.meta_addrs(),
            Duration::from_secs(20),
        ))
    };
    let honest = meta_as("honest")?;
    honest.mutate(mkdir("mine")).await??;
    let theirs = honest.client_id();

    // Another certificate naming that session: its requests, keepalives and goodbyes are
    // refused, and the session goes on.
    let rogue = meta_as("rogue")?;
    let r = rogue.call(&as_session(theirs, 99, "forged")).await?;
    ensure!(
        r == MetaResponse::Fs(Err(Errno::PERM)),
        "a request in another's session: {r:?}"
    );
    for req in [
        MetaRequest::KeepAlive {
            client: theirs,
            open: Vec::new(),
        },
        MetaRequest::Goodbye { client: theirs },
        MetaRequest::ResumeSession { client: theirs },
    ] {
        let r = rogue.call(&req).await;
        ensure!(
            matches!(&r, Err(MetaError::Refused(why)) if why.contains("another certificate")),
            "{req:?}: {r:?}"
        );
    }
    honest.mutate(mkdir("still-mine")).await??;
    let r = honest.mutate(mkdir("forged")).await?;
    ensure!(r.is_ok(), "the forged request was applied: {r:?}");

    // One certificate opens at most MAX_SESSIONS_PER_CERTIFICATE sessions, as many live
    // keepalives; others are not held back.
    let fleet = meta_as("fleet")?;
    let max = MAX_SESSIONS_PER_CERTIFICATE as u64;
    for n in 1..=max {
        let r = fleet
            .call(&as_session(ClientId(n), 1, &format!("f{n}")))
            .await?;
        ensure!(matches!(r, MetaResponse::Fs(Ok(_))), "session {n}: {r:?}");
        let alive = MetaRequest::KeepAlive {
            client: ClientId(n),
            open: Vec::new(),
        };
        ensure!(fleet.call(&alive).await? == MetaResponse::KeepAliveAck);
    }
    let r = fleet
        .call(&as_session(ClientId(max + 1), 1, "over"))
        .await?;
    ensure!(
        r == MetaResponse::Fs(Err(Errno::USERS)),
        "session {}: {r:?}",
        max + 1
    );
    let alive = MetaRequest::KeepAlive {
        client: ClientId(max + 1),
        open: Vec::new(),
    };
    let r = fleet.call(&alive).await;
    ensure!(
        matches!(&r, Err(MetaError::Refused(why)) if why.contains("many sessions")),
        "keepalive {}: {r:?}",
        max + 1
    );
    let r = fleet.call(&as_session(ClientId(1), 2, "f1-again")).await?;
    ensure!(
        matches!(r, MetaResponse::Fs(Ok(_))),
        "an open session: {r:?}"
    );
    honest.mutate(mkdir("after")).await??;
    Ok(())
}
