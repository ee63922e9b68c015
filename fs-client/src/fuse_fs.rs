//! The FUSE glue: each kernel request becomes a task on the async runtime, so a slow
//! request never holds up the others; the task answers the kernel when done.

use crate::client::Client;
use fuser::consts::{
    FUSE_ASYNC_READ, FUSE_AUTO_INVAL_DATA, FUSE_BIG_WRITES, FUSE_DONT_MASK, FUSE_DO_READDIRPLUS,
    FUSE_FLOCK_LOCKS, FUSE_MAX_PAGES, FUSE_PARALLEL_DIROPS, FUSE_POSIX_ACL, FUSE_POSIX_LOCKS,
    FUSE_READDIRPLUS_AUTO,
};
use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use lattice_common::fs::{
    Attr, Caller, Errno, FileKind, LockKind, LockRange, LockSpace, RenameMode, SetAttr, TimeSet,
    Timestamp, XattrMode,
};
use lattice_common::ids::InodeId;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tracing::debug;

/// Adds a directory's entries from kernel offset `offset` on through `add` (which says when
/// the reply is full): offsets 1 and 2 are `.` and `..`, then each entry's cookie (a
/// listing known to end at `offset` is answered before: [`LatticeFs::listing_ended`]).
async fn fill_listing(
    c: &Client,
    i: u64,
    fh: u64,
    offset: i64,
    add: &mut (dyn FnMut(u64, i64, &OsStr, &Attr) -> bool + Send),
) -> Result<(), Errno> {
    let offset = u64::try_from(offset).unwrap_or(0);
    let cookie = if offset <= 2 { 0 } else { offset };
    let listing = c.list_dir(ino(i), cookie, READDIR_BATCH).await?;
    let mut last = offset;
    // The kernel takes no attributes from `.` and `..` entries: the directory's serve both.
    let dots = [(1, i, "."), (2, listing.parent.0, "..")];
    for (at, ino, name) in dots.into_iter().filter(|(at, _, _)| offset < *at) {
        if add(ino, at as i64, OsStr::new(name), &listing.dir) {
            return Ok(());
        }
        last = at;
    }
    for (e, a) in &listing.entries {
        if add(e.ino.0, e.cookie as i64, OsStr::from_bytes(&e.name), a) {
            return Ok(());
        }
        last = e.cookie;
    }
    if listing.entries.len() < READDIR_BATCH as usize {
        c.listing_ends(fh, last);
    }
    Ok(())
}

/// Largest read or write request the kernel sends.
pub const MAX_IO: u32 = 1 << 20;
const BLOCK: u32 = 4096;
const READDIR_BATCH: u32 = 512;

pub struct LatticeFs {
    client: Arc<Client>,
    runtime: tokio::runtime::Handle,
    ttl: Duration,
    /// Requests being served (a stopping mount lets them finish for a moment).
    in_flight: Arc<AtomicUsize>,
    /// Lock requests waiting for a lock, by request id: an INTERRUPT of one ends its wait.
    lock_waits: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>,
}

impl LatticeFs {
    pub fn new(
        client: Arc<Client>,
        runtime: tokio::runtime::Handle,
        in_flight: Arc<AtomicUsize>,
    ) -> Self {
        let ttl = client.tuning().attr_ttl;
        LatticeFs {
            client,
            runtime,
            ttl,
            in_flight,
            lock_waits: Arc::default(),
        }
    }

