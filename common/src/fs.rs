//! The POSIX model shared by the metaserver and the fs-client: attributes, file kinds,
//! times, errors, and the limits every name, path and attribute is held to.

use crate::ids::InodeId;
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest name of a directory entry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target, in bytes.
pub const MAX_SYMLINK_LEN: usize = 4095;
/// Deepest directory nesting below the root.
pub const MAX_DEPTH: u32 = 1024;
/// Longest extended attribute name and value, in bytes (the Linux limits).
pub const MAX_XATTR_NAME_LEN: usize = 255;
pub const MAX_XATTR_VALUE_LEN: usize = 64 << 10;
/// Most extended attribute bytes (names and values) one inode may carry.
pub const MAX_XATTR_TOTAL: usize = 256 << 10;
/// Most hard links to one inode.
pub const MAX_LINKS: u32 = 65_000;
/// Largest file size.
pub const MAX_FILE_SIZE: u64 = 1 << 50;
/// Most directory entries returned by one readdir.
pub const MAX_READDIR: u32 = 4096;

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    pub fn as_nanos(&self) -> i128 {
        self.secs as i128 * 1_000_000_000 + self.nanos as i128
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// What `stat` shows of an inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: InodeId,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks stored: a file's holes take none.
    pub blocks: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub rdev: u32,
    /// The redundancy policy new data of this file gets (for a directory: what new files
    /// inside inherit). `None`: the cluster default.
    pub policy: Option<Policy>,
    /// Which of the xattrs the kernel reads on nearly every operation it has: a client
    /// answers the kernel's reads of the others itself.
    pub known_xattrs: KnownXattrs,
}

/// The extended attributes that hold a file's POSIX ACLs (in the kernel's format).
pub const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
pub const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";
/// File capabilities (`setcap`): the kernel reads it before every write to a file, to
/// drop it if present.
pub const CAPABILITY: &[u8] = b"security.capability";

/// Which of the xattrs the kernel reads for nearly every operation a file has: its ACLs
/// (read for each inode checked for a caller other than root) and its capabilities (read
/// for each write).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownXattrs {
    /// `system.posix_acl_access`
    pub acl_access: bool,
    /// `system.posix_acl_default`
    pub acl_default: bool,
    /// `security.capability`
    pub capability: bool,
}

impl KnownXattrs {
    /// Whether `name` is one of them, and if so whether it is set.
    pub fn has(&self, name: &[u8]) -> Option<bool> {
        match name {
            ACL_ACCESS => Some(self.acl_access),
            ACL_DEFAULT => Some(self.acl_default),
            CAPABILITY => Some(self.capability),
            _ => None,
        }
    }
}

/// The process a request acts for (from the kernel's request header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0, gid: 0 };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeSet {
    Now,
    At(Timestamp),
}

/// Attribute changes of one setattr; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSet>,
    pub mtime: Option<TimeSet>,
    pub ctime: Option<Timestamp>,
}

impl SetAttr {
    /// Whether this sets times and nothing else.
    pub fn only_times(&self) -> bool {
        let times = self.atime.is_some() || self.mtime.is_some() || self.ctime.is_some();
        let other = self.perm.is_some() || self.uid.is_some() || self.gid.is_some();
        times && !other && self.size.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Replace an existing target (of a compatible kind).
    Replace,
    /// `RENAME_NOREPLACE`: fail with EEXIST if the target exists.
    NoReplace,
    /// `RENAME_EXCHANGE`: swap two existing entries.
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    Either,
    /// `XATTR_CREATE`: fail with EEXIST if it exists.
    Create,
    /// `XATTR_REPLACE`: fail with ENODATA if it does not.
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// Which locks can be in each other's way. Linux keeps `fcntl` record locks (POSIX locks,
/// owned by a process, and OFD locks, owned by an open file description: these two do
/// conflict) apart from `flock` locks: a lock of one space never blocks the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockSpace {
    Record,
    Flock,
}

/// A lock on a byte range (`fcntl`); a `flock` lock covers the whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub space: LockSpace,
    pub kind: LockKind,
    pub start: u64,
    /// Inclusive; `u64::MAX` reaches to the end of any file.
    pub end: u64,
    pub pid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: InodeId,
    pub kind: FileKind,
    /// Pass this back to continue listing after this entry; stable while the directory
    /// changes (entries added later sort after every existing one).
    pub cookie: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatFs {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    pub inodes: u64,
}

/// A POSIX error number, as the kernel expects it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Errno(pub i32);

impl Errno {
    pub const PERM: Errno = Errno(libc::EPERM);
    pub const NOENT: Errno = Errno(libc::ENOENT);
    pub const IO: Errno = Errno(libc::EIO);
    pub const ACCES: Errno = Errno(libc::EACCES);
    pub const EXIST: Errno = Errno(libc::EEXIST);
    pub const XDEV: Errno = Errno(libc::EXDEV);
    pub const NOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const ISDIR: Errno = Errno(libc::EISDIR);
    pub const INVAL: Errno = Errno(libc::EINVAL);
    pub const FBIG: Errno = Errno(libc::EFBIG);
    pub const NOSPC: Errno = Errno(libc::ENOSPC);
    pub const MLINK: Errno = Errno(libc::EMLINK);
    pub const RANGE: Errno = Errno(libc::ERANGE);
    pub const NAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const NOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const LOOP: Errno = Errno(libc::ELOOP);
    pub const NODATA: Errno = Errno(libc::ENODATA);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const NOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const STALE: Errno = Errno(libc::ESTALE);
    pub const AGAIN: Errno = Errno(libc::EAGAIN);
    pub const DEADLK: Errno = Errno(libc::EDEADLK);
    pub const NOLCK: Errno = Errno(libc::ENOLCK);
    pub const INTR: Errno = Errno(libc::EINTR);
    pub const NXIO: Errno = Errno(libc::ENXIO);
    pub const BUSY: Errno = Errno(libc::EBUSY);
    /// Too many sessions for one client certificate.
    pub const USERS: Errno = Errno(libc::EUSERS);
    /// Between client and metaserver only: the file's bytes are held inline in the
    /// namespace, and a slice can land only once they have moved to one.
    pub const MEDIUMTYPE: Errno = Errno(libc::EMEDIUMTYPE);
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

/// Checks one path component: not empty, not `.` or `..`, no `/` or NUL, at most
/// [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.len() > MAX_NAME_LEN {
        return Err(Errno::NAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(Errno::INVAL);
    }
    Ok(())
}
