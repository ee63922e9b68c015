//! What the client keeps per file: buffered writes, the batches being flushed (still
//! visible to reads until committed), write-back errors for the descriptors to hear of, and
//! a short cache of the file's slice map.

use crate::extents::Extents;
use crate::landings::{Landed, Landing, Landings};
use crate::readahead::{Fetch, ReadAhead};
use crate::writer;
use bytes::Bytes;
use futures::future::join_all;
use lattice_common::chunk_map::{self, SliceRef};
use lattice_common::fs::{Attr, Errno, SetAttr};
use lattice_common::ids::{ChunkserverId, InodeId};
use lattice_common::meta_client::MetaClient;
use lattice_common::slice_io::SliceIo;
use lattice_common::wire::meta::{FsQuery, FsReply, ServerAddr, INLINE_MAX};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Most flush batches of one file in flight before writers wait.
const MAX_BATCHES_IN_FLIGHT: usize = 4;
/// Most chunks asked for in one slice-map query (the metaserver's limit).
const CHUNKS_PER_QUERY: u64 = 64;
/// A chunk is checked for compaction again once it holds this many more slices than at its
/// last check, or half as many again if that is more (see [`recheck_at`]).
const COMPACT_RECHECK_AFTER: usize = chunk_map::COMPACT_AT / 2;

/// How many slices a chunk checked at `checked` must hold before it is checked again. A
/// check fetches and resolves the whole chunk map, so on a chunk that compaction cannot
/// shrink (scattered overwrites, thousands of slices) checks thin out as it grows: their
/// cost per commit stays constant instead of growing with the chunk.
fn recheck_at(checked: usize) -> usize {
    checked + COMPACT_RECHECK_AFTER.max(checked / 2)
}

/// The slices of chunks `first..=last` of a file, and the servers they name.
pub type Slices = (Vec<(u64, Vec<SliceRef>)>, Vec<ServerAddr>);

/// What the metaservers hold of a file's data.
pub enum Contents {
    Slices(Slices),
    /// The file's bytes are held inline (a small file): all of them, whatever chunks
    /// were asked for (zeros past them up to its size).
    Inline(Arc<Vec<u8>>),
}

/// Where the client's data goes: shared by every file.
pub struct Backend {
    pub meta: MetaClient,
    pub io: SliceIo,
    /// How long a fetched slice map is trusted (other mounts may change the file).
    pub slice_ttl: Duration,
    /// How long a read or write waits for enough chunkservers before it fails.
    pub io_wait: Duration,
    pub stats: crate::metrics::Stats,
    /// The order this mount's batches landed in (see [`crate::landings`]).
    pub landings: Landings,
}

impl Backend {
    /// Asks the metaservers for the slices of chunks `first..=last` of `ino` (or its inline
    /// bytes), and the file's attributes.
    pub async fn slices(
        &self,
        ino: InodeId,
        first: u64,
        last: u64,
    ) -> Result<(Attr, Contents), Errno> {
        let reply = self
            .meta
            .query(FsQuery::Slices { ino, first, last })
            .await
            .map_err(|_| Errno::IO)??;
        match reply {
            FsReply::Slices {
                attr,
                chunks,
                servers,
                grants,
            } => {
                self.io.client().hold_grants(grants);
                Ok((attr, Contents::Slices((chunks, servers))))
            }
            FsReply::Inline { attr, data } => Ok((attr, Contents::Inline(Arc::new(data)))),
            _ => Err(Errno::IO),
        }
    }
}

struct Batch {
    id: u64,
    data: Arc<Extents<Bytes>>,
    done: watch::Receiver<bool>,
}

#[derive(Default)]
struct Buffers {
    dirty: Extents,
    /// Being written, oldest first.
    flushing: Vec<Batch>,
    next_batch: u64,
    errors: WriteErrors,
    dirty_since: Option<Instant>,
    landed: Option<Landed>,
}

impl Buffers {
    fn local_end(&self) -> u64 {
        self.flushing
            .iter()
            .map(|f| f.data.end())
            .chain([self.dirty.end()])
            .max()
            .unwrap_or(0)
    }
}

/// Write-back errors as Linux's errseq keeps them: a counter of errors and the latest one.
/// Each open file description remembers how far it has seen (from when it was opened), so
/// every descriptor open when data was lost hears of it at its next fsync or close, once.
#[derive(Default)]
struct WriteErrors {
    count: u64,
    last: Option<Errno>,
    /// Whether any descriptor has been told of the latest error.
    seen: bool,
}

