use super::*;
use lattice_common::chunk_map::{self, SliceRef};
use lattice_common::ids::{ChunkserverId, SliceId};
use lattice_common::layout::SliceLayout;
use proptest::prelude::*;

const ROOT: InodeId = InodeId::ROOT;
const ME: Caller = Caller {
    uid: 1000,
    gid: 1000,
};

fn t(secs: i64) -> Timestamp {
    Timestamp { secs, nanos: 0 }
}

impl Namespace {
    /// Structural invariants that every operation must keep.
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut links: BTreeMap<InodeId, u32> = BTreeMap::new();
        for (&ino, inode) in &self.inodes {
            if let Content::Dir(d) = &inode.content {
                let subdirs = d
                    .entries
                    .values()
                    .filter(|(c, _)| self.inodes.get(c).is_some_and(|i| i.kind == FileKind::Dir))
                    .count() as u32;
                if inode.nlink != 2 + subdirs {
                    return Err(format!(
                        "{ino}: nlink {} but {subdirs} subdirectories",
                        inode.nlink
                    ));
                }
                if d.entries.len() != d.by_cookie.len() {
                    return Err(format!("{ino}: cookie index out of step"));
                }
                for (name, (child, cookie)) in &d.entries {
                    if d.by_cookie.get(cookie) != Some(name) {
                        return Err(format!("{ino}: entry {name:?} has a stale cookie"));
                    }
                    let c = self
                        .inodes
                        .get(child)
                        .ok_or(format!("{ino}: entry {name:?} dangles"))?;
                    if let Content::Dir(cd) = &c.content {
                        if cd.parent != ino {
                            return Err(format!("{child}: parent is {} not {ino}", cd.parent));
                        }
                    } else {
                        *links.entry(*child).or_default() += 1;
                    }
                }
            }
        }
        for (&ino, inode) in &self.inodes {
            if inode.kind != FileKind::Dir {
                let n = links.get(&ino).copied().unwrap_or(0);
                if n != inode.nlink {
                    return Err(format!("{ino}: nlink {} but {n} names", inode.nlink));
                }
                if n == 0 && !self.orphans.contains_key(&ino) {
                    return Err(format!("{ino}: no name and not an orphan"));
                }
            }
            if let Content::File(chunks) = &inode.content {
                let stored: u64 = chunks.values().map(|s| chunk_map::data_bytes(s)).sum();
                if stored != inode.stored {
                    return Err(format!(
                        "{ino}: stored {} but slices cover {stored}",
                        inode.stored
                    ));
                }
            }
            if let Content::Inline(d) = &inode.content {
                if d.bytes.len() as u64 != inode.stored || inode.stored > inode.size {
                    return Err(format!("{ino}: {} inline bytes out of step", d.bytes.len()));
                }
            }
        }
        let inline = inline_bytes_of(&self.inodes);
        if inline != self.inline_bytes {
            return Err(format!(
                "{inline} inline bytes counted as {}",
                self.inline_bytes
            ));
        }
        Ok(())
    }
}

