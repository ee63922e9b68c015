//! `metaserver`: one member of the Raft group that holds the LatticeFS namespace, slice maps
//! and cluster map; also the cluster's certificate authority and admin commands.

use lattice_metaserver::{
    core, grants, jobs, peers, raft_log, raft_tracing, replica, service, state_machine,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use lattice_common::ids::MetaserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::mount_user::MountUser;
use lattice_common::pki::{self, Role};
use lattice_common::shard_client::{ShardClient, DEFAULT_TIMEOUT};
use lattice_common::slice_io::SliceIo;
use lattice_common::throttle::Throttle;
use lattice_common::transport::{self, write_addr_file, Identity, Node};
use lattice_common::wire::meta::{
    AdminReply, AdminRequest, ClusterStatus, MetaRequest, MetaResponse,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    version,
    about = "LatticeFS metaserver: the Raft-replicated namespace, slice maps and cluster map"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member of the metaserver group.
    Serve(Box<ServeArgs>),
    /// The cluster certificate authority: every process needs a certificate it signed.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Show the cluster: metaserver members, chunkservers, counts.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add or remove a member of the metaserver group.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Snapshot the state machine and compact the Raft log of the leader now.
    Snapshot {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show the cluster's default redundancy policy, or change it (`policy rs:8+3`): files
    /// and directories without their own policy store new data under it.
    Policy {
        #[command(flatten)]
        admin: AdminArgs,
        /// The new default, e.g. mirror:3 or rs:4+2.
        set: Option<lattice_common::policy::Policy>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// This member's id in the group (1, 2, 3, ...); never reuse the id of a removed member.
    #[arg(long)]
    id: u64,
    /// UDP address to serve on; other members and clients reach it here.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory for the Raft log and snapshots.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Directory with this member's ca.pem, cert.pem and key.pem (`metaserver ca issue --role metaserver`).
    #[arg(long, value_name = "DIR")]
    certs: PathBuf,
    /// A founding member as ID=ADDR, this one included; repeat for each. Only read when
    /// the data directory is new: every founding member must get the same list.
    #[arg(long = "peer", value_name = "ID=ADDR")]
    peers: Vec<String>,
    /// Start empty and wait to be added (`metaserver member add`) to a running group.
    #[arg(long, conflicts_with = "peers")]
    join: bool,
    /// Seconds without a heartbeat after which a chunkserver is suspect (no new data).
    #[arg(long, default_value_t = 5)]
    suspect_after: u64,
    /// Seconds without a heartbeat after which a chunkserver is down.
    #[arg(long, default_value_t = 30)]
    down_after: u64,
    /// Seconds without a keepalive after which a client session ends: its locks are
    /// released and the unlinked files it had open are removed.
    #[arg(long, default_value_t = 15)]
    session_timeout: u64,
    /// Write the address once serving here (lets a supervisor wait for the start).
    #[arg(long, value_name = "FILE")]
    addr_file: Option<PathBuf>,
    /// Take a snapshot after at least this many applied log entries, once they also add up
    /// to a quarter of the last snapshot's size (so a large namespace is not encoded whole
    /// every few seconds).
    #[arg(long, default_value_t = 10_000)]
    snapshot_every: u64,
    /// Whether the leader answers reads under a lease (`on`: from its own state while a
    /// quorum confirmed it within the last 400 ms) or only after a round of heartbeats
    /// (`off`). Leases rely on clocks: turn them off on hosts that can be frozen whole and
    /// resumed with their clock behind (VM pause or live migration).
    #[arg(long, env = "LATTICE_READ_LEASE", value_name = "on|off", default_value = "on",
        value_parser = ["on", "off"])]
    read_lease: String,
    /// Serve Prometheus metrics over HTTP at this address (e.g. 127.0.0.1:9100), on /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Threads that move requests and Raft messages over QUIC (the namespace itself runs on
    /// one thread of its own). One answers each request fastest: a second one wakes on
    /// every request to look for work, which costs a request 100-300 us when cores are
    /// few. Raise it when thousands of requests a second from many clients saturate one
    /// core with encryption.
    #[arg(long, env = "LATTICE_META_IO_THREADS", value_name = "N", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256))]
    io_threads: u16,
    #[command(flatten)]
    upkeep: UpkeepArgs,
}

/// How the leader keeps redundancy up: repair, drain, rebalance, garbage collection.
#[derive(clap::Args)]
struct UpkeepArgs {
    /// Shard rebuilds and copies running at once, cluster-wide (each is also rate-limited
    /// by its chunkserver's --rebuild-rate).
    #[arg(long, default_value_t = 4)]
    repair_jobs: usize,
    /// Rebalance when a chunkserver's usage is off its capacity's share by more than this
    /// fraction of that share.
    #[arg(long, default_value_t = 0.1)]
    balance_tolerance: f64,
    /// Seconds the shards of deleted or overwritten data are kept (readers may still use
    /// them).
    #[arg(long, default_value_t = 60)]
    gc_grace: u64,
    /// Seconds after which an allocation never committed (its writer died) is abandoned.
    #[arg(long, default_value_t = 3600)]
    pending_grace: u64,
    /// Seconds a shard no metadata names must be old before it is deleted.
    #[arg(long, default_value_t = 3600)]
    orphan_grace: u64,
    /// Seconds between two comparisons of a chunkserver's shards with the metadata.
    #[arg(long, default_value_t = 600)]
    reconcile_every: u64,
    /// MiB per second the leader re-encodes to new policies (`lattice.policy`), so user I/O
    /// keeps its share; 0: unlimited.
    #[arg(long, default_value_t = 64)]
    reencode_rate: u64,
    /// MiB per second the leader reads to check that every slice's parity still matches
    /// its data (deep scrub; a chunkserver's own scrub checks block checksums); 0: off.
    #[arg(long, default_value_t = 4)]
    deep_scrub_rate: u64,
    /// Seconds from the start of one deep scrub pass over every slice to the next.
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    deep_scrub_every: u64,
    /// Drain a chunkserver automatically once it reports this many I/O errors (0: never).
    #[arg(long, default_value_t = 50)]
    drain_on_io_errors: u64,
    /// Drain a chunkserver automatically once it reports this many checksum errors (0: never).
    #[arg(long, default_value_t = 50)]
    drain_on_checksum_errors: u64,
    /// Drain a chunkserver automatically once it reports this many slow operations (0: never).
    #[arg(long, default_value_t = 0)]
    drain_on_slow_ops: u64,
    /// The cluster's default redundancy policy (mirror:N or rs:K+M), for files and
    /// directories that set none. Recorded once, by the first leader of a new cluster;
    /// after that `metaserver policy set` changes it.
    #[arg(long, value_name = "POLICY", default_value = "rs:4+2")]
    default_policy: lattice_common::policy::Policy,
}

impl UpkeepArgs {
    fn upkeep(&self) -> core::Upkeep {
        let secs = Duration::from_secs;
        core::Upkeep {
            jobs: jobs::Settings {
                concurrency: self.repair_jobs.max(1),
                balance_tolerance: self.balance_tolerance.max(0.0),
                gc_grace: secs(self.gc_grace),
                pending_grace: secs(self.pending_grace),
                orphan_grace: secs(self.orphan_grace),
                reconcile_every: secs(self.reconcile_every),
                reencode_rate: self.reencode_rate << 20,
                deep_scrub_rate: self.deep_scrub_rate << 20,
                deep_scrub_every: secs(self.deep_scrub_every),
            },
            health: core::HealthLimits {
                io_errors: self.drain_on_io_errors,
                checksum_errors: self.drain_on_checksum_errors,
                slow_ops: self.drain_on_slow_ops,
            },
            default_policy: self.default_policy,
        }
    }
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a new cluster CA (refuses to overwrite one).
    Init {
        /// Directory for ca.pem and ca-key.pem (keep ca-key.pem secret).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// A name for the cluster, shown in its CA certificate.
        #[arg(long, default_value = "lattice")]
        cluster: String,
    },
    /// Issue a certificate for a metaserver, chunkserver, client (mount) or admin.
    Issue {
        /// The CA directory (made by `ca init`; its key signs the certificate).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[arg(long, value_parser = ["metaserver", "chunkserver", "client", "admin"])]
        role: String,
        /// Its name (a chunkserver's name is its identity in the cluster map).
        #[arg(long)]
        name: String,
        /// Directory to write ca.pem, cert.pem and key.pem to.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// For a client: the one user its mount acts as, whatever uid its machine sends
        /// (root there included); the metaservers check this user's permissions on every
        /// operation. Without it, a client is trusted: its kernel checks permissions and
        /// passes each caller, as an NFS server trusts a host.
        #[arg(long, requires = "gid")]
        uid: Option<u32>,
        /// The primary group of `--uid`.
        #[arg(long, requires = "uid")]
        gid: Option<u32>,
        /// Supplementary groups of `--uid`, comma-separated.
        #[arg(long, requires = "uid", value_delimiter = ',')]
        groups: Vec<u32>,
    },
    /// Revoke a certificate: every metaserver and chunkserver refuses it and drops its
    /// connections within seconds. By name, every certificate issued under it; by serial
    /// (printed by `issue`), that one only. Permanent: issue a new name to replace it.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["name", "serial"])))]
    Revoke {
        /// The cluster CA directory (checked to be the CA of the cluster at --meta).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        #[command(flatten)]
        admin: AdminArgs,
        /// The certificate's role:name, e.g. client:laptop-7.
        name: Option<String>,
        /// The certificate's serial number (hex) instead of its name.
        #[arg(long)]
        serial: Option<String>,
    },
}

#[derive(Subcommand)]
enum MemberCommand {
    /// Add a member (start it first with `metaserver serve --join`).
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: SocketAddr,
    },
    /// Remove a member.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        #[arg(long)]
        id: u64,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Metaserver addresses, comma separated (any member will do).
    #[arg(long, env = "LATTICE_META", value_delimiter = ',', required = true)]
    meta: Vec<SocketAddr>,
    /// Directory with an admin certificate (`metaserver ca issue --role admin`).
    #[arg(long, env = "LATTICE_ADMIN_CERTS", value_name = "DIR")]
    certs: PathBuf,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => {
            limit_malloc_arenas();
            lattice_common::logging::init();
            serve(*args)
        }
        Command::Ca(CaCommand::Init { ca, cluster }) => pki::init_ca(&ca, &cluster)
            .map(|()| println!("created cluster CA in {}", ca.display()))
            .map_err(Into::into),
        Command::Ca(CaCommand::Issue {
            ca,
            role,
            name,
            out,
            uid,
            gid,
            groups,
        }) => issue(&ca, &role, &name, &out, uid.zip(gid), groups),
        Command::Ca(CaCommand::Revoke {
            ca,
            admin,
            name,
            serial,
        }) => revoke(&ca, &admin, name, serial),
        Command::Status { admin, json } => {
            admin_call(&admin, AdminRequest::Status).and_then(|r| match r {
                AdminReply::Status(s) => print_status(&s, json),
                other => bail!("unexpected reply {other:?}"),
            })
        }
        Command::Member(MemberCommand::Add { admin, id, addr }) => admin_call(
            &admin,
            AdminRequest::AddMember {
                id: MetaserverId(id),
                addr,
            },
        )
        .map(|_| println!("member {id} at {addr} added")),
        Command::Member(MemberCommand::Remove { admin, id }) => admin_call(
            &admin,
            AdminRequest::RemoveMember {
                id: MetaserverId(id),
            },
        )
        .map(|_| println!("member {id} removed")),
        Command::Snapshot { admin } => {
            admin_call(&admin, AdminRequest::Snapshot).map(|_| println!("snapshot taken"))
        }
        Command::Policy { admin, set: None } => {
            admin_call(&admin, AdminRequest::Status).and_then(|r| match r {
                AdminReply::Status(s) => {
                    println!("{}", policy_text(s.default_policy));
                    Ok(())
                }
                other => bail!("unexpected reply {other:?}"),
            })
        }
        Command::Policy {
            admin,
            set: Some(policy),
        } => admin_call(&admin, AdminRequest::SetDefaultPolicy { policy })
            .map(|_| println!("default policy: {policy}")),
    };
    if let Err(e) = result {
        eprintln!("metaserver: {e:#}");
        std::process::exit(1);
    }
}

