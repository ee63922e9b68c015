//! `chunkserver`: stores checksummed shards on local directories and serves them over QUIC.

use lattice_chunkserver::{disk, drain, grants, membership, metrics, scrub, service, store};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lattice_common::meta_client::MetaClient;
use lattice_common::shard_client::{ShardClient, DEFAULT_TIMEOUT};
use lattice_common::slice_io::SliceIo;
use lattice_common::throttle::Throttle;
use lattice_common::transport::{self, write_addr_file, Identity, Node};
use scrub::Scrubber;
use service::Service;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::shard_file::{ShardHeader, HEADER_BYTES};
use store::{Faults, Store};
use tracing::info;

#[derive(Parser)]
#[command(
    version,
    about = "LatticeFS chunkserver: stores shards, serves them over QUIC with mutual TLS"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve shards from one or more data directories.
    Serve(ServeArgs),
    /// Add a new chunkserver to a running cluster (fails unless the cluster accepts it).
    ///
    /// Like `serve`, but `--meta` is required and the command exits non-zero unless the
    /// metaservers accept the server within `--join-timeout`. Get its certificate first with
    /// `metaserver ca issue --role chunkserver`.
    Join {
        #[command(flatten)]
        serve: ServeArgs,
        /// Seconds to wait for the metaservers to accept the registration.
        #[arg(long, default_value_t = 30)]
        join_timeout: u64,
    },
    /// Drain a chunkserver of a running cluster (needs an admin certificate).
    ///
    /// It gets no new shards, and its shards are copied elsewhere until it holds nothing and
    /// can be stopped.
    Drain(drain::DrainArgs),
    /// Add or remove a data directory of a running chunkserver (needs an admin certificate).
    #[command(subcommand)]
    Disk(disk::DiskCommand),
    /// Print what a shard file says about itself (works without any running cluster).
    Inspect {
        /// A shard file, e.g. DATA/shards/2a/000000000000002a.3
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A directory to store shards in; repeat for several disks. A new or empty directory
    /// becomes a data directory (marked by a LATTICEFS file); any other is refused.
    #[arg(long = "data", required = true, value_name = "DIR")]
    data: Vec<PathBuf>,
    /// UDP address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7500")]
    listen: SocketAddr,
    /// Directory with this server's ca.pem, cert.pem and key.pem (see `metaserver ca issue`).
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// Write the bound address here once serving (useful with port 0).
    #[arg(long, value_name = "FILE")]
    addr_file: Option<PathBuf>,
    /// Bytes to keep free on every data directory.
    #[arg(long, default_value_t = 64 << 20)]
    reserve: u64,
    /// Metaserver addresses, comma separated; without them the server runs standalone.
    #[arg(long, env = "LATTICE_META", value_delimiter = ',')]
    meta: Vec<SocketAddr>,
    /// The address to register (default: the bound address; needed when listening on 0.0.0.0).
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A failure-domain label KEY=VALUE (e.g. host=rack1-a, rack=r1); repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Most MiB/s read by rebuilds and copies on this server (0: unlimited), so user I/O
    /// keeps going during repair and drain.
    #[arg(long, default_value_t = 64)]
    rebuild_rate: u64,
    /// MiB/s of background checksum verification (0: no scrub).
    #[arg(long, default_value_t = 16)]
    scrub_rate: u64,
    /// Seconds from the start of one scrub pass over every shard to the start of the next.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    scrub_every: u64,
    /// TESTING ONLY: fraction (0..1) of shard reads to fail with an I/O error, to see the
    /// cluster drain a failing server. Off by default.
    #[arg(long, default_value_t = 0.0, value_parser = parse_fraction)]
    inject_read_errors: f64,
    /// TESTING ONLY: milliseconds every shard read waits before it is answered, to see
    /// readers go around a slow server. Off by default.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    inject_delay: u64,
    /// Serve Prometheus metrics over HTTP at this address (e.g. 127.0.0.1:9101), on /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("labels are KEY=VALUE")?;
    if k.is_empty() || v.is_empty() {
        return Err("labels are KEY=VALUE with both non-empty".into());
    }
    Ok((k.to_string(), v.to_string()))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            lattice_common::logging::init();
            tokio::runtime::Runtime::new()?.block_on(serve(args, None))
        }
        Command::Join {
            serve: args,
            join_timeout,
        } => {
            lattice_common::logging::init();
            if args.meta.is_empty() {
                anyhow::bail!("join needs --meta (the running cluster's metaserver addresses)");
            }
            let timeout = Duration::from_secs(join_timeout);
            tokio::runtime::Runtime::new()?.block_on(serve(args, Some(timeout)))
        }
        Command::Drain(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(drain::run(args)),
        Command::Disk(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(disk::run(cmd)),
        Command::Inspect { file } => inspect(&file),
    }
}

