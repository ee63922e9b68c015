//! `chunkserver drain ID`: an admin asks the metaservers to drain a chunkserver (or cancel
//! a drain), and optionally follows the drain to its end with a progress bar.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use lattice_common::ids::ChunkserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::transport::{Identity, Node};
use lattice_common::wire::meta::{
    AdminReply, AdminRequest, ChunkserverState, ChunkserverStatusRow, JobKind,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// The chunkserver's id, as `metaserver status` shows it (e.g. 4 or cs-4).
    #[arg(value_parser = parse_id)]
    id: ChunkserverId,
    /// Follow the drain with a progress bar until the server holds nothing.
    #[arg(long)]
    wait: bool,
    /// Put a draining (or drained) server back in service instead.
    #[arg(long, conflicts_with = "wait")]
    cancel: bool,
    /// Metaserver addresses, comma separated (any member will do).
    #[arg(long, env = "LATTICE_META", value_delimiter = ',', required = true)]
    meta: Vec<SocketAddr>,
    /// Directory with an admin certificate (`metaserver ca issue --role admin`).
    #[arg(long, env = "LATTICE_ADMIN_CERTS", value_name = "DIR")]
    certs: PathBuf,
}

fn parse_id(s: &str) -> Result<ChunkserverId, String> {
    s.trim_start_matches("cs-")
        .parse::<u32>()
        .map(ChunkserverId)
        .map_err(|_| format!("{s:?} is not a chunkserver id (e.g. 4 or cs-4)"))
}

pub async fn run(args: DrainArgs) -> Result<()> {
    let identity = Identity::load(&args.certs)?;
    let node = Node::client(&identity)?;
    let meta = MetaClient::new(node, args.meta.clone(), Duration::from_secs(20));
    let id = args.id;
    let req = AdminRequest::Drain {
        id,
        cancel: args.cancel,
    };
    match meta.admin(req).await {
        Ok(_) => {}
        // Asking again for a drain already under way just follows it.
        Err(e) if args.wait && e.to_string().contains("already draining") => {}
        Err(e) => return Err(e).context(format!("draining {id}")),
    }
    if args.cancel {
        println!("{id}: drain cancelled, back in service");
        return Ok(());
    }
    println!("{id}: draining (it gets no new shards; its shards are copied elsewhere)");
    if args.wait {
        follow(&meta, id).await?;
    }
    Ok(())
}

async fn row(meta: &MetaClient, id: ChunkserverId) -> Result<(ChunkserverStatusRow, u64)> {
    let AdminReply::Status(status) = meta.admin(AdminRequest::Status).await? else {
        bail!("unexpected reply to status");
    };
    let moved = status
        .jobs
        .iter()
        .find(|j| j.kind == JobKind::Drain && j.server == Some(id))
        .map_or(0, |j| j.done_bytes);
    let row = status
        .chunkservers
        .into_iter()
        .find(|c| c.id == id)
        .with_context(|| format!("{id} is not in the cluster map"))?;
    Ok((row, moved))
}

/// Shows shards and bytes moved, rate and ETA until the server is drained.
async fn follow(meta: &MetaClient, id: ChunkserverId) -> Result<()> {
    let (first, _) = row(meta, id).await?;
    let total = first.placed_shards;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} shards moved, {msg} (ETA {eta})",
        )
        .expect("a valid template"),
    );
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let (now, moved) = match row(meta, id).await {
            Ok(r) => r,
            Err(e) => {
                bar.println(format!("status unavailable, retrying: {e:#}"));
                continue;
            }
        };
        bar.set_length(total.max(now.placed_shards));
        bar.set_position(total.saturating_sub(now.placed_shards));
        let rate = moved as f64 / bar.elapsed().as_secs_f64().max(1.0) / (1 << 20) as f64;
        bar.set_message(format!(
            "{:.1} MiB copied, {rate:.1} MiB/s",
            moved as f64 / (1 << 20) as f64
        ));
        match now.state {
            ChunkserverState::Drained => {
                bar.finish();
                println!("{id}: drained; it holds nothing and can be stopped");
                return Ok(());
            }
            ChunkserverState::Draining => {}
            other => {
                bar.abandon();
                bail!("{id} is {other:?} now, not draining (was the drain cancelled?)");
            }
        }
    }
}
