//! From buffered writes to committed slices. A file's dirty extents are cut at chunk
//! boundaries; the pieces of each chunk become one immutable slice, their bytes laid end
//! to end (scattered small writes cost one slice per chunk, not one each): allocate (the
//! metaserver places it), encode and store every shard, commit one reference per range.
//! Uploads of one file run in parallel, but commits keep the order the data was written
//! in, so a newer slice always lands on top.

use crate::extents::Extents;
use crate::file_state::{Backend, Contents};
use bytes::Bytes;
use lattice_common::chunk_map::{SliceRef, CHUNK_SIZE};
use lattice_common::fs::{Attr, Errno, SetAttr};
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
/// Rounds of moving inline bytes to a slice before a commit gives up (each lost only to
/// another mount's write in between).
const MAX_TRIES: u32 = 8;

/// What goes into one slice: ranges of one chunk, their bytes end to end in `data`.
pub struct Piece {
    pub chunk: u64,
    /// (chunk offset, length) of each range, in order of offset; the lengths sum to
    /// `data.len()`.
    pub ranges: Vec<(u64, u64)>,
    pub data: Bytes,
}

impl Piece {
    /// One contiguous range.
    pub fn contiguous(chunk: u64, chunk_offset: u64, data: Bytes) -> Piece {
        Piece {
            chunk,
            ranges: vec![(chunk_offset, data.len() as u64)],
            data,
        }
    }

    /// The references that show this piece's ranges once it is stored as `base`'s slice.
    fn refs(&self, base: SliceRef) -> Vec<SliceRef> {
        let mut skip = 0;
        self.ranges
            .iter()
            .map(|&(chunk_offset, len)| {
                let r = SliceRef {
                    chunk_offset,
                    skip,
                    len,
                    ..base.clone()
                };
                skip += len;
                r
            })
            .collect()
    }
}

/// Cuts extents into one piece per chunk they touch. Extents never overlap, so neither do
/// a piece's ranges; a chunk's ranges fit one slice (a chunk is a slice's largest size).
/// A piece of one run (a sequential writer's usual case) is a view of the buffered bytes;
/// only scattered runs are copied, into one buffer per chunk.
pub fn pieces(extents: &Extents<Bytes>) -> Vec<Piece> {
    // Every run of bytes, cut at chunk boundaries: (chunk, chunk offset, bytes).
    let mut parts: Vec<(u64, u64, Bytes)> = Vec::new();
    for (start, data) in extents.runs() {
        let mut pos = 0usize;
        while pos < data.len() {
            let at = start + pos as u64;
            let chunk_offset = at % CHUNK_SIZE;
            let take = ((CHUNK_SIZE - chunk_offset) as usize).min(data.len() - pos);
            parts.push((at / CHUNK_SIZE, chunk_offset, data.slice(pos..pos + take)));
            pos += take;
        }
    }
    parts
        .chunk_by(|a, b| a.0 == b.0)
        .map(|group| {
            let data = match group {
                [(_, _, one)] => one.clone(),
                _ => {
                    let mut bytes = Vec::with_capacity(group.iter().map(|p| p.2.len()).sum());
                    for (_, _, data) in group {
                        bytes.extend_from_slice(data);
                    }
                    Bytes::from(bytes)
                }
            };
            Piece {
                chunk: group[0].0,
                ranges: group.iter().map(|p| (p.1, p.2.len() as u64)).collect(),
                data,
            }
        })
        .collect()
}

