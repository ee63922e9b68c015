//! Redundancy policies in the replicated state: the `lattice.policy` virtual extended
//! attribute (read, set, removed like any xattr, but stored as the inode's policy), the
//! policy each file's data should be stored under, and re-encoding a slice to it.

use super::StateMachine;
use lattice_common::chunk_map::SliceRef;
use lattice_common::fs::{Errno, FileKind, Timestamp};
use lattice_common::ids::InodeId;
use lattice_common::policy::{Policy, LOCKS_XATTR, POLICY_XATTR};
use lattice_common::wire::meta::{ChunkserverState, FsReply};

impl StateMachine {
    /// The policy `ino` shows in `lattice.policy`: its own, else (a directory) its nearest
    /// ancestor's, else the cluster default; NODATA before any default is recorded.
    pub fn effective_policy(&self, ino: InodeId) -> Result<Policy, Errno> {
        let inode = self.ns.attr(ino)?;
        let nearest = match inode.kind {
            FileKind::Dir => self.ns.nearest_policy(ino),
            _ => inode.policy,
        };
        nearest.or(self.default_policy()).ok_or(Errno::NODATA)
    }

    /// What a file's data should be stored under (`None`: no default recorded yet, or not
    /// a file).
    pub fn target_policy(&self, ino: InodeId) -> Option<Policy> {
        let inode = self.ns.attr(ino).ok()?;
        if inode.kind != FileKind::File {
            return None;
        }
        inode.policy.or(self.default_policy())
    }

    /// Reads a virtual (`lattice.`) attribute stored in the replicated state.
    pub(super) fn get_virtual_xattr(&self, ino: InodeId, name: &[u8]) -> Result<Vec<u8>, Errno> {
        if name == POLICY_XATTR {
            return Ok(self.effective_policy(ino)?.to_string().into_bytes());
        }
        if name == LOCKS_XATTR {
            self.ns.attr(ino)?;
            return Ok(self.locks.describe(ino).into_bytes());
        }
        self.ns.attr(ino)?;
        Err(Errno::NODATA)
    }

