//! The filesystem as the kernel sees it, one async method per operation: metadata goes to
//! the metaserver group, data through per-file write buffers and the slice reader.

use crate::dir_attrs::DirAttrs;
use crate::file_state::{Backend, FileState};
use crate::landings::Landing;
use crate::reader;
use crate::statahead::{Statahead, Window};
use crate::unlinks::Unlinks;
use lattice_common::fs::{
    Attr, Caller, DirEntry, Errno, FileKind, KnownXattrs, LockKind, LockRange, RenameMode, SetAttr,
    StatFs, Timestamp, XattrMode,
};
use lattice_common::ids::InodeId;
use lattice_common::policy::{Policy, POLICY_XATTR, VIRTUAL_XATTR_PREFIX};
use lattice_common::wire::meta::{FsOp, FsQuery, FsReply, MetaRequest, MetaResponse, Unlinked};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::warn;

#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// How long attributes may be trusted without asking the metaserver.
    pub attr_ttl: Duration,
    /// Bytes buffered per file before they are written out as a slice.
    pub write_buffer: u64,
    /// Buffered bytes older than this are written out even if the file stays open.
    pub flush_after: Duration,
    /// Whether unlinks may be answered here (see [`crate::unlinks`]): the kernel's
    /// permission checks are the cluster's. A mount limited to one user leaves them to
    /// the metaservers, which must be able to refuse before the unlink is answered.
    pub answer_unlinks: bool,
}

/// An open file description.
struct Handle {
    file: Arc<FileState>,
    /// How far it has heard of the file's write errors.
    errors_seen: Mutex<u64>,
    /// Lock owners that took locks through it and no close has released yet: at the last
    /// close these are its OFD and flock owners (a process's POSIX locks go at its close,
    /// FLUSH, which names the process; nothing names the open file description when its
    /// OFD locks should go).
    lockers: Mutex<HashSet<u64>>,
}

/// Whether reporting a write error to a descriptor counts as it having heard of it.
enum Heard {
    Once,
    NotYet,
}

pub struct Client {
    pub backend: Arc<Backend>,
    tuning: Tuning,
    /// Tells the kernel to drop cached pages of a file (set once mounted).
    kernel: OnceLock<fuser::Notifier>,
    attrs: Mutex<HashMap<InodeId, (Attr, Instant)>>,
    files: Mutex<HashMap<InodeId, Arc<FileState>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Values of virtual xattrs (`lattice.`) given for a size query, kept a moment for the
    /// read that follows it.
    sized_virtual: Mutex<HashMap<XattrKey, (Vec<u8>, Instant)>>,
    /// Open directory listings, by handle: the offset each is known to end at, once its
    /// last entries were given (the kernel asks once more past them; that needs no call).
    listings: Mutex<HashMap<u64, Option<u64>>>,
    statahead: Mutex<Statahead>,
    /// What each name this mount looked up or made leads to (inode, kind), and since when:
    /// an unlink of a name known here can be answered at once.
    entries: Mutex<HashMap<(InodeId, Vec<u8>), KnownEntry>>,
    unlinks: Mutex<Unlinks>,
    /// How many answered unlinks are applied (see [`crate::unlinks`]).
    unlinks_applied: watch::Sender<u64>,
    dir_attrs: Mutex<DirAttrs>,
}

/// A page of a directory listing (see [`Client::list_dir`]).
pub struct Listing {
    pub dir: Attr,
    pub parent: InodeId,
    pub entries: Vec<(DirEntry, Attr)>,
}

/// Attributes kept at most (beyond it, those older than the attribute timeout go).
const MAX_CACHED_ATTRS: usize = 1 << 17;

/// The directory entries a change makes or removes: what this mount fetched ahead of
/// them is no longer to be trusted.
fn names_changed(op: &FsOp) -> Vec<(InodeId, Vec<u8>)> {
    match op {
        FsOp::Mknod { parent, name, .. }
        | FsOp::Mkdir { parent, name, .. }
        | FsOp::Symlink { parent, name, .. }
        | FsOp::Link { parent, name, .. }
        | FsOp::Unlink { parent, name }
        | FsOp::Rmdir { parent, name } => vec![(*parent, name.clone())],
        FsOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            ..
        } => vec![(*parent, name.clone()), (*new_parent, new_name.clone())],
        _ => Vec::new(),
    }
}

/// The inode a change changes the attributes or contents of, if it names one.
fn inode_changed(op: &FsOp) -> Option<InodeId> {
    match op {
        FsOp::Link { ino, .. }
        | FsOp::SetAttr { ino, .. }
        | FsOp::SetXattr { ino, .. }
        | FsOp::RemoveXattr { ino, .. }
        | FsOp::SetPolicy { ino, .. }
        | FsOp::CommitSlice { ino, .. }
        | FsOp::ReplaceSlices { ino, .. }
        | FsOp::PunchHole { ino, .. }
        | FsOp::CommitSlices { ino, .. }
        | FsOp::WriteInline { ino, .. }
        | FsOp::WriteInlineSetTimes { ino, .. }
        | FsOp::Uninline { ino, .. } => Some(*ino),
        _ => None,
    }
}

/// Makes room for one more in a cache of at most [`MAX_CACHED_ATTRS`]: what was fetched
/// `ttl` or longer ago goes, and everything if that is not enough.
fn make_room<K, V>(cache: &mut HashMap<K, V>, ttl: Duration, fetched: impl Fn(&V) -> Instant) {
    if cache.len() >= MAX_CACHED_ATTRS {
        cache.retain(|_, v| fetched(v).elapsed() < ttl);
        if cache.len() >= MAX_CACHED_ATTRS {
            cache.clear();
        }
    }
}

/// What a name leads to (inode, kind), as of when.
type KnownEntry = (InodeId, FileKind, Instant);

/// An inode and an xattr name.
type XattrKey = (InodeId, Vec<u8>);

/// How long a virtual xattr's value given for a size query is kept for the read after it.
const SIZED_VIRTUAL_KEEP: Duration = Duration::from_secs(2);

fn io_error(what: &str, e: impl std::fmt::Display) -> Errno {
    warn!("{what}: {e}");
    Errno::IO
}

