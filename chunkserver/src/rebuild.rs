//! Re-creating a shard on this chunkserver, range by range: copied from a server that still
//! holds it (a drain or rebalance), or decoded from its surviving peers (a repair). A copy
//! that fails part way goes on by decoding.

use crate::service::{blocking, IO_PIECE};
use crate::store::Store;
use lattice_common::ids::ShardId;
use lattice_common::layout::SliceLayout;
use lattice_common::slice_io::{Recovery, ShardTarget, SliceIo};
use lattice_common::throttle::Throttle;
use lattice_common::wire::{ErrorKind, ShardSource, WireError};
use std::sync::Arc;
use tracing::{info, warn};

/// What a rebuild reads from.
pub struct Sources {
    pub copy_from: Option<ShardSource>,
    pub peers: Vec<ShardSource>,
}

/// Stores `shard` here, read from `sources`; returns its length. `throttle` paces the
/// bytes read so foreground I/O keeps its share.
pub async fn rebuild(
    store: &Arc<Store>,
    io: &SliceIo,
    throttle: &Throttle,
    shard: ShardId,
    layout: SliceLayout,
    sources: Sources,
) -> Result<u64, WireError> {
    let total = layout.policy.total_shards();
    let target = shard.index.0 as usize;
    if target >= total {
        return Err(WireError::new(
            ErrorKind::Invalid,
            format!("shard index {target} outside {}", layout.policy),
        ));
    }
    if sources
        .copy_from
        .as_ref()
        .is_some_and(|c| c.index != shard.index)
    {
        return Err(WireError::new(
            ErrorKind::Invalid,
            "a copy source must hold the same shard",
        ));
    }
    let mut targets: Vec<Option<ShardTarget>> = vec![None; total];
    for s in &sources.peers {
        let i = s.index.0 as usize;
        if i >= total || i == target {
            return Err(WireError::new(
                ErrorKind::Invalid,
                format!("bad source shard index {i}"),
            ));
        }
        targets[i] = Some(ShardTarget {
            server: s.server,
            addr: s.addr,
        });
    }
    let store2 = store.clone();
    let (writer, disk) = blocking(move || store2.create(shard, layout)).await?;
    let len = layout.shard_len();
    let mut problems = Vec::new();
    let missing = [target];
    let mut copy_from = sources.copy_from;
    let (mut copied, mut decoded) = (0u64, 0u64);
    // The write of one piece overlaps the fetch of the next.
    let mut writing = tokio::task::spawn_blocking(move || Ok(writer));
    let mut pos = 0;
    while pos < len {
        let end = len.min(pos + IO_PIECE as u64);
        let n = end - pos;
        throttle.take(n).await;
        let mut piece = None;
        if let Some(src) = &copy_from {
            match io.client().get(src.addr, shard, pos, n).await {
                Ok(bytes) => {
                    piece = Some(bytes);
                    copied += n;
                }
                Err(e) => {
                    warn!(%shard, from = %src.server, "copy failed at byte {pos}, decoding from peers instead: {e}");
                    copy_from = None;
                }
            }
        }
        let piece = match piece {
            Some(p) => p,
            None => {
                let plan = Recovery {
                    missing: &missing,
                    last_resort: &[],
                    range: pos..end,
                };
                let pieces = io
                    .recover(shard.slice, layout, &targets, plan, |_| None, &mut problems)
                    .await
                    .map_err(|e| WireError::new(ErrorKind::Unavailable, e.to_string()))?;
                decoded += n;
                pieces.into_iter().nth(target).flatten().unwrap_or_default()
            }
        };
        let mut writer = finish(writing).await?;
        writing = tokio::task::spawn_blocking(move || writer.write(&piece).map(|()| writer));
        pos = end;
    }
    let writer = finish(writing).await?;
    let store2 = store.clone();
    blocking(move || store2.commit(writer, disk)).await?;
    info!(%shard, copied, decoded, read_around = problems.len(), "rebuilt shard");
    Ok(len)
}

/// Waits for a piece's write, passing on its error (or panic).
async fn finish<W>(
    w: tokio::task::JoinHandle<Result<W, crate::store::StoreError>>,
) -> Result<W, WireError> {
    match w.await {
        Ok(r) => Ok(r?),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