    /// Takes, changes or drops a lock. A request that may wait for it names its request
    /// id (`waits`): an INTERRUPT of that id ends the wait.
    fn lock(
        &self,
        i: u64,
        fh: u64,
        owner: u64,
        lock: LockRange,
        waits: Option<u64>,
        reply: ReplyEmpty,
    ) {
        let c = self.client.clone();
        let Some(unique) = waits else {
            return self
                .spawn(async move { done(reply, c.setlk(ino(i), fh, owner, lock, None).await) });
        };
        let (interrupt, interrupted) = oneshot::channel();
        let waits = self.lock_waits.clone();
        waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(unique, interrupt);
        self.spawn(async move {
            let result = c.setlk(ino(i), fh, owner, lock, Some(interrupted)).await;
            waits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&unique);
            done(reply, result)
        });
    }

    fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        let in_flight = self.in_flight.clone();
        in_flight.fetch_add(1, Ordering::Relaxed);
        self.runtime.spawn(async move {
            f.await;
            in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Whether a listing is known to end at `offset`: the kernel asks once more past the
    /// last entries (`ls`, `find` and `rm -rf` list each directory so), answered here.
    fn listing_ended(&self, fh: u64, offset: i64) -> bool {
        let offset = u64::try_from(offset).unwrap_or(0);
        self.client.listing_ended(fh, offset)
    }
}

/// Answers a lookup.
fn found(reply: ReplyEntry, answer: Result<(Attr, Duration), Errno>) {
    match answer {
        Ok((a, ttl)) => reply.entry(&ttl, &file_attr(&a), 0),
        Err(e) => reply.error(e.0),
    }
}

/// Answers a request that returns nothing but success or an errno.
fn done(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.0),
    }
}

/// Answers a request that creates or finds a name with its attributes.
fn entry(reply: ReplyEntry, ttl: Duration, result: Result<Attr, Errno>) {
    match result {
        Ok(a) => reply.entry(&ttl, &file_attr(&a), 0),
        Err(e) => reply.error(e.0),
    }
}

fn ino(i: u64) -> InodeId {
    InodeId(i)
}

fn caller(req: &Request<'_>) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn system_time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::new(t.secs.unsigned_abs(), 0) + Duration::new(0, t.nanos)
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            Timestamp { secs, nanos }
        }
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

fn kind_of_mode(mode: u32) -> Option<FileKind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => FileKind::File,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFBLK => FileKind::BlockDevice,
        _ => return None,
    })
}

pub fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: a.ino.0,
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.ctime),
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: MAX_IO,
        flags: 0,
    }
}

fn time_set(t: TimeOrNow) -> TimeSet {
    match t {
        TimeOrNow::Now => TimeSet::Now,
        TimeOrNow::SpecificTime(t) => TimeSet::At(timestamp(t)),
    }
}

/// The requested permission bits and the umask; the kernel leaves the umask to us because
/// a directory's default ACL, when there is one, applies instead.
fn perm_umask(mode: u32, umask: u32) -> (u16, u16) {
    ((mode & 0o7777) as u16, (umask & 0o777) as u16)
}

fn lock_range(
    space: LockSpace,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> Result<LockRange, Errno> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return Err(Errno::INVAL),
    };
    Ok(LockRange {
        space,
        kind,
        start,
        end,
        pid,
    })
}

