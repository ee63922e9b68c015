//! Rebuilding a shard on this chunkserver from its surviving peers, range by range.

use crate::service::{blocking, IO_PIECE};
use crate::store::Store;
use lattice_common::ids::ShardId;
use lattice_common::layout::SliceLayout;
use lattice_common::slice_io::{Recovery, ShardTarget, SliceIo};
use lattice_common::wire::{ErrorKind, ShardSource, WireError};
use std::sync::Arc;
use tracing::info;

/// Reads each range of the surviving shards named in `sources` from their chunkservers,
/// decodes the same range of `shard`, and stores the result. Returns the shard's length.
pub async fn rebuild(
    store: &Arc<Store>,
    io: &SliceIo,
    shard: ShardId,
    layout: SliceLayout,
    sources: Vec<ShardSource>,
) -> Result<u64, WireError> {
    let total = layout.policy.total_shards();
    let target = shard.index.0 as usize;
    if target >= total {
        return Err(WireError::new(
            ErrorKind::Invalid,
            format!("shard index {target} outside {}", layout.policy),
        ));
    }
    let mut targets: Vec<Option<ShardTarget>> = vec![None; total];
    for s in &sources {
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
    let (mut writer, disk) = blocking(move || store2.create(shard, layout)).await?;
    let len = layout.shard_len();
    let mut problems = Vec::new();
    let missing = [target];
    let plan = |range| Recovery {
        missing: &missing,
        last_resort: &[],
        range,
    };
    let mut pos = 0;
    while pos < len {
        let end = len.min(pos + IO_PIECE as u64);
        let pieces = io
            .recover(
                shard.slice,
                layout,
                &targets,
                plan(pos..end),
                |_| None,
                &mut problems,
            )
            .await
            .map_err(|e| WireError::new(ErrorKind::Unavailable, e.to_string()))?;
        let piece = pieces.into_iter().nth(target).flatten().unwrap_or_default();
        writer = blocking(move || writer.write(&piece).map(|()| writer)).await?;
        pos = end;
    }
    let store2 = store.clone();
    blocking(move || store2.commit(writer, disk)).await?;
    info!(%shard, bytes = len, read_around = problems.len(), "rebuilt shard");
    Ok(len)
}
