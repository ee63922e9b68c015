//! `fs-client`: mounts a LatticeFS cluster with FUSE.
//!
//! `fs-client SOURCE MOUNTPOINT -o certs=DIR[,opts]` where SOURCE lists metaserver addresses
//! (`host:port,host:port`). The same form is what mount(8) passes to a mount helper, so with
//! `fs-client` installed as `/sbin/mount.fuse.latticefs`, `mount -t fuse.latticefs` and
//! /etc/fstab lines work.

mod client;
mod compact;
mod dir_attrs;
mod extents;
mod file_state;
mod fuse_fs;
mod landings;
mod metrics;
mod options;
mod readahead;
mod reader;
mod statahead;
mod stop;
mod unlinks;
mod writer;

use anyhow::{bail, Context, Result};
use clap::Parser;
use lattice_common::ids::InodeId;
use lattice_common::meta_client::MetaClient;
use lattice_common::shard_client::ShardClient;
use lattice_common::slice_io::SliceIo;
use lattice_common::transport::{Identity, Node};
use options::Options;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "Mount a LatticeFS cluster",
    long_about = "Mount a LatticeFS cluster.\n\nExample:\n  fs-client 127.0.0.1:7101,127.0.0.1:7102 /mnt/lattice -o certs=/etc/lattice/client\n\n\
Options (-o, comma separated): certs=DIR (the mount's ca.pem, cert.pem, key.pem; or LATTICE_CERTS), \
log=FILE, attr_timeout=SECS (1), write_buffer=SIZE (32M), flush_after=SECS (5), io_wait=SECS (60: \
how long a write waits for enough chunkservers to store it, at least K+1 shards of rs:K+M, and a read for \
enough to read it, before failing with EIO), metrics=IP:PORT \
(Prometheus metrics on /metrics), allow_other, \
allow_root, ro, rw, nosuid, nodev, noexec, noatime, fsname=NAME.\n\n\
Runs in the background once mounted unless -f is given; SIGTERM writes out buffered data and unmounts."
)]
struct Cli {
    /// Metaserver addresses, comma separated (any member of the group will do).
    source: String,
    /// Where to mount.
    mountpoint: PathBuf,
    /// Mount options, comma separated; repeatable.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (log to stderr).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Accepted for mount(8) compatibility: do not write /etc/mtab.
    #[arg(short = 'n', hide = true)]
    no_mtab: bool,
    /// Accepted for mount(8) compatibility: tolerate unknown options.
    #[arg(short = 's', hide = true)]
    sloppy: bool,
    /// Accepted for mount(8) compatibility.
    #[arg(short = 'v', hide = true)]
    verbose: bool,
}

/// Parsed and checked before anything else happens, so mistakes are reported at once.
struct Plan {
    meta: Vec<SocketAddr>,
    mountpoint: PathBuf,
    certs: PathBuf,
    opts: Options,
    foreground: bool,
}

fn plan(cli: Cli) -> Result<Plan> {
    let meta = cli
        .source
        .split(',')
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .with_context(|| format!("{a:?} is not a metaserver address (host:port)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut opts = Options::default();
    for list in &cli.options {
        if let Err(e) = opts.apply(list) {
            if !cli.sloppy {
                bail!(e);
            }
        }
    }
    opts.name_source(&cli.source, nix::unistd::geteuid().is_root());
    let certs = opts
        .certs
        .clone()
        .or_else(|| std::env::var_os("LATTICE_CERTS").map(PathBuf::from))
        .context("no client certificate: give -o certs=DIR (or set LATTICE_CERTS)")?;
    if !cli.mountpoint.is_dir() {
        bail!(
            "mount point {} is not a directory",
            cli.mountpoint.display()
        );
    }
    Ok(Plan {
        meta,
        mountpoint: cli.mountpoint.canonicalize()?,
        certs,
        opts,
        foreground: cli.foreground,
    })
}

fn main() {
    let cli = Cli::parse();
    let plan = match plan(cli) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("fs-client: {e:#}");
            std::process::exit(1);
        }
    };
    // A background mount forks first (before any thread exists); the parent waits until the
    // child reports the mount ready or failed, and exits accordingly.
    let ready = if plan.foreground {
        None
    } else {
        Some(daemonize())
    };
    let (foreground, logged) = (plan.foreground, plan.opts.log.is_some());
    if let Err(e) = run(plan, ready) {
        // In the background the waiting parent prints the verdict; the log keeps it too.
        if foreground {
            eprintln!("fs-client: {e:#}");
        } else if logged {
            error!("{e:#}");
        }
        std::process::exit(1);
    }
}

/// Forks; the parent waits for the child's verdict and exits with it. Returns the write
/// end of the verdict pipe in the child.
fn daemonize() -> std::fs::File {
    let (read, write) = nix::unistd::pipe().expect("a pipe");
    // SAFETY: no threads exist yet (nothing has started the runtime), so fork is safe.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { .. }) => {
            drop(write);
            let mut verdict = String::new();
            let _ = std::fs::File::from(read).read_to_string(&mut verdict);
            match verdict.strip_prefix("ok") {
                Some(_) => std::process::exit(0),
                None => {
                    let why = verdict.trim();
                    eprintln!(
                        "fs-client: {}",
                        if why.is_empty() {
                            "mount process died"
                        } else {
                            why
                        }
                    );
                    std::process::exit(1);
                }
            }
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read);
            let _ = nix::unistd::setsid();
            std::fs::File::from(write)
        }
        Err(e) => {
            eprintln!("fs-client: fork: {e}");
            std::process::exit(1);
        }
    }
}