impl Filesystem for LatticeFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        let wanted = FUSE_ASYNC_READ
            | FUSE_BIG_WRITES
            | FUSE_DONT_MASK
            | FUSE_PARALLEL_DIROPS
            | FUSE_MAX_PAGES
            | FUSE_POSIX_LOCKS
            | FUSE_FLOCK_LOCKS
            | FUSE_POSIX_ACL
            | FUSE_AUTO_INVAL_DATA
            | FUSE_DO_READDIRPLUS
            | FUSE_READDIRPLUS_AUTO;
        if let Err(missing) = config.add_capabilities(wanted) {
            debug!("kernel lacks FUSE capabilities {missing:#x}");
            let _ = config.add_capabilities(wanted & !missing);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        // Answered on this thread when no metaserver is needed: a hop to the runtime's
        // threads costs as much as the answer.
        let _runtime = self.runtime.enter();
        if let Some(answer) = self.client.lookup_here(ino(parent), name.as_bytes()) {
            return found(reply, answer);
        }
        let (c, name) = (self.client.clone(), name.as_bytes().to_vec());
        self.spawn(async move { found(reply, c.lookup(ino(parent), &name).await) });
    }

    fn getattr(&mut self, _req: &Request<'_>, i: u64, _fh: Option<u64>, reply: ReplyAttr) {
        if let Some((a, left)) = self.client.getattr_here(ino(i)) {
            return reply.attr(&left, &file_attr(&a));
        }
        let (c, ttl) = (self.client.clone(), self.ttl);
        self.spawn(async move {
            match c.getattr(ino(i)).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(time_set),
            mtime: mtime.map(time_set),
            ctime: ctime.map(timestamp),
        };
        let (c, ttl) = (self.client.clone(), self.ttl);
        self.spawn(async move {
            match c.setattr(ino(i), set).await {
                Ok(a) => reply.attr(&ttl, &file_attr(&a)),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, i: u64, reply: ReplyData) {
        let c = self.client.clone();
        self.spawn(async move {
            match c.readlink(ino(i)).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn mknod(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(libc::EINVAL);
        };
        let (c, ttl, name, who) = (
            self.client.clone(),
            self.ttl,
            name.as_bytes().to_vec(),
            caller(req),
        );
        self.spawn(async move {
            entry(
                reply,
                ttl,
                c.mknod(ino(parent), &name, kind, perm_umask(mode, umask), rdev, who)
                    .await,
            )
        });
    }

    fn mkdir(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, ttl, name, who) = (
            self.client.clone(),
            self.ttl,
            name.as_bytes().to_vec(),
            caller(req),
        );
        self.spawn(async move {
            entry(
                reply,
                ttl,
                c.mkdir(ino(parent), &name, perm_umask(mode, umask), who)
                    .await,
            )
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _runtime = self.runtime.enter();
        if self.client.remove_here(ino(parent), name.as_bytes(), false) {
            return reply.ok();
        }
        let (c, name) = (self.client.clone(), name.as_bytes().to_vec());
        self.spawn(async move { done(reply, c.unlink(ino(parent), &name).await) });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let _runtime = self.runtime.enter();
        if self.client.remove_here(ino(parent), name.as_bytes(), true) {
            return reply.ok();
        }
        let (c, name) = (self.client.clone(), name.as_bytes().to_vec());
        self.spawn(async move { done(reply, c.rmdir(ino(parent), &name).await) });
    }

    fn symlink(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (c, ttl, who) = (self.client.clone(), self.ttl, caller(req));
        let (name, target) = (
            name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
        );
        self.spawn(async move {
            entry(
                reply,
                ttl,
                c.symlink(ino(parent), &name, &target, who).await,
            )
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => RenameMode::Replace,
            f if f == libc::RENAME_NOREPLACE => RenameMode::NoReplace,
            f if f == libc::RENAME_EXCHANGE => RenameMode::Exchange,
            _ => return reply.error(libc::EINVAL),
        };
        let (c, name, newname) = (
            self.client.clone(),
            name.as_bytes().to_vec(),
            newname.as_bytes().to_vec(),
        );
        self.spawn(async move {
            done(
                reply,
                c.rename(ino(parent), &name, ino(newparent), &newname, mode)
                    .await,
            )
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        newparent: u64,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (c, ttl, name) = (self.client.clone(), self.ttl, newname.as_bytes().to_vec());
        self.spawn(async move { entry(reply, ttl, c.link(ino(i), ino(newparent), &name).await) });
    }

    fn open(&mut self, _req: &Request<'_>, i: u64, _flags: i32, reply: ReplyOpen) {
        let c = self.client.clone();
        self.spawn(async move {
            match c.open(ino(i)).await {
                Ok(fh) => reply.opened(fh, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        _i: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every directory change is durable (committed by a quorum) once applied; unlinks
        // answered here are applied by now.
        let c = self.client.clone();
        self.spawn(async move { done(reply, c.sync_dir().await) });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        _i: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyData,
    ) {
        if let Some(data) = self.client.read_here(fh, offset.max(0) as u64, size as u64) {
            return reply.data(&data);
        }
        let c = self.client.clone();
        self.spawn(async move {
            match c.read(fh, offset.max(0) as u64, size as u64).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        _i: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: ReplyWrite,
    ) {
        let (c, data) = (self.client.clone(), data.to_vec());
        self.spawn(async move {
            match c.write(fh, offset.max(0) as u64, &data).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn flush(&mut self, _req: &Request<'_>, _i: u64, fh: u64, lock_owner: u64, reply: ReplyEmpty) {
        if let Some(result) = self.client.flush_here(fh, lock_owner) {
            return done(reply, result);
        }
        let c = self.client.clone();
        self.spawn(async move { done(reply, c.flush(fh, lock_owner).await) });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _i: u64,
        fh: u64,
        _flags: i32,
        flock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        if self.client.release_here(fh, flock_owner) {
            return reply.ok();
        }
        let c = self.client.clone();
        self.spawn(async move { done(reply, c.release(fh, flock_owner).await) });
    }

    fn fsync(&mut self, _req: &Request<'_>, _i: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        let c = self.client.clone();
        self.spawn(async move { done(reply, c.fsync(fh).await) });
    }

    fn opendir(&mut self, _req: &Request<'_>, _i: u64, _flags: i32, reply: ReplyOpen) {
        reply.opened(self.client.open_dir(), 0);
    }

    fn releasedir(&mut self, _req: &Request<'_>, _i: u64, fh: u64, _flags: i32, reply: ReplyEmpty) {
        self.client.close_dir(fh);
        reply.ok();
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        if self.listing_ended(fh, offset) {
            return reply.ok();
        }
        let c = self.client.clone();
        self.spawn(async move {
            let filled = fill_listing(&c, i, fh, offset, &mut |ino, offset, name, a| {
                reply.add(ino, offset, file_type(a.kind), name)
            })
            .await;
            match filled {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        if self.listing_ended(fh, offset) {
            return reply.ok();
        }
        let (c, ttl) = (self.client.clone(), self.ttl);
        self.spawn(async move {
            let dir = ino(i);
            let filled = fill_listing(&c, i, fh, offset, &mut |child, offset, name, a| {
                let full = reply.add(child, offset, name, &ttl, &file_attr(a), 0);
                // The kernel now knows the entry (an unlink of it may follow without a lookup).
                if !full && offset > 2 {
                    c.note_entry(dir, name.as_bytes(), a);
                }
                full
            })
            .await;
            match filled {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn statfs(&mut self, _req: &Request<'_>, _i: u64, reply: ReplyStatfs) {
        let c = self.client.clone();
        self.spawn(async move {
            match c.statfs().await {
                Ok(s) => {
                    let b = BLOCK as u64;
                    let blocks = s.total_bytes / b;
                    let free = s.free_bytes / b;
                    reply.statfs(
                        blocks,
                        free,
                        free,
                        s.inodes + (1 << 32),
                        1 << 32,
                        BLOCK,
                        255,
                        BLOCK,
                    )
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let mode = match flags {
            0 => XattrMode::Either,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(libc::EINVAL),
        };
        let (c, name, value) = (
            self.client.clone(),
            name.as_bytes().to_vec(),
            value.to_vec(),
        );
        self.spawn(async move { done(reply, c.setxattr(ino(i), &name, &value, mode).await) });
    }

    fn getxattr(&mut self, _req: &Request<'_>, i: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        if self.client.getxattr_absent_here(ino(i), name.as_bytes()) {
            return reply.error(libc::ENODATA);
        }
        let (c, name) = (self.client.clone(), name.as_bytes().to_vec());
        self.spawn(async move {
            match c.getxattr(ino(i), &name, size).await {
                Ok(v) => sized(reply, size, &v),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn listxattr(&mut self, _req: &Request<'_>, i: u64, size: u32, reply: ReplyXattr) {
        let c = self.client.clone();
        self.spawn(async move {
            match c.listxattr(ino(i)).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    sized(reply, size, &buf)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn removexattr(&mut self, _req: &Request<'_>, i: u64, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (self.client.clone(), name.as_bytes().to_vec());
        self.spawn(async move { done(reply, c.removexattr(ino(i), &name).await) });
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, ttl, name, who) = (
            self.client.clone(),
            self.ttl,
            name.as_bytes().to_vec(),
            caller(req),
        );
        self.spawn(async move {
            match c
                .mknod(
                    ino(parent),
                    &name,
                    FileKind::File,
                    perm_umask(mode, umask),
                    0,
                    who,
                )
                .await
            {
                Ok(a) => {
                    let fh = c.open_handle(a.ino);
                    reply.created(&ttl, &file_attr(&a), 0, fh, 0)
                }
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn getlk(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        _fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let want = match lock_range(LockSpace::Record, start, end, typ, pid) {
            Ok(l) => l,
            Err(e) => return reply.error(e.0),
        };
        let c = self.client.clone();
        self.spawn(async move {
            match c.getlk(ino(i), lock_owner, want).await {
                Ok(Some(l)) => {
                    let typ = if l.kind == LockKind::Write {
                        libc::F_WRLCK
                    } else {
                        libc::F_RDLCK
                    };
                    reply.locked(l.start, l.end, typ, l.pid)
                }
                Ok(None) => reply.locked(0, 0, libc::F_UNLCK, 0),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn setlk(
        &mut self,
        req: &Request<'_>,
        i: u64,
        fh: u64,
        lock_owner: u64,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        match lock_range(LockSpace::Record, start, end, typ, pid) {
            Ok(lock) => self.lock(i, fh, lock_owner, lock, sleep.then(|| req.unique()), reply),
            Err(e) => reply.error(e.0),
        }
    }

    fn flock(
        &mut self,
        req: &Request<'_>,
        i: u64,
        fh: u64,
        lock_owner: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        match lock_range(LockSpace::Flock, 0, u64::MAX, typ, pid) {
            Ok(lock) => self.lock(i, fh, lock_owner, lock, sleep.then(|| req.unique()), reply),
            Err(e) => reply.error(e.0),
        }
    }

    fn interrupt(&mut self, _req: &Request<'_>, unique: u64) {
        let waiting = self
            .lock_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&unique);
        if let Some(interrupt) = waiting {
            debug!(unique, "lock wait interrupted");
            let _ = interrupt.send(());
        }
    }

    /// Only `SEEK_DATA` and `SEEK_HOLE` come here; the kernel does the others itself.
    fn lseek(
        &mut self,
        _req: &Request<'_>,
        _i: u64,
        fh: u64,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(libc::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::ENXIO);
        };
        let c = self.client.clone();
        self.spawn(async move {
            match c.seek(fh, offset, data).await {
                Ok(at) => reply.offset(at as i64),
                Err(e) => reply.error(e.0),
            }
        });
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        i: u64,
        _fh: u64,
        offset: i64,
        length: i64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        use libc::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};
        let hole = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE);
        let known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 || hole == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE {
            return reply.error(libc::EOPNOTSUPP);
        }
        let (Ok(offset), Ok(length)) = (u64::try_from(offset), u64::try_from(length)) else {
            return reply.error(libc::EINVAL);
        };
        let Some(end) = offset.checked_add(length).filter(|_| length > 0) else {
            return reply.error(libc::EINVAL);
        };
        if end > lattice_common::fs::MAX_FILE_SIZE {
            return reply.error(libc::EFBIG);
        }
        let keep_size = mode & FALLOC_FL_KEEP_SIZE != 0;
        let c = self.client.clone();
        self.spawn(async move {
            let result = c.fallocate(ino(i), (offset, end), hole != 0, keep_size);
            done(reply, result.await)
        });
    }
}

/// Answers an xattr request: the size when asked for it, ERANGE when it does not fit.
fn sized(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32)
    } else if data.len() > size as usize {
        reply.error(libc::ERANGE)
    } else {
        reply.data(data)
    }
}
