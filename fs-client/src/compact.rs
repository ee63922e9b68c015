//! Compaction: a chunk that holds many slices (small appends, each fsynced; scattered
//! overwrites) has its newest slices rewritten as a few, so reads stay fast and the chunk
//! never reaches its slice limit. The writing client does it in the background: it reads
//! what those slices show, stores it as new slices, and asks the metaserver to swap them
//! in, which it does only if the run is still exactly as it was read.

use crate::file_state::{Backend, Contents, FileState};
use crate::reader::{read_spans, spans_of};
use crate::writer::{self, Piece};
use bytes::Bytes;
use lattice_common::chunk_map::{self, SliceRef};
use lattice_common::fs::Errno;
use lattice_common::wire::meta::FsOp;
use tracing::{debug, warn};

/// Compacts chunk `chunk` of `file` if it is fragmented enough to be worth it.
pub async fn compact(backend: &Backend, file: &FileState, chunk: u64) {
    match try_compact(backend, file, chunk).await {
        Ok(0) => {}
        Ok(n) => debug!(ino = %file.ino, chunk, "compacted {n} slices"),
        // The run changed while it was rewritten (a newer write hid part of it, or a
        // truncation): the next check starts over.
        Err(Errno::STALE) => debug!(ino = %file.ino, chunk, "compaction overtaken by a change"),
        Err(Errno::NOENT) => debug!(ino = %file.ino, chunk, "compaction of a removed file"),
        Err(e) => warn!(ino = %file.ino, chunk, "compaction failed: {e}"),
    }
}

/// Returns how many slices were replaced.
async fn try_compact(backend: &Backend, file: &FileState, chunk: u64) -> Result<usize, Errno> {
    let ino = file.ino;
    let (_, Contents::Slices((chunks, servers))) = backend.slices(ino, chunk, chunk).await? else {
        return Ok(0);
    };
    let Some((_, slices)) = chunks.into_iter().find(|(c, _)| *c == chunk) else {
        return Ok(0);
    };
    let Some(plan) = chunk_map::plan_compaction(&slices) else {
        return Ok(0);
    };
    let run = &slices[plan.start..];
    let servers = servers.into_iter().map(|s| (s.id, s)).collect();
    let mut new: Vec<SliceRef> = Vec::with_capacity(plan.pieces.len());
    for &(a, b) in &plan.pieces {
        let mut data = vec![0u8; (b - a) as usize];
        read_spans(backend, &servers, &spans_of(run, a, b, 0), &mut data)
            .await
            .map_err(|(slice, e)| {
                warn!(%ino, %slice, "reading for compaction: {e}");
                Errno::IO
            })?;
        let piece = Piece::contiguous(chunk, a, Bytes::from(data));
        new.extend(writer::store(backend, ino, piece).await?.refs);
    }
    let op = FsOp::ReplaceSlices {
        ino,
        chunk,
        old: run.to_vec(),
        new,
    };
    backend.meta.mutate(op).await.map_err(|_| Errno::IO)??;
    file.invalidate_slices();
    Ok(run.len())
}
