//! The namespace: inodes and directory entries, and every operation on them, as a pure
//! deterministic state machine (no clocks, no I/O: the time of an operation comes with it).
//! Every operation checks all its preconditions before changing anything, so a failed
//! operation changes nothing.

pub mod acl;
mod files;
mod inline;
mod permissions;
#[cfg(test)]
mod tests;
mod xattrs;

pub use inline::InlineData;
use lattice_common::chunk_map::{self, SliceRef};
use lattice_common::fs::{
    check_name, Attr, Caller, DirEntry, Errno, FileKind, KnownXattrs, RenameMode, SetAttr, TimeSet,
    Timestamp, XattrMode, CAPABILITY, MAX_DEPTH, MAX_LINKS, MAX_READDIR, MAX_SYMLINK_LEN,
    MAX_XATTR_NAME_LEN, MAX_XATTR_TOTAL, MAX_XATTR_VALUE_LEN,
};
use lattice_common::ids::InodeId;
use lattice_common::policy::Policy;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use xattrs::Xattrs;

/// Cookies 1 and 2 are `.` and `..` (listed by the client), entries start after them.
const FIRST_COOKIE: u64 = 3;
const S_ISGID: u16 = 0o2000;
const S_IXGRP: u16 = 0o010;

/// An entry's name, one allocation shared by both indexes of its directory (stored as
/// plain bytes).
type Name = Arc<[u8]>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredDirectory")]
pub struct Directory {
    pub parent: InodeId,
    /// name -> (inode, cookie)
    entries: BTreeMap<Name, (InodeId, u64)>,
    by_cookie: BTreeMap<u64, Name>,
    next_cookie: u64,
}

/// A directory as stored: each name twice, shared again when read.
#[derive(Deserialize)]
struct StoredDirectory {
    parent: InodeId,
    entries: BTreeMap<Vec<u8>, (InodeId, u64)>,
    by_cookie: BTreeMap<u64, Vec<u8>>,
    next_cookie: u64,
}

impl From<StoredDirectory> for Directory {
    fn from(s: StoredDirectory) -> Self {
        let entries: BTreeMap<Name, (InodeId, u64)> = s
            .entries
            .into_iter()
            .map(|(name, e)| (Name::from(name), e))
            .collect();
        // Every cookie names an entry (kept so by insert and remove); one that did not
        // keeps its own copy rather than be lost.
        let by_cookie = s
            .by_cookie
            .into_iter()
            .map(|(cookie, name)| {
                let shared = entries
                    .get_key_value(name.as_slice())
                    .map(|(n, _)| n.clone());
                (cookie, shared.unwrap_or_else(|| Name::from(name)))
            })
            .collect();
        Directory {
            parent: s.parent,
            entries,
            by_cookie,
            next_cookie: s.next_cookie,
        }
    }
}