impl Client {
    pub fn new(backend: Backend, tuning: Tuning) -> Arc<Client> {
        Arc::new(Client {
            backend: Arc::new(backend),
            tuning,
            kernel: OnceLock::new(),
            attrs: Mutex::default(),
            files: Mutex::default(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            sized_virtual: Mutex::default(),
            listings: Mutex::default(),
            statahead: Mutex::new(Statahead::new(tuning.attr_ttl)),
            entries: Mutex::default(),
            unlinks: Mutex::default(),
            unlinks_applied: watch::Sender::new(0),
            dir_attrs: Mutex::default(),
        })
    }

    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    pub fn set_notifier(&self, notifier: fuser::Notifier) {
        let _ = self.kernel.set(notifier);
    }

    /// Forgets everything cached about a file's contents, here and in the kernel: another
    /// mount may have changed it (called when a lock is taken).
    async fn revalidate(&self, ino: InodeId) {
        if let Some(f) = self.file(ino) {
            f.invalidate_slices();
        }
        self.forget_attr(ino);
        if let Some(k) = self.kernel.get().cloned() {
            // The kernel waits for page locks here, which reads in flight hold until they
            // are answered: on a runtime worker this call could stall the very task that
            // answers them (two SQLite processes on one mount hung this way).
            let dropped = tokio::task::spawn_blocking(move || k.inval_inode(ino.0, 0, -1)).await;
            if let Ok(Err(e)) = dropped {
                tracing::debug!(%ino, "dropping kernel caches: {e}");
            }
        }
    }

    /// Sends a change to the metaservers. The names it changes are forgotten afterwards,
    /// whatever the outcome (a change whose answer was lost may have happened).
    async fn mutate(&self, op: FsOp) -> Result<FsReply, Errno> {
        // Changes land in the order this mount answered them.
        self.settle_unlinks().await;
        let named = names_changed(&op);
        let changed = inode_changed(&op);
        let removal = matches!(op, FsOp::Unlink { .. } | FsOp::Rmdir { .. });
        // A directory removed or moved: which one is not known here.
        let unknown_dir = matches!(op, FsOp::Rmdir { .. } | FsOp::Rename { .. });
        let change = (!named.is_empty()).then(|| self.dir_attrs().start());
        let reply = self
            .backend
            .meta
            .mutate(op)
            .await
            .map_err(|e| io_error("metaserver", e))
            .and_then(|r| r);
        {
            // What this mount knows its directories hold (see `Unlinks::known_empty`).
            let mut u = self.unlinks();
            match (removal, &reply, &named[..]) {
                (true, Ok(_), [(parent, name)]) => u.removed(*parent, name),
                _ => named.iter().for_each(|(parent, _)| u.added(*parent)),
            }
        }
        for (parent, name) in named {
            self.forget_name(parent, &name);
        }
        if let Some(ino) = changed {
            self.statahead().changed(ino, Instant::now());
        }
        let mut dir_attrs = self.dir_attrs();
        if unknown_dir {
            dir_attrs.forget_all();
        }
        if let Some(ino) = changed {
            dir_attrs.forget(ino);
        }
        if let Some(change) = change {
            let dir = match &reply {
                Ok(FsReply::Made { parent, .. }) => Some(Attr::clone(parent)),
                _ => None,
            };
            dir_attrs.end(change, dir, Instant::now());
        }
        reply
    }

    async fn query(&self, q: FsQuery) -> Result<FsReply, Errno> {
        self.backend
            .meta
            .query(q)
            .await
            .map_err(|e| io_error("metaserver", e))?
    }

    fn file(&self, ino: InodeId) -> Option<Arc<FileState>> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
    }

    /// Attributes as this client sees them, from an answer to a query sent at `asked`: a
    /// file's size and blocks include bytes written here and not committed yet, or committed
    /// after the query was sent.
    fn remember(&self, mut attr: Attr, asked: Landing) -> Attr {
        // A directory with unlinks answered here shows what they will make of it.
        if let Some((a, _)) = self.unlinking_dir_attr(attr.ino) {
            attr = a;
        }
        // Held from the look at the buffers on: a write buffered meanwhile raises the size
        // kept here after this (see [`Client::write`]), not before.
        let mut attrs = self.attrs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = self.file(attr.ino) {
            attr.size = attr.size.max(f.end_since(asked));
            // Blocks about to be stored count already (`du` of a file being written).
            let local = f.local_bytes().div_ceil(512);
            attr.blocks = (attr.blocks + local).min(attr.size.div_ceil(512));
        }
        // Looked at after the open file: a closing one is kept there before it goes.
        let closed_end = self.backend.landings.closed_end_since(attr.ino, asked);
        attr.size = attr.size.max(closed_end);
        make_room(&mut attrs, self.tuning.attr_ttl, |(_, at)| *at);
        attrs.insert(attr.ino, (attr.clone(), Instant::now()));
        attr
    }

    /// Sends a change answered with attributes; the entry it makes (a create, a link) is
    /// noted as a lookup's would be.
    async fn attr_reply(&self, op: FsOp) -> Result<Attr, Errno> {
        let made = names_changed(&op);
        let asked = self.backend.landings.now();
        let (FsReply::Attr(a) | FsReply::Made { attr: a, .. }) = self.mutate(op).await? else {
            return Err(Errno::IO);
        };
        if let [(parent, name)] = &made[..] {
            self.note_entry(*parent, name, &a);
        }
        Ok(self.remember(a, asked))
    }

    async fn done_reply(&self, op: FsOp) -> Result<(), Errno> {
        match self.mutate(op).await? {
            FsReply::Done => Ok(()),
            _ => Err(Errno::IO),
        }
    }

    /// The attributes `name` in `parent` has, and how long the kernel may keep them.
    pub async fn lookup(
        self: &Arc<Self>,
        parent: InodeId,
        name: &[u8],
    ) -> Result<(Attr, Duration), Errno> {
        if let Some(answer) = self.lookup_here(parent, name) {
            return answer;
        }
        let ask = FsQuery::Lookup {
            parent,
            name: name.to_vec(),
        };
        let asked = self.backend.landings.now();
        let mut reply = self.query(ask.clone()).await?;
        if matches!(&reply, FsReply::Attr(a) if self.unlinks().unlinks(a.ino)) {
            // Another link of an inode unlinked here: its link count is about to drop.
            self.settle_unlinks().await;
            reply = self.query(ask).await?;
        }
        let FsReply::Attr(attr) = reply else {
            return Err(Errno::IO);
        };
        let attr = self.remember(attr, asked);
        self.note_entry(parent, name, &attr);
        let window = self.statahead().missed(parent, Instant::now());
        if let Some(w) = window {
            self.look_ahead(w);
        }
        Ok((attr, self.tuning.attr_ttl))
    }

