//! Reading a byte range of a file: the slice map says which slices show where; each slice's
//! needed span is read (in parallel, reconstructing around lost or slow shards); holes read
//! as zeros; bytes written here but not committed yet are laid on top.

use crate::file_state::{Backend, FileState};
use crate::readahead::{Fetch, BLOCK};
use bytes::Bytes;
use futures::future::{join_all, FutureExt};
use lattice_common::chunk_map::{self, SliceRef, CHUNK_SIZE};
use lattice_common::fs::Errno;
use lattice_common::ids::{ChunkserverId, SliceId};
use lattice_common::slice_io::{ShardTarget, SliceError};
use lattice_common::wire::meta::{ChunkserverState, ServerAddr};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// One slice's part of a read: read `len` bytes from slice offset `from`, put them at
/// `dest` in the output.
pub struct Span<'a> {
    slice: &'a SliceRef,
    from: u64,
    len: u64,
    dest: u64,
}

/// Reads `offset..offset+len` of a file whose size is `size`: committed bytes (through
/// the read-ahead for a sequential reader), with bytes not yet committed laid on top. A
/// read within one read-ahead block, with nothing to lay on top, is a view of that block:
/// the bytes are not copied on their way to the kernel.
pub async fn read(
    backend: &Arc<Backend>,
    file: &Arc<FileState>,
    offset: u64,
    len: u64,
    size: u64,
) -> Result<Bytes, Errno> {
    let end = (offset + len).min(size);
    if offset >= end {
        return Ok(Bytes::new());
    }
    // Taken before any slice map: a batch committed meanwhile is then in one or the other.
    let overlay = file.overlay(offset, end);
    let ahead = {
        let (b, f) = (backend.clone(), file.clone());
        file.read_ahead(offset, end, size, move |at, n| {
            let (b, f) = (b.clone(), f.clone());
            // Spawned: read-ahead runs on while the reader is elsewhere.
            let task =
                tokio::spawn(async move { committed(&b, &f, at, at + n).await.map(Bytes::from) });
            async move { task.await.unwrap_or(Err(Errno::IO)) }.boxed()
        })
    };
    let read = match ahead {
        Some(blocks) => from_blocks(blocks, offset, end).await?,
        None => None,
    };
    let read = match read {
        Some(read) => read,
        None => Bytes::from(committed(backend, file, offset, end).await?),
    };
    if overlay.is_empty() {
        return Ok(read);
    }
    let mut out = Vec::from(read);
    overlay.overlay(offset, &mut out);
    Ok(Bytes::from(out))
}

/// A read answered from what is held here, without waiting: a file held inline whose bytes
/// were fetched within the slice timeout (by its open, usually), with bytes not yet
/// committed laid on top; `None` when they must be fetched.
pub fn read_held(
    backend: &Backend,
    file: &FileState,
    offset: u64,
    len: u64,
    size: u64,
) -> Option<Bytes> {
    let end = (offset + len).min(size);
    if offset >= end {
        return Some(Bytes::new());
    }
    // Taken before the held bytes, as in `read`: a batch that lands drops them first.
    let overlay = file.overlay(offset, end);
    let held = file.held_inline(backend)?;
    let mut out = inline_range(&held, offset, end);
    overlay.overlay(offset, &mut out);
    Some(Bytes::from(out))
}

/// Bytes `offset..end` of a file held inline as `held` (zeros past them).
fn inline_range(held: &[u8], offset: u64, end: u64) -> Vec<u8> {
    let mut out = vec![0u8; (end - offset) as usize];
    let upto = (end as usize).min(held.len());
    if (offset as usize) < upto {
        out[..upto - offset as usize].copy_from_slice(&held[offset as usize..upto]);
    }
    out
}

/// `offset..end` out of read-ahead blocks: a view of the block if one holds it all, else
/// copied together; `None` if a block ended early (the file grew since it was fetched).
async fn from_blocks(
    blocks: Vec<(u64, Fetch)>,
    offset: u64,
    end: u64,
) -> Result<Option<Bytes>, Errno> {
    if let [(start, fetch)] = blocks.as_slice() {
        let block = fetch.clone().await?;
        if *start <= offset && end <= start + block.len() as u64 {
            return Ok(Some(
                block.slice((offset - start) as usize..(end - start) as usize),
            ));
        }
    }
    let mut out = vec![0u8; (end - offset) as usize];
    for (start, fetch) in blocks {
        let block = fetch.await?;
        let (lo, hi) = (start.max(offset), (start + BLOCK).min(end));
        if start + (block.len() as u64) < hi {
            return Ok(None);
        }
        out[(lo - offset) as usize..(hi - offset) as usize]
            .copy_from_slice(&block[(lo - start) as usize..(hi - start) as usize]);
    }
    Ok(Some(Bytes::from(out)))
}

