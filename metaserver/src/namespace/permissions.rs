//! Permission checks for mounts whose certificate names the one user they act as
//! ([`lattice_common::mount_user`]): the metaserver decides as the Linux kernel would, from
//! mode bits, POSIX ACLs, ownership and the sticky bit, so a modified client gains nothing.
//! Trusted mounts (their kernel checks with `default_permissions`) and admins skip this.
//!
//! One deliberate difference, as NFS servers make it: a file's owner may read and write its
//! data whatever the mode says, since a file created read-only is still written through the
//! descriptor that created it (`open(O_CREAT | O_WRONLY, 0444)`), and the metaserver sees
//! no descriptors.

use super::{acl, Namespace};
use lattice_common::fs::{
    Attr, Errno, FileKind, LockKind, LockSpace, RenameMode, SetAttr, TimeSet,
};
use lattice_common::ids::InodeId;
use lattice_common::mount_user::Credentials;
use lattice_common::wire::meta::{FsOp, FsQuery, MAX_UNLINKS};

const READ: u16 = 4;
const WRITE: u16 = 2;
const EXEC: u16 = 1;
const SET_UID: u16 = 0o4000;
const SET_GID: u16 = 0o2000;
const STICKY: u16 = 0o1000;

impl Namespace {
    /// Checks `op` for `who`; returns it as it may be applied (a chmod by someone outside
    /// the file's group loses the setgid bit, as `setattr_copy` does), or EACCES / EPERM.
    pub fn admit(&self, op: FsOp, who: &Credentials) -> Result<FsOp, Errno> {
        match &op {
            FsOp::Mknod { parent, kind, .. } => {
                // As CAP_MKNOD: a device node would open that device on every machine
                // that mounts with devices allowed.
                let device = matches!(kind, FileKind::CharDevice | FileKind::BlockDevice);
                if device && !who.is_root() {
                    return Err(Errno::PERM);
                }
                self.require_dir(*parent, who, WRITE | EXEC)?;
            }
            FsOp::Mkdir { parent, .. } | FsOp::Symlink { parent, .. } => {
                self.require_dir(*parent, who, WRITE | EXEC)?;
            }
            FsOp::Link { ino, parent, .. } => {
                // As `fs.protected_hardlinks`: only what one could read and write may be
                // linked by someone who does not own it.
                let file = self.attr(*ino)?;
                if !who.is_root() && who.uid != file.uid {
                    self.check(file, who, READ | WRITE)?;
                }
                self.require_dir(*parent, who, WRITE | EXEC)?;
            }
            FsOp::Unlink { parent, name } | FsOp::Rmdir { parent, name } => {
                self.may_remove(*parent, name, who)?;
            }
            // One refusal refuses the batch: the mount sends its entries one by one then.
            FsOp::Unlinks { entries } => {
                if entries.len() > MAX_UNLINKS {
                    return Err(Errno::INVAL);
                }
                for u in entries {
                    if self.lookup(u.parent, &u.name).is_ok() {
                        self.may_remove(u.parent, &u.name, who)?;
                    }
                }
            }
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => {
                let moved = self.may_remove(*parent, name, who)?;
                let replaced = match self.lookup(*new_parent, new_name) {
                    Ok(_) => Some(self.may_remove(*new_parent, new_name, who)?),
                    Err(_) => {
                        self.require_dir(*new_parent, who, WRITE | EXEC)?;
                        None
                    }
                };
                // A directory that changes parent has its ".." rewritten.
                let mut reparented = vec![moved];
                if *mode == RenameMode::Exchange {
                    reparented.extend(replaced);
                }
                if parent != new_parent {
                    for dir in reparented.iter().filter(|a| a.kind == FileKind::Dir) {
                        self.require(dir.ino, who, WRITE)?;
                    }
                }
            }
            FsOp::SetAttr { ino, set } => {
                let set = self.may_setattr(*ino, set, who)?;
                return Ok(FsOp::SetAttr { ino: *ino, set });
            }
            FsOp::WriteInlineSetTimes { ino, set, .. } => {
                self.may_use_data(*ino, who, WRITE)?;
                self.may_setattr(*ino, set, who)?;
            }
            FsOp::SetXattr { ino, name, .. } | FsOp::RemoveXattr { ino, name } => {
                self.may_xattr(*ino, name, who, WRITE)?;
            }
            FsOp::SetPolicy { ino, .. } => {
                self.owner(&self.attr(*ino)?, who)?;
            }
            FsOp::AllocateSlice { ino, .. }
            | FsOp::CommitSlice { ino, .. }
            | FsOp::CommitSlices { ino, .. }
            | FsOp::ReplaceSlices { ino, .. }
            | FsOp::PunchHole { ino, .. }
            | FsOp::WriteInline { ino, .. }
            | FsOp::Uninline { ino, .. } => {
                self.may_use_data(*ino, who, WRITE)?;
            }
            // As the descriptor a lock is taken through must be open: for reading to share
            // a record, for writing to hold one alone, either way for `flock`.
            FsOp::SetLock { ino, lock, .. } => match (lock.space, lock.kind) {
                (_, LockKind::Unlock) => {}
                (LockSpace::Record, LockKind::Read) => self.may_use_data(*ino, who, READ)?,
                (LockSpace::Record, LockKind::Write) => self.may_use_data(*ino, who, WRITE)?,
                (LockSpace::Flock, _) => self
                    .may_use_data(*ino, who, READ)
                    .or_else(|_| self.may_use_data(*ino, who, WRITE))?,
            },
            FsOp::ReleaseLocks { .. } => {}
        }
        Ok(op)
    }