impl Directory {
    fn new(parent: InodeId) -> Self {
        Directory {
            parent,
            entries: BTreeMap::new(),
            by_cookie: BTreeMap::new(),
            next_cookie: FIRST_COOKIE,
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<InodeId> {
        self.entries.get(name).map(|(ino, _)| *ino)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    fn insert(&mut self, name: Vec<u8>, ino: InodeId) {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let name = Name::from(name);
        self.by_cookie.insert(cookie, name.clone());
        if let Some((_, old)) = self.entries.insert(name, (ino, cookie)) {
            self.by_cookie.remove(&old);
        }
    }

    fn remove(&mut self, name: &[u8]) -> Option<InodeId> {
        let (ino, cookie) = self.entries.remove(name)?;
        self.by_cookie.remove(&cookie);
        Some(ino)
    }

    /// Points an existing entry at another inode, keeping its place in listings.
    fn repoint(&mut self, name: &[u8], ino: InodeId) {
        if let Some(e) = self.entries.get_mut(name) {
            e.0 = ino;
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Chunk index -> slices, oldest first.
    File(BTreeMap<u64, Vec<SliceRef>>),
    /// Boxed: a directory is large and most inodes are files.
    Dir(Box<Directory>),
    Symlink(Vec<u8>),
    Special,
    /// A small file's bytes, held here instead of on chunkservers (see `inline.rs`).
    Inline(InlineData),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    /// Bytes of a file some slice covers (holes excluded), kept as its slices change.
    pub stored: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    pub policy: Option<Policy>,
    pub xattrs: Xattrs,
    pub content: Content,
}

impl Inode {
    fn dir(&self) -> Result<&Directory, Errno> {
        match &self.content {
            Content::Dir(d) => Ok(d),
            _ => Err(Errno::NOTDIR),
        }
    }

    fn dir_mut(&mut self) -> Result<&mut Directory, Errno> {
        match &mut self.content {
            Content::Dir(d) => Ok(d),
            _ => Err(Errno::NOTDIR),
        }
    }

    fn touch(&mut self, now: Timestamp) {
        self.mtime = now;
        self.ctime = now;
    }
}

/// What a new inode starts as.
struct NewInode {
    kind: FileKind,
    perm: u16,
    /// Applies unless the directory has a default ACL.
    umask: u16,
    caller: Caller,
    content: Content,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredNamespace")]
pub struct Namespace {
    /// Boxed: a map's nodes are often half full, and half-empty slots then cost a pointer
    /// each instead of a whole inode.
    inodes: BTreeMap<InodeId, Box<Inode>>,
    next_ino: u64,
    /// Files whose last name is gone but that may still be open somewhere, and since when.
    orphans: BTreeMap<InodeId, Timestamp>,
    /// Bytes held inline in all files: counted again when decoded, never stored.
    #[serde(skip)]
    inline_bytes: u64,
}

/// A namespace as stored (everything but what is counted from it).
#[derive(Deserialize)]
struct StoredNamespace {
    inodes: BTreeMap<InodeId, Box<Inode>>,
    next_ino: u64,
    orphans: BTreeMap<InodeId, Timestamp>,
}

/// Bytes held inline in all of `inodes`.
fn inline_bytes_of(inodes: &BTreeMap<InodeId, Box<Inode>>) -> u64 {
    (inodes.values())
        .map(|i| match &i.content {
            Content::Inline(d) => d.bytes.len() as u64,
            _ => 0,
        })
        .sum()
}

impl From<StoredNamespace> for Namespace {
    fn from(s: StoredNamespace) -> Self {
        let inline_bytes = inline_bytes_of(&s.inodes);
        Namespace {
            inodes: s.inodes,
            next_ino: s.next_ino,
            orphans: s.orphans,
            inline_bytes,
        }
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::new(Timestamp::default())
    }
}

impl Namespace {
    pub fn new(now: Timestamp) -> Self {
        let root = Inode {
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            size: 0,
            stored: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            policy: None,
            xattrs: Xattrs::default(),
            content: Content::Dir(Box::new(Directory::new(InodeId::ROOT))),
        };
        Namespace {
            inodes: BTreeMap::from([(InodeId::ROOT, Box::new(root))]),
            next_ino: InodeId::ROOT.0 + 1,
            orphans: BTreeMap::new(),
            inline_bytes: 0,
        }
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    pub fn orphans(&self) -> &BTreeMap<InodeId, Timestamp> {
        &self.orphans
    }

    fn get(&self, ino: InodeId) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).map(|i| &**i).ok_or(Errno::NOENT)
    }

    fn get_mut(&mut self, ino: InodeId) -> Result<&mut Inode, Errno> {
        self.inodes
            .get_mut(&ino)
            .map(|i| &mut **i)
            .ok_or(Errno::NOENT)
    }

    pub fn attr(&self, ino: InodeId) -> Result<Attr, Errno> {
        let i = self.get(ino)?;
        Ok(Attr {
            ino,
            kind: i.kind,
            perm: i.perm,
            uid: i.uid,
            gid: i.gid,
            size: i.size,
            blocks: match i.content {
                Content::File(_) | Content::Inline(_) => i.stored.div_ceil(512),
                _ => i.size.div_ceil(512),
            },
            nlink: i.nlink,
            atime: i.atime,
            mtime: i.mtime,
            ctime: i.ctime,
            rdev: i.rdev,
            policy: i.policy,
            known_xattrs: KnownXattrs {
                acl_access: i.xattrs.contains_key(acl::ACCESS),
                acl_default: i.xattrs.contains_key(acl::DEFAULT),
                capability: i.xattrs.contains_key(CAPABILITY),
            },
        })
    }

    pub fn lookup(&self, parent: InodeId, name: &[u8]) -> Result<Attr, Errno> {
        let dir = self.get(parent)?.dir()?;
        if name.len() > lattice_common::fs::MAX_NAME_LEN {
            return Err(Errno::NAMETOOLONG);
        }
        match name {
            b"." => self.attr(parent),
            b".." => self.attr(dir.parent),
            _ => self.attr(dir.get(name).ok_or(Errno::NOENT)?),
        }
    }

    pub fn readdir(&self, ino: InodeId, cookie: u64, limit: u32) -> Result<Vec<DirEntry>, Errno> {
        let dir = self.get(ino)?.dir()?;
        let limit = limit.clamp(1, MAX_READDIR) as usize;
        use std::ops::Bound::{Excluded, Unbounded};
        dir.by_cookie
            .range((Excluded(cookie), Unbounded))
            .take(limit)
            .map(|(&cookie, name)| {
                let child = dir.get(name).ok_or(Errno::IO)?;
                Ok(DirEntry {
                    name: name.to_vec(),
                    ino: child,
                    kind: self.get(child)?.kind,
                    cookie,
                })
            })
            .collect()
    }

    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Errno> {
        match &self.get(ino)?.content {
            Content::Symlink(t) => Ok(t.clone()),
            _ => Err(Errno::INVAL),
        }
    }

    pub fn getxattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, Errno> {
        self.get(ino)?
            .xattrs
            .get(name)
            .cloned()
            .ok_or(Errno::NODATA)
    }

    pub fn listxattr(&self, ino: InodeId) -> Result<Vec<Vec<u8>>, Errno> {
        Ok(self.get(ino)?.xattrs.keys().cloned().collect())
    }

    /// Checks that `name` may be created in directory `parent`.
    fn check_new_entry(&self, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        let dir = self.get(parent)?.dir()?;
        check_name(name)?;
        if dir.get(name).is_some() {
            return Err(Errno::EXIST);
        }
        if self.get(parent)?.nlink == 0 {
            // A removed directory takes no new entries.
            return Err(Errno::NOENT);
        }
        Ok(())
    }

    fn depth(&self, mut ino: InodeId) -> u32 {
        let mut depth = 0;
        while ino != InodeId::ROOT && depth <= MAX_DEPTH {
            ino = match self.get(ino).and_then(|i| i.dir()) {
                Ok(d) => d.parent,
                Err(_) => break,
            };
            depth += 1;
        }
        depth
    }

    /// Creates an inode named `name` in `parent`.
    fn create(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new: NewInode,
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        let NewInode {
            kind,
            perm,
            umask,
            caller,
            content,
        } = new;
        self.check_new_entry(parent, name)?;
        let p = self.get(parent)?;
        let (mut perm, mut gid) = (perm & 0o7777, caller.gid);
        // A setgid directory hands its group down (and, to directories, its setgid bit).
        if p.perm & S_ISGID != 0 {
            gid = p.gid;
            if kind == FileKind::Dir {
                perm |= S_ISGID;
            } else if perm & (S_ISGID | S_IXGRP) == (S_ISGID | S_IXGRP)
                && caller.uid != 0
                && caller.gid != gid
            {
                perm &= !S_ISGID;
            }
        }
        // A default ACL of the directory replaces the umask and is inherited.
        let mut xattrs = Xattrs::default();
        let inherited = p
            .xattrs
            .get(acl::DEFAULT)
            .and_then(|d| acl::Acl::parse(d).ok());
        match inherited.filter(|_| kind != FileKind::Symlink) {
            Some(default) => {
                let mut access = default.clone();
                perm = (perm & !0o777) | access.create_masq(perm & 0o777);
                if !access.is_equivalent_to_mode() {
                    xattrs.insert(acl::ACCESS.to_vec(), access.encode());
                }
                if kind == FileKind::Dir {
                    xattrs.insert(acl::DEFAULT.to_vec(), default.encode());
                }
            }
            None => perm &= !umask,
        }
        // A new file takes the policy of its nearest directory that has one (a directory
        // itself keeps none: it follows its ancestors until one is set on it). Without one
        // up to the root, the file follows the cluster default, whatever it becomes.
        let policy = match kind {
            FileKind::File => self.nearest_policy(parent),
            _ => None,
        };
        let ino = InodeId(self.next_ino);
        self.next_ino += 1;
        let inode = Inode {
            kind,
            perm,
            uid: caller.uid,
            gid,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            size: match &content {
                Content::Symlink(t) => t.len() as u64,
                _ => 0,
            },
            stored: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            policy,
            xattrs,
            content,
        };
        self.inodes.insert(ino, Box::new(inode));
        let p = self.get_mut(parent)?;
        p.dir_mut()?.insert(name.to_vec(), ino);
        p.touch(now);
        if kind == FileKind::Dir {
            p.nlink += 1;
        }
        self.attr(ino)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &mut self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        (perm, umask): (u16, u16),
        rdev: u32,
        caller: Caller,
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        let content = match kind {
            FileKind::File => Content::File(BTreeMap::new()),
            FileKind::Fifo | FileKind::Socket | FileKind::CharDevice | FileKind::BlockDevice => {
                Content::Special
            }
            FileKind::Dir | FileKind::Symlink => return Err(Errno::INVAL),
        };
        let attr = self.create(
            parent,
            name,
            NewInode {
                kind,
                perm,
                umask,
                caller,
                content,
            },
            now,
        )?;
        let inode = self.get_mut(attr.ino)?;
        inode.rdev = rdev;
        self.attr(attr.ino)
    }

    pub fn mkdir(
        &mut self,
        parent: InodeId,
        name: &[u8],
        (perm, umask): (u16, u16),
        caller: Caller,
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        if self.depth(parent) >= MAX_DEPTH {
            return Err(Errno::NOSPC);
        }
        let content = Content::Dir(Box::new(Directory::new(parent)));
        self.create(
            parent,
            name,
            NewInode {
                kind: FileKind::Dir,
                perm,
                umask,
                caller,
                content,
            },
            now,
        )
    }

    pub fn symlink(
        &mut self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        caller: Caller,
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        if target.len() > MAX_SYMLINK_LEN {
            return Err(Errno::NAMETOOLONG);
        }
        if target.is_empty() || target.contains(&0) {
            return Err(Errno::INVAL);
        }
        let content = Content::Symlink(target.to_vec());
        let new = NewInode {
            kind: FileKind::Symlink,
            perm: 0o777,
            umask: 0,
            caller,
            content,
        };
        self.create(parent, name, new, now)
    }

    pub fn link(
        &mut self,
        ino: InodeId,
        parent: InodeId,
        name: &[u8],
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        let target = self.get(ino)?;
        if target.kind == FileKind::Dir {
            return Err(Errno::PERM);
        }
        if target.nlink >= MAX_LINKS {
            return Err(Errno::MLINK);
        }
        if target.nlink == 0 {
            return Err(Errno::NOENT);
        }
        self.check_new_entry(parent, name)?;
        let p = self.get_mut(parent)?;
        p.dir_mut()?.insert(name.to_vec(), ino);
        p.touch(now);
        let t = self.get_mut(ino)?;
        t.nlink += 1;
        t.ctime = now;
        self.attr(ino)
    }

    /// Drops one link of `ino`; at zero links a file becomes an orphan (it may still be
    /// open somewhere) and anything else is removed at once.
    fn drop_link(&mut self, ino: InodeId, now: Timestamp) {
        let Some(inode) = self.inodes.get_mut(&ino) else {
            return;
        };
        inode.ctime = now;
        inode.nlink = match inode.kind {
            FileKind::Dir => 0,
            _ => inode.nlink.saturating_sub(1),
        };
        if inode.nlink > 0 {
            return;
        }
        if inode.kind == FileKind::File {
            self.orphans.insert(ino, now);
        } else {
            self.inodes.remove(&ino);
        }
    }

    /// Removes an orphan for good (once nobody has it open); returns its slices.
    pub fn reap(&mut self, ino: InodeId) -> Result<Vec<SliceRef>, Errno> {
        if self.orphans.remove(&ino).is_none() {
            return Err(Errno::NOENT);
        }
        Ok(match self.inodes.remove(&ino).map(|i| i.content) {
            Some(Content::File(chunks)) => chunks
                .into_values()
                .flat_map(|slices| chunk_map::unreferenced(&[], slices))
                .collect(),
            Some(Content::Inline(d)) => {
                self.inline_bytes = self.inline_bytes.saturating_sub(d.bytes.len() as u64);
                Vec::new()
            }
            _ => Vec::new(),
        })
    }

    pub fn unlink(&mut self, parent: InodeId, name: &[u8], now: Timestamp) -> Result<(), Errno> {
        let dir = self.get(parent)?.dir()?;
        check_name(name)?;
        let ino = dir.get(name).ok_or(Errno::NOENT)?;
        if self.get(ino)?.kind == FileKind::Dir {
            return Err(Errno::ISDIR);
        }
        let p = self.get_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.touch(now);
        self.drop_link(ino, now);
        Ok(())
    }

    /// As [`Namespace::unlink`] (or [`Namespace::rmdir`] for `dir`) at the time a mount
    /// answered it (`at`, see [`lattice_common::wire::meta::Unlinked`]), if `name` still
    /// leads to `ino` (else ESTALE).
    pub fn unlink_if(
        &mut self,
        (parent, name, ino): (InodeId, &[u8], InodeId),
        dir: bool,
        at: Timestamp,
        now: Timestamp,
    ) -> Result<(), Errno> {
        check_name(name)?;
        let parent_dir = self.get(parent)?;
        match parent_dir.dir()?.get(name) {
            None => Err(Errno::NOENT),
            Some(found) if found != ino => Err(Errno::STALE),
            Some(_) => {
                let latest = Timestamp {
                    secs: now.secs.saturating_add(1),
                    ..now
                };
                let t = at.min(latest).max(parent_dir.ctime);
                match dir {
                    true => self.rmdir(parent, name, t),
                    false => self.unlink(parent, name, t),
                }
            }
        }
    }

    pub fn rmdir(&mut self, parent: InodeId, name: &[u8], now: Timestamp) -> Result<(), Errno> {
        let dir = self.get(parent)?.dir()?;
        if name == b"." {
            return Err(Errno::INVAL);
        }
        if name == b".." {
            return Err(Errno::NOTEMPTY);
        }
        check_name(name)?;
        let ino = dir.get(name).ok_or(Errno::NOENT)?;
        let d = self.get(ino)?.dir()?;
        if d.len() > 0 {
            return Err(Errno::NOTEMPTY);
        }
        let p = self.get_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.touch(now);
        p.nlink -= 1;
        self.drop_link(ino, now);
        Ok(())
    }

    /// Whether `ino` is `ancestor` or lies below it.
    fn is_within(&self, mut ino: InodeId, ancestor: InodeId) -> bool {
        for _ in 0..=MAX_DEPTH * 4 {
            if ino == ancestor {
                return true;
            }
            if ino == InodeId::ROOT {
                return false;
            }
            ino = match self.get(ino).and_then(|i| i.dir()) {
                Ok(d) => d.parent,
                Err(_) => return false,
            };
        }
        true
    }

    pub fn rename(
        &mut self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        mode: RenameMode,
        now: Timestamp,
    ) -> Result<(), Errno> {
        let src_dir = self.get(parent)?.dir()?;
        let dst_dir = self.get(new_parent)?.dir()?;
        check_name(name)?;
        check_name(new_name)?;
        let src = src_dir.get(name).ok_or(Errno::NOENT)?;
        let dst = dst_dir.get(new_name);
        let src_is_dir = self.get(src)?.kind == FileKind::Dir;
        // A directory cannot move below itself.
        if src_is_dir && self.is_within(new_parent, src) {
            return Err(Errno::INVAL);
        }
        match (mode, dst) {
            (RenameMode::Exchange, None) => return Err(Errno::NOENT),
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EXIST),
            (RenameMode::Exchange, Some(dst)) => {
                return self.exchange(parent, name, src, new_parent, new_name, dst, now)
            }
            _ => {}
        }
        if let Some(dst) = dst {
            if dst == src {
                return Ok(());
            }
            let dst_inode = self.get(dst)?;
            match (src_is_dir, dst_inode.kind == FileKind::Dir) {
                (true, false) => return Err(Errno::NOTDIR),
                (false, true) => return Err(Errno::ISDIR),
                (true, true) if dst_inode.dir()?.len() > 0 => return Err(Errno::NOTEMPTY),
                _ => {}
            }
        }
        if self.depth(new_parent) >= MAX_DEPTH && src_is_dir {
            return Err(Errno::NOSPC);
        }
        // All checks passed: change things.
        if let Some(dst) = dst {
            let target = self.get_mut(new_parent)?;
            target.dir_mut()?.remove(new_name);
            if src_is_dir {
                target.nlink -= 1;
            }
            self.drop_link(dst, now);
        }
        let p = self.get_mut(parent)?;
        p.dir_mut()?.remove(name);
        p.touch(now);
        if src_is_dir {
            p.nlink -= 1;
        }
        let np = self.get_mut(new_parent)?;
        np.dir_mut()?.insert(new_name.to_vec(), src);
        np.touch(now);
        if src_is_dir {
            np.nlink += 1;
        }
        let moved = self.get_mut(src)?;
        moved.ctime = now;
        if let Content::Dir(d) = &mut moved.content {
            d.parent = new_parent;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn exchange(
        &mut self,
        parent: InodeId,
        name: &[u8],
        src: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
        dst: InodeId,
        now: Timestamp,
    ) -> Result<(), Errno> {
        if src == dst {
            return Ok(());
        }
        let dst_is_dir = self.get(dst)?.kind == FileKind::Dir;
        let src_is_dir = self.get(src)?.kind == FileKind::Dir;
        if dst_is_dir && self.is_within(parent, dst) {
            return Err(Errno::INVAL);
        }
        self.get_mut(parent)?.dir_mut()?.repoint(name, dst);
        self.get_mut(new_parent)?.dir_mut()?.repoint(new_name, src);
        if parent != new_parent {
            let delta = src_is_dir as i64 - dst_is_dir as i64;
            let p = self.get_mut(parent)?;
            p.nlink = (p.nlink as i64 - delta) as u32;
            let np = self.get_mut(new_parent)?;
            np.nlink = (np.nlink as i64 + delta) as u32;
        }
        for (ino, new_dir) in [(src, new_parent), (dst, parent)] {
            let i = self.get_mut(ino)?;
            i.ctime = now;
            if let Content::Dir(d) = &mut i.content {
                d.parent = new_dir;
            }
        }
        self.get_mut(parent)?.touch(now);
        self.get_mut(new_parent)?.touch(now);
        Ok(())
    }

    /// Returns the new attributes and the slices a truncation released.
    pub fn setattr(
        &mut self,
        ino: InodeId,
        set: &SetAttr,
        now: Timestamp,
    ) -> Result<(Attr, Vec<SliceRef>), Errno> {
        let inode = self.get(ino)?;
        if let Some(size) = set.size {
            match inode.kind {
                FileKind::File => {}
                FileKind::Dir => return Err(Errno::ISDIR),
                _ => return Err(Errno::INVAL),
            }
            if size > lattice_common::fs::MAX_FILE_SIZE {
                return Err(Errno::FBIG);
            }
        }
        let mut released = Vec::new();
        if let Some(size) = set.size {
            let old = self.get(ino)?.size;
            released = self.truncate(ino, size)?;
            if size != old {
                self.get_mut(ino)?.touch(now);
            }
        }
        let inode = self.get_mut(ino)?;
        if let Some(perm) = set.perm {
            inode.perm = perm & 0o7777;
            // chmod rewrites the access ACL so the two agree.
            if let Some(mut a) = inode
                .xattrs
                .get(acl::ACCESS)
                .and_then(|v| acl::Acl::parse(v).ok())
            {
                a.chmod(inode.perm);
                inode.xattrs.insert(acl::ACCESS.to_vec(), a.encode());
            }
        }
        if let Some(uid) = set.uid {
            inode.uid = uid;
        }
        if let Some(gid) = set.gid {
            inode.gid = gid;
        }
        let at = |t: &TimeSet| match t {
            TimeSet::Now => now,
            TimeSet::At(t) => *t,
        };
        if let Some(t) = &set.atime {
            inode.atime = at(t);
        }
        if let Some(t) = &set.mtime {
            inode.mtime = at(t);
        }
        inode.ctime = set.ctime.unwrap_or(now);
        Ok((self.attr(ino)?, released))
    }

    /// The policy set on `dir` or its nearest ancestor below the root (the root's is the
    /// cluster default, which files follow without keeping a copy).
    pub fn nearest_policy(&self, dir: InodeId) -> Option<Policy> {
        let mut at = dir;
        for _ in 0..=MAX_DEPTH {
            if at == InodeId::ROOT {
                return None;
            }
            let inode = self.inodes.get(&at)?;
            if inode.policy.is_some() {
                return inode.policy;
            }
            at = inode.dir().ok()?.parent;
        }
        None
    }

    pub fn set_policy(
        &mut self,
        ino: InodeId,
        policy: Option<Policy>,
        now: Timestamp,
    ) -> Result<Attr, Errno> {
        let inode = self.get_mut(ino)?;
        if !matches!(inode.kind, FileKind::File | FileKind::Dir) {
            return Err(Errno::INVAL);
        }
        inode.policy = policy;
        inode.ctime = now;
        self.attr(ino)
    }

    pub fn setxattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        now: Timestamp,
    ) -> Result<(), Errno> {
        if name.is_empty() || name.len() > MAX_XATTR_NAME_LEN {
            return Err(Errno::RANGE);
        }
        if value.len() > MAX_XATTR_VALUE_LEN {
            return Err(Errno::E2BIG);
        }
        let inode = self.get(ino)?;
        let exists = inode.xattrs.contains_key(name);
        match mode {
            XattrMode::Create if exists => return Err(Errno::EXIST),
            XattrMode::Replace if !exists => return Err(Errno::NODATA),
            _ => {}
        }
        // ACLs must be well formed; an access ACL sets the mode, and is not kept when the
        // mode alone says the same.
        let (mut new_perm, mut keep) = (None, true);
        if name == acl::ACCESS || name == acl::DEFAULT {
            if name == acl::DEFAULT && inode.kind != FileKind::Dir {
                return Err(Errno::ACCES);
            }
            let parsed = acl::Acl::parse(value)?;
            if name == acl::ACCESS {
                new_perm = Some((inode.perm & !0o777) | parsed.mode_bits());
                keep = !parsed.is_equivalent_to_mode();
            }
        }
        let total: usize = inode
            .xattrs
            .iter()
            .filter(|(k, _)| k.as_slice() != name)
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if keep && total + name.len() + value.len() > MAX_XATTR_TOTAL {
            return Err(Errno::NOSPC);
        }
        let inode = self.get_mut(ino)?;
        if let Some(perm) = new_perm {
            inode.perm = perm;
        }
        if keep {
            inode.xattrs.insert(name.to_vec(), value.to_vec());
        } else {
            inode.xattrs.remove(name);
        }
        inode.ctime = now;
        Ok(())
    }

    pub fn removexattr(&mut self, ino: InodeId, name: &[u8], now: Timestamp) -> Result<(), Errno> {
        let inode = self.get_mut(ino)?;
        inode.xattrs.remove(name).ok_or(Errno::NODATA)?;
        inode.ctime = now;
        Ok(())
    }
}
