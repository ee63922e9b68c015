//! `lattice-harness`: what `scripts/cluster.sh` runs. Starts, inspects and stops a local
//! cluster on loopback whose state lives under `$LATTICE_STATE`.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lattice_common::policy::Policy;
use lattice_harness::{
    default_bin_dir, is_mounted, LocalCluster, CHUNKSERVER, FS_CLIENT, METASERVER,
};
use std::path::PathBuf;
use std::process::Command;

#[derive(Parser)]
#[command(about = "Start, inspect and stop a local LatticeFS cluster (behind scripts/cluster.sh)")]
struct Cli {
    /// Where all cluster state lives.
    #[arg(long, env = "LATTICE_STATE", default_value = ".lattice")]
    state: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start whatever is not running (metaservers, chunkservers, the mount) and wait for it.
    Up {
        #[arg(long, env = "LATTICE_METASERVERS", default_value_t = 3)]
        metaservers: u32,
        #[arg(long, env = "LATTICE_CHUNKSERVERS", default_value_t = 6)]
        chunkservers: u32,
        #[arg(long, env = "LATTICE_MOUNT", default_value = "mnt")]
        mount: PathBuf,
        /// Metaserver n listens on 127.0.0.1:(base + n).
        #[arg(long, env = "LATTICE_PORT_BASE", default_value_t = 7100)]
        port_base: u16,
        /// The default redundancy policy of a new cluster [rs:4+2 from 6 chunkservers on,
        /// else mirror:N]; a running cluster keeps its own (`metaserver policy` changes it).
        #[arg(long, env = "LATTICE_POLICY")]
        policy: Option<Policy>,
    },
    /// Unmount and stop everything this state directory started.
    Down,
    /// Add one more chunkserver to the running cluster (`metaserver ca issue`, then
    /// `chunkserver join`).
    Join,
    /// Drain chunkserver ID (its id in `status`) and follow it until it holds nothing
    /// (`chunkserver drain ID --wait`).
    Drain { id: u32 },
    /// Show the processes of this cluster and what the metaservers say (`metaserver status`).
    Status {
        /// Print the metaservers' view as JSON only.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut cluster = LocalCluster::open(&cli.state, default_bin_dir()?)?;
    cluster.echo = true;
    match cli.command {
        Cmd::Up {
            metaservers,
            chunkservers,
            mount,
            port_base,
            policy,
        } => tokio::runtime::Runtime::new()?.block_on(async {
            let policy = policy.unwrap_or(Policy::suggested_for(chunkservers as usize));
            cluster.metaserver_args = vec!["--default-policy".into(), policy.to_string()];
            for n in 1..=metaservers {
                cluster
                    .start_metaserver(n, metaservers, Some(port_base))
                    .await?;
            }
            let admin = cluster.admin()?;
            admin
                .status()
                .await
                .context("waiting for a metaserver leader")?;
            // Joined servers (beyond the configured count) come back too.
            let joined = cluster.procs(CHUNKSERVER).last().map_or(0, |p| p.n);
            let all = chunkservers.max(joined);
            for n in 1..=all {
                cluster.start_chunkserver(n).await?;
            }
            admin.wait_chunkservers_up(chunkservers as usize).await?;
            cluster.start_mount(1, &mount, "").await?;
            println!(
                "cluster up: {metaservers} metaservers, {chunkservers} chunkservers, mounted at {}",
                mount.display()
            );
            Ok(())
        }),
        Cmd::Join => tokio::runtime::Runtime::new()?.block_on(async {
            let n = cluster.join_chunkserver().await?;
            println!("chunkserver-{n} joined the cluster");
            Ok(())
        }),
        Cmd::Drain { id } => cluster.run_to_end(cluster.drain_command(id)?),
        Cmd::Down => {
            cluster.stop_all()?;
            println!("cluster down (state kept in {})", cluster.state.display());
            Ok(())
        }
        Cmd::Status { json } => {
            if !json {
                for role in [METASERVER, CHUNKSERVER, FS_CLIENT] {
                    for p in cluster.procs(role) {
                        let state = match p.pid() {
                            Some(pid) => format!("running (pid {pid})"),
                            None => "not running".to_string(),
                        };
                        let metrics = cluster
                            .metrics_addr(&p)
                            .map_or(String::new(), |a| format!(", metrics http://{a}/metrics"));
                        let extra = match cluster.mountpoint(&p) {
                            Some(mp) if role == FS_CLIENT => format!(
                                " at {} ({})",
                                mp.display(),
                                if is_mounted(&mp) {
                                    "mounted"
                                } else {
                                    "not mounted"
                                }
                            ),
                            _ => String::new(),
                        };
                        println!("{:<16} {state}{extra}{metrics}", p.name());
                    }
                }
                println!();
            }
            let meta: Vec<String> = cluster.meta_addrs().iter().map(|a| a.to_string()).collect();
            let certs = cluster.certs(lattice_common::pki::Role::Admin, "admin")?;
            let mut cmd = Command::new(cluster.binary(METASERVER)?);
            cmd.arg("status")
                .arg("--meta")
                .arg(meta.join(","))
                .arg("--certs")
                .arg(&certs);
            if json {
                cmd.arg("--json");
            } else {
                println!(
                    "+ {} status --meta {} --certs {}",
                    cluster.binary(METASERVER)?.display(),
                    meta.join(","),
                    certs.display()
                );
            }
            let status = cmd.status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
    }
}