    /// A lookup answered without a metaserver, if it can be: a name unlinked here, one
    /// fetched ahead (see [`crate::statahead`]), or a directory this mount learnt of within
    /// the attribute timeout. Never waits (the kernel's request thread may call it, inside
    /// the runtime).
    pub fn lookup_here(
        self: &Arc<Self>,
        parent: InodeId,
        name: &[u8],
    ) -> Option<Result<(Attr, Duration), Errno>> {
        if self.unlinks().hides(parent, name) {
            return Some(Err(Errno::NOENT));
        }
        let now = Instant::now();
        let Some(hit) = self.statahead().take(parent, name, now) else {
            return self.known_dir(parent, name, now).map(Ok);
        };
        if let Some(w) = hit.next {
            self.look_ahead(w);
        }
        let answer = self.cached_answer(hit.ino, hit.fetched, now)?;
        self.backend.stats.statahead_hits.add(1);
        self.note_entry(parent, name, &answer.0);
        Some(Ok(answer))
    }

    /// A directory this mount made or looked up within the attribute timeout, for what is
    /// left of it. The kernel holds such a name already, but asks again before making it
    /// (an exclusive create always asks): `mkdir -p` asks so for every directory on every
    /// path it is given. Not noted again, so the answer never outlives the timeout.
    fn known_dir(&self, parent: InodeId, name: &[u8], now: Instant) -> Option<(Attr, Duration)> {
        let (ino, kind, learnt) = self.known_entry(parent, name)?;
        if kind != FileKind::Dir {
            return None;
        }
        let answer = self.cached_answer(ino, learnt, now)?;
        self.backend.stats.known_dir_hits.add(1);
        Some(answer)
    }

    fn unlinks(&self) -> std::sync::MutexGuard<'_, Unlinks> {
        self.unlinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(InodeId, Vec<u8>), KnownEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes what `name` leads to, as the kernel was just told.
    pub fn note_entry(&self, parent: InodeId, name: &[u8], attr: &Attr) {
        let mut entries = self.entries();
        make_room(&mut entries, self.tuning.attr_ttl, |(_, _, at)| *at);
        let value = (attr.ino, attr.kind, Instant::now());
        entries.insert((parent, name.to_vec()), value);
    }

    /// The inode `name` leads to, its kind and when this mount learnt them, if within the
    /// attribute timeout.
    fn known_entry(&self, parent: InodeId, name: &[u8]) -> Option<(InodeId, FileKind, Instant)> {
        let entries = self.entries();
        let (ino, kind, at) = entries.get(&(parent, name.to_vec()))?;
        (at.elapsed() < self.tuning.attr_ttl).then_some((*ino, *kind, *at))
    }

    /// Waits until every unlink answered so far is applied.
    async fn settle_unlinks(&self) {
        let target = self.unlinks().answered();
        let mut applied = self.unlinks_applied.subscribe();
        let _ = applied.wait_for(|a| *a >= target).await;
    }

    /// Starts sending the waiting unlinks, a batch at a time, unless a batch is out.
    fn send_unlinks(self: &Arc<Self>) {
        let Some(mut batch) = self.unlinks().next_batch() else {
            return;
        };
        let c = self.clone();
        tokio::spawn(async move {
            loop {
                let refused = c.apply_unlinks(&batch).await;
                // Names are forgotten before anything waiting on them goes on.
                for u in &batch {
                    c.forget_name(u.parent, &u.name);
                    c.forget_attr(u.ino);
                }
                c.backend.stats.unlink_batches.add(1);
                let (applied, next) = {
                    let mut q = c.unlinks();
                    q.done(refused);
                    (q.applied(), q.next_batch())
                };
                c.unlinks_applied.send_replace(applied);
                match next {
                    Some(next) => batch = next,
                    None => return,
                }
            }
        });
    }