#[derive(Default)]
struct SliceCache {
    chunks: HashMap<u64, (Instant, Vec<SliceRef>)>,
    /// The file's bytes, when they are inline (then `chunks` is empty).
    inline: Option<(Instant, Arc<Vec<u8>>)>,
    servers: HashMap<ChunkserverId, ServerAddr>,
    /// Bumped by every invalidation: a map fetched across one is used by the read that
    /// asked (its overlay predates it) but not kept, as it may miss the commit behind it.
    generation: u64,
}

pub struct FileState {
    pub ino: InodeId,
    opens: AtomicU32,
    /// Lock owners that took a lock on this file here (only they have locks to drop).
    lockers: Mutex<HashSet<u64>>,
    locks_lost: AtomicBool,
    /// The file is known to hold slices (its writes are not tried inline).
    sliced: AtomicBool,
    buffers: Mutex<Buffers>,
    slices: Mutex<SliceCache>,
    readahead: Mutex<ReadAhead>,
    /// Per chunk, how many slices it held at its last compaction check, and whether one
    /// runs.
    compaction: Mutex<HashMap<u64, (usize, bool)>>,
}

/// A file's slices for a range of chunks, with the servers they name.
#[derive(Default)]
pub struct SliceMap {
    pub chunks: HashMap<u64, Vec<SliceRef>>,
    pub servers: HashMap<ChunkserverId, ServerAddr>,
    /// The file's bytes are inline: these, and no slices.
    pub inline: Option<Arc<Vec<u8>>>,
}

impl FileState {
    pub fn new(ino: InodeId) -> Self {
        FileState {
            ino,
            opens: AtomicU32::new(0),
            lockers: Mutex::default(),
            locks_lost: AtomicBool::new(false),
            sliced: AtomicBool::new(false),
            buffers: Mutex::default(),
            slices: Mutex::default(),
            readahead: Mutex::default(),
            compaction: Mutex::default(),
        }
    }

    fn buffers(&self) -> MutexGuard<'_, Buffers> {
        self.buffers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn opened(&self) {
        self.opens.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns whether this was the last open.
    pub fn released(&self) -> bool {
        self.opens.fetch_sub(1, Ordering::Relaxed) <= 1
    }

    pub fn is_open(&self) -> bool {
        self.open_count() > 0
    }

    pub fn open_count(&self) -> u32 {
        self.opens.load(Ordering::Relaxed)
    }

    pub fn note_locker(&self, owner: u64) {
        self.lockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(owner);
    }

    /// The metaservers released this file's locks while this mount was silent: until every
    /// descriptor is closed, lock operations, writes and fsyncs on it fail with EIO (its
    /// holders must not go on as if they still held them).
    pub fn lose_locks(&self) -> bool {
        let mut lockers = self.lockers.lock().unwrap_or_else(|p| p.into_inner());
        if lockers.is_empty() {
            return false;
        }
        lockers.clear();
        self.locks_lost.store(true, Ordering::Relaxed);
        true
    }

    /// EIO once the file's locks were lost (see [`FileState::lose_locks`]).
    pub fn check_locks(&self) -> Result<(), Errno> {
        match self.locks_lost.load(Ordering::Relaxed) {
            true => Err(Errno::IO),
            false => Ok(()),
        }
    }

    /// Whether `owner` may hold locks here.
    pub fn is_locker(&self, owner: u64) -> bool {
        self.lockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&owner)
    }

