//! Local LatticeFS clusters on loopback: the one code path that `scripts/cluster.sh` and
//! the integration tests use to create certificates and start, find and stop processes.
//!
//! All state lives under one directory: `ca/` (the cluster CA), `certs/<name>/`,
//! `ports.json` (the metaservers' fixed ports), `<role>-<n>/` (a process's data),
//! `<role>-<n>.pid`, `<role>-<n>.log` and `<role>-<n>.addr` (where it listens).

pub mod process;

use anyhow::{bail, Context, Result};
use lattice_common::ids::MetaserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::pki::{self, Role};
use lattice_common::policy::Policy;
use lattice_common::transport::{Identity, Node};
use lattice_common::wire::meta::{
    AdminReply, AdminRequest, ChunkserverState, ClusterStatus, MetaRequest, MetaResponse,
};
use process::{wait_for, Proc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// How long a process may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);
/// A mount may take longer: it writes out its buffers first (bounded by fs-client itself).
const MOUNT_STOP_GRACE: Duration = Duration::from_secs(30);
pub const METASERVER: &str = "metaserver";
pub const CHUNKSERVER: &str = "chunkserver";
pub const FS_CLIENT: &str = "fs-client";

/// Fixed addresses of the metaservers (Raft members find each other there across restarts).
#[derive(Default, Serialize, Deserialize)]
struct Ports {
    meta: BTreeMap<u32, u16>,
}

pub struct LocalCluster {
    pub state: PathBuf,
    pub bin_dir: PathBuf,
    ports: Mutex<Ports>,
    /// Extra arguments for every metaserver (e.g. shorter failure detection in tests).
    pub metaserver_args: Vec<String>,
    /// Extra arguments for every chunkserver started from now on.
    pub chunkserver_args: Vec<String>,
    /// Print each command before running it (what `scripts/cluster.sh` shows admins).
    pub echo: bool,
}

/// Where the cluster's programs are: `$LATTICE_BIN_DIR`, else next to the running program
/// (a test binary lives in `target/<profile>/deps`, the programs in `target/<profile>`).
pub fn default_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LATTICE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("program has no directory")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Whether something is mounted at `path` (as /proc/self/mounts shows it).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(want.as_str()))
}