/// The committed bytes `offset..end` (holes as zeros). A slice with too few shards
/// reachable is tried again, with a fresh slice map, until the mount's `io_wait` has
/// passed: servers restart and repairs move shards, and a read that waits beats an EIO.
async fn committed(
    backend: &Backend,
    file: &FileState,
    offset: u64,
    end: u64,
) -> Result<Vec<u8>, Errno> {
    let deadline = Instant::now() + backend.io_wait;
    let mut pause = Duration::from_millis(100);
    loop {
        match committed_once(backend, file, offset, end).await {
            Ok(bytes) => return Ok(bytes),
            Err(Unreadable::Map(e)) => return Err(e),
            Err(Unreadable::Slice(slice, e)) if Instant::now() < deadline => {
                debug!(ino = %file.ino, %slice, "read waits for servers: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                file.invalidate_slices();
            }
            Err(Unreadable::Slice(slice, e)) => {
                warn!(ino = %file.ino, %slice, "read failed for {:?}, returning EIO: {e}", backend.io_wait);
                return Err(Errno::IO);
            }
        }
    }
}

enum Unreadable {
    /// The slice map could not be had.
    Map(Errno),
    /// A slice could not be read.
    Slice(SliceId, SliceError),
}

async fn committed_once(
    backend: &Backend,
    file: &FileState,
    offset: u64,
    end: u64,
) -> Result<Vec<u8>, Unreadable> {
    let (first, last) = (offset / CHUNK_SIZE, (end - 1) / CHUNK_SIZE);
    let map = file
        .slice_map(backend, first, last)
        .await
        .map_err(Unreadable::Map)?;
    if let Some(inline) = &map.inline {
        return Ok(inline_range(inline, offset, end));
    }
    let mut spans: Vec<Span> = Vec::new();
    for chunk in first..=last {
        let Some(slices) = map.chunks.get(&chunk).filter(|s| !s.is_empty()) else {
            continue;
        };
        let base = chunk * CHUNK_SIZE;
        let (a, b) = (offset.max(base) - base, end.min(base + CHUNK_SIZE) - base);
        spans.extend(spans_of(slices, a, b, (base + a) - offset));
    }
    if let [span] = spans.as_slice() {
        if span.dest == 0 && span.len == end - offset {
            // One slice holds it all (a sequential reader's usual case): its bytes are the
            // answer as they are.
            let mut data = read_span(backend, &map.servers, span)
                .await
                .map_err(|(slice, e)| Unreadable::Slice(slice, e))?;
            data.resize((end - offset) as usize, 0);
            return Ok(data);
        }
    }
    let mut out = vec![0u8; (end - offset) as usize];
    read_spans(backend, &map.servers, &spans, &mut out)
        .await
        .map_err(|(slice, e)| Unreadable::Slice(slice, e))?;
    Ok(out)
}

/// What to read of `slices` (one chunk's, oldest first) for chunk bytes `a..b`, placed from
/// `dest` in the output.
pub fn spans_of(slices: &[SliceRef], a: u64, b: u64, dest: u64) -> Vec<Span<'_>> {
    chunk_map::resolve(slices, a, b)
        .into_iter()
        .filter_map(|seg| {
            let (i, from) = seg.source?;
            Some(Span {
                slice: &slices[i],
                from,
                len: seg.end - seg.start,
                dest: dest + seg.start - a,
            })
        })
        .collect()
}

/// Reads every span in parallel into `out` (which is zeroed where no span lands).
pub async fn read_spans(
    backend: &Backend,
    servers: &HashMap<ChunkserverId, ServerAddr>,
    spans: &[Span<'_>],
    out: &mut [u8],
) -> Result<(), (SliceId, SliceError)> {
    let reads = spans.iter().map(|span| read_span(backend, servers, span));
    for (span, data) in spans.iter().zip(join_all(reads).await) {
        let data = data?;
        let at = span.dest as usize;
        out[at..at + data.len()].copy_from_slice(&data);
    }
    Ok(())
}

/// The bytes of one span, read around servers that are down, suspect or draining.
async fn read_span(
    backend: &Backend,
    servers: &HashMap<ChunkserverId, ServerAddr>,
    span: &Span<'_>,
) -> Result<Vec<u8>, (SliceId, SliceError)> {
    let targets: Vec<Option<ShardTarget>> = span
        .slice
        .placement
        .iter()
        .map(|p| {
            let s = servers.get(p.as_ref()?)?;
            if matches!(
                s.state,
                ChunkserverState::Suspect | ChunkserverState::Draining
            ) {
                // Read around it when parity can stand in.
                backend.io.avoid_server(s.addr);
            }
            (s.state != ChunkserverState::Down).then_some(ShardTarget {
                server: s.id,
                addr: s.addr,
            })
        })
        .collect();
    let read = backend
        .io
        .read(
            span.slice.slice,
            span.slice.layout,
            &targets,
            span.from,
            span.len,
        )
        .await
        .map_err(|e| (span.slice.slice, e))?;
    if !read.problems.is_empty() {
        debug!(slice = %span.slice.slice, "read around: {:?}", read.problems);
    }
    Ok(read.data)
}