    /// Applies one batch of unlinks; returns its first refusal. A batch refused whole (one
    /// entry not allowed) goes again an entry at a time, so only that one is refused.
    async fn apply_unlinks(&self, batch: &[Unlinked]) -> Option<Errno> {
        let outcomes = match self.send_unlinked(batch.to_vec()).await {
            Ok(outcomes) => outcomes,
            Err(_) if batch.len() > 1 => {
                let mut outcomes = Vec::with_capacity(batch.len());
                for u in batch {
                    outcomes.push(match self.send_unlinked(vec![u.clone()]).await {
                        Ok(mut one) => one.pop().unwrap_or(Err(Errno::IO)),
                        Err(e) => Err(e),
                    });
                }
                outcomes
            }
            Err(e) => vec![Err(e)],
        };
        let mut refused = None;
        for (u, outcome) in batch.iter().zip(outcomes) {
            let name = String::from_utf8_lossy(&u.name);
            match outcome {
                // Gone already (another mount, or an earlier try whose answer was lost).
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::STALE) => tracing::info!(
                    parent = %u.parent, %name,
                    "another mount put a new file in place of one unlinked here: it stays"
                ),
                Err(e) => {
                    warn!(parent = %u.parent, %name, "an unlink answered here was refused: {e}");
                    self.backend.stats.unlinks_refused.add(1);
                    refused = refused.or(Some(e));
                }
            }
        }
        refused
    }

    /// Sends unlinks until the metaservers answer (up to the I/O wait); one outcome each.
    async fn send_unlinked(&self, entries: Vec<Unlinked>) -> Result<Vec<Result<(), Errno>>, Errno> {
        let deadline = Instant::now() + self.backend.io_wait;
        let mut pause = Duration::from_millis(100);
        let n = entries.len();
        let op = FsOp::Unlinks { entries };
        loop {
            match self.backend.meta.mutate(op.clone()).await {
                Ok(Ok(FsReply::Unlinked(outcomes))) if outcomes.len() == n => return Ok(outcomes),
                Ok(Ok(_)) => return Err(Errno::IO),
                Ok(Err(e)) => return Err(e),
                Err(e) if Instant::now() < deadline => {
                    warn!("sending unlinks: {e}; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(io_error("sending unlinks", e)),
            }
        }
    }

    /// A directory's fsync: every unlink answered here is applied; one refused since the
    /// last such fsync is reported.
    pub async fn sync_dir(&self) -> Result<(), Errno> {
        self.settle_unlinks().await;
        self.unlinks().take_refused().map_or(Ok(()), Err)
    }

    fn statahead(&self) -> std::sync::MutexGuard<'_, Statahead> {
        self.statahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A lookup of `ino` answered from its cached attributes and what was learnt of its name
    /// at `fetched`, for what is left of the attribute timeout. Files open here are asked
    /// for (their size may have grown here since).
    fn cached_answer(
        &self,
        ino: InodeId,
        fetched: Instant,
        now: Instant,
    ) -> Option<(Attr, Duration)> {
        if self.file(ino).is_some() {
            return None;
        }
        let (attr, at) = self.held_attr(ino)?;
        let age = now.saturating_duration_since(at.min(fetched));
        let left = self.tuning.attr_ttl.saturating_sub(age);
        if left.is_zero() {
            return None;
        }
        Some((attr, left))
    }

    /// Fetches a window of a directory's entries for the lookups to come, in the background.
    fn look_ahead(self: &Arc<Self>, w: Window) {
        let c = self.clone();
        tokio::spawn(async move {
            let asked = Instant::now();
            // Names unlinked here and not applied yet may come back: lookups hide them,
            // and the window forgets them when they are applied.
            let names = match c.fetch_dir(w.dir, w.cookie, w.limit).await {
                Ok(l) => Some(
                    l.entries
                        .into_iter()
                        .map(|(e, _)| (e.name, e.ino, e.cookie))
                        .collect(),
                ),
                Err(e) => {
                    tracing::debug!(dir = %w.dir, "statahead: {e:?}");
                    None
                }
            };
            c.backend.stats.statahead_fetches.add(1);
            c.statahead().fetched(w, names, asked);
        });
    }

    /// Forgets what was fetched ahead of a name this mount is changing, and the attributes
    /// of the directory (its times and link count change) and of the inode it named.
    fn forget_name(&self, parent: InodeId, name: &[u8]) {
        self.forget_entry(parent, name);
        self.forget_attr(parent);
    }

    /// Forgets what this mount knows of a name (not of its directory).
    fn forget_entry(&self, parent: InodeId, name: &[u8]) {
        self.entries().remove(&(parent, name.to_vec()));
        let gone = self.statahead().forget(parent, name, Instant::now());
        if let Some(ino) = gone {
            self.forget_attr(ino);
        }
    }

    /// Fresh attributes (the kernel asks only when its own cache has expired). A directory
    /// with unlinks answered here is the exception: the kernel asks before each unlink in
    /// it (to check permissions), and what they will make of it is known here (see
    /// [`Unlinks::dir_attr`]); when it is not, they are waited for.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        if let Some((a, _)) = self.getattr_here(ino) {
            return Ok(a);
        }
        if self.unlinks().touches(ino) {
            self.settle_unlinks().await;
        }
        let asked = self.backend.landings.now();
        match self.query(FsQuery::GetAttr { ino }).await? {
            FsReply::Attr(a) => Ok(self.remember(a, asked)),
            _ => Err(Errno::IO),
        }
    }

    /// Attributes answered without a metaserver (see [`Client::getattr`]), and how long the
    /// kernel may keep them; never waits.
    pub fn getattr_here(&self, ino: InodeId) -> Option<(Attr, Duration)> {
        // Asked apart: a guard in a match's scrutinee would be held through its arms.
        let unlinking = self.unlinks().touches(ino);
        let (attr, fetched) = match unlinking {
            true => self.unlinking_dir_attr(ino)?,
            false => {
                let kept = self.dir_attr_kept(ino)?;
                self.backend.stats.dir_attrs_kept_hits.add(1);
                kept
            }
        };
        let left = self.tuning.attr_ttl.saturating_sub(fetched.elapsed());
        (!left.is_zero()).then_some((attr, left))
    }

    /// The attributes of a directory with unlinks answered here, as they will be once
    /// applied, and when those they started from were fetched (see [`Unlinks::dir_attr`]).
    fn unlinking_dir_attr(&self, ino: InodeId) -> Option<(Attr, Instant)> {
        self.unlinks()
            .dir_attr(ino, self.tuning.attr_ttl, Instant::now())
    }

    /// A directory's attributes as this mount's latest change in it left them, and since
    /// when (see [`crate::dir_attrs`]).
    fn dir_attr_kept(&self, ino: InodeId) -> Option<(Attr, Instant)> {
        self.dir_attrs()
            .get(ino, self.tuning.attr_ttl, Instant::now())
    }

    fn dir_attrs(&self) -> std::sync::MutexGuard<'_, DirAttrs> {
        self.dir_attrs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attributes from the cache and when they were fetched, if within the attribute
    /// timeout.
    fn fresh_attr(&self, ino: InodeId) -> Option<(Attr, Instant)> {
        self.held_attr(ino)
            .filter(|(_, at)| at.elapsed() < self.tuning.attr_ttl)
    }

    /// The attributes held here and when they were fetched, as [`Client::getattr_here`]
    /// answers them when it can: a directory's with unlinks answered here, what those
    /// will make of it; else a directory's as this mount's latest change in it left them
    /// (the cache forgets a directory's at every change in it, and `mkdir -p` looks each
    /// one up again); else the cache's.
    fn held_attr(&self, ino: InodeId) -> Option<(Attr, Instant)> {
        if self.unlinks().touches(ino) {
            return self.unlinking_dir_attr(ino);
        }
        if let Some(kept) = self.dir_attr_kept(ino) {
            return Some(kept);
        }
        self.attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned()
    }

    /// Attributes from the cache while they are fresh.
    async fn cached_attr(&self, ino: InodeId) -> Result<Attr, Errno> {
        match self.fresh_attr(ino) {
            Some((a, _)) => Ok(a),
            None => self.getattr(ino).await,
        }
    }

    pub async fn setattr(&self, ino: InodeId, set: SetAttr) -> Result<Attr, Errno> {
        let times = set.mtime.is_some() || set.atime.is_some();
        if let Some(file) = self.file(ino).filter(|_| set.size.is_some() || times) {
            // Buffered bytes go first: a truncation lands after them, and times set now
            // (cp -a, tar x, rsync -a) are not overwritten by their later commit. Times
            // alone ride with the last commit when it can carry them: one round, not two.
            let only_times = set.only_times().then(|| set.clone());
            if only_times.is_some() {
                // Changes land in the order this mount answered them.
                self.settle_unlinks().await;
            }
            let asked = self.backend.landings.now();
            if let Some(attr) = file.flush_with_times(&self.backend, only_times).await {
                self.backend.stats.times_with_writes.add(1);
                self.statahead().changed(ino, Instant::now());
                return Ok(self.remember(attr, asked));
            }
            if let Some(size) = set.size {
                file.truncate_buffers(size);
                file.invalidate_slices();
            }
        }
        if let Some(size) = set.size {
            self.backend.landings.truncated(ino, size);
        }
        self.attr_reply(FsOp::SetAttr { ino, set }).await
    }

    /// `fallocate`: space is not reserved ahead (chunkservers take data as it comes), so
    /// this grows the size unless `keep_size`; `hole` punches bytes `offset..end` out
    /// first (PUNCH_HOLE, and ZERO_RANGE: a hole reads as zeros).
    pub async fn fallocate(
        &self,
        ino: InodeId,
        (offset, end): (u64, u64),
        hole: bool,
        keep_size: bool,
    ) -> Result<(), Errno> {
        if hole {
            if let Some(file) = self.file(ino) {
                // Buffered bytes go first: none may land over the hole afterwards.
                file.flush(&self.backend).await;
            }
            let op = FsOp::PunchHole {
                ino,
                offset,
                len: end - offset,
            };
            let punched = self.attr_reply(op).await;
            if let Some(file) = self.file(ino) {
                file.invalidate_slices();
            }
            punched?;
        }
        if !keep_size && end > self.getattr(ino).await?.size {
            let size = Some(end);
            self.setattr(
                ino,
                SetAttr {
                    size,
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Creates a file or special file; `umask` applies unless the directory has a default ACL.
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        (perm, umask): (u16, u16),
        rdev: u32,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        let op = FsOp::Mknod {
            parent,
            name: name.to_vec(),
            kind,
            perm,
            umask,
            rdev,
            caller,
        };
        self.attr_reply(op).await
    }

    pub async fn mkdir(
        &self,
        parent: InodeId,
        name: &[u8],
        (perm, umask): (u16, u16),
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.attr_reply(FsOp::Mkdir {
            parent,
            name: name.to_vec(),
            perm,
            umask,
            caller,
        })
        .await
    }

    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.attr_reply(FsOp::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            caller,
        })
        .await
    }

    pub async fn link(&self, ino: InodeId, parent: InodeId, name: &[u8]) -> Result<Attr, Errno> {
        self.attr_reply(FsOp::Link {
            ino,
            parent,
            name: name.to_vec(),
        })
        .await
    }

    /// Answered at once when the name's inode is known here (see [`crate::unlinks`]).
    pub async fn unlink(self: &Arc<Self>, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, false).await
    }

    /// Answered at once when the directory is known empty here (see [`crate::unlinks`]).
    pub async fn rmdir(self: &Arc<Self>, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, true).await
    }

    async fn remove(
        self: &Arc<Self>,
        parent: InodeId,
        name: &[u8],
        dir: bool,
    ) -> Result<(), Errno> {
        if self.unlinks().full() {
            self.settle_unlinks().await;
        }
        if self.remove_here(parent, name, dir) {
            return Ok(());
        }
        let name = name.to_vec();
        match dir {
            true => self.done_reply(FsOp::Rmdir { parent, name }).await,
            false => self.done_reply(FsOp::Unlink { parent, name }).await,
        }
    }

    /// Answers an unlink (an rmdir, for `dir`) here, to be applied in the next batch, if
    /// it can be (see [`crate::unlinks`]); false if it must go to the metaservers (or wait
    /// for room). Never waits.
    pub fn remove_here(self: &Arc<Self>, parent: InodeId, name: &[u8], dir: bool) -> bool {
        if !self.tuning.answer_unlinks {
            return false;
        }
        let Some((ino, kind, _)) = self.known_entry(parent, name) else {
            return false;
        };
        let now = Instant::now();
        let answerable = match dir {
            false => kind != FileKind::Dir,
            true => {
                kind == FileKind::Dir && self.unlinks().known_empty(ino, self.tuning.attr_ttl, now)
            }
        };
        if !answerable {
            return false;
        }
        let entry = Unlinked {
            parent,
            name: name.to_vec(),
            ino,
            dir,
            at: Timestamp::now(),
        };
        let parent_attr = self.fresh_attr(parent);
        {
            let mut u = self.unlinks();
            if u.full() {
                return false;
            }
            u.push(entry, parent_attr);
        }
        self.dir_attrs().touched();
        // The directory's attributes stay: they answer the kernel's checks meanwhile.
        self.forget_entry(parent, name);
        self.statahead().changed(ino, now);
        self.forget_attr(ino);
        self.backend.stats.unlinks_answered.add(1);
        self.send_unlinks();
        true
    }

    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        mode: RenameMode,
    ) -> Result<(), Errno> {
        let op = FsOp::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            mode,
        };
        self.done_reply(op).await
    }

    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Errno> {
        match self.query(FsQuery::ReadLink { ino }).await? {
            FsReply::Link(t) => Ok(t),
            _ => Err(Errno::IO),
        }
    }

    /// A handle for listing a directory.
    pub fn open_dir(&self) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, None);
        fh
    }

    pub fn close_dir(&self, fh: u64) {
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    /// Whether listing `fh` is known to end at (kernel) offset `offset`.
    pub fn listing_ended(&self, fh: u64, offset: u64) -> bool {
        self.listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .is_some_and(|end| *end == Some(offset))
    }

    /// Notes that listing `fh` ends at (kernel) offset `offset`.
    pub fn listing_ends(&self, fh: u64, offset: u64) {
        if let Some(end) = self
            .listings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&fh)
        {
            *end = Some(offset);
        }
    }

    /// Up to `limit` entries of directory `ino` after `cookie`, with attributes (kept for
    /// the attribute timeout).
    pub async fn list_dir(&self, ino: InodeId, cookie: u64, limit: u32) -> Result<Listing, Errno> {
        // A listing shows no name unlinked here.
        if self.unlinks().touches(ino) {
            self.settle_unlinks().await;
        }
        let asked = Instant::now();
        let listing = self.fetch_dir(ino, cookie, limit).await?;
        if cookie == 0 && listing.entries.len() < limit as usize {
            let names = listing
                .entries
                .iter()
                .map(|(e, _)| e.name.clone())
                .collect();
            self.unlinks().listed(ino, names, asked);
        }
        Ok(listing)
    }

    /// A page of a listing as the metaservers have it.
    async fn fetch_dir(&self, ino: InodeId, cookie: u64, limit: u32) -> Result<Listing, Errno> {
        let asked = self.backend.landings.now();
        match self
            .query(FsQuery::ReadDirPlus { ino, cookie, limit })
            .await?
        {
            FsReply::EntriesPlus {
                dir,
                parent,
                entries,
            } => Ok(Listing {
                dir: self.remember(dir, asked),
                parent,
                entries: entries
                    .into_iter()
                    .map(|(e, a)| (e, self.remember(a, asked)))
                    .collect(),
            }),
            _ => Err(Errno::IO),
        }
    }

    pub async fn statfs(&self) -> Result<StatFs, Errno> {
        match self.query(FsQuery::StatFs).await? {
            FsReply::StatFs(s) => Ok(s),
            _ => Err(Errno::IO),
        }
    }

    /// Whether `name` is known absent from `ino` without waiting (see
    /// [`Client::known_absent`]): the kernel reads `security.capability` before every write,
    /// and a hop to the runtime's threads costs more than the answer.
    pub fn getxattr_absent_here(&self, ino: InodeId, name: &[u8]) -> bool {
        let absent = self
            .fresh_attr(ino)
            .is_some_and(|(a, _)| a.known_xattrs.has(name) == Some(false));
        if absent {
            self.backend.stats.acl_reads_answered.add(1);
        }
        absent
    }

    /// Reads an xattr for a caller with a buffer of `size` bytes (0: asking the size). A
    /// virtual one is computed afresh on every read (`lattice.layout` grows as a file is
    /// written), so the value a size query got is what the read right after it gets: the
    /// two must agree, or the caller (`getfattr`) fails with ERANGE.
    pub async fn getxattr(&self, ino: InodeId, name: &[u8], size: u32) -> Result<Vec<u8>, Errno> {
        if self.known_absent(ino, name).await? {
            self.backend.stats.acl_reads_answered.add(1);
            return Err(Errno::NODATA);
        }
        let key = (ino, name.to_vec());
        let is_virtual = name.starts_with(VIRTUAL_XATTR_PREFIX);
        let kept = || self.sized_virtual.lock().unwrap_or_else(|p| p.into_inner());
        if is_virtual && size > 0 {
            if let Some((v, at)) = kept().remove(&key) {
                if at.elapsed() < SIZED_VIRTUAL_KEEP && v.len() <= size as usize {
                    return Ok(v);
                }
            }
        }
        let value = match self
            .query(FsQuery::GetXattr {
                ino,
                name: name.to_vec(),
            })
            .await?
        {
            FsReply::Xattr(v) => v,
            _ => return Err(Errno::IO),
        };
        if is_virtual && size == 0 {
            let mut kept = kept();
            kept.retain(|_, (_, at)| at.elapsed() < SIZED_VIRTUAL_KEEP);
            kept.insert(key, (value.clone(), Instant::now()));
        }
        Ok(value)
    }

    /// Whether attributes as fresh as the kernel's say `ino` lacks `name`, one of the
    /// xattrs the kernel reads on nearly every operation ([`KnownXattrs`]): its ACLs before
    /// it checks any caller but root, its capabilities before every write. Without this,
    /// each of those reads would cost a metaserver round trip (a random 4 KiB write took
    /// two). Attributes older than the attribute timeout are fetched again first.
    async fn known_absent(&self, ino: InodeId, name: &[u8]) -> Result<bool, Errno> {
        if KnownXattrs::default().has(name).is_none() {
            return Ok(false);
        }
        let attr = self.cached_attr(ino).await?;
        Ok(attr.known_xattrs.has(name) == Some(false))
    }

    /// Forgets `ino`'s attributes (they changed here in a way the cache cannot follow).
    fn forget_attr(&self, ino: InodeId) {
        self.attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ino);
        self.dir_attrs().forget(ino);
    }

    pub async fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, Errno> {
        match self.query(FsQuery::ListXattr { ino }).await? {
            FsReply::XattrNames(n) => Ok(n),
            _ => Err(Errno::IO),
        }
    }

    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> Result<(), Errno> {
        // The metaserver checks `lattice.policy` too; the reason is worth a line here.
        let policy = match name == POLICY_XATTR {
            true => match Policy::from_xattr(value) {
                Ok(p) => Some(p),
                Err(e) => {
                    warn!(%ino, "setting lattice.policy: {e}");
                    return Err(Errno::INVAL);
                }
            },
            false => None,
        };
        let result = self
            .done_reply(FsOp::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
                mode,
            })
            .await;
        self.forget_attr(ino);
        if let (Some(p), Err(Errno::NOSPC)) = (policy, result) {
            warn!(%ino, "setting lattice.policy {p}: the cluster has fewer chunkservers in service than its {} shards", p.total_shards());
        }
        result
    }

    pub async fn removexattr(&self, ino: InodeId, name: &[u8]) -> Result<(), Errno> {
        let result = self
            .done_reply(FsOp::RemoveXattr {
                ino,
                name: name.to_vec(),
            })
            .await;
        self.forget_attr(ino);
        result
    }

    /// Opens an existing file by its inode (close-to-open: attributes are fetched fresh and
    /// cached contents dropped). An inode whose last name is gone is `ESTALE`: the kernel
    /// reached it through a name cached from before another mount removed or replaced it,
    /// and on ESTALE it looks the path up again.
    ///
    /// The attributes come with the first chunk's slice map: reading a small file after
    /// it needs no other call.
    pub async fn open(&self, ino: InodeId) -> Result<u64, Errno> {
        let fh = self.open_handle(ino);
        let file = self.handle(fh)?;
        let asked = self.backend.landings.now();
        let attr = file.load_slices(&self.backend, 0, 0).await;
        match attr.map(|a| self.remember(a, asked)) {
            Ok(a) if a.nlink > 0 || file.open_count() > 1 => Ok(fh),
            failed => {
                self.drop_handle(fh);
                Err(failed.err().unwrap_or(Errno::STALE))
            }
        }
    }

    /// A handle on a file this client just created or found current.
    pub fn open_handle(&self, ino: InodeId) -> u64 {
        let file = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ino)
            .or_insert_with(|| Arc::new(FileState::new(ino)))
            .clone();
        file.opened();
        file.invalidate_slices();
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let errors_seen = Mutex::new(file.errors_mark());
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle {
                    file,
                    errors_seen,
                    lockers: Mutex::default(),
                },
            );
        fh
    }

    fn handle(&self, fh: u64) -> Result<Arc<FileState>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .map(|h| h.file.clone())
            .ok_or(Errno::INVAL)
    }

    /// Writes out the file's buffers, then tells the descriptor of any write error since it
    /// last heard (errseq: every descriptor open when data was lost hears of it once).
    /// Only `Heard::Once` (fsync) counts it as heard: a close (FLUSH) may come from a copy
    /// of the descriptor that lives on, e.g. a forked child's close-on-exec, and the
    /// process that still holds it must hear of the error at its own fsync.
    async fn write_out(&self, fh: u64, heard: Heard) -> Result<Arc<FileState>, Errno> {
        let file = self.handle(fh)?;
        file.flush(&self.backend).await;
        self.unheard_error(fh, &file, heard)?;
        Ok(file)
    }

    /// A write error of `file` that descriptor `fh` has not heard of yet, if any.
    fn unheard_error(&self, fh: u64, file: &FileState, heard: Heard) -> Result<(), Errno> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let handle = handles.get(&fh).ok_or(Errno::INVAL)?;
        let mut seen = handle.errors_seen.lock().unwrap_or_else(|p| p.into_inner());
        match heard {
            Heard::Once => file.errors_since(&mut seen),
            Heard::NotYet => file.errors_since(&mut seen.clone()),
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u64) -> Result<bytes::Bytes, Errno> {
        let file = self.handle(fh)?;
        let attr = self.cached_attr(file.ino).await?;
        let size = attr.size.max(file.local_end());
        let data = reader::read(&self.backend, &file, offset, len, size).await?;
        self.note_read(&data);
        Ok(data)
    }

    /// A read answered without waiting, if it can be: a file held inline whose bytes and
    /// attributes are fresh here (see [`reader::read_held`]). Called on the kernel's
    /// request thread: it never waits.
    pub fn read_here(&self, fh: u64, offset: u64, len: u64) -> Option<bytes::Bytes> {
        let file = self.handle(fh).ok()?;
        let (attr, _) = self.fresh_attr(file.ino)?;
        let size = attr.size.max(file.local_end());
        let data = reader::read_held(&self.backend, &file, offset, len, size)?;
        self.note_read(&data);
        Some(data)
    }

    fn note_read(&self, data: &[u8]) {
        self.backend.stats.reads.add(1);
        self.backend.stats.read_bytes.add(data.len() as u64);
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let file = self.handle(fh)?;
        file.check_locks()?;
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > lattice_common::fs::MAX_FILE_SIZE)
        {
            return Err(Errno::FBIG);
        }
        file.write(&self.backend, offset, data, self.tuning.write_buffer)
            .await;
        self.backend.stats.writes.add(1);
        self.backend.stats.write_bytes.add(data.len() as u64);
        let end = offset + data.len() as u64;
        if let Some((a, _)) = self
            .attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&file.ino)
        {
            a.size = a.size.max(end);
        }
        Ok(data.len() as u32)
    }

    /// `lseek` with `SEEK_DATA` (`data`) or `SEEK_HOLE` on open file `fh`. What the file
    /// has buffered goes out first, so bytes written here count as data.
    pub async fn seek(&self, fh: u64, offset: u64, data: bool) -> Result<u64, Errno> {
        let file = self.handle(fh)?;
        file.flush(&self.backend).await;
        let ino = file.ino;
        match self.query(FsQuery::Seek { ino, offset, data }).await? {
            FsReply::Offset(at) => Ok(at),
            _ => Err(Errno::IO),
        }
    }

    /// fsync: writes out what the file has buffered; reports a write error the descriptor
    /// has not heard of.
    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        self.write_out(fh, Heard::Once).await?.check_locks()
    }

    /// A close of a descriptor: writes out the file's buffers (reporting as fsync does, but
    /// the error stays unheard for other copies of the descriptor) and
    /// drops the POSIX locks the closing process (`lock_owner`) held on it, as POSIX wants
    /// of any close.
    pub async fn flush(&self, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        let file = self.handle(fh)?;
        file.flush(&self.backend).await;
        let result = self.flushed(fh, &file, lock_owner);
        self.drop_locks(&file, lock_owner).await?;
        result
    }

    /// A close answered without waiting, if nothing is left for it to send: the file has
    /// nothing buffered or being written, and `lock_owner` holds no lock on it (the usual
    /// close of a file only read). Called on the kernel's request thread.
    pub fn flush_here(&self, fh: u64, lock_owner: u64) -> Option<Result<(), Errno>> {
        let file = self.handle(fh).ok()?;
        if file.has_unflushed() || file.is_locker(lock_owner) {
            return None;
        }
        Some(self.flushed(fh, &file, lock_owner))
    }

    /// A close once the file's buffers are out: a write error the descriptor has not heard
    /// of (it still hears of it at fsync), and `lock_owner` no longer holds locks through
    /// any descriptor of the file.
    fn flushed(&self, fh: u64, file: &FileState, lock_owner: u64) -> Result<(), Errno> {
        let result = self.unheard_error(fh, file, Heard::NotYet);
        for h in self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            if h.file.ino == file.ino {
                h.lockers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&lock_owner);
            }
        }
        result
    }

    async fn drop_locks(&self, file: &FileState, owner: u64) -> Result<(), Errno> {
        if file.take_locker(owner) {
            self.done_reply(FsOp::ReleaseLocks {
                ino: file.ino,
                owner,
            })
            .await?;
        }
        Ok(())
    }

    /// A last close answered without waiting, if nothing is left for it to send: the file
    /// has nothing buffered or being written and the descriptor's lock owners hold no locks
    /// on it. Called on the kernel's request thread.
    pub fn release_here(&self, fh: u64, flock_owner: Option<u64>) -> bool {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let idle = handles.get(&fh).is_some_and(|h| {
            !h.file.has_unflushed()
                && h.lockers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty()
                && flock_owner.is_none_or(|o| !h.file.is_locker(o))
        });
        if !idle {
            return false;
        }
        let Some(handle) = handles.remove(&fh) else {
            return false;
        };
        drop(handles);
        self.closed(&handle.file);
        true
    }

    /// The last close of an open file description: its OFD and flock locks go (the kernel
    /// names the flock owner, `flock_owner`, when flock was used on it).
    pub async fn release(&self, fh: u64, flock_owner: Option<u64>) -> Result<(), Errno> {
        let Some(handle) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
        else {
            return Err(Errno::INVAL);
        };
        let file = handle.file;
        // The close that came first (flush) reported errors; nobody hears of them here.
        file.flush(&self.backend).await;
        let mut result = Ok(());
        let mut owners = handle
            .lockers
            .into_inner()
            .unwrap_or_else(|p| p.into_inner());
        owners.extend(flock_owner);
        for owner in owners {
            result = result.and(self.drop_locks(&file, owner).await);
        }
        self.closed(&file);
        result
    }

    /// Forgets handle `fh` of an open that failed (nothing went through it).
    fn drop_handle(&self, fh: u64) {
        let handle = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
        if let Some(handle) = handle {
            self.closed(&handle.file);
        }
    }

    /// A handle on `file` closed: the last one takes the file's state along, unless data
    /// is still to be written. Writes here changed its size and times in ways only the
    /// metaserver knows in full: its cached attributes go, and no window asked for before
    /// now answers for it (one in flight would bring the old ones back).
    fn closed(&self, file: &Arc<FileState>) {
        if file.released() && !file.has_unflushed() {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            if files
                .get(&file.ino)
                .is_some_and(|f| Arc::ptr_eq(f, file) && !f.is_open())
            {
                if let Some(landed) = file.landed() {
                    self.backend.landings.keep_closed(file.ino, landed);
                }
                files.remove(&file.ino);
                drop(files);
                self.forget_attr(file.ino);
                self.statahead().changed(file.ino, Instant::now());
            }
        }
    }

    /// Every file this mount has state for (open, or with data not written out yet).
    fn open_files(&self) -> Vec<Arc<FileState>> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Writes out buffers that have waited too long (run periodically).
    pub fn flush_old(&self) {
        let files = self.open_files();
        for f in files {
            if f.dirty_for(self.tuning.flush_after) {
                f.start_flush(&self.backend);
            }
        }
    }

    /// Writes out every buffer and waits (before unmounting).
    pub async fn flush_all(&self) {
        let files = self.open_files();
        for f in files {
            f.flush(&self.backend).await;
            if let Err(e) = f.errors_since(&mut f.errors_mark()) {
                warn!(ino = %f.ino, "data not written out before unmount: {e}");
            }
        }
        if let Err(e) = self.sync_dir().await {
            warn!("an unlink answered here was refused before unmount: {e}");
        }
    }
}