/// `ca issue`: a certificate for `role:name`, for a client acting as `user` if given.
fn issue(
    ca: &Path,
    role: &str,
    name: &str,
    out: &Path,
    user: Option<(u32, u32)>,
    groups: Vec<u32>,
) -> Result<()> {
    let user = match user {
        Some((uid, gid)) => MountUser::limited(uid, gid, groups).map_err(anyhow::Error::msg)?,
        None => MountUser::Trusted,
    };
    let role: Role = role.parse()?;
    pki::issue_as(ca, role, name, &user, out)?;
    let serial = pki::serial_of(out)?;
    let acts_as = match (&user, role) {
        (MountUser::Limited(_), _) => format!(", acting as {user}"),
        (MountUser::Trusted, Role::Client) => ", trusted with its callers".into(),
        (MountUser::Trusted, _) => String::new(),
    };
    println!(
        "issued {role}:{name} (serial {serial}{acts_as}) into {}",
        out.display()
    );
    Ok(())
}

fn admin_call(args: &AdminArgs, req: AdminRequest) -> Result<AdminReply> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let identity = Identity::load(&args.certs)?;
        let node = Node::client(&identity)?;
        let client = MetaClient::new(node, args.meta.clone(), Duration::from_secs(20));
        match client.call(&MetaRequest::Admin(req)).await? {
            MetaResponse::Admin(reply) => Ok(reply),
            other => bail!("unexpected reply {other:?}"),
        }
    })
}

