//! Helpers shared by the integration tests: a local cluster in a temporary directory whose
//! processes are stopped (by pid) when the test ends, pass or fail.

pub mod fsx;

use anyhow::{bail, Context, Result};
use lattice_common::ids::ChunkserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::pki::Role;
use lattice_common::policy::Policy;
use lattice_common::shard_client::ShardClient;
use lattice_common::slice_io::SliceIo;
use lattice_common::transport::{Identity, Node};
use lattice_common::wire::meta::ClusterStatus;
use lattice_harness::process::wait_for;
use lattice_harness::{default_bin_dir, Admin, LocalCluster};
use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub struct TestCluster {
    pub cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn new() -> Result<TestCluster> {
        Self::with_metaserver_args(&[])
    }

    /// A cluster whose metaservers all get `args` (e.g. faster failure detection).
    pub fn with_metaserver_args(args: &[&str]) -> Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("lattice-test-").tempdir()?;
        let mut cluster = LocalCluster::open(dir.path(), default_bin_dir()?)?;
        cluster.metaserver_args = args.iter().map(|s| s.to_string()).collect();
        Ok(TestCluster { cluster, _dir: dir })
    }

    pub fn state(&self) -> &Path {
        &self.cluster.state
    }

    /// Starts `count` founding metaservers and waits for a leader.
    pub async fn start_metaservers(&self, count: u32) -> Result<Admin> {
        for n in 1..=count {
            self.cluster.start_metaserver(n, count, None).await?;
        }
        let admin = self.cluster.admin()?;
        admin.status().await?;
        Ok(admin)
    }

    /// Starts 3 metaservers and `chunkservers` chunkservers, waits until all are up, and
    /// mounts the cluster at `<state>/mnt`. The default policy suits the cluster's size
    /// (rs:4+2 from 6 chunkservers on). Returns the admin client and the mount point.
    pub async fn start_with_mount(&self, chunkservers: u32) -> Result<(Admin, std::path::PathBuf)> {
        let admin = self.start_metaservers(3).await?;
        admin
            .set_default_policy(Policy::suggested_for(chunkservers as usize))
            .await?;
        for n in 1..=chunkservers {
            self.cluster.start_chunkserver(n).await?;
        }
        admin.wait_chunkservers_up(chunkservers as usize).await?;
        let mnt = self.state().join("mnt");
        self.cluster.start_mount(1, &mnt, "").await?;
        Ok((admin, mnt))
    }

    /// A QUIC client node holding a certificate of `role` from this cluster's CA.
    pub fn node(&self, role: Role, name: &str) -> Result<Arc<Node>> {
        let dir = self.cluster.certs(role, name)?;
        Ok(Node::client(&Identity::load(&dir)?)?)
    }

    pub fn slice_io(&self, role: Role, name: &str, timeout: Duration) -> Result<SliceIo> {
        Ok(SliceIo::new(ShardClient::new(
            self.node(role, name)?,
            timeout,
        )))
    }

    pub fn meta_client(&self, name: &str) -> Result<MetaClient> {
        let node = self.node(Role::Client, name)?;
        Ok(MetaClient::new(
            node,
            self.cluster.meta_addrs(),
            Duration::from_secs(30),
        ))
    }

    /// Waits until every running metaserver has applied the same log and holds the same
    /// state; returns that applied index.
    pub async fn wait_members_agree(&self, admin: &Admin) -> Result<u64> {
        self.wait_members_agree_within(admin, Duration::from_secs(60))
            .await
    }

    /// [`TestCluster::wait_members_agree`], within `limit`.
    pub async fn wait_members_agree_within(&self, admin: &Admin, limit: Duration) -> Result<u64> {
        let addrs: Vec<_> = self
            .cluster
            .procs(lattice_harness::METASERVER)
            .into_iter()
            .filter(|p| p.pid().is_some())
            .map(|p| self.cluster.addr(&p))
            .collect::<Result<_>>()?;
        if addrs.is_empty() {
            bail!("no metaserver runs");
        }
        wait_for(limit, "every member to agree", || async {
            let mut views = Vec::new();
            for &a in &addrs {
                match admin.digest(a).await {
                    Ok(v) => views.push(v),
                    Err(_) => return Ok(None),
                }
            }
            views.dedup();
            Ok((views.len() == 1).then_some(views[0].0))
        })
        .await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop_all() {
            eprintln!("stopping the test cluster: {e:#}");
        }
        // LATTICE_KEEP_TEST_STATE=1 keeps logs and data for a post-mortem.
        if std::env::var_os("LATTICE_KEEP_TEST_STATE").is_some() {
            let dir = std::mem::replace(
                &mut self._dir,
                tempfile::tempdir().expect("a temporary directory"),
            );
            eprintln!("test cluster state kept in {}", dir.keep().display());
        }
    }
}

/// A test's size from the environment variable `name` (e.g. `LATTICE_APPENDS=20000` for a
/// run at full size by hand), else `default` (what CI's time allows).
pub fn size_from_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Reproducible random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// A child in a process group of its own, killed with everything it started when stopped
/// or dropped: `flock -c CMD`, for one, leaves CMD (the lock's real holder) running when
/// only `flock` is killed.
pub struct Group {
    child: std::process::Child,
    stopped: bool,
}