    /// Checks a read-only request for `who`.
    pub fn admit_query(&self, query: &FsQuery, who: &Credentials) -> Result<(), Errno> {
        match query {
            FsQuery::Lookup { parent, .. } => self.require_dir(*parent, who, EXEC).map(drop),
            FsQuery::ReadDir { ino, .. } | FsQuery::ReadDirPlus { ino, .. } => {
                self.require_dir(*ino, who, READ).map(drop)
            }
            FsQuery::GetXattr { ino, name } => self.may_xattr(*ino, name, who, READ),
            FsQuery::Slices { ino, .. } | FsQuery::Seek { ino, .. } => {
                self.may_use_data(*ino, who, READ)
            }
            FsQuery::GetAttr { .. }
            | FsQuery::ReadLink { .. }
            | FsQuery::ListXattr { .. }
            | FsQuery::StatFs
            | FsQuery::GetLock { .. }
            | FsQuery::AwaitLock { .. } => Ok(()),
        }
    }

    /// The attribute names `who` may see in a listing: `trusted.*` ones are root's, as
    /// Linux lists them only to CAP_SYS_ADMIN.
    pub fn listable(names: Vec<Vec<u8>>, who: &Credentials) -> Vec<Vec<u8>> {
        if who.is_root() {
            return names;
        }
        names
            .into_iter()
            .filter(|n| !n.starts_with(b"trusted."))
            .collect()
    }

    /// Whether `who` has every bit of `want` (rwx as 4, 2, 1) on the inode `attr` shows.
    fn permits(&self, attr: &Attr, who: &Credentials, want: u16) -> bool {
        if who.is_root() {
            // As CAP_DAC_OVERRIDE: anything but running a file nobody may run.
            return want & EXEC == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
        }
        let access_acl = self
            .get(attr.ino)
            .ok()
            .and_then(|i| i.xattrs.get(acl::ACCESS))
            .and_then(|v| acl::Acl::parse(v).ok());
        if let Some(acl) = access_acl {
            return acl.permits(attr.uid, attr.gid, who, want);
        }
        let bits = if who.uid == attr.uid {
            attr.perm >> 6
        } else if who.in_group(attr.gid) {
            attr.perm >> 3
        } else {
            attr.perm
        };
        bits & want == want
    }

    /// `attr` back if `who` has `want` on it, else EACCES.
    fn check(&self, attr: Attr, who: &Credentials, want: u16) -> Result<Attr, Errno> {
        if self.permits(&attr, who, want) {
            Ok(attr)
        } else {
            Err(Errno::ACCES)
        }
    }

    fn require(&self, ino: InodeId, who: &Credentials, want: u16) -> Result<Attr, Errno> {
        self.check(self.attr(ino)?, who, want)
    }