/// A free UDP port on loopback (the kernel's choice).
fn free_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A free TCP port on loopback (the kernel's choice).
fn free_tcp_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// `--metrics ADDR` for a server: a free loopback port, remembered in `<name>.metrics`.
    fn metrics_args(&self, p: &Proc) -> Result<[String; 2]> {
        let addr = format!("127.0.0.1:{}", free_tcp_port()?);
        std::fs::write(self.state.join(format!("{}.metrics", p.name())), &addr)?;
        Ok(["--metrics".to_string(), addr])
    }

    /// Where a server started by this harness serves its Prometheus metrics.
    pub fn metrics_addr(&self, p: &Proc) -> Option<SocketAddr> {
        let path = self.state.join(format!("{}.metrics", p.name()));
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// Opens (creating if needed) the cluster state in `state`, with its CA.
    pub fn open(state: &Path, bin_dir: PathBuf) -> Result<LocalCluster> {
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        let state = state.canonicalize()?;
        let ca = state.join("ca");
        if !ca.join(pki::CA_CERT_FILE).exists() {
            pki::init_ca(&ca, "local")?;
        }
        let ports = match std::fs::read_to_string(state.join("ports.json")) {
            Ok(text) => serde_json::from_str(&text).context("reading ports.json")?,
            Err(_) => Ports::default(),
        };
        Ok(LocalCluster {
            state,
            bin_dir,
            ports: Mutex::new(ports),
            metaserver_args: Vec::new(),
            chunkserver_args: Vec::new(),
            echo: false,
        })
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.state.join("ca")
    }

    /// The certificate directory of `name`, issued by the cluster CA on first use.
    pub fn certs(&self, role: Role, name: &str) -> Result<PathBuf> {
        let dir = self.state.join("certs").join(name);
        if !dir.join(pki::CERT_FILE).exists() {
            pki::issue(&self.ca_dir(), role, name, &dir)?;
        }
        Ok(dir)
    }

    pub fn binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.bin_dir.join(name);
        if !path.exists() {
            bail!(
                "{} not found: build first (cargo build --release, or scripts/test.sh)",
                path.display()
            );
        }
        Ok(path)
    }

    pub fn chunkserver(&self, n: u32) -> Proc {
        Proc::new(&self.state, CHUNKSERVER, n)
    }

    pub fn metaserver(&self, n: u32) -> Proc {
        Proc::new(&self.state, METASERVER, n)
    }

    pub fn mount_proc(&self, n: u32) -> Proc {
        Proc::new(&self.state, FS_CLIENT, n)
    }

    fn spawn(&self, p: &Proc, cmd: Command) -> Result<i32> {
        if self.echo {
            let args: Vec<String> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            println!("+ {}   # log: {}", args.join(" "), p.log_file().display());
        }
        p.spawn(cmd)
    }

    fn addr_file(&self, p: &Proc) -> PathBuf {
        self.state.join(format!("{}.addr", p.name()))
    }

    /// The address a running process reported after binding.
    pub fn addr(&self, p: &Proc) -> Result<SocketAddr> {
        let path = self.addr_file(p);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().parse()?)
    }

    /// The fixed address of metaserver `n` (chosen on first use: `base + n` when a port
    /// base is given, else a free port).
    pub fn meta_addr(&self, n: u32, base: Option<u16>) -> Result<SocketAddr> {
        let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        let port = match ports.meta.get(&n) {
            Some(&p) => p,
            None => {
                let p = match base {
                    Some(b) => b + n as u16,
                    None => free_port()?,
                };
                ports.meta.insert(n, p);
                std::fs::write(
                    self.state.join("ports.json"),
                    serde_json::to_string_pretty(&*ports)?,
                )?;
                p
            }
        };
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Addresses of every metaserver this cluster has had.
    pub fn meta_addrs(&self) -> Vec<SocketAddr> {
        let ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
        ports
            .meta
            .values()
            .map(|&p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect()
    }

    /// Starts metaserver `n` unless it runs. Members `1..=founders` found the group
    /// together; a higher `n` starts empty with `--join` (add it with [`Admin::add_member`]).
    pub async fn start_metaserver(&self, n: u32, founders: u32, base: Option<u16>) -> Result<()> {
        let p = self.metaserver(n);
        if p.pid().is_some() {
            return Ok(());
        }
        let certs = self.certs(Role::Metaserver, &p.name())?;
        let addr = self.meta_addr(n, base)?;
        let addr_file = self.addr_file(&p);
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(self.binary(METASERVER)?);
        cmd.arg("serve")
            .args(["--id", &n.to_string(), "--listen", &addr.to_string()])
            .arg("--data")
            .arg(self.state.join(p.name()))
            .arg("--certs")
            .arg(&certs)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(self.metrics_args(&p)?)
            .args(&self.metaserver_args);
        if n <= founders {
            for f in 1..=founders {
                cmd.arg("--peer")
                    .arg(format!("{f}={}", self.meta_addr(f, base)?));
            }
        } else {
            cmd.arg("--join");
        }
        self.spawn(&p, cmd)?;
        self.wait_serving(&p, &addr_file).await
    }

    /// Waits until a process just started writes its address file; a process that exits
    /// first fails the wait with the end of its log (a port in use, a bad certificate).
    async fn wait_serving(&self, p: &Proc, addr_file: &Path) -> Result<()> {
        wait_for(START_TIMEOUT, &format!("{} to serve", p.name()), || async {
            p.check_running()?;
            Ok(addr_file.exists().then_some(()))
        })
        .await
    }

    /// Starts chunkserver `n` unless it runs, and waits until it serves. With metaservers
    /// configured it registers with them.
    pub async fn start_chunkserver(&self, n: u32) -> Result<()> {
        if self.chunkserver(n).pid().is_some() {
            return Ok(());
        }
        let certs = self.certs(Role::Chunkserver, &self.chunkserver(n).name())?;
        self.run_chunkserver(n, "serve", &certs).await
    }

    /// Adds one more chunkserver to the running cluster the way an admin would: a
    /// certificate from `metaserver ca issue`, then `chunkserver join`. Returns its number.
    pub async fn join_chunkserver(&self) -> Result<u32> {
        let n = self.procs(CHUNKSERVER).last().map_or(1, |p| p.n + 1);
        let name = self.chunkserver(n).name();
        let certs = self.state.join("certs").join(&name);
        let mut issue = Command::new(self.binary(METASERVER)?);
        issue
            .args(["ca", "issue", "--ca"])
            .arg(self.ca_dir())
            .args(["--role", "chunkserver", "--name", &name, "--out"])
            .arg(&certs);
        self.run_to_end(issue)?;
        self.run_chunkserver(n, "join", &certs).await?;
        Ok(n)
    }

    async fn run_chunkserver(&self, n: u32, verb: &str, certs: &Path) -> Result<()> {
        let p = self.chunkserver(n);
        let data = self.state.join(p.name()).join("data");
        let addr_file = self.addr_file(&p);
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(self.binary(CHUNKSERVER)?);
        cmd.arg(verb)
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--reserve", "0"])
            .arg("--certs")
            .arg(certs)
            .arg("--addr-file")
            .arg(&addr_file)
            .args(self.metrics_args(&p)?);
        let meta = self.meta_addrs();
        if !meta.is_empty() {
            let list: Vec<String> = meta.iter().map(|a| a.to_string()).collect();
            cmd.arg("--meta").arg(list.join(","));
        }
        cmd.args(&self.chunkserver_args);
        self.spawn(&p, cmd)?;
        self.wait_serving(&p, &addr_file).await
    }

    /// Runs a short command to its end (echoed like the others); fails if it fails.
    pub fn run_to_end(&self, mut cmd: Command) -> Result<()> {
        if self.echo {
            let args: Vec<String> = std::iter::once(cmd.get_program())
                .chain(cmd.get_args())
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            println!("+ {}", args.join(" "));
        }
        let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
        if !status.success() {
            bail!("{cmd:?} failed: {status}");
        }
        Ok(())
    }

    /// The command that drains chunkserver `id` (as the cluster map numbers it) and follows
    /// it to the end.
    pub fn drain_command(&self, id: u32) -> Result<Command> {
        let meta: Vec<String> = self.meta_addrs().iter().map(|a| a.to_string()).collect();
        let mut cmd = Command::new(self.binary(CHUNKSERVER)?);
        cmd.args([
            "drain",
            &id.to_string(),
            "--wait",
            "--meta",
            &meta.join(","),
        ])
        .arg("--certs")
        .arg(self.certs(Role::Admin, "admin")?);
        Ok(cmd)
    }

    /// Every process slot of `role` that has a pid file.
    pub fn procs(&self, role: &'static str) -> Vec<Proc> {
        let mut found: Vec<Proc> = std::fs::read_dir(&self.state)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let n = name
                    .strip_prefix(role)?
                    .strip_prefix('-')?
                    .strip_suffix(".pid")?;
                Some(Proc::new(&self.state, role, n.parse().ok()?))
            })
            .collect();
        found.sort_by_key(|p| p.n);
        found
    }

    /// Mounts the cluster at `mountpoint` with mount `n` (in the foreground, so its pid is
    /// known) unless it runs, and waits until the mount is there.
    pub async fn start_mount(&self, n: u32, mountpoint: &Path, extra_options: &str) -> Result<()> {
        let p = self.mount_proc(n);
        if p.pid().is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(mountpoint)?;
        let mountpoint = mountpoint.canonicalize()?;
        if is_mounted(&mountpoint) {
            // A mount left behind by a killed client: clear it.
            let _ = Command::new("umount").arg("-l").arg(&mountpoint).status();
        }
        let certs = self.certs(Role::Client, &p.name())?;
        let meta: Vec<String> = self.meta_addrs().iter().map(|a| a.to_string()).collect();
        let mut options = format!("certs={},allow_other", certs.display());
        if !extra_options.is_empty() {
            options = format!("{options},{extra_options}");
        }
        let mut cmd = Command::new(self.binary(FS_CLIENT)?);
        cmd.arg("-f")
            .arg(meta.join(","))
            .arg(&mountpoint)
            .arg("-o")
            .arg(options);
        std::fs::write(
            self.mountpoint_file(&p),
            mountpoint.as_os_str().as_encoded_bytes(),
        )?;
        self.spawn(&p, cmd)?;
        wait_for(START_TIMEOUT, &format!("{} to mount", p.name()), || async {
            p.check_running()?;
            Ok(is_mounted(&mountpoint).then_some(()))
        })
        .await
    }

    fn mountpoint_file(&self, p: &Proc) -> PathBuf {
        self.state.join(format!("{}.mountpoint", p.name()))
    }

    /// Where mount `p` mounts (or last mounted).
    pub fn mountpoint(&self, p: &Proc) -> Option<PathBuf> {
        std::fs::read_to_string(self.mountpoint_file(p))
            .ok()
            .map(PathBuf::from)
    }

    /// Stops a mount: SIGTERM (it writes out its buffers and unmounts); a mount left behind
    /// by a client that died is detached.
    pub fn stop_mount(&self, p: &Proc) -> Result<()> {
        p.stop(MOUNT_STOP_GRACE)?;
        if let Some(mp) = self.mountpoint(p).filter(|mp| is_mounted(mp)) {
            let _ = Command::new("umount").arg("-l").arg(&mp).status();
        }
        Ok(())
    }

    /// Stops every process of the cluster that runs: mounts first (they write out their
    /// buffers), then chunkservers, then metaservers.
    pub fn stop_all(&self) -> Result<()> {
        for p in self.procs(FS_CLIENT) {
            self.stop_mount(&p)?;
        }
        for role in [CHUNKSERVER, METASERVER] {
            for p in self.procs(role) {
                p.stop(STOP_GRACE)?;
            }
        }
        Ok(())
    }

    /// An admin client of this cluster's metaservers.
    pub fn admin(&self) -> Result<Admin> {
        let identity = Identity::load(&self.certs(Role::Admin, "admin")?)?;
        let node = Node::client(&identity)?;
        Ok(Admin {
            meta: MetaClient::new(node, self.meta_addrs(), Duration::from_secs(15)),
        })
    }
}