fn revoke(
    ca: &Path,
    admin: &AdminArgs,
    name: Option<String>,
    serial: Option<String>,
) -> Result<()> {
    let what = match (name, serial) {
        (Some(name), _) => pki::Revoke::parse_name(&name)?,
        (None, Some(serial)) => pki::Revoke::parse_serial(&serial)?,
        (None, None) => bail!("name a certificate (role:name) or give --serial"),
    };
    let ours = std::fs::read(ca.join(pki::CA_CERT_FILE))
        .with_context(|| format!("reading the CA in {}", ca.display()))?;
    let theirs = std::fs::read(admin.certs.join(pki::CA_CERT_FILE))
        .with_context(|| format!("reading the CA in {}", admin.certs.display()))?;
    if ours != theirs {
        bail!(
            "{} is not the CA that signed {}: wrong cluster?",
            ca.display(),
            admin.certs.display()
        );
    }
    admin_call(admin, AdminRequest::Revoke { what: what.clone() })?;
    println!("revoked {what}: servers refuse it and close its connections within seconds");
    Ok(())
}

fn policy_text(p: Option<lattice_common::policy::Policy>) -> String {
    p.map_or_else(|| "(not recorded yet)".to_string(), |p| p.to_string())
}

fn print_status(s: &ClusterStatus, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!(
        "leader {} (term {}), applied {}, snapshot {}",
        s.leader, s.term, s.applied_index, s.snapshot_index
    );
    println!("default policy {}", policy_text(s.default_policy));
    println!("{} inodes, {} slices", s.inodes, s.slices);
    println!("\nMETASERVERS");
    for m in &s.members {
        println!(
            "  {:<6} {:<22} {}",
            m.id.to_string(),
            m.addr,
            if m.leader { "leader" } else { "" }
        );
    }
    println!("\nCHUNKSERVERS");
    println!(
        "  {:<6} {:<16} {:<22} {:<9} {:>8} {:>12} {:>12} {:>6} {:>6} {:>6} {:>7}",
        "ID",
        "NAME",
        "ADDRESS",
        "STATE",
        "SHARDS",
        "USED",
        "FREE",
        "IOERR",
        "CKSUM",
        "SLOW",
        "SCRUB"
    );
    for c in &s.chunkservers {
        let scrub = match c.scrub.shards_total {
            0 => "-".to_string(),
            t => format!("{}%", c.scrub.shards_checked * 100 / t),
        };
        println!(
            "  {:<6} {:<16} {:<22} {:<9} {:>8} {:>12} {:>12} {:>6} {:>6} {:>6} {:>7}",
            c.id.to_string(),
            c.name,
            c.addr,
            format!("{:?}", c.state).to_lowercase(),
            c.placed_shards,
            human(c.used_bytes),
            human(c.free_bytes),
            c.health.io_errors,
            c.health.checksum_errors,
            c.health.slow_ops,
            scrub,
        );
        if let Some(why) = &c.reason {
            println!("         {why}");
        }
    }
    let r = &s.redundancy;
    println!(
        "\nREDUNDANCY  {} healthy, {} degraded by 1, {} degraded by 2+, {} lost",
        r.healthy, r.degraded_1, r.degraded_2_plus, r.lost
    );
    if !s.jobs.is_empty() {
        println!("\nJOBS");
        println!(
            "  {:<10} {:<8} {:>8} {:>12} {:>10} {:>12} {:>8} {:>7}",
            "KIND", "SERVER", "DONE", "DONE BYTES", "REMAINING", "REM. BYTES", "RUNNING", "FAILED"
        );
        for j in &s.jobs {
            println!(
                "  {:<10} {:<8} {:>8} {:>12} {:>10} {:>12} {:>8} {:>7}",
                format!("{:?}", j.kind).to_lowercase(),
                j.server.map_or("-".to_string(), |id| id.to_string()),
                j.done_shards,
                human(j.done_bytes),
                j.remaining_shards,
                human(j.remaining_bytes),
                j.running,
                j.failed
            );
        }
    }
    if !s.revoked.is_empty() {
        println!("\nREVOKED");
        for name in &s.revoked.names {
            println!("  {name}");
        }
        for serial in &s.revoked.serials {
            println!("  serial {serial}");
        }
    }
    for w in &s.warnings {
        println!("\nWARNING: {w}");
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Checks (or records, the first time) which member this data directory belongs to.
fn claim_data_dir(dir: &Path, id: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("member-id");
    match std::fs::read_to_string(&file) {
        Ok(text) if text.trim() == id.to_string() => Ok(()),
        Ok(text) => bail!(
            "{} belongs to member {}, not {id}",
            dir.display(),
            text.trim()
        ),
        Err(_) => std::fs::write(&file, format!("{id}\n"))
            .with_context(|| format!("writing {}", file.display())),
    }
}

/// The namespace lives in the heap for the life of the process: glibc's default of up to
/// eight arenas per core left the leader (whose network threads allocate replies) with
/// twice the followers' memory at a million files (846 against 432 bytes per file), held
/// in arenas it never returns.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    if args.id == 0 {
        bail!("member ids start at 1");
    }
    let identity = Identity::load(&args.certs)?;
    if identity.name.role != Role::Metaserver {
        bail!(
            "{} holds a {} certificate, not a metaserver one",
            args.certs.display(),
            identity.name.role
        );
    }
    claim_data_dir(&args.data, args.id)?;
    let (disk, persisted) =
        raft_log::DiskLog::open(&args.data.join("raft"), state_machine::STATE_FORMAT)
            .context("opening the raft log")?;
    let fresh = persisted.snapshot.get_metadata().index == 0 && persisted.entries.is_empty();
    let bootstrap = core::parse_members(&args.peers).map_err(anyhow::Error::msg)?;
    if fresh && bootstrap.is_empty() && !args.join {
        bail!("{} is empty: give the founding members with --peer ID=ADDR, or --join to be added to a running group", args.data.display());
    }
    if fresh && !bootstrap.is_empty() && !bootstrap.contains_key(&MetaserverId(args.id)) {
        bail!(
            "--peer lists the founding members; it must include this member ({})",
            args.id
        );
    }
    let log = raft_log::RaftLog::new(persisted, Box::new(disk));
    let tuning = replica::Tuning {
        snapshot_every: args.snapshot_every,
        read_lease: args.read_lease == "on",
        ..Default::default()
    };
    let replica = replica::Replica::new(
        MetaserverId(args.id),
        log,
        &bootstrap,
        tuning,
        &raft_tracing::logger(),
        rand::random(),
    )
    .map_err(anyhow::Error::msg)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.io_threads.into())
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let node = Node::server(args.listen, &identity)?;
    let (inputs, receiver) = core::input_queue();
    let peers = peers::Peers::new(
        MetaserverId(args.id),
        args.listen,
        node.clone(),
        runtime.handle().clone(),
        inputs.clone(),
    );
    let liveness = core::Liveness {
        suspect_after: Duration::from_secs(args.suspect_after),
        down_after: Duration::from_secs(args.down_after),
        session_timeout: Duration::from_secs(args.session_timeout),
    };
    let upkeep = args.upkeep.upkeep();
    let book = Arc::new(Mutex::new(jobs::Book::default()));
    let keys = grants::SharedKeys::default();
    let executor = Arc::new(jobs::Executor {
        core: inputs.clone(),
        shards: ShardClient::new(node.clone(), DEFAULT_TIMEOUT),
        settings: upkeep.jobs,
        book: book.clone(),
        doomed: Mutex::default(),
        job_ended: tokio::sync::Notify::new(),
        reencode_rate: Throttle::new(upkeep.jobs.reencode_rate),
        slices: SliceIo::new(ShardClient::new(node.clone(), DEFAULT_TIMEOUT)),
        deep_scrub_rate: Throttle::new(upkeep.jobs.deep_scrub_rate),
    });
    let reads = replica.local_reads();
    let core = core::Core::new(
        replica,
        receiver,
        peers,
        liveness,
        upkeep,
        book,
        keys.clone(),
    );
    std::thread::Builder::new()
        .name("raft-core".into())
        .spawn(move || {
            if let Err(e) = core.run() {
                error!("the raft log cannot be written, stopping: {e}");
                std::process::exit(2);
            }
        })?;
    let service = Arc::new(service::Service::new(
        inputs.clone(),
        node.clone(),
        keys,
        reads,
    ));
    let addr = node.local_addr()?;
    if let Some(path) = &args.addr_file {
        write_addr_file(path, addr).with_context(|| format!("writing {}", path.display()))?;
    }
    info!(id = args.id, %addr, "metaserver serving");
    if let Some(at) = args.metrics {
        let core = inputs.clone();
        let render: lattice_common::metrics::Render = Arc::new(move || {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = core.try_send(core::Input::Metrics { reply: tx });
            Box::pin(async move {
                match sent {
                    Ok(()) => rx.await.unwrap_or_default(),
                    Err(_) => String::new(),
                }
            })
        });
        runtime
            .block_on(lattice_common::metrics::serve(at, render))
            .with_context(|| format!("serving metrics on {at}"))?;
    }
    runtime.block_on(async {
        tokio::spawn(executor.run());
        let server = tokio::spawn(
            node.clone()
                .serve(move |peer, send, recv| service.clone().handle(peer, send, recv)),
        );
        transport::shutdown_signal().await;
        info!("shutting down");
        node.close();
        server.abort();
    });
    Ok(())
}
