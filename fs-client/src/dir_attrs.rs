//! Directory attributes learnt from this mount's own changes. The kernel drops a
//! directory's cached attributes whenever an entry is made in it, and asks for them again on
//! the next path walk through it (mounts use `default_permissions`, so the kernel checks
//! search permission itself): one more metaserver round per file made (`cp -a`, `tar x`,
//! `mkdir -p`), spent learning what the change's own answer can say. The metaservers answer
//! a new entry with its directory's attributes after the change ([`FsReply::Made`]); those
//! answer the kernel's next ask within the attribute timeout, as any fetched attributes may.
//!
//! Answers may come back in another order than their changes were applied, so a
//! directory's attributes are kept only from a change that no other change of this mount's
//! overlapped: none was out when it was sent, and none started before its answer came.
//! Whatever else changes a directory here forgets them, or (an unlink answered here) is
//! shown over them until applied, then forgets them.
//!
//! [`FsReply::Made`]: lattice_common::wire::meta::FsReply::Made

use lattice_common::fs::Attr;
use lattice_common::ids::InodeId;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Directories kept at most (beyond it, all are forgotten).
const MAX_KEPT: usize = 4096;

#[derive(Default)]
pub struct DirAttrs {
    kept: HashMap<InodeId, (Attr, Instant)>,
    /// Changes started so far.
    started: u64,
    /// Changes started and not answered yet.
    out: u32,
}

/// One change of a directory's entries, from when it is sent until its answer is in.
#[must_use]
pub struct Change {
    /// No other change was out when this one was sent.
    alone: bool,
    number: u64,
}

impl DirAttrs {
    /// A change is sent; hand what this returns to [`DirAttrs::end`] once it is answered
    /// (or given up on).
    pub fn start(&mut self) -> Change {
        let alone = self.out == 0;
        self.out += 1;
        self.started += 1;
        Change {
            alone,
            number: self.started,
        }
    }

    /// A change is answered, with its directory's attributes after it if the answer had
    /// them; they are kept if nothing overlapped the change.
    pub fn end(&mut self, change: Change, dir: Option<Attr>, now: Instant) {
        debug_assert!(self.out > 0);
        self.out = self.out.saturating_sub(1);
        let Some(dir) = dir else {
            return;
        };
        if !change.alone || change.number != self.started {
            self.kept.remove(&dir.ino);
            return;
        }
        if self.kept.len() >= MAX_KEPT {
            self.kept.clear();
        }
        self.kept.insert(dir.ino, (dir, now));
    }

    /// A directory is changed another way (an unlink answered here): whatever is out now
    /// overlaps it.
    pub fn touched(&mut self) {
        self.started += 1;
    }

    pub fn forget(&mut self, ino: InodeId) {
        self.kept.remove(&ino);
    }

    /// A change whose effect on directories is not known here (a rename moves a directory
    /// and changes its times).
    pub fn forget_all(&mut self) {
        self.kept.clear();
    }

    /// `ino`'s attributes and when they were answered, if kept from a change answered
    /// within `ttl` of `now`.
    pub fn get(&self, ino: InodeId, ttl: Duration, now: Instant) -> Option<(Attr, Instant)> {
        let (a, at) = self.kept.get(&ino)?;
        (now.saturating_duration_since(*at) < ttl).then(|| (a.clone(), *at))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lattice_common::fs::{FileKind, Timestamp};

    const TTL: Duration = Duration::from_secs(1);

    /// A directory's attributes, as tests need them.
    pub(crate) fn dir(ino: u64, nlink: u32) -> Attr {
        Attr {
            ino: InodeId(ino),
            kind: FileKind::Dir,
            perm: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            nlink,
            atime: Timestamp::default(),
            mtime: Timestamp::default(),
            ctime: Timestamp::default(),
            rdev: 0,
            policy: None,
            known_xattrs: Default::default(),
        }
    }

    #[test]
    fn a_change_alone_keeps_its_directory_until_the_timeout() {
        let mut d = DirAttrs::default();
        let now = Instant::now();
        let c = d.start();
        d.end(c, Some(dir(5, 3)), now);
        assert_eq!(d.get(InodeId(5), TTL, now).map(|(a, _)| a.nlink), Some(3));
        assert_eq!(d.get(InodeId(5), TTL, now + TTL), None);
        assert_eq!(d.get(InodeId(6), TTL, now), None);
    }

    #[test]
    fn overlapping_changes_keep_nothing() {
        let now = Instant::now();
        // Answered in the order sent, and in the other.
        for first_back in [true, false] {
            let mut d = DirAttrs::default();
            let a = d.start();
            let b = d.start();
            let (x, y) = if first_back { (a, b) } else { (b, a) };
            d.end(x, Some(dir(5, 3)), now);
            d.end(y, Some(dir(5, 4)), now);
            assert_eq!(d.get(InodeId(5), TTL, now), None);
            // The next change alone keeps again.
            let c = d.start();
            d.end(c, Some(dir(5, 5)), now);
            assert_eq!(d.get(InodeId(5), TTL, now).map(|(a, _)| a.nlink), Some(5));
        }
    }

    #[test]
    fn a_change_made_another_way_meanwhile_keeps_nothing() {
        let now = Instant::now();
        let mut d = DirAttrs::default();
        let c = d.start();
        d.end(c, Some(dir(5, 3)), now);
        let c = d.start();
        d.touched();
        d.end(c, Some(dir(5, 4)), now);
        assert_eq!(d.get(InodeId(5), TTL, now), None);
    }

    #[test]
    fn forgetting_drops_what_was_kept() {
        let now = Instant::now();
        let mut d = DirAttrs::default();
        for ino in [5, 6] {
            let c = d.start();
            d.end(c, Some(dir(ino, 2)), now);
        }
        d.forget(InodeId(5));
        assert_eq!(d.get(InodeId(5), TTL, now), None);
        assert!(d.get(InodeId(6), TTL, now).is_some());
        d.forget_all();
        assert_eq!(d.get(InodeId(6), TTL, now), None);
    }
}