/// Admin requests to a local cluster (what `metaserver status` and friends send).
pub struct Admin {
    pub meta: MetaClient,
}

impl Admin {
    async fn call(&self, req: AdminRequest) -> Result<AdminReply> {
        match self.meta.call(&MetaRequest::Admin(req)).await? {
            MetaResponse::Admin(reply) => Ok(reply),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    pub async fn status(&self) -> Result<ClusterStatus> {
        match self.call(AdminRequest::Status).await? {
            AdminReply::Status(s) => Ok(*s),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// One member's applied index and state checksum.
    pub async fn digest(&self, addr: SocketAddr) -> Result<(u64, u32)> {
        match self
            .meta
            .call_at(addr, &MetaRequest::Admin(AdminRequest::Digest))
            .await?
        {
            MetaResponse::Admin(AdminReply::Digest {
                applied, digest, ..
            }) => Ok((applied, digest)),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    pub async fn add_member(&self, id: u32, addr: SocketAddr) -> Result<()> {
        self.call(AdminRequest::AddMember {
            id: MetaserverId(id as u64),
            addr,
        })
        .await
        .map(drop)
    }

    pub async fn snapshot(&self) -> Result<()> {
        self.call(AdminRequest::Snapshot).await.map(drop)
    }

    /// Sets the cluster's default redundancy policy (`metaserver policy POLICY`).
    pub async fn set_default_policy(&self, policy: Policy) -> Result<()> {
        self.call(AdminRequest::SetDefaultPolicy { policy })
            .await
            .map(drop)
    }

    /// Waits until `count` chunkservers are registered and up.
    pub async fn wait_chunkservers_up(&self, count: usize) -> Result<ClusterStatus> {
        wait_for(
            START_TIMEOUT,
            &format!("{count} chunkservers up"),
            || async {
                let s = self.status().await?;
                let up = s
                    .chunkservers
                    .iter()
                    .filter(|c| c.state == ChunkserverState::Up && c.last_heartbeat_ms.is_some())
                    .count();
                Ok((up >= count).then_some(s))
            },
        )
        .await
    }
}