fn names(ns: &Namespace, dir: InodeId) -> Vec<String> {
    ns.readdir(dir, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect()
}

fn file(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
    ns.mknod(
        parent,
        name.as_bytes(),
        FileKind::File,
        (0o644, 0),
        0,
        ME,
        t(1),
    )
    .unwrap()
    .ino
}

fn dir(ns: &mut Namespace, parent: InodeId, name: &str) -> InodeId {
    ns.mkdir(parent, name.as_bytes(), (0o755, 0), ME, t(1))
        .unwrap()
        .ino
}

#[test]
fn create_lookup_and_errors() {
    let mut ns = Namespace::new(t(0));
    let a = file(&mut ns, ROOT, "a");
    assert_eq!(ns.lookup(ROOT, b"a").unwrap().ino, a);
    assert_eq!(
        ns.mknod(ROOT, b"a", FileKind::File, (0o644, 0), 0, ME, t(2)),
        Err(Errno::EXIST)
    );
    assert_eq!(ns.lookup(ROOT, b"nope"), Err(Errno::NOENT));
    assert_eq!(ns.lookup(a, b"x"), Err(Errno::NOTDIR));
    let long = vec![b'x'; 256];
    assert_eq!(
        ns.mknod(ROOT, &long, FileKind::File, (0o644, 0), 0, ME, t(2)),
        Err(Errno::NAMETOOLONG)
    );
    assert_eq!(ns.lookup(ROOT, &long), Err(Errno::NAMETOOLONG));
    assert!(ns
        .mknod(
            ROOT,
            &vec![b'x'; 255],
            FileKind::File,
            (0o644, 0),
            0,
            ME,
            t(2)
        )
        .is_ok());
    assert_eq!(
        ns.mknod(ROOT, b"a/b", FileKind::File, (0o644, 0), 0, ME, t(2)),
        Err(Errno::INVAL)
    );
    assert_eq!(ns.attr(ROOT).unwrap().mtime, t(2));
    ns.check_invariants().unwrap();
}

#[test]
fn readdir_cookies_are_stable_across_changes() {
    let mut ns = Namespace::new(t(0));
    for n in ["a", "b", "c", "d"] {
        file(&mut ns, ROOT, n);
    }
    let first = ns.readdir(ROOT, 0, 2).unwrap();
    assert_eq!(first.len(), 2);
    ns.unlink(ROOT, b"c", t(2)).unwrap();
    file(&mut ns, ROOT, "0");
    let rest = ns.readdir(ROOT, first[1].cookie, 100).unwrap();
    let rest: Vec<&[u8]> = rest.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(rest, vec![&b"d"[..], b"0"]);
}

#[test]
fn rename_rules() {
    let mut ns = Namespace::new(t(0));
    let d1 = dir(&mut ns, ROOT, "d1");
    let d2 = dir(&mut ns, ROOT, "d2");
    let sub = dir(&mut ns, d1, "sub");
    let f = file(&mut ns, d1, "f");
    let g = file(&mut ns, d2, "g");
    // Into its own subtree.
    assert_eq!(
        ns.rename(ROOT, b"d1", sub, b"x", RenameMode::Replace, t(2)),
        Err(Errno::INVAL)
    );
    // File over directory, directory over file, directory over non-empty directory.
    assert_eq!(
        ns.rename(d1, b"f", ROOT, b"d2", RenameMode::Replace, t(2)),
        Err(Errno::ISDIR)
    );
    assert_eq!(
        ns.rename(ROOT, b"d2", d1, b"f", RenameMode::Replace, t(2)),
        Err(Errno::NOTDIR)
    );
    assert_eq!(
        ns.rename(d1, b"sub", ROOT, b"d2", RenameMode::Replace, t(2)),
        Err(Errno::NOTEMPTY)
    );
    assert_eq!(
        ns.rename(d1, b"f", d2, b"g", RenameMode::NoReplace, t(2)),
        Err(Errno::EXIST)
    );
    // Over an existing file: the old one becomes an orphan.
    ns.rename(d1, b"f", d2, b"g", RenameMode::Replace, t(3))
        .unwrap();
    assert_eq!(ns.lookup(d2, b"g").unwrap().ino, f);
    assert!(ns.orphans().contains_key(&g));
    assert_eq!(ns.attr(f).unwrap().ctime, t(3));
    // A directory over an empty one, across parents.
    let empty = dir(&mut ns, d2, "empty");
    ns.rename(d1, b"sub", d2, b"empty", RenameMode::Replace, t(4))
        .unwrap();
    assert_eq!(ns.lookup(d2, b"empty").unwrap().ino, sub);
    assert_eq!(ns.attr(empty), Err(Errno::NOENT));
    assert_eq!(ns.lookup(sub, b"..").unwrap().ino, d2);
    ns.check_invariants().unwrap();
    // Exchange a file and a directory in different parents.
    let h = file(&mut ns, d1, "h");
    ns.rename(d1, b"h", d2, b"empty", RenameMode::Exchange, t(5))
        .unwrap();
    assert_eq!(ns.lookup(d1, b"h").unwrap().ino, sub);
    assert_eq!(ns.lookup(d2, b"empty").unwrap().ino, h);
    assert_eq!(ns.lookup(sub, b"..").unwrap().ino, d1);
    assert_eq!(
        ns.rename(d1, b"h", d2, b"nope", RenameMode::Exchange, t(5)),
        Err(Errno::NOENT)
    );
    ns.check_invariants().unwrap();
}

#[test]
fn rmdir_unlink_and_links() {
    let mut ns = Namespace::new(t(0));
    let d = dir(&mut ns, ROOT, "d");
    let f = file(&mut ns, d, "f");
    assert_eq!(ns.rmdir(ROOT, b"d", t(1)), Err(Errno::NOTEMPTY));
    assert_eq!(ns.rmdir(d, b"f", t(1)), Err(Errno::NOTDIR));
    assert_eq!(ns.unlink(ROOT, b"d", t(1)), Err(Errno::ISDIR));
    assert_eq!(ns.link(d, ROOT, b"dl", t(1)), Err(Errno::PERM));
    ns.link(f, ROOT, b"hard", t(2)).unwrap();
    assert_eq!(ns.attr(f).unwrap().nlink, 2);
    ns.unlink(d, b"f", t(3)).unwrap();
    assert_eq!(ns.attr(f).unwrap().nlink, 1);
    ns.rmdir(ROOT, b"d", t(4)).unwrap();
    assert_eq!(ns.attr(ROOT).unwrap().nlink, 2);
    ns.unlink(ROOT, b"hard", t(5)).unwrap();
    assert!(ns.orphans().contains_key(&f));
    assert_eq!(ns.link(f, ROOT, b"back", t(6)), Err(Errno::NOENT));
    assert_eq!(ns.reap(f).unwrap(), vec![]);
    assert_eq!(ns.attr(f), Err(Errno::NOENT));
    ns.check_invariants().unwrap();
    assert_eq!(names(&ns, ROOT), Vec::<String>::new());
}

#[test]
fn an_unlink_answered_by_a_mount_lands_at_its_time_if_the_name_still_leads_to_its_file() {
    let mut ns = Namespace::new(t(0));
    let d = dir(&mut ns, ROOT, "d");
    let (a, b, c) = (
        file(&mut ns, d, "a"),
        file(&mut ns, d, "b"),
        file(&mut ns, d, "c"),
    );
    let times = |ns: &Namespace, ino| {
        let a = ns.attr(ino).unwrap();
        (a.mtime.secs, a.ctime.secs)
    };
    // Answered at 5, applied at 9: the times are 5.
    ns.link(a, ROOT, b"hard", t(2)).unwrap();
    ns.unlink_if((d, b"a", a), false, t(5), t(9)).unwrap();
    assert_eq!((times(&ns, d), ns.attr(a).unwrap().ctime.secs), ((5, 5), 5));
    // Never before the directory's ctime, never over a second past the clock.
    ns.unlink_if((d, b"b", b), false, t(3), t(9)).unwrap();
    assert_eq!(times(&ns, d), (5, 5));
    ns.unlink_if((d, b"c", c), false, t(1000), t(20)).unwrap();
    assert_eq!(times(&ns, d), (21, 21));
    // A name that leads elsewhere now stays; one gone is ENOENT.
    let new = file(&mut ns, d, "a");
    assert_eq!(
        ns.unlink_if((d, b"a", a), false, t(30), t(30)),
        Err(Errno::STALE)
    );
    assert_eq!(ns.lookup(d, b"a").unwrap().ino, new);
    assert_eq!(
        ns.unlink_if((d, b"b", b), false, t(30), t(30)),
        Err(Errno::NOENT)
    );
    // An rmdir: only of an empty directory.
    let sub = dir(&mut ns, d, "sub");
    file(&mut ns, sub, "x");
    assert_eq!(
        ns.unlink_if((d, b"sub", sub), true, t(40), t(40)),
        Err(Errno::NOTEMPTY)
    );
    ns.unlink(sub, b"x", t(41)).unwrap();
    assert_eq!(ns.attr(d).unwrap().nlink, 3);
    ns.unlink_if((d, b"sub", sub), true, t(42), t(42)).unwrap();
    assert_eq!(ns.attr(d).unwrap().nlink, 2);
    ns.check_invariants().unwrap();
}

#[test]
fn setgid_directories_hand_down_their_group() {
    let mut ns = Namespace::new(t(0));
    let d = dir(&mut ns, ROOT, "d");
    ns.setattr(
        d,
        &SetAttr {
            perm: Some(0o2775),
            gid: Some(50),
            ..Default::default()
        },
        t(1),
    )
    .unwrap();
    let sub = dir(&mut ns, d, "sub");
    let a = ns.attr(sub).unwrap();
    assert_eq!((a.gid, a.perm & 0o2000), (50, 0o2000));
    let f = ns
        .mknod(d, b"f", FileKind::File, (0o2755, 0), 0, ME, t(2))
        .unwrap();
    assert_eq!((f.gid, f.perm & 0o2000), (50, 0));
}

#[test]
fn umask_applies_unless_a_default_acl_is_inherited() {
    let mut ns = Namespace::new(t(0));
    let f = ns
        .mknod(ROOT, b"f", FileKind::File, (0o666, 0o022), 0, ME, t(1))
        .unwrap();
    assert_eq!(f.perm, 0o644);
    let d = dir(&mut ns, ROOT, "d");
    // u::rwx, u:1000:rwx, g::r-x, m::rwx, o::---
    let default = [
        2u32.to_le_bytes().to_vec(),
        vec![1, 0, 7, 0, 0, 0, 0, 0],
        vec![2, 0, 7, 0, 0xe8, 3, 0, 0],
        vec![4, 0, 5, 0, 0, 0, 0, 0],
        vec![0x10, 0, 7, 0, 0, 0, 0, 0],
        vec![0x20, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(
        ns.setxattr(f.ino, acl::DEFAULT, &default, XattrMode::Either, t(2)),
        Err(Errno::ACCES)
    );
    ns.setxattr(d, acl::DEFAULT, &default, XattrMode::Either, t(2))
        .unwrap();
    let g = ns
        .mknod(d, b"g", FileKind::File, (0o666, 0o077), 0, ME, t(3))
        .unwrap();
    assert_eq!(g.perm, 0o660, "the default ACL, not the umask, decides");
    assert!(ns.getxattr(g.ino, acl::ACCESS).is_ok());
    let sub = ns.mkdir(d, b"sub", (0o777, 0o077), ME, t(3)).unwrap();
    assert_eq!(ns.getxattr(sub.ino, acl::DEFAULT).unwrap(), default);
    // chmod rewrites the ACL; an ACL equal to a mode is kept as the mode alone.
    let (a, _) = ns
        .setattr(
            g.ino,
            &SetAttr {
                perm: Some(0o600),
                ..Default::default()
            },
            t(4),
        )
        .unwrap();
    assert_eq!(a.perm, 0o600);
    let plain = [
        2u32.to_le_bytes().to_vec(),
        vec![1, 0, 6, 0, 0, 0, 0, 0],
        vec![4, 0, 4, 0, 0, 0, 0, 0],
        vec![0x20, 0, 4, 0, 0, 0, 0, 0],
    ]
    .concat();
    ns.setxattr(f.ino, acl::ACCESS, &plain, XattrMode::Either, t(5))
        .unwrap();
    assert_eq!(ns.attr(f.ino).unwrap().perm, 0o644);
    assert_eq!(ns.getxattr(f.ino, acl::ACCESS), Err(Errno::NODATA));
    assert_eq!(
        ns.setxattr(f.ino, acl::ACCESS, b"junk", XattrMode::Either, t(5)),
        Err(Errno::INVAL)
    );
}

#[test]
fn xattrs_follow_create_and_replace_flags_and_limits() {
    let mut ns = Namespace::new(t(0));
    let f = file(&mut ns, ROOT, "f");
    assert_eq!(
        ns.setxattr(f, b"user.a", b"1", XattrMode::Replace, t(1)),
        Err(Errno::NODATA)
    );
    ns.setxattr(f, b"user.a", b"1", XattrMode::Create, t(1))
        .unwrap();
    assert_eq!(
        ns.setxattr(f, b"user.a", b"2", XattrMode::Create, t(1)),
        Err(Errno::EXIST)
    );
    ns.setxattr(f, b"user.a", b"2", XattrMode::Replace, t(2))
        .unwrap();
    assert_eq!(ns.getxattr(f, b"user.a").unwrap(), b"2");
    assert_eq!(ns.listxattr(f).unwrap(), vec![b"user.a".to_vec()]);
    assert_eq!(
        ns.setxattr(f, &[b'n'; 256], b"", XattrMode::Either, t(2)),
        Err(Errno::RANGE)
    );
    assert_eq!(
        ns.setxattr(
            f,
            b"user.big",
            &vec![0; MAX_XATTR_VALUE_LEN + 1],
            XattrMode::Either,
            t(2)
        ),
        Err(Errno::E2BIG)
    );
    ns.removexattr(f, b"user.a", t(3)).unwrap();
    assert_eq!(ns.removexattr(f, b"user.a", t(3)), Err(Errno::NODATA));
}

fn slice_ref(id: u64, at: u64, len: u64) -> SliceRef {
    SliceRef {
        slice: SliceId(id),
        layout: SliceLayout::new("mirror:1".parse().unwrap(), len, 65536).unwrap(),
        placement: vec![Some(ChunkserverId(1))],
        chunk_offset: at,
        skip: 0,
        len,
    }
}

#[test]
fn slice_after_visits_every_slice_once_in_list_order() {
    let mut ns = Namespace::new(t(0));
    let (a, _empty, b) = (
        file(&mut ns, ROOT, "a"),
        file(&mut ns, ROOT, "empty"),
        file(&mut ns, ROOT, "b"),
    );
    dir(&mut ns, ROOT, "d");
    // Newer ids below older ones in a list (as a re-encode or compaction leaves them).
    ns.commit_slice(a, 0, vec![slice_ref(9, 0, 10)], t(1))
        .unwrap();
    ns.commit_slice(a, 0, vec![slice_ref(3, 20, 10)], t(2))
        .unwrap();
    ns.commit_slice(a, 2, vec![slice_ref(5, 0, 10)], t(3))
        .unwrap();
    ns.commit_slice(b, 1, vec![slice_ref(1, 0, 10)], t(4))
        .unwrap();
    let mut seen = Vec::new();
    let mut at = None;
    while let Some((pos, s)) = ns.slice_after(at) {
        seen.push(s.slice.0);
        at = Some(pos);
    }
    let all: Vec<u64> = ns.all_slices().map(|(_, _, s)| s.slice.0).collect();
    assert_eq!(seen, all);
    assert_eq!(seen, [9, 3, 5, 1]);
}

#[test]
fn slices_commit_hide_and_truncate() {
    let mut ns = Namespace::new(t(0));
    let f = file(&mut ns, ROOT, "f");
    let (attr, gone) = ns
        .commit_slice(f, 1, vec![slice_ref(1, 100, 50)], t(1))
        .unwrap();
    assert_eq!(attr.size, CHUNK + 150);
    assert!(gone.is_empty());
    let (_, gone) = ns
        .commit_slice(f, 1, vec![slice_ref(2, 90, 100)], t(2))
        .unwrap();
    assert_eq!(gone, vec![slice_ref(1, 100, 50)]);
    ns.commit_slice(f, 0, vec![slice_ref(3, 0, 10)], t(3))
        .unwrap();
    // Cut inside chunk 1: slice 2 keeps 10 bytes; then cut to chunk 0: slice 2 goes.
    let (a, gone) = ns
        .setattr(
            f,
            &SetAttr {
                size: Some(CHUNK + 100),
                ..Default::default()
            },
            t(4),
        )
        .unwrap();
    assert!(gone.is_empty());
    assert_eq!((a.size, a.mtime), (CHUNK + 100, t(4)));
    assert_eq!(ns.slices(f, 1, 1).unwrap()[0].1[0].len, 10);
    let (_, gone) = ns
        .setattr(
            f,
            &SetAttr {
                size: Some(5),
                ..Default::default()
            },
            t(5),
        )
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert_eq!(
        ns.slices(f, 0, 1).unwrap(),
        vec![(
            0,
            vec![SliceRef {
                len: 5,
                ..slice_ref(3, 0, 10)
            }]
        )]
    );
    assert_eq!(
        ns.commit_slice(ROOT, 0, vec![slice_ref(4, 0, 1)], t(6)),
        Err(Errno::ISDIR)
    );
    assert_eq!(
        ns.setattr(
            ROOT,
            &SetAttr {
                size: Some(0),
                ..Default::default()
            },
            t(6)
        )
        .map(|_| ()),
        Err(Errno::ISDIR)
    );
}

const CHUNK: u64 = lattice_common::chunk_map::CHUNK_SIZE;

#[derive(Clone, Debug)]
enum Op {
    Mknod(usize, u8),
    Mkdir(usize, u8),
    Symlink(usize, u8),
    Link(usize, usize, u8),
    Unlink(usize, u8),
    Rmdir(usize, u8),
    Rename(usize, u8, usize, u8, u8),
    Truncate(usize, u64),
    Reap(usize),
    /// A slice of `len` bytes at `at` in chunk `chunk`.
    Write(usize, u64, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    let n = 0usize..12;
    let name = 0u8..6;
    prop_oneof![
        (n.clone(), name.clone()).prop_map(|(a, b)| Op::Mknod(a, b)),
        (n.clone(), name.clone()).prop_map(|(a, b)| Op::Mkdir(a, b)),
        (n.clone(), name.clone()).prop_map(|(a, b)| Op::Symlink(a, b)),
        (n.clone(), n.clone(), name.clone()).prop_map(|(a, b, c)| Op::Link(a, b, c)),
        (n.clone(), name.clone()).prop_map(|(a, b)| Op::Unlink(a, b)),
        (n.clone(), name.clone()).prop_map(|(a, b)| Op::Rmdir(a, b)),
        (n.clone(), name.clone(), n.clone(), name.clone(), 0u8..3)
            .prop_map(|(a, b, c, d, m)| Op::Rename(a, b, c, d, m)),
        (n.clone(), 0u64..1000).prop_map(|(a, s)| Op::Truncate(a, s)),
        n.clone().prop_map(Op::Reap),
        (n, 0u64..3, 0u64..200, 1u64..100).prop_map(|(i, c, a, l)| Op::Write(
            i,
            c,
            if a < 100 { a } else { CHUNK - 200 + a },
            l
        )),
    ]
}

proptest! {
    /// Random operations keep every structural invariant, and a failed operation changes
    /// nothing at all.
    #[test]
    fn random_operations_keep_invariants(ops in proptest::collection::vec(op(), 1..120)) {
        let mut ns = Namespace::new(t(0));
        for (step, op) in ops.into_iter().enumerate() {
            let now = t(step as i64 + 1);
            let inos: Vec<InodeId> = ns.inodes.keys().copied().collect();
            let pick = |i: usize| inos[i % inos.len()];
            let nm = |n: u8| vec![b'a' + n];
            let before = ns.clone();
            let result: Result<(), Errno> = match op {
                Op::Mknod(p, n) => ns.mknod(pick(p), &nm(n), FileKind::File, (0o644, 0o022), 0, ME, now).map(drop),
                Op::Mkdir(p, n) => ns.mkdir(pick(p), &nm(n), (0o755, 0o022), ME, now).map(drop),
                Op::Symlink(p, n) => ns.symlink(pick(p), &nm(n), b"target", ME, now).map(drop),
                Op::Link(i, p, n) => ns.link(pick(i), pick(p), &nm(n), now).map(drop),
                Op::Unlink(p, n) => ns.unlink(pick(p), &nm(n), now),
                Op::Rmdir(p, n) => ns.rmdir(pick(p), &nm(n), now),
                Op::Rename(p, n, q, m, mode) => {
                    let mode = [RenameMode::Replace, RenameMode::NoReplace, RenameMode::Exchange][mode as usize];
                    ns.rename(pick(p), &nm(n), pick(q), &nm(m), mode, now)
                }
                Op::Truncate(i, s) => ns.setattr(pick(i), &SetAttr { size: Some(s), ..Default::default() }, now).map(drop),
                Op::Reap(i) => ns.reap(pick(i)).map(drop),
                Op::Write(i, chunk, at, len) => ns.commit_slice(pick(i), chunk, vec![slice_ref(step as u64, at, len)], now).map(drop),
            };
            if result.is_err() {
                prop_assert_eq!(&ns, &before, "a failed operation changed the namespace");
            }
            if let Err(e) = ns.check_invariants() {
                return Err(TestCaseError::fail(format!("after step {step}: {e}")));
            }
        }
    }
}

proptest! {
    /// `SEEK_DATA` and `SEEK_HOLE` agree with the byte ranges written, around chunk
    /// boundaries and past truncations; the stored byte count with their union.
    #[test]
    fn seek_finds_what_was_written(
        writes in proptest::collection::vec((0u64..3, 0u64..300, 1u64..200), 0..8),
        cut in proptest::option::of(0u64..3 * CHUNK),
        probes in proptest::collection::vec((0u64..3, 0u64..400), 1..20),
    ) {
        let mut ns = Namespace::new(t(0));
        let f = file(&mut ns, ROOT, "f");
        // Writes land near the start or the end of a chunk, to cross boundaries.
        let place = |c: u64, a: u64| if a < 150 { c * CHUNK + a } else { c * CHUNK + CHUNK - 300 + a };
        let mut spans = Vec::new();
        for (k, &(c, a, len)) in writes.iter().enumerate() {
            let at = place(c, a) % CHUNK;
            let len = len.min(CHUNK - at);
            ns.commit_slice(f, c, vec![slice_ref(k as u64 + 1, at, len)], t(1)).unwrap();
            spans.push((c * CHUNK + at, c * CHUNK + at + len));
        }
        if let Some(size) = cut {
            ns.setattr(f, &SetAttr { size: Some(size), ..Default::default() }, t(2)).unwrap();
        }
        let size = ns.attr(f).unwrap().size;
        let spans: Vec<(u64, u64)> = spans.into_iter().map(|(a, b)| (a.min(size), b.min(size))).filter(|(a, b)| a < b).collect();
        let covered = |p: u64| spans.iter().any(|&(a, b)| a <= p && p < b);
        let mut union = 0;
        let mut points: Vec<u64> = spans.iter().flat_map(|&(a, b)| [a, b]).collect();
        points.sort_unstable();
        points.dedup();
        for w in points.windows(2) {
            if covered(w[0]) {
                union += w[1] - w[0];
            }
        }
        prop_assert_eq!(ns.inodes[&f].stored, union);
        prop_assert_eq!(ns.attr(f).unwrap().blocks, union.div_ceil(512));
        for &(c, a) in &probes {
            let off = place(c, a % 300);
            let want_data = spans.iter().filter(|&&(_, b)| b > off).map(|&(a, _)| a.max(off)).min().filter(|_| off < size);
            let mut hole = off;
            while let Some(&(_, b)) = spans.iter().find(|&&(a, b)| a <= hole && hole < b) {
                hole = b;
            }
            let want_hole = (off < size).then_some(hole.min(size));
            prop_assert_eq!(ns.seek(f, off, true).ok(), want_data, "SEEK_DATA from {}", off);
            prop_assert_eq!(ns.seek(f, off, false).ok(), want_hole, "SEEK_HOLE from {}", off);
        }
    }
}

#[test]
fn a_punch_that_would_split_a_chunk_past_its_limit_changes_nothing() {
    let mut ns = Namespace::new(t(0));
    let f = file(&mut ns, ROOT, "f");
    // Nested slices, each spanning the middle: a hole there would double them.
    let n = files::MAX_SLICES_PER_CHUNK as u64 / 2 + 1;
    let nested = (0..n).map(|k| slice_ref(k + 1, k, 4 * n - 2 * k)).collect();
    let inode = ns.inodes.get_mut(&f).unwrap();
    inode.content = Content::File(BTreeMap::from([(0, nested)]));
    inode.size = 4 * n;
    let before = ns.clone();
    assert_eq!(
        ns.punch_hole(f, 2 * n, 1, t(1)).map(|_| ()),
        Err(Errno::NOSPC)
    );
    assert_eq!(ns, before);
}

fn size_to(ns: &mut Namespace, f: InodeId, size: u64) {
    let set = SetAttr {
        size: Some(size),
        ..Default::default()
    };
    ns.setattr(f, &set, t(5)).unwrap();
}

fn inline_bytes(ns: &Namespace, f: InodeId) -> Vec<u8> {
    ns.inline_data(f).unwrap().expect("inline").bytes.clone()
}

#[test]
fn inline_bytes_are_written_cut_punched_sought_and_moved_to_a_slice() {
    use lattice_common::wire::meta::INLINE_MAX;
    let mut ns = Namespace::new(t(0));
    let f = file(&mut ns, ROOT, "f");
    let attr = ns
        .write_inline(f, &[(0, vec![1; 100]), (50, vec![2; 10])], t(2))
        .unwrap();
    assert_eq!((attr.size, attr.blocks, attr.mtime), (100, 1, t(2)));
    let mut want = vec![1u8; 100];
    want[50..60].fill(2);
    assert_eq!(inline_bytes(&ns, f), want);
    assert_eq!(ns.inline_bytes, 100);
    // Slices cannot land on inline bytes; past the inline limit is no inline write.
    assert_eq!(
        ns.commit_slice(f, 0, vec![slice_ref(1, 0, 10)], t(3))
            .map(drop),
        Err(Errno::MEDIUMTYPE)
    );
    assert_eq!(
        ns.write_inline(f, &[(INLINE_MAX - 1, vec![0; 2])], t(3))
            .map(drop),
        Err(Errno::NOTSUP)
    );
    assert_eq!(
        ns.write_inline(f, &[(u64::MAX, vec![0; 2])], t(3))
            .map(drop),
        Err(Errno::NOTSUP)
    );
    assert_eq!(ns.seek(f, 0, false), Ok(100));
    size_to(&mut ns, f, 40);
    assert_eq!(inline_bytes(&ns, f), want[..40]);
    assert_eq!(ns.inline_bytes, 40);
    // Grown by truncation: zeros past the inline bytes, a hole to seek.
    size_to(&mut ns, f, 1000);
    assert_eq!(
        (ns.seek(f, 10, false), ns.seek(f, 500, true)),
        (Ok(40), Err(Errno::NXIO))
    );
    assert_eq!(
        (ns.seek(f, 10, true), ns.seek(f, 500, false)),
        (Ok(10), Ok(500))
    );
    ns.punch_hole(f, 10, 5, t(6)).unwrap();
    want[10..15].fill(0);
    assert_eq!(inline_bytes(&ns, f), want[..40]);
    let held = inline_bytes(&ns, f);
    let mut other = held.clone();
    other[0] ^= 1;
    // Moved to a slice only if unchanged since read, and only as exactly those bytes.
    assert_eq!(
        ns.uninline(f, &other, Some(slice_ref(7, 0, 40))),
        Err(Errno::STALE)
    );
    assert_eq!(
        ns.uninline(f, &held, Some(slice_ref(7, 0, 39))),
        Err(Errno::INVAL)
    );
    assert_eq!(ns.uninline(f, &held, None), Err(Errno::INVAL));
    ns.uninline(f, &held, Some(slice_ref(7, 0, 40))).unwrap();
    assert_eq!(ns.inline_data(f), Ok(None));
    assert_eq!(ns.inline_bytes, 0);
    assert_eq!(ns.attr(f).unwrap().size, 1000);
    assert_eq!(ns.uninline(f, &held, None), Err(Errno::STALE));
    assert_eq!(
        ns.write_inline(f, &[(0, vec![3])], t(7)).map(drop),
        Err(Errno::NOTSUP)
    );
    ns.commit_slice(f, 0, vec![slice_ref(8, 0, 10)], t(8))
        .unwrap();
    // Cut to nothing, the file takes inline bytes again: a move of what it held before
    // (read before the cut) must not land over them.
    size_to(&mut ns, f, 0);
    ns.write_inline(f, &[(0, vec![9; 40])], t(9)).unwrap();
    assert_eq!(
        ns.uninline(f, &held, Some(slice_ref(10, 0, 40))),
        Err(Errno::STALE)
    );
    assert_eq!(inline_bytes(&ns, f), vec![9; 40]);
    ns.check_invariants().unwrap();
}

#[test]
fn inline_bytes_are_capped_counted_again_when_decoded_and_freed_with_their_file() {
    use super::inline::MAX_INLINE_TOTAL;
    let mut ns = Namespace::new(t(0));
    let (a, b) = (file(&mut ns, ROOT, "a"), file(&mut ns, ROOT, "b"));
    ns.write_inline(a, &[(0, vec![1; 30])], t(1)).unwrap();
    ns.inline_bytes = MAX_INLINE_TOTAL - 10;
    let before = ns.clone();
    assert_eq!(
        ns.write_inline(b, &[(0, vec![1; 11])], t(2)).map(drop),
        Err(Errno::NOTSUP)
    );
    assert_eq!(ns, before);
    // Overwriting bytes already held costs nothing more.
    ns.write_inline(a, &[(0, vec![2; 30])], t(2)).unwrap();
    ns.write_inline(b, &[(0, vec![1; 10])], t(2)).unwrap();
    let bytes = lattice_common::codec::encode_state(&ns).unwrap();
    let decoded: Namespace = lattice_common::codec::decode_state(&bytes, 1 << 30).unwrap();
    assert_eq!(decoded.inline_bytes, 40);
    ns = decoded;
    ns.unlink(ROOT, b"a", t(3)).unwrap();
    ns.reap(a).unwrap();
    assert_eq!(ns.inline_bytes, 10);
    ns.check_invariants().unwrap();
}

/// Counts the bytes this thread holds from the allocator (other tests run on other
/// threads).
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        static HELD: Cell<i64> = const { Cell::new(0) };
    }

    fn add(n: i64) {
        let _ = HELD.try_with(|h| h.set(h.get() + n));
    }

    pub fn held() -> i64 {
        HELD.with(|h| h.get())
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            add(layout.size() as i64);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as i64));
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            add(new_size as i64 - layout.size() as i64);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;
}

/// Memory per file, as the allocator counts it (malloc's own overhead comes on top): a
/// million empty files with 16-byte names, a thousand to a directory. The goal is 300
/// bytes; 315 is where it stands (an inode of 136 bytes, about 140 for the two indexes
/// of its directory entry, 32 for its name).
#[test]
fn memory_per_file_stays_bounded_at_a_million_files() {
    const FILES: u64 = 1_000_000;
    let before = counting::held();
    let mut ns = Namespace::new(t(0));
    let dirs: Vec<InodeId> = (0..FILES / 1000)
        .map(|d| dir(&mut ns, ROOT, &format!("dir-{d:06}")))
        .collect();
    for n in 0..FILES {
        file(
            &mut ns,
            dirs[(n / 1000) as usize],
            &format!("file-{n:07}.txt"),
        );
    }
    let per_file = (counting::held() - before) as u64 / FILES;
    eprintln!(
        "{per_file} bytes per file; inode {} content {} policy {} timestamp {}",
        std::mem::size_of::<Inode>(),
        std::mem::size_of::<Content>(),
        std::mem::size_of::<Option<Policy>>(),
        std::mem::size_of::<Timestamp>()
    );
    assert!(per_file <= 320, "{per_file} bytes per file");
    // Stored and read back, names are shared again.
    let bytes = lattice_common::codec::encode_state(&ns).unwrap();
    let before = counting::held();
    let decoded: Namespace = lattice_common::codec::decode_state(&bytes, 1 << 32).unwrap();
    let per_file = (counting::held() - before) as u64 / FILES;
    assert!(per_file <= 320, "{per_file} bytes per file once decoded");
    assert!(decoded == ns);
}