    /// As [`Self::require`] on a directory (ENOTDIR for anything else, as a path walk).
    fn require_dir(&self, dir: InodeId, who: &Credentials, want: u16) -> Result<Attr, Errno> {
        let attr = self.attr(dir)?;
        if attr.kind != FileKind::Dir {
            return Err(Errno::NOTDIR);
        }
        self.check(attr, who, want)
    }

    fn owner(&self, attr: &Attr, who: &Credentials) -> Result<(), Errno> {
        if who.is_root() || who.uid == attr.uid {
            Ok(())
        } else {
            Err(Errno::PERM)
        }
    }

    fn may_use_data(&self, ino: InodeId, who: &Credentials, want: u16) -> Result<(), Errno> {
        let attr = self.attr(ino)?;
        if who.uid == attr.uid {
            return Ok(());
        }
        self.check(attr, who, want).map(drop)
    }

    /// Taking `name` out of `dir`: write and search on `dir`, and in a sticky directory,
    /// owning it or the entry. Returns the entry.
    fn may_remove(&self, dir: InodeId, name: &[u8], who: &Credentials) -> Result<Attr, Errno> {
        let d = self.require_dir(dir, who, WRITE | EXEC)?;
        let entry = self.lookup(dir, name)?;
        if d.perm & STICKY != 0 && !who.is_root() && who.uid != d.uid && who.uid != entry.uid {
            return Err(Errno::PERM);
        }
        Ok(entry)
    }

    /// The rules of Linux's `setattr_prepare`, `chown_ok` and `chgrp_ok`.
    fn may_setattr(
        &self,
        ino: InodeId,
        set: &SetAttr,
        who: &Credentials,
    ) -> Result<SetAttr, Errno> {
        let attr = self.attr(ino)?;
        let owns = who.is_root() || who.uid == attr.uid;
        let mut set = set.clone();
        if let Some(uid) = set.uid {
            let keeps_own = who.uid == attr.uid && uid == attr.uid;
            if !(who.is_root() || keeps_own) {
                return Err(Errno::PERM);
            }
        }
        if let Some(gid) = set.gid {
            let allowed = who.uid == attr.uid && (gid == attr.gid || who.in_group(gid));
            if !who.is_root() && !allowed {
                return Err(Errno::PERM);
            }
        }
        if let Some(perm) = set.perm {
            let perm = perm & 0o7777;
            // A writer's kernel drops setuid and setgid after a write (`file_remove_privs`).
            let drops_privileges = perm == attr.perm & !(SET_UID | SET_GID);
            let writer_drops = drops_privileges && self.permits(&attr, who, WRITE);
            if !(owns || writer_drops) {
                return Err(Errno::PERM);
            }
            let group = set.gid.unwrap_or(attr.gid);
            let outsider = !who.is_root() && !who.in_group(group);
            set.perm = Some(if outsider { perm & !SET_GID } else { perm });
        }
        if set.size.is_some() {
            self.may_use_data(ino, who, WRITE)?;
        }
        let times = [set.atime, set.mtime];
        if times.iter().any(|t| matches!(t, Some(TimeSet::At(_)))) {
            self.owner(&attr, who)?;
        }
        let touches = times.iter().any(|t| matches!(t, Some(TimeSet::Now))) || set.ctime.is_some();
        if touches && !owns && !self.permits(&attr, who, WRITE) {
            return Err(Errno::ACCES);
        }
        Ok(set)
    }

