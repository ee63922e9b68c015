//! From buffered writes to committed slices. A file's dirty extents are cut at chunk
//! boundaries; each piece becomes one immutable slice: allocate (the metaserver places it),
//! encode and store every shard, commit. Uploads of one file run in parallel, but commits
//! keep the order the data was written in, so a newer slice always lands on top.

use crate::extents::Extents;
use crate::file_state::Backend;
use bytes::Bytes;
use lattice_common::chunk_map::{SliceRef, CHUNK_SIZE};
use lattice_common::fs::Errno;
use lattice_common::ids::{ChunkserverId, InodeId};
use lattice_common::meta_client::MetaClient;
use lattice_common::shard_client::ShardError;
use lattice_common::slice_io::{ShardTarget, SliceError};
use lattice_common::wire::meta::{FsOp, FsReply};
use std::time::{Duration, Instant};
use tracing::warn;

/// A server that failed a shard write is left out of new placements for this long (about
/// until the metaserver itself notices a dead server).
const AVOID_FOR: Duration = Duration::from_secs(5);

/// One piece of a flush: bytes that go into one slice of one chunk.
pub struct Piece {
    pub chunk: u64,
    pub chunk_offset: u64,
    pub data: Bytes,
}

/// Cuts extents into slice-sized pieces that never cross a chunk boundary.
pub fn pieces(extents: &Extents) -> Vec<Piece> {
    let mut out = Vec::new();
    for (start, data) in extents.iter() {
        let data = Bytes::copy_from_slice(data);
        let mut pos = 0usize;
        while pos < data.len() {
            let at = start + pos as u64;
            let chunk = at / CHUNK_SIZE;
            let chunk_offset = at % CHUNK_SIZE;
            let take = ((CHUNK_SIZE - chunk_offset) as usize).min(data.len() - pos);
            out.push(Piece {
                chunk,
                chunk_offset,
                data: data.slice(pos..pos + take),
            });
            pos += take;
        }
    }
    out
}

/// A slice stored on its chunkservers but not yet committed.
pub struct Stored {
    pub chunk: u64,
    pub slice: SliceRef,
}

/// Allocates a slice for `piece` and stores its shards. Shards that cannot be stored are
/// left out when enough others are (the slice is committed degraded and repaired); else
/// their servers are avoided in a new allocation. While too few servers are up the write
/// waits, up to `io_wait`: long enough to ride out a restart, bounded so callers are
/// not left hanging.
pub async fn store(backend: &Backend, ino: InodeId, piece: Piece) -> Result<Stored, Errno> {
    let (meta, io) = (&backend.meta, &backend.io);
    let len = piece.data.len() as u64;
    let deadline = Instant::now() + backend.io_wait;
    let mut failed: Vec<(ChunkserverId, Instant)> = Vec::new();
    let mut pause = Duration::from_millis(100);
    let mut last = String::new();
    loop {
        failed.retain(|(_, at)| at.elapsed() < AVOID_FOR);
        let avoid = failed.iter().map(|(id, _)| *id).collect();
        let reply = meta
            .mutate(FsOp::AllocateSlice { ino, len, avoid })
            .await
            .map_err(|e| {
                warn!(%ino, "allocating a slice: {e}");
                Errno::IO
            })?;
        match reply {
            Ok(FsReply::Allocated {
                slice,
                layout,
                placement,
            }) => {
                let targets: Vec<Option<ShardTarget>> = placement
                    .iter()
                    .map(|s| s.as_ref().map(ShardTarget::from))
                    .collect();
                let mut placed: Vec<Option<ChunkserverId>> =
                    placement.iter().map(|s| s.as_ref().map(|s| s.id)).collect();
                match io.write(slice, layout, piece.data.clone(), &targets).await {
                    Ok(_) => {}
                    Err(SliceError::Write { problems, .. }) => {
                        for p in &problems {
                            placed[p.index] = None;
                            if let Some(server) = p.server {
                                failed.push((server, Instant::now()));
                            }
                        }
                        last = problems
                            .iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join("; ");
                        if placed.iter().flatten().count() < layout.policy.min_shards() {
                            if problems
                                .iter()
                                .all(|p| matches!(p.error, ShardError::NoSpace(_)))
                            {
                                warn!(%ino, %slice, "no space for a slice: {last}");
                                return Err(Errno::NOSPC);
                            }
                            if Instant::now() >= deadline {
                                warn!(%ino, %slice, "shards not stored for {:?}, failing the write: {last}", backend.io_wait);
                                return Err(Errno::IO);
                            }
                            warn!(%ino, %slice, "shards not stored, placing elsewhere: {last}");
                            continue;
                        }
                        warn!(%ino, %slice, "slice stored degraded, to be repaired: {last}");
                    }
                    Err(e) => {
                        warn!(%ino, %slice, "writing a slice: {e}");
                        return Err(Errno::IO);
                    }
                }
                return Ok(Stored {
                    chunk: piece.chunk,
                    slice: SliceRef {
                        slice,
                        layout,
                        placement: placed,
                        chunk_offset: piece.chunk_offset,
                        skip: 0,
                        len,
                    },
                });
            }
            Ok(_) => return Err(Errno::IO),
            Err(Errno::AGAIN) if Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(Errno::AGAIN) => {
                warn!(%ino, "too few chunkservers to store a slice for {:?}, failing the write (see the metaserver leader's log){}", backend.io_wait, if last.is_empty() { String::new() } else { format!("; last shard errors: {last}") });
                return Err(Errno::IO);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes a stored slice part of the file; returns how many slices its chunk now holds.
pub async fn commit(meta: &MetaClient, ino: InodeId, stored: Stored) -> Result<usize, Errno> {
    let op = FsOp::CommitSlice {
        ino,
        chunk: stored.chunk,
        slice: stored.slice,
    };
    match meta.mutate(op).await {
        Ok(Ok(FsReply::Committed { slices, .. })) => Ok(slices as usize),
        Ok(Ok(_)) => Err(Errno::IO),
        Ok(Err(e)) => Err(e),
        Err(e) => {
            warn!(%ino, "committing a slice: {e}");
            Err(Errno::IO)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_never_cross_chunks() {
        let mut e = Extents::default();
        e.write(CHUNK_SIZE - 10, &[1; 30]);
        e.write(5, &[2; 3]);
        let p = pieces(&e);
        let spans: Vec<(u64, u64, usize)> = p
            .iter()
            .map(|p| (p.chunk, p.chunk_offset, p.data.len()))
            .collect();
        assert_eq!(spans, vec![(0, 5, 3), (0, CHUNK_SIZE - 10, 10), (1, 0, 20)]);
    }
}