/// How often a mount tells the metaservers it is alive and which files it has open.
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
/// Pauses between attempts at a lock when the leader cannot hold the answer back.
const LOCK_PAUSE_MIN: Duration = Duration::from_millis(20);
const LOCK_PAUSE_MAX: Duration = Duration::from_millis(500);

impl Client {
    /// The first lock of another owner (anywhere in the cluster) in the way of `lock`.
    pub async fn getlk(
        &self,
        ino: InodeId,
        owner: u64,
        lock: LockRange,
    ) -> Result<Option<LockRange>, Errno> {
        let client = self.backend.meta.client_id();
        match self
            .query(FsQuery::GetLock {
                ino,
                client,
                owner,
                lock,
            })
            .await?
        {
            FsReply::Lock(l) => Ok(l),
            _ => Err(Errno::IO),
        }
    }

    /// Takes, changes or drops a lock through open file `fh`. With `wait`, waits while
    /// someone else holds it (the leader answers as soon as it comes free) until it is taken
    /// or `wait` resolves: a signal came for the waiting process (EINTR).
    /// Locks order access across mounts, so buffered writes go out before a lock is dropped
    /// and caches are dropped once one is taken.
    pub async fn setlk(
        &self,
        ino: InodeId,
        fh: u64,
        owner: u64,
        lock: LockRange,
        wait: Option<oneshot::Receiver<()>>,
    ) -> Result<(), Errno> {
        let file = self.file(ino);
        if let Some(file) = &file {
            file.check_locks()?;
            file.note_locker(owner);
            if lock.kind == LockKind::Unlock {
                // Write errors are the descriptors' to hear of; an unlock always goes ahead.
                file.flush(&self.backend).await;
            }
        }
        if let Some(h) = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
        {
            h.lockers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(owner);
        }
        let waits = wait.is_some();
        let mut interrupted = std::pin::pin!(async {
            let signalled = match wait {
                Some(signal) => signal.await.is_ok(),
                None => false,
            };
            if !signalled {
                std::future::pending::<()>().await
            }
        });
        let mut pause = LOCK_PAUSE_MIN;
        loop {
            match self.done_reply(FsOp::SetLock { ino, owner, lock }).await {
                Err(Errno::AGAIN) if waits => {}
                Ok(()) if lock.kind != LockKind::Unlock => {
                    if file.as_ref().is_some_and(|f| f.check_locks().is_err()) {
                        // The keepalive heard the locks were lost (and resumed the session)
                        // while this one was being taken: its holder must hear EIO like
                        // every lock operation on the file, and the lock just taken goes.
                        self.done_reply(FsOp::ReleaseLocks { ino, owner }).await?;
                        return Err(Errno::IO);
                    }
                    self.statahead().clear();
                    self.revalidate(ino).await;
                    return Ok(());
                }
                Err(Errno::NOLCK) => {
                    self.locks_lost().await;
                    return Err(Errno::IO);
                }
                other => return other,
            }
            let asked = Instant::now();
            let client = self.backend.meta.client_id();
            let free = self.query(FsQuery::AwaitLock {
                ino,
                client,
                owner,
                lock,
            });
            tokio::select! {
                _ = &mut interrupted => return Err(Errno::INTR),
                answer = free => {
                    if matches!(answer, Ok(FsReply::Lock(Some(_)))) && asked.elapsed() < LOCK_PAUSE_MIN {
                        // Not held back (the leader has too many waiting): wait here a little.
                        tokio::select! {
                            _ = &mut interrupted => return Err(Errno::INTR),
                            _ = tokio::time::sleep(pause) => pause = (pause * 2).min(LOCK_PAUSE_MAX),
                        }
                    }
                }
            }
        }
    }

