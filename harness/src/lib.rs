//! Local LatticeFS clusters on loopback: the one code path that `scripts/cluster.sh` and
//! the integration tests use to create certificates and start, find and stop processes.
//!
//! All state lives under one directory: `ca/` (the cluster CA), `certs/<name>/`,
//! `<role>-<n>/` (a process's data), `<role>-<n>.pid` and `<role>-<n>.log`.

pub mod process;

use anyhow::{bail, Context, Result};
use lattice_common::pki::{self, Role};
use process::{wait_until, Proc};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long a process may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(10);

pub struct LocalCluster {
    pub state: PathBuf,
    pub bin_dir: PathBuf,
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

impl LocalCluster {
    /// Opens (creating if needed) the cluster state in `state`, with its CA.
    pub fn open(state: &Path, bin_dir: PathBuf) -> Result<LocalCluster> {
        std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
        let state = state.canonicalize()?;
        let ca = state.join("ca");
        if !ca.join(pki::CA_CERT_FILE).exists() {
            pki::init_ca(&ca, "local")?;
        }
        Ok(LocalCluster { state, bin_dir })
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
        Proc::new(&self.state, "chunkserver", n)
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

    /// Starts chunkserver `n` unless it runs already, and waits until it serves.
    pub fn start_chunkserver(&self, n: u32) -> Result<()> {
        let p = self.chunkserver(n);
        if p.pid().is_some() {
            return Ok(());
        }
        let certs = self.certs(Role::Chunkserver, &p.name())?;
        let data = self.state.join(p.name()).join("data");
        let addr_file = self.addr_file(&p);
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(self.binary("chunkserver")?);
        cmd.arg("serve")
            .arg("--data")
            .arg(&data)
            .args(["--listen", "127.0.0.1:0", "--reserve", "0"])
            .arg("--certs")
            .arg(&certs)
            .arg("--addr-file")
            .arg(&addr_file);
        p.spawn(cmd)?;
        self.wait_serving(&p, &addr_file)
    }

    fn wait_serving(&self, p: &Proc, ready_file: &Path) -> Result<()> {
        wait_until(START_TIMEOUT, &format!("{} to serve", p.name()), || {
            if p.pid().is_none() {
                bail!(
                    "{} exited; log {}:\n{}",
                    p.name(),
                    p.log_file().display(),
                    p.log_tail()
                );
            }
            Ok(ready_file.exists())
        })
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

    /// Stops every process of the cluster that runs.
    pub fn stop_all(&self) -> Result<()> {
        for p in self.procs("chunkserver") {
            p.stop(STOP_GRACE)?;
        }
        Ok(())
    }
}