/// A slice stored on its chunkservers but not yet committed: its references, one per
/// range of its piece.
pub struct Stored {
    pub chunk: u64,
    pub refs: Vec<SliceRef>,
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
                grant,
            }) => {
                io.client().hold_grants(grant);
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
                let base = SliceRef {
                    slice,
                    layout,
                    placement: placed,
                    chunk_offset: 0,
                    skip: 0,
                    len,
                };
                return Ok(Stored {
                    chunk: piece.chunk,
                    refs: piece.refs(base),
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
/// A file whose bytes are inline has them moved to a slice first.
pub async fn commit(backend: &Backend, ino: InodeId, stored: Stored) -> Result<usize, Errno> {
    let op = FsOp::CommitSlices {
        ino,
        chunk: stored.chunk,
        slices: stored.refs,
    };
    let mut tries = 0;
    loop {
        match mutate(&backend.meta, ino, op.clone()).await {
            Ok(FsReply::Committed { slices, .. }) => return Ok(slices as usize),
            Ok(_) => return Err(Errno::IO),
            Err(Errno::MEDIUMTYPE) if tries < MAX_TRIES => uninline(backend, ino).await?,
            Err(e) => return Err(map_internal(e)),
        }
        tries += 1;
    }
}

/// Writes a batch into the namespace, for a file whose bytes are (or may become) inline:
/// one Raft round instead of a slice, which sets `times` too if given. EOPNOTSUPP when the
/// file cannot hold them inline. Returns the file's attributes after.
pub async fn write_inline(
    meta: &MetaClient,
    ino: InodeId,
    data: &Extents<Bytes>,
    times: Option<SetAttr>,
) -> Result<Attr, Errno> {
    let writes = data.iter().map(|(at, d)| (at, d.to_vec())).collect();
    let op = match times {
        Some(set) => FsOp::WriteInlineSetTimes { ino, writes, set },
        None => FsOp::WriteInline { ino, writes },
    };
    match mutate(meta, ino, op).await? {
        FsReply::Committed { attr, .. } => Ok(attr),
        _ => Err(Errno::IO),
    }
}

/// Moves a file's inline bytes to a slice so that slices can land on it; done already if
/// they are not inline any more. Another mount writing them meanwhile makes it start over.
async fn uninline(backend: &Backend, ino: InodeId) -> Result<(), Errno> {
    for _ in 0..MAX_TRIES {
        let (_, Contents::Inline(held)) = backend.slices(ino, 0, 0).await? else {
            return Ok(());
        };
        let slice = match held.is_empty() {
            true => None,
            false => {
                let piece = Piece::contiguous(0, 0, Bytes::copy_from_slice(&held));
                store(backend, ino, piece).await?.refs.pop()
            }
        };
        let op = FsOp::Uninline {
            ino,
            expect: held.to_vec(),
            slice,
        };
        match mutate(&backend.meta, ino, op).await {
            Ok(_) => return Ok(()),
            Err(Errno::STALE) => continue,
            Err(e) => return Err(map_internal(e)),
        }
    }
    warn!(%ino, "inline bytes kept changing while moved to a slice");
    Err(Errno::IO)
}

/// Sends a namespace change; a failure to reach the metaservers is EIO.
async fn mutate(meta: &MetaClient, ino: InodeId, op: FsOp) -> Result<FsReply, Errno> {
    meta.mutate(op).await.map_err(|e| {
        warn!(%ino, "writing to the metaservers: {e}");
        Errno::IO
    })?
}

/// An error meant for the client alone never reaches an application as itself.
fn map_internal(e: Errno) -> Errno {
    match e {
        Errno::MEDIUMTYPE => Errno::IO,
        e => e,
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
        e.write(CHUNK_SIZE + 40, &[3; 2]);
        let p = pieces(&e.freeze());
        let spans: Vec<_> = p
            .iter()
            .map(|p| (p.chunk, p.ranges.clone(), p.data.to_vec()))
            .collect();
        let mut first = vec![2; 3];
        first.extend([1; 10]);
        let mut second = vec![1; 20];
        second.extend([3; 2]);
        assert_eq!(
            spans,
            vec![
                (0, vec![(5, 3), (CHUNK_SIZE - 10, 10)], first),
                (1, vec![(0, 20), (40, 2)], second)
            ]
        );
    }

    #[test]
    fn a_pieces_references_show_its_ranges_in_order() {
        let piece = Piece {
            chunk: 0,
            ranges: vec![(100, 3), (4096, 5)],
            data: Bytes::from_static(&[7; 8]),
        };
        let base = SliceRef {
            slice: lattice_common::ids::SliceId(1),
            layout: lattice_common::layout::SliceLayout::new(
                lattice_common::policy::Policy::Mirror { copies: 2 },
                8,
                4096,
            )
            .unwrap(),
            placement: vec![None, None],
            chunk_offset: 0,
            skip: 0,
            len: 8,
        };
        let refs: Vec<(u64, u64, u64)> = piece
            .refs(base)
            .iter()
            .map(|r| (r.chunk_offset, r.skip, r.len))
            .collect();
        assert_eq!(refs, vec![(100, 0, 3), (4096, 3, 5)]);
    }
}