    /// Sets `lattice.policy`: EINVAL for a value that is no policy, ENOSPC for one the
    /// cluster has fewer servers in service than shards for (a whole slice could never be
    /// placed, nor a file re-encoded to it); EPERM for the other `lattice.` names.
    pub(super) fn set_virtual_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        now: Timestamp,
    ) -> Result<(), Errno> {
        if name != POLICY_XATTR {
            self.ns.attr(ino)?;
            return Err(Errno::PERM);
        }
        let policy = Policy::from_xattr(value).map_err(|_| Errno::INVAL)?;
        if self.servers_in_service() < policy.total_shards() {
            return Err(Errno::NOSPC);
        }
        self.ns.set_policy(ino, Some(policy), now).map(|_| ())
    }

    /// Removes `lattice.policy` (the file or directory follows its directories and the
    /// cluster default again); the root's is the default and stays.
    pub(super) fn remove_virtual_xattr(
        &mut self,
        ino: InodeId,
        name: &[u8],
        now: Timestamp,
    ) -> Result<(), Errno> {
        let inode = self.ns.attr(ino)?;
        if name != POLICY_XATTR || ino == InodeId::ROOT {
            return Err(Errno::PERM);
        }
        if inode.policy.is_none() {
            return Err(Errno::NODATA);
        }
        self.ns.set_policy(ino, None, now).map(|_| ())
    }

    /// Chunkservers that may be given data now or once they are back.
    fn servers_in_service(&self) -> usize {
        self.cluster
            .iter()
            .filter(|(_, s)| {
                matches!(
                    s.state,
                    ChunkserverState::Up | ChunkserverState::Suspect | ChunkserverState::Down
                )
            })
            .count()
    }

    /// Re-encoding: the stored slice `new` (same bytes, another policy) takes the place of
    /// `old`, if `old` is still in chunk `chunk` showing exactly what it showed. Newer
    /// slices stay on top, so a write racing the re-encode is never undone. `new` holds
    /// either what `old` shows (from its start), or all of `old`'s slice (a slice several
    /// references show: every one of them then moves to `new`, in one go).
    pub(super) fn reencode(
        &mut self,
        ino: InodeId,
        chunk: u64,
        old: &SliceRef,
        new: SliceRef,
        now: Timestamp,
    ) -> Result<FsReply, Errno> {
        let view = |s: &SliceRef| (s.chunk_offset, s.skip, s.len);
        let whole = view(&new) == view(old) && new.layout.data_len == old.layout.data_len;
        if !whole {
            if (new.chunk_offset, new.len, new.skip) != (old.chunk_offset, old.len, 0) {
                return Err(Errno::INVAL);
            }
            return self.replace(ino, chunk, std::slice::from_ref(old), vec![new], now);
        }
        self.check_stored(ino, &new)?;
        let id = new.slice;
        let released = self.ns.swap_slice(ino, chunk, old, &new)?;
        self.pending.remove(&id);
        self.discard(released, now);
        Ok(FsReply::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Command, SessionRequest};
    use lattice_common::fs::{Caller, XattrMode};
    use lattice_common::ids::ClientId;
    use lattice_common::wire::meta::{FsOp, FsQuery};
    use std::collections::BTreeMap;

    struct Cluster {
        sm: StateMachine,
        index: u64,
    }

    impl Cluster {
        fn with_servers(n: u32) -> Cluster {
            let mut c = Cluster {
                sm: StateMachine::new(BTreeMap::new()),
                index: 0,
            };
            for i in 0..n {
                let registration = crate::state_machine::test_registration(i);
                let name = format!("cs-{i}");
                let now = Timestamp::default();
                c.apply(Command::Register {
                    name,
                    registration,
                    now,
                });
            }
            let policy = "rs:4+2".parse().unwrap();
            let now = Timestamp::default();
            c.apply(Command::DefaultPolicy {
                policy,
                only_if_unset: true,
                now,
            });
            c
        }

        fn apply(&mut self, cmd: Command) -> crate::state_machine::Outcome {
            self.index += 1;
            self.sm.apply(self.index, cmd)
        }

        fn fs(&mut self, op: FsOp) -> Result<FsReply, Errno> {
            let seq = self.index + 1;
            let cmd = Command::Fs {
                request: SessionRequest {
                    client: ClientId(1),
                    certificate: "client".into(),
                    seq,
                    acked_below: seq,
                },
                now: Timestamp::default(),
                op,
                who: None,
            };
            match self.apply(cmd) {
                crate::state_machine::Outcome::Fs(r) => r,
                other => panic!("{other:?}"),
            }
        }

        fn make(&mut self, parent: InodeId, name: &str, dir: bool) -> InodeId {
            let (name, caller) = (name.as_bytes().to_vec(), Caller::ROOT);
            let op = match dir {
                true => FsOp::Mkdir {
                    parent,
                    name,
                    perm: 0o755,
                    umask: 0,
                    caller,
                },
                false => FsOp::Mknod {
                    parent,
                    name,
                    kind: FileKind::File,
                    perm: 0o644,
                    umask: 0,
                    rdev: 0,
                    caller,
                },
            };
            match self.fs(op) {
                Ok(FsReply::Made { attr: a, .. }) => a.ino,
                other => panic!("{other:?}"),
            }
        }

        fn set(&mut self, ino: InodeId, value: &str) -> Result<FsReply, Errno> {
            self.fs(FsOp::SetXattr {
                ino,
                name: POLICY_XATTR.to_vec(),
                value: value.as_bytes().to_vec(),
                mode: XattrMode::Either,
            })
        }

        fn get(&self, ino: InodeId, name: &[u8]) -> Result<String, Errno> {
            let q = FsQuery::GetXattr {
                ino,
                name: name.to_vec(),
            };
            match self.sm.query(&q, None)? {
                FsReply::Xattr(v) => Ok(String::from_utf8(v).unwrap()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn directories_hand_their_policy_to_new_files_beneath() {
        let mut c = Cluster::with_servers(9);
        let top = c.make(InodeId::ROOT, "top", true);
        let old_sub = c.make(top, "sub", true);
        let old_file = c.make(old_sub, "old", false);
        assert_eq!(c.get(old_sub, POLICY_XATTR).unwrap(), "rs:4+2");

        // Set on a directory (a trailing newline as `echo` would add is fine): directories
        // beneath that existed already follow it, and files created from now on keep it.
        c.set(top, "grid:2x2+1\n").unwrap();
        assert_eq!(c.get(old_sub, POLICY_XATTR).unwrap(), "grid:2x2+1");
        let new_file = c.make(old_sub, "new", false);
        assert_eq!(c.get(new_file, POLICY_XATTR).unwrap(), "grid:2x2+1");
        assert_eq!(c.get(old_file, POLICY_XATTR).unwrap(), "rs:4+2");
        assert_eq!(
            c.sm.target_policy(old_file),
            Some("rs:4+2".parse().unwrap())
        );

        // Files created before follow the cluster default, which the root's value sets.
        c.set(InodeId::ROOT, "mirror:3").unwrap();
        assert_eq!(c.get(old_file, POLICY_XATTR).unwrap(), "mirror:3");
        assert_eq!(c.get(new_file, POLICY_XATTR).unwrap(), "grid:2x2+1");

        // Removing a directory's own policy hands it back to its ancestors.
        let remove = |ino| FsOp::RemoveXattr {
            ino,
            name: POLICY_XATTR.to_vec(),
        };
        assert!(c.fs(remove(top)).is_ok());
        assert_eq!(c.get(old_sub, POLICY_XATTR).unwrap(), "mirror:3");
        assert_eq!(c.fs(remove(top)), Err(Errno::NODATA));
        assert_eq!(c.fs(remove(InodeId::ROOT)), Err(Errno::PERM));

        // Never stored, never listed.
        let listed = c.sm.query(&FsQuery::ListXattr { ino: top }, None).unwrap();
        assert_eq!(listed, FsReply::XattrNames(vec![]));
    }

    #[test]
    fn bad_or_unplaceable_policies_are_refused() {
        let mut c = Cluster::with_servers(9);
        let dir = c.make(InodeId::ROOT, "d", true);
        assert_eq!(c.set(dir, "grid:4x4"), Err(Errno::INVAL));
        assert_eq!(c.set(dir, "rs:0+2"), Err(Errno::INVAL));
        assert_eq!(c.set(dir, ""), Err(Errno::INVAL));
        // 25 shards: nine servers cannot take it; ten not rs:8+3's eleven either.
        assert_eq!(c.set(dir, "grid:4x4+1"), Err(Errno::NOSPC));
        assert_eq!(c.set(dir, "rs:8+3"), Err(Errno::NOSPC));
        // 9 shards on 9 servers: fits.
        assert!(c.set(dir, "grid:2x2+1").is_ok());
        assert_eq!(c.get(dir, POLICY_XATTR).unwrap(), "grid:2x2+1");
        // The layout is read-only; other names under the prefix are not ours to store.
        let layout = FsOp::SetXattr {
            ino: dir,
            name: LAYOUT.to_vec(),
            value: b"x".to_vec(),
            mode: XattrMode::Either,
        };
        assert_eq!(c.fs(layout), Err(Errno::PERM));
        assert_eq!(c.get(dir, b"lattice.other"), Err(Errno::NODATA));
    }

    const LAYOUT: &[u8] = lattice_common::policy::LAYOUT_XATTR;
}