impl Group {
    pub fn spawn(cmd: &mut std::process::Command) -> Result<Group> {
        use std::os::unix::process::CommandExt;
        Ok(Group {
            child: cmd.process_group(0).spawn()?,
            stopped: false,
        })
    }

    pub fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // The group lives until the child is waited for below, so its id names no other.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command line through `sh -c` and fails with its output if it fails.
pub fn sh(cmd: &str) -> Result<String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()?;
    if !out.status.success() {
        bail!(
            "`{cmd}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Compares two trees: the same names, kinds, sizes, modes and bytes; symlinks by target.
pub fn same_tree(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (ma, mb) = (std::fs::symlink_metadata(a)?, std::fs::symlink_metadata(b)?);
    let what = |m: &std::fs::Metadata| {
        (
            m.file_type().is_dir(),
            m.file_type().is_symlink(),
            m.permissions().mode() & 0o7777,
        )
    };
    if what(&ma) != what(&mb) {
        bail!("{} and {} differ in kind or mode", a.display(), b.display());
    }
    if ma.file_type().is_symlink() {
        if std::fs::read_link(a)? != std::fs::read_link(b)? {
            bail!(
                "symlinks {} and {} point elsewhere",
                a.display(),
                b.display()
            );
        }
    } else if ma.is_dir() {
        let names = |d: &Path| -> Result<Vec<std::ffi::OsString>> {
            let mut n: Vec<_> = std::fs::read_dir(d)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()?;
            n.sort();
            Ok(n)
        };
        let (na, nb) = (names(a)?, names(b)?);
        if na != nb {
            bail!(
                "{} and {} list different entries: {na:?} vs {nb:?}",
                a.display(),
                b.display()
            );
        }
        for n in na {
            same_tree(&a.join(&n), &b.join(&n))?;
        }
    } else {
        same_file(a, b)?;
    }
    Ok(())
}

/// Compares the modification times (to the nanosecond) of everything in two trees of the
/// same shape, as `cp -a`, `tar x` and `rsync -a` keep them.
pub fn same_times(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (std::fs::symlink_metadata(a)?, std::fs::symlink_metadata(b)?);
    if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
        bail!(
            "{} has mtime {}.{:09}, {} has {}.{:09}",
            a.display(),
            ma.mtime(),
            ma.mtime_nsec(),
            b.display(),
            mb.mtime(),
            mb.mtime_nsec()
        );
    }
    if ma.is_dir() {
        for e in std::fs::read_dir(a)? {
            let name = e?.file_name();
            same_times(&a.join(&name), &b.join(&name))?;
        }
    }
    Ok(())
}

/// Byte-for-byte comparison of two files.
pub fn same_file(a: &Path, b: &Path) -> Result<()> {
    use std::io::Read;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (la, lb) = (fa.metadata()?.len(), fb.metadata()?.len());
    if la != lb {
        bail!("{} is {la} bytes, {} is {lb}", a.display(), b.display());
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut at = 0u64;
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(());
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            let i = ba[..n]
                .iter()
                .zip(&bb[..n])
                .position(|(x, y)| x != y)
                .unwrap_or(0);
            bail!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                at + i as u64
            );
        }
        at += n as u64;
    }
}

/// The body of `GET path` from a plain HTTP server (a process's metrics endpoint).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("GET {path} from {addr}: {out}"),
    }
}

/// Counter `name` from the Prometheus metrics at `addr`. A busy process gets a few tries; one
/// that never answers is an error, not a zero that would skew a difference.
pub fn counter(addr: Option<std::net::SocketAddr>, name: &str) -> Result<u64> {
    let addr = addr.with_context(|| format!("no metrics address for {name}"))?;
    let mut tries = 0;
    let text = loop {
        match http_get(addr, "/metrics") {
            Ok(text) => break text,
            Err(e) if tries >= 5 => return Err(e.context(format!("scraping {addr}"))),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(200 << tries));
            }
        }
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("{addr} has no counter {name}"))
}

/// Counter `name` summed over the running chunkservers among `1..=count` of `tc` (a killed
/// one's counter went with it).
pub fn chunkservers_counter(tc: &TestCluster, count: u32, name: &str) -> Result<u64> {
    let mut sum = 0;
    for n in 1..=count {
        let server = tc.cluster.chunkserver(n);
        if server.pid().is_some() {
            sum += counter(tc.cluster.metrics_addr(&server), name)
                .with_context(|| format!("chunkserver-{n}"))?;
        }
    }
    Ok(sum)
}

/// The id the metaservers gave the chunkserver called `name`.
pub fn id_of(status: &ClusterStatus, name: &str) -> Result<ChunkserverId> {
    status
        .chunkservers
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.id)
        .with_context(|| format!("{name} is not in the cluster map"))
}

/// Waits until `check` holds for the cluster status.
pub async fn wait_status(
    admin: &Admin,
    limit: Duration,
    what: &str,
    check: impl Fn(&ClusterStatus) -> bool,
) -> Result<ClusterStatus> {
    wait_for(limit, what, || async {
        let s = admin.status().await?;
        Ok(check(&s).then_some(s))
    })
    .await
}
