//! From buffered writes to committed slices. A file's dirty extents are cut at chunk
//! boundaries; each piece becomes one immutable slice: allocate (the metaserver places it),
//! encode and store every shard, commit. Uploads of one file run in parallel, but commits
//! keep the order the data was written in, so a newer slice always lands on top.

use crate::extents::Extents;
use bytes::Bytes;
use lattice_common::chunk_map::{SliceRef, CHUNK_SIZE};
use lattice_common::fs::Errno;
use lattice_common::ids::{ChunkserverId, InodeId};
use lattice_common::meta_client::MetaClient;
use lattice_common::slice_io::{ShardTarget, SliceError, SliceIo};
use lattice_common::wire::meta::{FsOp, FsReply};
use tracing::warn;

/// Attempts at placing a slice when shards cannot be stored on the servers chosen.
const PLACEMENT_ATTEMPTS: usize = 4;

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

/// Allocates a slice for `piece` and stores all its shards; servers that fail are
/// avoided in a new allocation.
pub async fn store(
    meta: &MetaClient,
    io: &SliceIo,
    ino: InodeId,
    piece: Piece,
) -> Result<Stored, Errno> {
    let len = piece.data.len() as u64;
    let mut avoid: Vec<ChunkserverId> = Vec::new();
    let mut last = Errno::IO;
    for _ in 0..PLACEMENT_ATTEMPTS {
        let reply = meta
            .mutate(FsOp::AllocateSlice {
                ino,
                len,
                avoid: avoid.clone(),
            })
            .await
            .map_err(|e| {
                warn!(%ino, "allocating a slice: {e}");
                Errno::IO
            })??;
        let FsReply::Allocated {
            slice,
            layout,
            placement,
        } = reply
        else {
            return Err(Errno::IO);
        };
        let targets: Vec<ShardTarget> = placement
            .iter()
            .map(|s| ShardTarget {
                server: s.id,
                addr: s.addr,
            })
            .collect();
        match io.write(slice, layout, piece.data.clone(), &targets).await {
            Ok(_) => {
                return Ok(Stored {
                    chunk: piece.chunk,
                    slice: SliceRef {
                        slice,
                        layout,
                        placement: placement.iter().map(|s| Some(s.id)).collect(),
                        chunk_offset: piece.chunk_offset,
                        skip: 0,
                        len,
                    },
                })
            }
            Err(SliceError::Write { problems, .. }) => {
                warn!(%ino, %slice, "shards not stored, placing elsewhere: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "));
                avoid.extend(problems.iter().filter_map(|p| p.server));
                last = if problems.iter().all(|p| {
                    matches!(
                        p.error,
                        lattice_common::shard_client::ShardError::NoSpace(_)
                    )
                }) {
                    Errno::NOSPC
                } else {
                    Errno::IO
                };
            }
            Err(e) => {
                warn!(%ino, %slice, "writing a slice: {e}");
                return Err(Errno::IO);
            }
        }
    }
    Err(last)
}

/// Makes a stored slice part of the file.
pub async fn commit(meta: &MetaClient, ino: InodeId, stored: Stored) -> Result<(), Errno> {
    let op = FsOp::CommitSlice {
        ino,
        chunk: stored.chunk,
        slice: stored.slice,
    };
    match meta.mutate(op).await {
        Ok(Ok(_)) => Ok(()),
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