/// Points stdin and stdout at /dev/null and stderr at the log (or /dev/null).
fn detach_stdio(log: Option<&PathBuf>) -> Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let err: OwnedFd = match log {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening log {}", path.display()))?
            .into(),
        None => null.try_clone()?.into(),
    };
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    nix::unistd::dup2(null.as_raw_fd(), 1)?;
    nix::unistd::dup2(err.as_raw_fd(), 2)?;
    Ok(())
}

/// The background mount's verdict to the waiting parent: sent once, then the pipe closes.
struct Verdict(std::sync::Mutex<Option<std::fs::File>>);

impl Verdict {
    fn send(&self, msg: &str) {
        if let Some(mut f) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = f.write_all(msg.as_bytes());
        }
    }
}

fn run(plan: Plan, ready: Option<std::fs::File>) -> Result<()> {
    let background = ready.is_some();
    let verdict = Verdict(std::sync::Mutex::new(ready));
    let outcome = mount_and_serve(&plan, background, &verdict);
    if let Err(e) = &outcome {
        verdict.send(&format!("{e:#}"));
    }
    outcome
}

fn mount_and_serve(plan: &Plan, background: bool, verdict: &Verdict) -> Result<()> {
    if background && plan.opts.log.is_some() {
        detach_stdio(plan.opts.log.as_ref())?;
    }
    // A background mount without a log only has the terminal until it detaches: warnings only.
    lattice_common::logging::init_with(if background && plan.opts.log.is_none() {
        "warn"
    } else {
        "info"
    });
    let runtime = tokio::runtime::Runtime::new()?;
    let identity = Identity::load(&plan.certs)?;
    let trusted = lattice_common::pki::certificate_der(&plan.certs)
        .and_then(|der| lattice_common::pki::peer_name(&der))
        .context("reading the mount's certificate")?
        .user
        == lattice_common::mount_user::MountUser::Trusted;
    let client = runtime.block_on(async {
        let node = Node::client(&identity)?;
        let backend = file_state::Backend {
            meta: MetaClient::new(node.clone(), plan.meta.clone(), Duration::from_secs(30)),
            io: SliceIo::new(ShardClient::new(node, Duration::from_secs(10))),
            slice_ttl: plan.opts.attr_timeout,
            io_wait: plan.opts.io_wait,
            stats: metrics::Stats::default(),
            landings: Default::default(),
        };
        let tuning = client::Tuning {
            attr_ttl: plan.opts.attr_timeout,
            write_buffer: plan.opts.write_buffer,
            flush_after: plan.opts.flush_after,
            answer_unlinks: trusted,
        };
        let client = client::Client::new(backend, tuning);
        if let Some(at) = plan.opts.metrics {
            let c = client.clone();
            let render: lattice_common::metrics::Render = std::sync::Arc::new(move || {
                let text = c.backend.stats.render(c.backend.io.stats());
                Box::pin(async move { text })
            });
            lattice_common::metrics::serve(at, render)
                .await
                .with_context(|| format!("serving metrics on {at}"))?;
        }
        // Refuse to mount what cannot be reached, and say why.
        let probe = MetaClient::new(
            Node::client(&identity)?,
            plan.meta.clone(),
            Duration::from_secs(10),
        );
        let root = lattice_common::wire::meta::FsQuery::GetAttr { ino: InodeId::ROOT };
        probe
            .query(root)
            .await
            .with_context(|| {
                format!(
                    "cannot reach any metaserver at {}",
                    plan.meta
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })?
            .map_err(|e| anyhow::anyhow!("the metaserver refused to show the root: {e}"))?;
        anyhow::Ok(client)
    })?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let fs = fuse_fs::LatticeFs::new(client.clone(), runtime.handle().clone(), in_flight.clone());
    let mut session = fuser::Session::new(fs, &plan.mountpoint, &plan.opts.mount)
        .with_context(|| format!("mounting at {}", plan.mountpoint.display()))?;
    info!(mountpoint = %plan.mountpoint.display(), meta = ?plan.meta, "mounted");
    verdict.send("ok");
    if background && plan.opts.log.is_none() {
        detach_stdio(None)?;
    }

    client.set_notifier(session.notifier());
    let mut unmounter = session.unmount_callable();
    let flusher = client.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            flusher.flush_old();
        }
    });
    runtime.spawn(client.clone().keep_alive());
    let stopper = client.clone();
    let mountpoint = plan.mountpoint.clone();
    let connection = stop::connection_of(&mountpoint);
    runtime.spawn(async move {
        lattice_common::transport::shutdown_signal().await;
        info!(mountpoint = %mountpoint.display(), "signalled: writing out buffers and unmounting");
        if tokio::time::timeout(stop::FLUSH_LIMIT, stopper.flush_all())
            .await
            .is_err()
        {
            warn!(
                "buffers not written out within {:?}: stopping anyway",
                stop::FLUSH_LIMIT
            );
        }
        let _ = tokio::time::timeout(stop::GOODBYE_LIMIT, stopper.goodbye()).await;
        // fuser reports a failed unmount only in its log: look at the mount table instead.
        let _ = unmounter.unmount();
        if stop::connection_of(&mountpoint).is_some() {
            // Busy (a process has a file open or its directory here): detach it now, let
            // requests being served finish for a moment, then end the connection so that
            // nobody waits on it for ever, and go.
            warn!("the mount is in use: detaching it and ending its connection");
            stop::detach(&mountpoint);
            stop::drain(&in_flight).await;
            if let Some(c) = connection {
                stop::abort(c);
            }
            info!("stopped");
            std::process::exit(0);
        }
    });
    session.run().context("serving the mount")?;
    runtime.block_on(client.flush_all());
    info!("unmounted");
    Ok(())
}