    /// Whether `owner` may hold locks here (forgets it: the caller drops them).
    pub fn take_locker(&self, owner: u64) -> bool {
        self.lockers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&owner)
    }

    /// One past the last byte written here but not committed yet (0 if none).
    pub fn local_end(&self) -> u64 {
        self.buffers().local_end()
    }

    /// The size a metaserver answer asked for at `asked` must show at least: bytes written
    /// here and not committed yet, and those committed after `asked`.
    pub fn end_since(&self, asked: Landing) -> u64 {
        // One look: a batch landing in between would be in neither.
        let b = self.buffers();
        b.local_end().max(Landed::end_since(b.landed, asked))
    }

    /// The latest landing of this file's batches, if any since its last truncation here.
    pub fn landed(&self) -> Option<Landed> {
        self.buffers().landed
    }

    /// Bytes written here and not committed yet (overwrites counted again).
    pub fn local_bytes(&self) -> u64 {
        let b = self.buffers();
        b.flushing.iter().map(|f| f.data.bytes()).sum::<u64>() + b.dirty.bytes()
    }

    pub fn has_unflushed(&self) -> bool {
        let b = self.buffers();
        !b.dirty.is_empty() || !b.flushing.is_empty()
    }

    /// Whether buffered data has waited longer than `age`.
    pub fn dirty_for(&self, age: Duration) -> bool {
        self.buffers()
            .dirty_since
            .is_some_and(|t| t.elapsed() >= age)
    }

    /// Buffers a write; starts a flush once `limit` bytes are buffered, and waits while too
    /// many flushes of this file are in flight.
    pub async fn write(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        offset: u64,
        data: &[u8],
        limit: u64,
    ) {
        let wait = {
            let mut b = self.buffers();
            b.dirty.write(offset, data);
            b.dirty_since.get_or_insert_with(Instant::now);
            if b.dirty.bytes() < limit {
                return;
            }
            drop(b);
            self.start_flush(backend);
            let b = self.buffers();
            (b.flushing.len() > MAX_BATCHES_IN_FLIGHT).then(|| b.flushing[0].done.clone())
        };
        if let Some(mut done) = wait {
            let _ = done.wait_for(|d| *d).await;
        }
    }

    /// Moves the buffered bytes into a new batch and starts writing it as slices. Uploads
    /// run at once; the commit waits for the previous batch's commit.
    pub fn start_flush(self: &Arc<Self>, backend: &Arc<Backend>) {
        self.start_batch(backend, None);
    }

    /// [`FileState::start_flush`], with `times` (times only) set by the batch's own commit
    /// if it goes inline. The receiver hears the attributes after both, or `None` when the
    /// times were not set (the caller sets them then). `None` if nothing was buffered.
    fn start_batch(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        times: Option<SetAttr>,
    ) -> Option<oneshot::Receiver<Option<Attr>>> {
        let mut b = self.buffers();
        if b.dirty.is_empty() {
            return None;
        }
        let data = Arc::new(std::mem::take(&mut b.dirty).freeze());
        b.dirty_since = None;
        let id = b.next_batch;
        b.next_batch += 1;
        let previous = b.flushing.last().map(|f| f.done.clone());
        let (tx, rx) = watch::channel(false);
        b.flushing.push(Batch {
            id,
            data: data.clone(),
            done: rx,
        });
        drop(b);
        let (file, backend) = (self.clone(), backend.clone());
        let (set_tx, set_rx) = oneshot::channel();
        tokio::spawn(async move {
            let inline = file.write_inline(&backend, &data, previous.clone(), times);
            let (error, set) = match inline.await {
                Some(Ok(set)) => (None, set),
                Some(Err(e)) => (Some(e), None),
                None => (file.write_slices(&backend, &data, previous).await, None),
            };
            // The slice map must show the new slices before the batch stops being overlaid.
            file.invalidate_slices();
            let mut b = file.buffers();
            // Noted before the batch stops counting in `local_end`: no answer may miss both.
            match error {
                Some(e) => {
                    b.errors.count += 1;
                    (b.errors.last, b.errors.seen) = (Some(e), false);
                }
                None => {
                    let end = b.landed.map_or(0, |l| l.end).max(data.end());
                    let at = backend.landings.land();
                    b.landed = Some(Landed { at, end });
                }
            }
            b.flushing.retain(|f| f.id != id);
            drop(b);
            let _ = tx.send(true);
            let _ = set_tx.send(set);
        });
        Some(set_rx)
    }

    /// Writes a small batch inline, after the previous batch landed, if the file may hold
    /// its bytes inline; `None` when it cannot (then the batch goes as slices). With
    /// `times`, sets them in the same commit if allowed: then the attributes after both.
    async fn write_inline(
        &self,
        backend: &Backend,
        data: &Extents<Bytes>,
        previous: Option<watch::Receiver<bool>>,
        times: Option<SetAttr>,
    ) -> Option<Result<Option<Attr>, Errno>> {
        if data.end() > INLINE_MAX || self.sliced.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(mut previous) = previous {
            let _ = previous.wait_for(|d| *d).await;
        }
        let mut with_times = times.is_some();
        let mut result = writer::write_inline(&backend.meta, self.ino, data, times).await;
        if with_times && matches!(result, Err(e) if e != Errno::NOTSUP) {
            // Perhaps the times were refused (before anything was checked of the bytes): the
            // bytes go on their own, and may turn out not to fit inline. The caller sets the
            // times then, and hears why not.
            with_times = false;
            result = writer::write_inline(&backend.meta, self.ino, data, None).await;
        }
        match result {
            Err(Errno::NOTSUP) => {
                self.sliced.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                backend.stats.write_errors.add(1);
                Some(Err(e))
            }
            Ok(attr) => Some(Ok(with_times.then_some(attr))),
        }
    }

    /// Stores a batch as slices (one per chunk it touches) and commits them once the
    /// previous batch landed; returns the first error.
    async fn write_slices(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        data: &Extents<Bytes>,
        previous: Option<watch::Receiver<bool>>,
    ) -> Option<Errno> {
        let uploads = writer::pieces(data)
            .into_iter()
            .map(|p| writer::store(backend, self.ino, p));
        let stored = join_all(uploads).await;
        if let Some(mut previous) = previous {
            let _ = previous.wait_for(|d| *d).await;
        }
        // A batch's pieces never overlap, so their commits may land in any order: sent
        // together, they share the leader's Raft rounds.
        let commits = stored.into_iter().map(|s| async move {
            let result = match s {
                Ok(s) => {
                    let chunk = s.chunk;
                    writer::commit(backend, self.ino, s)
                        .await
                        .map(|slices| self.committed_into(backend, chunk, slices))
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => backend.stats.slices_committed.add(1),
                Err(_) => backend.stats.write_errors.add(1),
            }
            result
        });
        let error = join_all(commits).await.into_iter().find_map(Result::err);
        if error.is_none() {
            self.sliced.store(true, Ordering::Relaxed);
        }
        error
    }

    /// A commit left `slices` slices in `chunk`: a chunk that holds many is checked for
    /// compaction in the background (one check per chunk at a time).
    fn committed_into(self: &Arc<Self>, backend: &Arc<Backend>, chunk: u64, slices: usize) {
        {
            let mut c = self.compaction.lock().unwrap_or_else(|p| p.into_inner());
            let (checked, running) = c.entry(chunk).or_default();
            if slices < chunk_map::COMPACT_AT
                || *running
                || (*checked > 0 && slices < recheck_at(*checked))
            {
                if slices < *checked {
                    *checked = slices;
                }
                return;
            }
            (*checked, *running) = (slices, true);
        }
        let (file, backend) = (self.clone(), backend.clone());
        tokio::spawn(async move {
            crate::compact::compact(&backend, &file, chunk).await;
            let mut c = file.compaction.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, running)) = c.get_mut(&chunk) {
                *running = false;
            }
        });
    }

    /// Writes out everything buffered and waits until it is committed. Errors are kept for
    /// the descriptors to hear of ([`FileState::errors_since`]).
    pub async fn flush(self: &Arc<Self>, backend: &Arc<Backend>) {
        self.flush_with_times(backend, None).await;
    }

    /// [`FileState::flush`], setting `times` (times only) in the last commit when it can:
    /// then the attributes after both; `None` when the caller must set them itself.
    pub async fn flush_with_times(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        times: Option<SetAttr>,
    ) -> Option<Attr> {
        let set = self.start_batch(backend, times);
        let last = self.buffers().flushing.last().map(|f| f.done.clone());
        if let Some(mut done) = last {
            let _ = done.wait_for(|d| *d).await;
        }
        set?.await.ok().flatten()
    }

    /// Where a descriptor opened now starts hearing of write errors: an error nobody has
    /// been told of yet is still reported to it.
    pub fn errors_mark(&self) -> u64 {
        let e = &self.buffers().errors;
        match e.seen {
            false => e.count.saturating_sub(1),
            true => e.count,
        }
    }

    /// The latest write error if there were any since `mark` (which moves past it).
    pub fn errors_since(&self, mark: &mut u64) -> Result<(), Errno> {
        let mut b = self.buffers();
        let e = &mut b.errors;
        if e.count <= *mark {
            return Ok(());
        }
        (*mark, e.seen) = (e.count, true);
        Err(e.last.unwrap_or(Errno::IO))
    }

    /// Drops buffered bytes at or past `size` (after a truncation).
    pub fn truncate_buffers(&self, size: u64) {
        let mut b = self.buffers();
        b.dirty.truncate(size);
        b.landed = Landed::truncate(b.landed, size);
        drop(b);
        if size == 0 {
            // No slices are left: the file may hold its bytes inline again.
            self.sliced.store(false, Ordering::Relaxed);
        }
    }

    /// The not-yet-committed bytes in `offset..end`, oldest batch first, newest on top.
    pub fn overlay(&self, offset: u64, end: u64) -> Extents {
        let b = self.buffers();
        let mut out = Extents::default();
        let layers = b.flushing.iter().map(|f| f.data.clip(offset, end));
        for layer in layers.chain([b.dirty.clip(offset, end)]) {
            for (s, d) in layer.iter() {
                out.write(s, d);
            }
        }
        out
    }

    /// Drops the cached slice map and read-ahead blocks (the committed contents changed, or
    /// may have).
    pub fn invalidate_slices(&self) {
        let mut cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        *cache = SliceCache {
            generation: cache.generation + 1,
            ..SliceCache::default()
        };
        drop(cache);
        self.readahead
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .invalidate();
    }

    /// For a sequential reader, the read-ahead blocks covering `offset..end` (starting more
    /// with `start`); `None` for a random read.
    pub fn read_ahead(
        &self,
        offset: u64,
        end: u64,
        size: u64,
        start: impl FnMut(u64, u64) -> futures::future::BoxFuture<'static, Result<Bytes, Errno>>,
    ) -> Option<Vec<(u64, Fetch)>> {
        let mut ra = self.readahead.lock().unwrap_or_else(|p| p.into_inner());
        let window = ra.observe(offset, end)?;
        Some(ra.blocks(offset, end, window, size, start))
    }

    /// The file's bytes, if it is held inline and they were fetched within the slice
    /// timeout.
    pub fn held_inline(&self, backend: &Backend) -> Option<Arc<Vec<u8>>> {
        let cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        let (at, bytes) = cache.inline.as_ref()?;
        (at.elapsed() <= backend.slice_ttl).then(|| bytes.clone())
    }

    /// The slices of chunks `first..=last`, from the cache while fresh.
    pub async fn slice_map(
        &self,
        backend: &Backend,
        first: u64,
        last: u64,
    ) -> Result<SliceMap, Errno> {
        if let Some(bytes) = self.held_inline(backend) {
            return Ok(SliceMap {
                inline: Some(bytes),
                ..SliceMap::default()
            });
        }
        let (generation, mut map) = {
            let cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
            let chunks = (first..=last)
                .filter_map(|c| {
                    let (at, slices) = cache.chunks.get(&c)?;
                    (at.elapsed() <= backend.slice_ttl).then(|| (c, slices.clone()))
                })
                .collect();
            let servers = cache.servers.clone();
            let map = SliceMap {
                chunks,
                servers,
                inline: None,
            };
            (cache.generation, map)
        };
        let missing: Vec<u64> = (first..=last)
            .filter(|c| !map.chunks.contains_key(c))
            .collect();
        if let (Some(&lo), Some(&hi)) = (missing.first(), missing.last()) {
            let mut start = lo;
            while start <= hi && map.inline.is_none() {
                let end = hi.min(start + CHUNKS_PER_QUERY - 1);
                let (_, contents) = backend.slices(self.ino, start, end).await?;
                self.keep_slices(generation, (start, end), contents, &mut map);
                start = end + 1;
            }
        }
        Ok(map)
    }

    /// Fetches the slices of chunks `first..=last` (kept as `slice_map` would) with the
    /// file's attributes, in one call.
    pub async fn load_slices(
        &self,
        backend: &Backend,
        first: u64,
        last: u64,
    ) -> Result<Attr, Errno> {
        let generation = self
            .slices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .generation;
        let (attr, contents) = backend.slices(self.ino, first, last).await?;
        self.keep_slices(
            generation,
            (first, last),
            contents,
            &mut SliceMap::default(),
        );
        Ok(attr)
    }

    /// Adds the fetched slices of chunks `first..=last` (none listed: no slices), or the
    /// inline bytes, to `map`, and to the cache unless it was invalidated since
    /// `generation`.
    fn keep_slices(
        &self,
        generation: u64,
        (first, last): (u64, u64),
        contents: Contents,
        map: &mut SliceMap,
    ) {
        let (chunks, servers) = match contents {
            Contents::Slices(s) => s,
            Contents::Inline(bytes) => {
                let mut cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
                if cache.generation == generation {
                    cache.chunks.clear();
                    cache.inline = Some((Instant::now(), bytes.clone()));
                }
                *map = SliceMap {
                    inline: Some(bytes),
                    ..SliceMap::default()
                };
                return;
            }
        };
        if !chunks.is_empty() {
            self.sliced.store(true, Ordering::Relaxed);
        }
        map.chunks.extend((first..=last).map(|c| (c, Vec::new())));
        map.chunks.extend(chunks);
        map.servers.extend(servers.into_iter().map(|s| (s.id, s)));
        let mut cache = self.slices.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation == generation {
            cache.inline = None;
            let now = Instant::now();
            for c in first..=last {
                if let Some(slices) = map.chunks.get(&c) {
                    cache.chunks.insert(c, (now, slices.clone()));
                }
            }
            cache
                .servers
                .extend(map.servers.iter().map(|(&id, s)| (id, s.clone())));
        }
    }
}
