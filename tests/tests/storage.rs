//! The storage core with real chunkserver processes on loopback. Readers and writers here
//! hold admin certificates: a mount's need grants from a metaserver (see `security.rs`).

use anyhow::Result;
use bytes::Bytes;
use lattice_common::codec;
use lattice_common::ids::{ChunkserverId, ShardId, ShardIndex, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::pki::{self, Role};
use lattice_common::shard_client::{ShardClient, ShardError};
use lattice_common::slice_io::{ShardTarget, SliceError};
use lattice_common::transport::{Identity, Node};
use lattice_common::wire::{ChunkResponse, ErrorKind, ShardSource};
use lattice_tests::{chunkservers_counter, random_bytes, TestCluster};
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
const GET_BYTES: &str = "lattice_chunkserver_get_bytes_total";

async fn start(tc: &TestCluster, count: u32) -> Result<Vec<ShardTarget>> {
    let mut servers = Vec::new();
    for n in 1..=count {
        tc.cluster.start_chunkserver(n).await?;
        let addr = tc.cluster.addr(&tc.cluster.chunkserver(n))?;
        servers.push(ShardTarget {
            server: ChunkserverId(n),
            addr,
        });
    }
    Ok(servers)
}

/// Shard i of slice s goes to server (s + i) mod N: every server holds some of each role.
fn placement(servers: &[ShardTarget], slice: u64, shards: usize) -> Vec<ShardTarget> {
    (0..shards)
        .map(|i| servers[(slice as usize + i) % servers.len()])
        .collect()
}

/// Every shard placed: the targets a slice write takes.
fn all(targets: &[ShardTarget]) -> Vec<Option<ShardTarget>> {
    targets.iter().copied().map(Some).collect()
}

fn layout(policy: &str, len: usize) -> SliceLayout {
    SliceLayout::new(policy.parse().unwrap(), len as u64, 256 << 10).unwrap()
}

/// The file of a shard under a chunkserver's data directory.
fn shard_file(tc: &TestCluster, server: u32, shard: ShardId) -> PathBuf {
    tc.state()
        .join(format!("chunkserver-{server}/data/shards"))
        .join(format!("{:02x}", shard.slice.0 & 0xff))
        .join(format!("{}.{}", shard.slice, shard.index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs_4_2_survives_two_kill9() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 6).await?;
    let io = tc.slice_io(Role::Admin, "writer", TIMEOUT)?;
    const SLICE: usize = 4 << 20;
    let data = random_bytes(64 << 20, 42);
    for (s, bytes) in data.chunks(SLICE).enumerate() {
        let l = layout("rs:4+2", bytes.len());
        let targets = placement(&servers, s as u64, 6);
        io.write(
            SliceId(s as u64),
            l,
            Bytes::copy_from_slice(bytes),
            &all(&targets),
        )
        .await?;
    }

    for n in [2, 5] {
        assert!(
            tc.cluster.chunkserver(n).kill9(),
            "chunkserver-{n} was not running"
        );
    }
    // Known-dead servers are left out of the targets half the time, and timed out on otherwise.
    for (s, bytes) in data.chunks(SLICE).enumerate() {
        let l = layout("rs:4+2", bytes.len());
        let targets: Vec<Option<ShardTarget>> = placement(&servers, s as u64, 6)
            .into_iter()
            .map(|t| (s % 2 == 0 || ![2, 5].contains(&t.server.0)).then_some(t))
            .collect();
        let read = io
            .read(SliceId(s as u64), l, &targets, 0, bytes.len() as u64)
            .await?;
        assert!(
            read.data == bytes,
            "slice {s} differs after losing two servers"
        );
        // Every shard read around was on a dead server, and every lost data shard was.
        let placed = placement(&servers, s as u64, 6);
        for p in &read.problems {
            assert!([2, 5].contains(&placed[p.index].server.0), "slice {s}: {p}");
        }
        let data_lost = (0..4)
            .filter(|&i| [2, 5].contains(&placed[i].server.0))
            .count();
        let read_around: std::collections::HashSet<usize> = read
            .problems
            .iter()
            .map(|p| p.index)
            .filter(|&i| i < 4)
            .collect();
        assert_eq!(
            read_around.len(),
            data_lost,
            "slice {s}: {:?}",
            read.problems
        );
        // Small unaligned ranges too: each is rebuilt from the same range of survivors.
        for (off, len) in [(1, 1), (300_000, 5000), (bytes.len() as u64 - 7, 7)] {
            let part = io.read(SliceId(s as u64), l, &targets, off, len).await?;
            assert_eq!(part.data, &bytes[off as usize..(off + len) as usize]);
        }
    }
    // A third loss is one more than rs:4+2 tolerates: a clear error, not wrong bytes.
    tc.cluster.chunkserver(1).kill9();
    let l = layout("rs:4+2", SLICE);
    let targets = all(&placement(&servers, 0, 6));
    match io.read(SliceId(0), l, &targets, 0, SLICE as u64).await {
        Err(SliceError::Lost { problems, .. }) => assert!(problems.len() >= 3),
        other => panic!("expected a lost slice, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_read_around_and_reported() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 6).await?;
    let io = tc.slice_io(Role::Admin, "reader", TIMEOUT)?;
    let data = random_bytes(3 << 20, 7);
    let l = layout("rs:4+2", data.len());
    let targets = placement(&servers, 0, 6);
    io.write(SliceId(0x77), l, Bytes::from(data.clone()), &all(&targets))
        .await?;

    // Damage data shard 1, 100 KiB into its bytes (past the 4 KiB aligned header).
    let shard = ShardId::new(SliceId(0x77), 1);
    let holder = targets[1].server.0;
    let path = shard_file(&tc, holder, shard);
    let mut file = std::fs::read(&path)?;
    let at = 4096 + 100_000;
    file[at] ^= 0x01;
    std::fs::write(&path, file)?;

    let read = io
        .read(SliceId(0x77), l, &all(&targets), 0, data.len() as u64)
        .await?;
    assert!(read.data == data, "bytes differ after a flipped bit");
    assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
    assert_eq!(read.problems[0].index, 1);
    assert!(
        matches!(read.problems[0].error, ShardError::Corrupt(_)),
        "{:?}",
        read.problems
    );

    let status = io.client().status(targets[1].addr).await?;
    assert!(status.health.checksum_errors >= 1, "{status:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 1).await?;
    let addr = servers[0].addr;

    let other = tempfile::tempdir()?;
    pki::init_ca(&other.path().join("ca"), "impostor")?;
    pki::issue(
        &other.path().join("ca"),
        Role::Admin,
        "mallory",
        &other.path().join("mallory"),
    )?;
    let mallory = Node::client(&Identity::load(&other.path().join("mallory"))?)?;
    let client = ShardClient::new(mallory, TIMEOUT);
    assert!(
        client.ping(addr).await.is_err(),
        "a foreign certificate was accepted"
    );
    let l = layout("mirror:1", 10);
    let put = client
        .put(
            addr,
            ShardId::new(SliceId(1), 0),
            l,
            Bytes::from_static(&[9; 10]),
        )
        .await;
    assert!(put.is_err(), "a foreign certificate could store a shard");

    // The cluster's own admin sees that nothing was stored.
    let admin = ShardClient::new(tc.node(Role::Admin, "admin")?, TIMEOUT);
    assert_eq!(admin.ping(addr).await?, "chunkserver-1");
    assert!(admin.list(addr, None, 10).await?.0.is_empty());
    let log = std::fs::read_to_string(tc.cluster.chunkserver(1).log_file())?;
    assert!(
        log.contains("refused connection"),
        "refusal not logged:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunkserver_rebuilds_a_shard_from_its_peers() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 6).await?;
    let io = tc.slice_io(Role::Admin, "writer", TIMEOUT)?;
    let data = random_bytes((5 << 20) + 12345, 3);
    let l = layout("rs:3+2", data.len());
    let targets = placement(&servers, 0, 5);
    let shards = io
        .write(SliceId(9), l, Bytes::from(data), &all(&targets))
        .await?;

    // Shard 4 (parity) and shard 0 (data) are lost; chunkserver 6 holds nothing of the
    // slice and rebuilds both from the three survivors, asked by an admin.
    let admin = ShardClient::new(tc.node(Role::Admin, "admin")?, Duration::from_secs(60));
    for lost in [4usize, 0] {
        let id = ShardId::new(SliceId(9), lost as u16);
        assert!(admin.delete(targets[lost].addr, id).await?);
        let sources: Vec<ShardSource> = (0..5)
            .filter(|&i| i != 4 && i != 0)
            .map(|i| ShardSource {
                index: ShardIndex(i as u16),
                server: targets[i].server,
                addr: targets[i].addr,
            })
            .collect();
        let bytes = admin.rebuild(servers[5].addr, id, l, None, sources).await?;
        assert_eq!(bytes, l.shard_len());
        let rebuilt = admin.get(servers[5].addr, id, 0, l.shard_len()).await?;
        assert!(rebuilt == shards[lost], "rebuilt shard {lost} differs");
    }

    // A mount may neither delete nor order rebuilds.
    let client = ShardClient::new(tc.node(Role::Client, "mount")?, TIMEOUT);
    match client
        .delete(targets[1].addr, ShardId::new(SliceId(9), 1))
        .await
    {
        Err(ShardError::Remote(e)) => assert_eq!(e.kind, ErrorKind::Denied),
        other => panic!("a client deleted a shard: {other:?}"),
    }
    Ok(())
}

/// Grid parity end to end: `grid:2x2+1` (9 shards for 4) reads every byte back with any 3
/// of its servers killed, and a lost shard is rebuilt from its row or column alone: 2
/// shards read, not the 4 Reed-Solomon would read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_parity_survives_three_kill9_and_rebuilds_from_one_line() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 10).await?;
    let nine = &servers[..9];
    let io = tc.slice_io(Role::Admin, "writer", TIMEOUT)?;
    const SLICE: usize = 3 << 20;
    let data = random_bytes(4 * SLICE - 4321, 8);
    let mut stored = Vec::new();
    for (s, bytes) in data.chunks(SLICE).enumerate() {
        let l = layout("grid:2x2+1", bytes.len());
        let targets = placement(nine, s as u64, 9);
        let shards = io
            .write(
                SliceId(s as u64),
                l,
                Bytes::copy_from_slice(bytes),
                &all(&targets),
            )
            .await?;
        stored.push((l, targets, shards));
    }

    // A lost shard is rebuilt on server 10 from every survivor offered; it reads one line.
    let admin = ShardClient::new(tc.node(Role::Admin, "admin")?, Duration::from_secs(60));
    let (l, targets, shards) = &stored[0];
    for lost in [0usize, 8] {
        let id = ShardId::new(SliceId(0), lost as u16);
        let sources: Vec<ShardSource> = (0..9)
            .filter(|&i| i != lost)
            .map(|i| ShardSource {
                index: ShardIndex(i as u16),
                server: targets[i].server,
                addr: targets[i].addr,
            })
            .collect();
        // A read slower than its peers brings in another line: try again then (a code that
        // read K shards, or more than one line, would do so every time).
        let mut reads = Vec::new();
        for _ in 0..3 {
            let before = chunkservers_counter(&tc, 9, GET_BYTES)?;
            admin
                .rebuild(servers[9].addr, id, *l, None, sources.clone())
                .await?;
            reads.push(chunkservers_counter(&tc, 9, GET_BYTES)? - before);
            if reads.last() == Some(&(2 * l.shard_len())) {
                break;
            }
            admin.delete(servers[9].addr, id).await?;
        }
        assert_eq!(
            reads.last(),
            Some(&(2 * l.shard_len())),
            "rebuilding shard {lost} of {} bytes read {reads:?} bytes",
            l.shard_len()
        );
        let rebuilt = admin.get(servers[9].addr, id, 0, l.shard_len()).await?;
        assert!(rebuilt == shards[lost], "rebuilt shard {lost} differs");
    }

    let dead = [2u32, 5, 6];
    for n in dead {
        assert!(
            tc.cluster.chunkserver(n).kill9(),
            "chunkserver-{n} was not running"
        );
    }
    for (s, (l, targets, _)) in stored.iter().enumerate() {
        let bytes = &data[s * SLICE..(s * SLICE + l.data_len as usize)];
        let targets: Vec<Option<ShardTarget>> = targets
            .iter()
            .map(|t| (s % 2 == 0 || !dead.contains(&t.server.0)).then_some(*t))
            .collect();
        let read = io
            .read(SliceId(s as u64), *l, &targets, 0, l.data_len)
            .await?;
        assert!(
            read.data == bytes,
            "slice {s} differs after losing three servers"
        );
        for (off, len) in [(1, 1), (300_000, 5000), (l.data_len - 7, 7)] {
            let part = io.read(SliceId(s as u64), *l, &targets, off, len).await?;
            assert_eq!(part.data, &bytes[off as usize..(off + len) as usize]);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_errors_and_the_server_lives_on() -> Result<()> {
    let tc = TestCluster::new()?;
    let servers = start(&tc, 1).await?;
    let addr = servers[0].addr;
    let node = tc.node(Role::Client, "fuzzer")?;

    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        (u32::MAX).to_le_bytes().to_vec(),
        [6u32.to_le_bytes().to_vec(), vec![1, 0, 250, 250, 250, 250]].concat(),
        [4u32.to_le_bytes().to_vec(), vec![9, 9, 0, 0]].concat(),
    ];
    for g in &garbage {
        let (mut send, mut recv) = node.open(addr, Role::Chunkserver).await?;
        send.write_all(g).await?;
        send.finish()?;
        let resp: Result<ChunkResponse, _> = codec::read_frame(&mut recv).await;
        match resp {
            Ok(ChunkResponse::Error(e)) => assert_eq!(e.kind, ErrorKind::Invalid),
            other => panic!("garbage {g:?} got {other:?}"),
        }
    }

    // Well-formed requests with bad arguments (from an operator: a mount would need grants).
    let client = ShardClient::new(tc.node(Role::Admin, "operator")?, TIMEOUT);
    let l = layout("mirror:2", 1000);
    let id = ShardId::new(SliceId(5), 0);
    // A shard index outside its policy, a read past the end, an unknown shard.
    assert!(client
        .put(
            addr,
            ShardId::new(SliceId(5), 2),
            l,
            Bytes::from(vec![1; 1000])
        )
        .await
        .is_err());
    client.put(addr, id, l, Bytes::from(vec![1; 1000])).await?;
    assert!(client.get(addr, id, 990, 11).await.is_err());
    assert_eq!(
        client.get(addr, ShardId::new(SliceId(6), 0), 0, 1).await,
        Err(ShardError::NotFound)
    );
    assert_eq!(client.get(addr, id, 990, 10).await?, vec![1; 10]);
    assert_eq!(client.ping(addr).await?, "chunkserver-1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_an_error_to_the_writer() -> Result<()> {
    let tc = TestCluster::new()?;
    // chunkserver-1's data directory is a 4 MiB tmpfs.
    let data = tc.state().join("chunkserver-1/data");
    std::fs::create_dir_all(&data)?;
    let _mount = TmpfsMount::new(&data, "4m")?;
    let servers = start(&tc, 1).await?;
    let addr = servers[0].addr;
    let client = ShardClient::new(tc.node(Role::Admin, "writer")?, TIMEOUT);

    let small = layout("mirror:1", 1 << 20);
    client
        .put(
            addr,
            ShardId::new(SliceId(1), 0),
            small,
            random_bytes(1 << 20, 1).into(),
        )
        .await?;
    let big = layout("mirror:1", 8 << 20);
    match client
        .put(
            addr,
            ShardId::new(SliceId(2), 0),
            big,
            random_bytes(8 << 20, 2).into(),
        )
        .await
    {
        Err(ShardError::NoSpace(_)) => {}
        other => panic!("expected no space, got {other:?}"),
    }
    // Nothing half-written stays behind, and what was stored is intact.
    assert_eq!(
        client.get(addr, ShardId::new(SliceId(2), 0), 0, 1).await,
        Err(ShardError::NotFound)
    );
    assert_eq!(std::fs::read_dir(data.join("tmp"))?.count(), 0);
    assert_eq!(
        client
            .get(addr, ShardId::new(SliceId(1), 0), 0, 1 << 20)
            .await?,
        random_bytes(1 << 20, 1)
    );
    tc.cluster.stop_all()?;
    Ok(())
}

/// A tmpfs mounted for the life of a test (needs root, as CI has).
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(path: &std::path::Path, size: &str) -> Result<TmpfsMount> {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()?;
        anyhow::ensure!(
            status.success(),
            "mounting a tmpfs at {} (needs root)",
            path.display()
        );
        Ok(TmpfsMount(path.to_path_buf()))
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn serve_refuses_a_foreign_data_directory_untouched() -> Result<()> {
    use std::io::Read;
    let tc = TestCluster::new()?;
    let home = tc.state().join("someones-home");
    std::fs::create_dir_all(home.join("tmp"))?;
    std::fs::write(home.join("notes.txt"), "keep me")?;
    // Named like a chunkserver's unfinished write, which a store deletes at start.
    let lookalike = home.join("tmp/0000000000000001.0.42.7");
    std::fs::write(&lookalike, "keep me too")?;
    let certs = tc.cluster.certs(Role::Chunkserver, "chunkserver-1")?;
    let mut child = std::process::Command::new(tc.cluster.binary(lattice_harness::CHUNKSERVER)?)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&home)
        .arg("--certs")
        .arg(&certs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            // Ours to stop: it is serving from someone's directory.
            child.kill()?;
            child.wait()?;
            anyhow::bail!("chunkserver serves from a foreign directory");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("not a LatticeFS data directory")
            && stderr.contains(&home.display().to_string()),
        "{stderr}"
    );
    let mut left: Vec<String> = std::fs::read_dir(&home)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    left.sort();
    assert_eq!(left, ["notes.txt", "tmp"]);
    assert_eq!(std::fs::read_to_string(&lookalike)?, "keep me too");
    Ok(())
}
