//! `chunkserver disk add|remove`: an admin changes the data directories of a running
//! chunkserver.

use anyhow::{bail, Context, Result};
use lattice_common::shard_client::ShardClient;
use lattice_common::transport::{Identity, Node};
use lattice_common::wire::{ChunkRequest, ChunkResponse};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Start storing shards in DIR too: a new or empty directory, or a data directory (its
    /// shards are adopted); any other is refused untouched.
    Add(DiskArgs),
    /// Move every shard off DIR to the server's other directories, then stop using it.
    Remove(DiskArgs),
}

#[derive(clap::Args)]
pub struct DiskArgs {
    /// The data directory, as an absolute path on the chunkserver's machine.
    dir: PathBuf,
    /// The chunkserver's address (see `metaserver status`).
    #[arg(long)]
    server: SocketAddr,
    /// Directory with an admin certificate (`metaserver ca issue --role admin`).
    #[arg(long, env = "LATTICE_ADMIN_CERTS", value_name = "DIR")]
    certs: PathBuf,
}

pub async fn run(cmd: DiskCommand) -> Result<()> {
    let (args, remove) = match cmd {
        DiskCommand::Add(a) => (a, false),
        DiskCommand::Remove(a) => (a, true),
    };
    let path = args.dir.to_string_lossy().into_owned();
    let node = Node::client(&Identity::load(&args.certs)?)?;
    let client = ShardClient::new(node, Duration::from_secs(30));
    let req = match remove {
        false => ChunkRequest::AddDisk { path },
        true => ChunkRequest::RemoveDisk { path },
    };
    let resp = client
        .admin(args.server, req)
        .await
        .with_context(|| format!("{} on {}", args.dir.display(), args.server))?;
    let dir = args.dir.display();
    match resp {
        ChunkResponse::DiskAdded { shards } => {
            println!("{dir} added ({shards} shards found in it)")
        }
        ChunkResponse::DiskRemoved {
            moved_shards,
            moved_bytes,
        } => println!(
            "{dir} removed: {moved_shards} shards ({:.1} MiB) moved to the other directories",
            moved_bytes as f64 / (1 << 20) as f64
        ),
        other => bail!("unexpected reply {other:?}"),
    }
    println!("Change the server's --data list too, or the change ends when it restarts.");
    Ok(())
}