/// Serves until SIGTERM; with `join`, first insists that the cluster accepts this server
/// within that time.
async fn serve(args: ServeArgs, join: Option<Duration>) -> Result<()> {
    const MIB: u64 = 1 << 20;
    let identity = Identity::load(&args.certs)?;
    let data = args.data.clone();
    let faults = Faults {
        read_error_rate: args.inject_read_errors,
    };
    let store = service::blocking(move || Store::open(&data, args.reserve, faults))
        .await
        .context("opening data directories")?;
    let store = Arc::new(store);
    let node = Node::server(args.listen, &identity)?;
    let addr = node.local_addr()?;
    let scrub_every = Duration::from_secs(args.scrub_every);
    let scrub = Arc::new(Scrubber::new(
        store.clone(),
        args.scrub_rate * MIB,
        scrub_every,
    ));
    let service = Arc::new(Service {
        store,
        io: SliceIo::new(ShardClient::new(node.clone(), DEFAULT_TIMEOUT)),
        name: identity.name.name.clone(),
        rebuild_rate: Throttle::new(args.rebuild_rate * MIB),
        scrub: scrub.clone(),
        stats: metrics::Stats::default(),
        read_delay: Duration::from_millis(args.inject_delay),
        grants: grants::GrantKeys::new(
            (!args.meta.is_empty())
                .then(|| MetaClient::new(node.clone(), args.meta.clone(), Duration::from_secs(5))),
        ),
    });
    if let Some(at) = args.metrics {
        let s = service.clone();
        let render: lattice_common::metrics::Render =
            Arc::new(move || Box::pin(metrics::render(s.clone())));
        lattice_common::metrics::serve(at, render)
            .await
            .with_context(|| format!("serving metrics on {at}"))?;
    }
    let handler = service.clone();
    let server = tokio::spawn(
        node.clone()
            .serve(move |peer, send, recv| handler.clone().handle(peer, send, recv)),
    );
    if args.inject_read_errors > 0.0 {
        tracing::warn!(
            rate = args.inject_read_errors,
            "injecting read errors (testing)"
        );
    }
    if args.scrub_rate > 0 {
        tokio::spawn(scrub.run());
    }
    info!(%addr, name = %identity.name, disks = args.data.len(), "chunkserver serving");
    if !args.meta.is_empty() {
        let advertise = args.advertise.unwrap_or(addr);
        if advertise.ip().is_unspecified() {
            anyhow::bail!("listening on {addr}: give --advertise with an address peers can reach");
        }
        let membership = membership::Membership {
            meta: MetaClient::new(node.clone(), args.meta.clone(), Duration::from_secs(10)),
            service: service.clone(),
            advertise,
            labels: args.labels.clone(),
        };
        match join {
            // A joining server must be accepted before it reports itself serving.
            Some(t) => {
                let deadline = tokio::time::Instant::now() + t;
                let id = membership
                    .register(Some(deadline))
                    .await
                    .context("joining the cluster")?;
                tokio::spawn(membership.run(id));
            }
            None => drop(tokio::spawn(async move {
                if let Ok(id) = membership.register(None).await {
                    membership.run(id).await
                }
            })),
        }
    }
    if let Some(path) = &args.addr_file {
        write_addr_file(path, addr).with_context(|| format!("writing {}", path.display()))?;
    }
    transport::shutdown_signal().await;
    info!("shutting down");
    node.close();
    server.abort();
    Ok(())
}

fn inspect(file: &std::path::Path) -> Result<()> {
    use std::io::Read;
    let mut h = [0u8; HEADER_BYTES as usize];
    std::fs::File::open(file)
        .and_then(|mut f| f.read_exact(&mut h))
        .with_context(|| format!("reading {}", file.display()))?;
    let header = ShardHeader::decode(&h).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!("slice        {}", header.shard.slice);
    println!("shard index  {}", header.shard.index);
    println!("policy       {}", header.layout.policy);
    println!("slice bytes  {}", header.layout.data_len);
    println!("stripe unit  {}", header.layout.stripe_unit);
    println!("shard bytes  {}", header.shard_len());
    println!("block size   {}", header.block_size);
    Ok(())
}