    /// This mount was silent longer than the session timeout and the metaservers released
    /// its locks: every file that held some says so to its users (EIO) until closed; then
    /// the session takes locks again.
    async fn locks_lost(&self) {
        let files = self.open_files();
        let lost: Vec<InodeId> = files
            .iter()
            .filter(|f| f.lose_locks())
            .map(|f| f.ino)
            .collect();
        if !lost.is_empty() {
            warn!(
                "this mount was cut off longer than the session timeout and its locks were \
                 released; lock operations, writes and fsyncs fail with EIO on {lost:?} until closed"
            );
        }
        let client = self.backend.meta.client_id();
        if let Err(e) = self
            .backend
            .meta
            .call(&MetaRequest::ResumeSession { client })
            .await
        {
            warn!("resuming the session: {e}");
        }
    }

    /// Tells the metaservers, once a second, that this mount lives and what it has open.
    pub async fn keep_alive(self: Arc<Self>) {
        let client = self.backend.meta.client_id();
        let mut tick = tokio::time::interval(KEEPALIVE_EVERY);
        loop {
            tick.tick().await;
            let open = self
                .files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .copied()
                .collect();
            match self
                .backend
                .meta
                .call(&MetaRequest::KeepAlive { client, open })
                .await
            {
                Ok(MetaResponse::LocksLost) => self.locks_lost().await,
                Ok(_) => {}
                Err(e) => warn!("keepalive: {e}"),
            }
        }
    }

    /// Ends this mount's session (its locks go at once).
    pub async fn goodbye(&self) {
        let client = self.backend.meta.client_id();
        if let Err(e) = self
            .backend
            .meta
            .call(&MetaRequest::Goodbye { client })
            .await
        {
            warn!("ending the session: {e}");
        }
    }
}