    /// Extended attributes by namespace, as Linux's `xattr_permission`: `user.` ones follow
    /// the mode; `trusted.` ones are root's; ACLs, `security.` and our own `lattice.` ones
    /// are changed by the owner and read by anyone.
    fn may_xattr(
        &self,
        ino: InodeId,
        name: &[u8],
        who: &Credentials,
        want: u16,
    ) -> Result<(), Errno> {
        let attr = self.attr(ino)?;
        if name.starts_with(b"user.") {
            return self.require(ino, who, want).map(drop);
        }
        if name.starts_with(b"trusted.") && !who.is_root() {
            return Err(Errno::PERM);
        }
        if want == WRITE {
            if name.starts_with(b"security.") && !who.is_root() {
                return Err(Errno::PERM);
            }
            self.owner(&attr, who)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_common::fs::{Caller, Timestamp, XattrMode};
    use lattice_common::mount_user::MountUser;
    use proptest::prelude::*;

    const ROOT_DIR: InodeId = InodeId::ROOT;

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Credentials {
        match MountUser::limited(uid, gid, groups.to_vec()) {
            Ok(MountUser::Limited(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    fn root() -> Credentials {
        user(0, 0, &[])
    }

    /// `/home` (0755 root), `/home/alice` (0700 alice), `/home/alice/secret` (0600 alice),
    /// `/tmp` (1777 root), `/tmp/bobs` (0644 bob), `/shared` (0770 root:staff, group 50).
    struct Tree {
        ns: Namespace,
        home: InodeId,
        alice_home: InodeId,
        secret: InodeId,
        tmp: InodeId,
        bobs: InodeId,
        shared: InodeId,
    }

    const ALICE: u32 = 1000;
    const BOB: u32 = 1001;
    const STAFF: u32 = 50;

    fn tree() -> Tree {
        let now = Timestamp::default();
        let mut ns = Namespace::new(now);
        let as_ = |uid, gid| Caller { uid, gid };
        let home = ns
            .mkdir(ROOT_DIR, b"home", (0o755, 0), as_(0, 0), now)
            .unwrap()
            .ino;
        let alice_home = ns.mkdir(home, b"alice", (0o700, 0), as_(ALICE, ALICE), now);
        let alice_home = alice_home.unwrap().ino;
        let secret = ns.mknod(
            alice_home,
            b"secret",
            FileKind::File,
            (0o600, 0),
            0,
            as_(ALICE, ALICE),
            now,
        );
        let secret = secret.unwrap().ino;
        let tmp = ns
            .mkdir(ROOT_DIR, b"tmp", (0o1777, 0), as_(0, 0), now)
            .unwrap()
            .ino;
        let bobs = ns.mknod(
            tmp,
            b"bobs",
            FileKind::File,
            (0o644, 0),
            0,
            as_(BOB, BOB),
            now,
        );
        let bobs = bobs.unwrap().ino;
        let shared = ns
            .mkdir(ROOT_DIR, b"shared", (0o770, 0), as_(0, STAFF), now)
            .unwrap()
            .ino;
        Tree {
            ns,
            home,
            alice_home,
            secret,
            tmp,
            bobs,
            shared,
        }
    }

    fn set(f: impl FnOnce(&mut SetAttr)) -> SetAttr {
        let mut s = SetAttr::default();
        f(&mut s);
        s
    }

    #[test]
    fn another_users_private_file_is_out_of_reach() {
        let t = tree();
        let bob = user(BOB, BOB, &[]);
        let lookup = FsQuery::Lookup {
            parent: t.alice_home,
            name: b"secret".to_vec(),
        };
        assert_eq!(t.ns.admit_query(&lookup, &bob), Err(Errno::ACCES));
        let read = FsQuery::Slices {
            ino: t.secret,
            first: 0,
            last: 0,
        };
        assert_eq!(t.ns.admit_query(&read, &bob), Err(Errno::ACCES));
        let list = FsQuery::ReadDir {
            ino: t.alice_home,
            cookie: 0,
            limit: 10,
        };
        assert_eq!(t.ns.admit_query(&list, &bob), Err(Errno::ACCES));
        let chmod = FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| s.perm = Some(0o666)),
        };
        assert_eq!(t.ns.admit(chmod.clone(), &bob), Err(Errno::PERM));
        let chown = FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| s.uid = Some(BOB)),
        };
        assert_eq!(t.ns.admit(chown.clone(), &bob), Err(Errno::PERM));
        let write = FsOp::WriteInline {
            ino: t.secret,
            writes: vec![(0, b"x".to_vec())],
        };
        assert_eq!(t.ns.admit(write.clone(), &bob), Err(Errno::ACCES));
        let unlink = FsOp::Unlink {
            parent: t.alice_home,
            name: b"secret".to_vec(),
        };
        assert_eq!(t.ns.admit(unlink.clone(), &bob), Err(Errno::ACCES));
        // Alice may do all of it but give the file away; root may do everything.
        let alice = user(ALICE, ALICE, &[]);
        assert!(t.ns.admit_query(&lookup, &alice).is_ok());
        assert!(t.ns.admit_query(&read, &alice).is_ok());
        assert!(t.ns.admit(chmod.clone(), &alice).is_ok());
        assert_eq!(t.ns.admit(chown.clone(), &alice), Err(Errno::PERM));
        assert!(t.ns.admit(write.clone(), &alice).is_ok());
        for op in [chmod, chown, write, unlink] {
            assert_eq!(t.ns.admit(op.clone(), &root()), Ok(op));
        }
    }

    /// A write with times is refused whole when either is not allowed: a writer who does
    /// not own the file may set the times to now, not to a time of its choosing.
    #[test]
    fn a_write_with_times_needs_what_each_needs() {
        let mut t = tree();
        let (alice, bob) = (user(ALICE, ALICE, &[]), user(BOB, BOB, &[]));
        let secret = t.secret;
        let write = |times: TimeSet| FsOp::WriteInlineSetTimes {
            ino: secret,
            writes: vec![(0, b"x".to_vec())],
            set: set(|s| s.mtime = Some(times)),
        };
        let at = TimeSet::At(Timestamp::default());
        assert_eq!(t.ns.admit(write(TimeSet::Now), &bob), Err(Errno::ACCES));
        assert!(t.ns.admit(write(at), &alice).is_ok());
        t.ns.setattr(secret, &set(|s| s.perm = Some(0o666)), Timestamp::default())
            .unwrap();
        assert!(t.ns.admit(write(TimeSet::Now), &bob).is_ok());
        assert_eq!(t.ns.admit(write(at), &bob), Err(Errno::PERM));
    }

    #[test]
    fn the_owner_writes_a_file_it_made_read_only() {
        let mut t = tree();
        let alice = user(ALICE, ALICE, &[]);
        t.ns.setattr(
            t.secret,
            &set(|s| s.perm = Some(0o400)),
            Timestamp::default(),
        )
        .unwrap();
        let write = FsOp::CommitSlices {
            ino: t.secret,
            chunk: 0,
            slices: vec![],
        };
        assert!(t.ns.admit(write, &alice).is_ok());
        let truncate = FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| s.size = Some(0)),
        };
        assert!(t.ns.admit(truncate, &alice).is_ok());
        let truncate = FsOp::SetAttr {
            ino: t.bobs,
            set: set(|s| s.size = Some(0)),
        };
        assert_eq!(t.ns.admit(truncate, &alice), Err(Errno::ACCES));
    }

    #[test]
    fn the_sticky_bit_keeps_others_from_removing() {
        let t = tree();
        let alice = user(ALICE, ALICE, &[]);
        let unlink = FsOp::Unlink {
            parent: t.tmp,
            name: b"bobs".to_vec(),
        };
        assert_eq!(t.ns.admit(unlink.clone(), &alice), Err(Errno::PERM));
        assert!(t.ns.admit(unlink, &user(BOB, BOB, &[])).is_ok());
        let steal = FsOp::Rename {
            parent: t.tmp,
            name: b"bobs".to_vec(),
            new_parent: t.tmp,
            new_name: b"mine".to_vec(),
            mode: RenameMode::Replace,
        };
        assert_eq!(t.ns.admit(steal, &alice), Err(Errno::PERM));
        let create = FsOp::Mknod {
            parent: t.tmp,
            name: b"a".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: Caller {
                uid: ALICE,
                gid: ALICE,
            },
        };
        assert!(t.ns.admit(create, &alice).is_ok());
    }

    #[test]
    fn groups_come_from_the_certificate() {
        let t = tree();
        let mkdir = |parent| FsOp::Mkdir {
            parent,
            name: b"d".to_vec(),
            perm: 0o755,
            umask: 0,
            caller: Caller {
                uid: ALICE,
                gid: ALICE,
            },
        };
        assert_eq!(
            t.ns.admit(mkdir(t.shared), &user(ALICE, ALICE, &[])),
            Err(Errno::ACCES)
        );
        assert!(t
            .ns
            .admit(mkdir(t.shared), &user(ALICE, ALICE, &[STAFF]))
            .is_ok());
        assert_eq!(
            t.ns.admit(mkdir(t.home), &user(ALICE, ALICE, &[STAFF])),
            Err(Errno::ACCES)
        );
        // chgrp only to one's own groups; chmod outside the group drops setgid.
        let chgrp = |gid| FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| s.gid = Some(gid)),
        };
        assert!(t
            .ns
            .admit(chgrp(STAFF), &user(ALICE, ALICE, &[STAFF]))
            .is_ok());
        assert_eq!(
            t.ns.admit(chgrp(STAFF), &user(ALICE, ALICE, &[])),
            Err(Errno::PERM)
        );
        let chmod = FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| {
                s.perm = Some(0o2755);
                s.gid = Some(STAFF)
            }),
        };
        let Ok(FsOp::SetAttr { set: kept, .. }) = t.ns.admit(chmod, &user(ALICE, ALICE, &[STAFF]))
        else {
            panic!("refused")
        };
        assert_eq!(kept.perm, Some(0o2755));
        let chmod = FsOp::SetAttr {
            ino: t.secret,
            set: set(|s| s.perm = Some(0o2755)),
        };
        let Ok(FsOp::SetAttr { set: kept, .. }) = t.ns.admit(chmod, &user(ALICE, 7, &[])) else {
            panic!("refused")
        };
        assert_eq!(kept.perm, Some(0o755));
    }

    #[test]
    fn an_acl_entry_opens_a_private_file_to_one_user() {
        let mut t = tree();
        let now = Timestamp::default();
        // user::rw- user:bob:r-- group::--- mask::r-- other::---
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, 0u32),
            (2, 4, BOB),
            (4, 0, 0),
            (0x10, 4, 0),
            (0x20, 0, 0),
        ] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&id.to_le_bytes());
        }
        t.ns.setattr(t.alice_home, &set(|s| s.perm = Some(0o711)), now)
            .unwrap();
        t.ns.setxattr(t.secret, acl::ACCESS, &acl, XattrMode::Either, now)
            .unwrap();
        let read = FsQuery::Slices {
            ino: t.secret,
            first: 0,
            last: 0,
        };
        assert!(t.ns.admit_query(&read, &user(BOB, BOB, &[])).is_ok());
        assert_eq!(
            t.ns.admit_query(&read, &user(1002, 1002, &[])),
            Err(Errno::ACCES)
        );
        let write = FsOp::CommitSlices {
            ino: t.secret,
            chunk: 0,
            slices: vec![],
        };
        assert_eq!(t.ns.admit(write, &user(BOB, BOB, &[])), Err(Errno::ACCES));
        // Only the owner changes an ACL; anyone may read it; user.* follows the mode.
        let set_acl = FsOp::SetXattr {
            ino: t.secret,
            name: acl::ACCESS.to_vec(),
            value: acl,
            mode: XattrMode::Either,
        };
        assert_eq!(t.ns.admit(set_acl, &user(BOB, BOB, &[])), Err(Errno::PERM));
        let get = |name: &[u8]| FsQuery::GetXattr {
            ino: t.secret,
            name: name.to_vec(),
        };
        assert!(t
            .ns
            .admit_query(&get(acl::ACCESS), &user(1002, 1002, &[]))
            .is_ok());
        assert!(t
            .ns
            .admit_query(&get(b"user.x"), &user(BOB, BOB, &[]))
            .is_ok());
        assert_eq!(
            t.ns.admit_query(&get(b"user.x"), &user(1002, 1002, &[])),
            Err(Errno::ACCES)
        );
        assert_eq!(
            t.ns.admit_query(&get(b"trusted.x"), &user(ALICE, ALICE, &[])),
            Err(Errno::PERM)
        );
        let names = vec![b"trusted.x".to_vec(), b"user.x".to_vec()];
        let alice = user(ALICE, ALICE, &[]);
        assert_eq!(
            Namespace::listable(names.clone(), &alice),
            vec![b"user.x".to_vec()]
        );
        assert_eq!(Namespace::listable(names.clone(), &root()), names);
    }

    #[test]
    fn devices_and_times_need_privilege() {
        let mut t = tree();
        let alice = user(ALICE, ALICE, &[]);
        let device = FsOp::Mknod {
            parent: t.alice_home,
            name: b"mem".to_vec(),
            kind: FileKind::CharDevice,
            perm: 0o666,
            umask: 0,
            rdev: 0x101,
            caller: Caller {
                uid: ALICE,
                gid: ALICE,
            },
        };
        assert_eq!(t.ns.admit(device.clone(), &alice), Err(Errno::PERM));
        assert!(t.ns.admit(device, &root()).is_ok());
        let at = TimeSet::At(Timestamp { secs: 1, nanos: 0 });
        let backdate = FsOp::SetAttr {
            ino: t.bobs,
            set: set(|s| s.mtime = Some(at)),
        };
        assert_eq!(t.ns.admit(backdate, &alice), Err(Errno::PERM));
        let touch = FsOp::SetAttr {
            ino: t.bobs,
            set: set(|s| s.mtime = Some(TimeSet::Now)),
        };
        assert_eq!(t.ns.admit(touch, &alice), Err(Errno::ACCES));
        // A writer may drop setuid (its kernel does so after a write), nothing more.
        let now = Timestamp::default();
        t.ns.setattr(t.bobs, &set(|s| s.perm = Some(0o4666)), now)
            .unwrap();
        let drop_suid = FsOp::SetAttr {
            ino: t.bobs,
            set: set(|s| s.perm = Some(0o666)),
        };
        assert!(t.ns.admit(drop_suid, &alice).is_ok());
        let open_up = FsOp::SetAttr {
            ino: t.bobs,
            set: set(|s| s.perm = Some(0o777)),
        };
        assert_eq!(t.ns.admit(open_up, &alice), Err(Errno::PERM));
    }

    fn any_op(inos: Vec<InodeId>) -> impl Strategy<Value = FsOp> {
        let ino = prop::sample::select(inos);
        let name = prop::sample::select(vec![
            b"home".to_vec(),
            b"alice".to_vec(),
            b"secret".to_vec(),
            b"bobs".to_vec(),
            b"x".to_vec(),
        ]);
        prop_oneof![
            (ino.clone(), name.clone()).prop_map(|(parent, name)| FsOp::Unlink { parent, name }),
            (
                ino.clone(),
                name.clone(),
                ino.clone(),
                name.clone(),
                any::<bool>()
            )
                .prop_map(|(parent, name, new_parent, new_name, x)| FsOp::Rename {
                    parent,
                    name,
                    new_parent,
                    new_name,
                    mode: if x {
                        RenameMode::Exchange
                    } else {
                        RenameMode::Replace
                    }
                }),
            (
                ino.clone(),
                any::<Option<u16>>(),
                any::<Option<u32>>(),
                any::<Option<u32>>(),
                any::<Option<u64>>()
            )
                .prop_map(|(ino, perm, uid, gid, size)| FsOp::SetAttr {
                    ino,
                    set: SetAttr {
                        perm,
                        uid,
                        gid,
                        size,
                        ..SetAttr::default()
                    }
                }),
            (ino.clone(), name.clone()).prop_map(|(ino, name)| FsOp::RemoveXattr { ino, name }),
            (ino.clone(), ino.clone(), name).prop_map(|(ino, parent, name)| FsOp::Link {
                ino,
                parent,
                name
            }),
            ino.prop_map(|ino| FsOp::PunchHole {
                ino,
                offset: 0,
                len: 1
            }),
        ]
    }

    proptest! {
        /// Root is refused nothing; anyone else is refused or gets the op back unchanged
        /// but for a dropped setgid bit; and no input panics (this runs on every replica).
        #[test]
        fn checks_never_panic_and_root_passes(
            op in any_op(vec![InodeId(0), ROOT_DIR, InodeId(2), InodeId(3), InodeId(4), InodeId(5), InodeId(6), InodeId(99)]),
            uid in prop::sample::select(vec![0u32, ALICE, BOB, 7]),
            gid in prop::sample::select(vec![0u32, ALICE, STAFF]),
        ) {
            let t = tree();
            let who = user(uid, gid, &[]);
            match t.ns.admit(op.clone(), &who) {
                Ok(FsOp::SetAttr { set, .. }) => {
                    let FsOp::SetAttr { set: asked, .. } = &op else { unreachable!() };
                    prop_assert_eq!(set.perm.map(|p| p | SET_GID), asked.perm.map(|p| (p & 0o7777) | SET_GID));
                    prop_assert_eq!((set.uid, set.gid, set.size), (asked.uid, asked.gid, asked.size));
                }
                Ok(got) => prop_assert_eq!(got, op),
                Err(e) => prop_assert!(uid != 0 || e == Errno::NOENT || e == Errno::NOTDIR, "root refused: {:?}", e),
            }
        }
    }
}
