//! The replicated state machine against a reference model: random command sequences (slices
//! allocated and committed at overlapping offsets, truncations, unlink while open, renames,
//! retries, sessions, shard moves, garbage ids and values) must never panic, and after every
//! step each file's resolved chunk map must match a plain model of its bytes, in which every
//! committed slice writes its id.

use super::*;
use lattice_common::chunk_map::{self, CHUNK_SIZE};
use lattice_common::fs::{
    Attr, Caller, FileKind, LockKind, LockRange, LockSpace, RenameMode, SetAttr,
};
use lattice_common::wire::meta::Unlinked;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicU64, Ordering};

const CHUNKS: u64 = 3;
const SERVERS: u32 = 7;
const CLIENTS: u64 = 3;
const ME: Caller = Caller { uid: 0, gid: 0 };

/// Where a write lands in its chunk: near the start, or near the chunk's end.
#[derive(Clone, Copy, Debug)]
struct Offset {
    near_end: bool,
    by: u64,
}

impl Offset {
    fn at(self) -> u64 {
        match self.near_end {
            false => self.by,
            true => CHUNK_SIZE - 3000 + self.by,
        }
    }
}

fn offset() -> impl Strategy<Value = Offset> {
    (
        prop::bool::weighted(0.15),
        prop_oneof![3 => 0u64..1024, 1 => 0u64..3000],
    )
        .prop_map(|(near_end, by)| Offset { near_end, by })
}

/// Slice lengths: mostly short, some covering many others.
fn length() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1u64..64, 2 => 64u64..600, 1 => 600u64..3000]
}

/// Values garbage fields are drawn from: small, live-looking and extreme.
fn wild() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..8,
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(CHUNK_SIZE),
        Just(CHUNK_SIZE - 1),
        Just(lattice_common::fs::MAX_FILE_SIZE),
        any::<u64>(),
    ]
}

#[derive(Clone, Debug)]
enum Step {
    Create(u8),
    Allocate {
        client: u64,
        file: usize,
        len: u64,
        policy: u8,
        /// Shards left unplaced (too few servers up).
        missing: usize,
    },
    Commit {
        client: u64,
        pending: usize,
        chunk: u64,
        at: Offset,
        skip: u64,
        len: u64,
        /// More references to the same slice, committed with the first (at, skip, len).
        more: Vec<(Offset, u64, u64)>,
        /// 0: a valid commit; else one thing about it is wrong.
        tamper: u8,
    },
    /// Allocate and commit at once, from the slice's start (what a client's flush does).
    Write {
        client: u64,
        file: usize,
        chunk: u64,
        at: Offset,
        len: u64,
    },
    Truncate {
        client: u64,
        file: usize,
        chunk: u64,
        at: Offset,
    },
    /// A hole punched from `at` in `chunk`, `len` long (it may cross into the next chunk).
    Punch {
        client: u64,
        file: usize,
        chunk: u64,
        at: Offset,
        len: u64,
    },
    /// Compaction of the newest slices of a chunk, from a random point; `tamper` 0 is a
    /// faithful one, else one thing about it is wrong.
    Compact {
        client: u64,
        file: usize,
        chunk: u64,
        from: usize,
        tamper: u8,
    },
    /// The leader re-encodes one slice of a chunk under mirror:2; `tamper` 0 is a faithful
    /// one, else the slice it names or the one it offers is off.
    Reencode {
        file: usize,
        chunk: u64,
        pick: usize,
        tamper: u8,
    },
    Unlink(u8),
    /// A mount's deferred unlinks: each name with its inode, or (`false`) another one.
    Unlinks(Vec<(u8, bool)>),
    Rename(u8, u8),
    Reap(usize),
    MoveShard {
        slice: usize,
        index: u16,
        from: Option<u32>,
        to: u32,
    },
    Lock {
        client: u64,
        file: usize,
        owner: u64,
        write: bool,
        start: u64,
        end: u64,
    },
    EndSession(u64),
    ResumeSession(u64),
    ForgetGarbage(usize),
    AbandonPending(usize),
    /// The previous client command again, with the same sequence number.
    Retry,
    /// Encode, decode and carry on with the copy (a restart from a snapshot).
    Restart,
    WildCommit {
        ino: u64,
        chunk: u64,
        slice: u64,
        chunk_offset: u64,
        skip: u64,
        len: u64,
        data_len: u64,
    },
    WildAllocate {
        ino: u64,
        placement: Vec<u32>,
        data_len: u64,
    },
    WildTruncate {
        ino: u64,
        size: u64,
    },
    /// Cluster-map commands with any ids: a server's state, a drain, a (re-)registration.
    WildCluster {
        id: u32,
        state: u8,
        cancel: bool,
        name: u8,
    },
    WildMove {
        ino: u64,
        chunk: u64,
        slice: u64,
        index: u16,
        to: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let client = 0..CLIENTS;
    prop_oneof![
        2 => (0u8..6).prop_map(Step::Create),
        10 => (client.clone(), any::<usize>(), length(), 0u8..3, prop_oneof![4 => Just(0usize), 1 => 1usize..3])
            .prop_map(|(client, file, len, policy, missing)| Step::Allocate { client, file, len, policy, missing }),
        12 => (client.clone(), any::<usize>(), prop_oneof![3 => Just(0), 1 => 0..CHUNKS], offset(), prop_oneof![Just(0u64), 0u64..400], length(),
               prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec((offset(), 0u64..400, length()), 1..4)], prop_oneof![8 => Just(0u8), 1 => 1u8..8])
            .prop_map(|(client, pending, chunk, at, skip, len, more, tamper)| Step::Commit { client, pending, chunk, at, skip, len, more, tamper }),
        6 => (client.clone(), any::<usize>(), prop_oneof![3 => Just(0), 1 => 0..CHUNKS], offset(), length())
            .prop_map(|(client, file, chunk, at, len)| Step::Write { client, file, chunk, at, len }),
        2 => (client.clone(), any::<usize>(), 0..CHUNKS + 1, offset()).prop_map(|(client, file, chunk, at)| Step::Truncate { client, file, chunk, at }),
        2 => (client.clone(), any::<usize>(), 0..CHUNKS, offset(), prop_oneof![3 => length(), 1 => 3000u64..6000])
            .prop_map(|(client, file, chunk, at, len)| Step::Punch { client, file, chunk, at, len }),
        3 => (client.clone(), any::<usize>(), prop_oneof![3 => Just(0), 1 => 0..CHUNKS], any::<usize>(), prop_oneof![6 => Just(0u8), 1 => 1u8..5])
            .prop_map(|(client, file, chunk, from, tamper)| Step::Compact { client, file, chunk, from, tamper }),
        2 => (any::<usize>(), prop_oneof![3 => Just(0), 1 => 0..CHUNKS], any::<usize>(), prop_oneof![4 => Just(0u8), 1 => 1u8..4])
            .prop_map(|(file, chunk, pick, tamper)| Step::Reencode { file, chunk, pick, tamper }),
        1 => (0u8..6).prop_map(Step::Unlink),
        1 => prop::collection::vec((0u8..6, prop_oneof![3 => Just(true), 1 => Just(false)]), 1..5).prop_map(Step::Unlinks),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Step::Rename(a, b)),
        1 => any::<usize>().prop_map(Step::Reap),
        2 => (any::<usize>(), 0u16..8, prop::option::of(0..SERVERS + 2), 0..SERVERS + 2)
            .prop_map(|(slice, index, from, to)| Step::MoveShard { slice, index, from, to }),
        2 => (client.clone(), any::<usize>(), 0u64..3, any::<bool>(), wild(), wild())
            .prop_map(|(client, file, owner, write, start, end)| Step::Lock { client, file, owner, write, start, end }),
        1 => client.clone().prop_map(Step::EndSession),
        1 => client.clone().prop_map(Step::ResumeSession),
        1 => any::<usize>().prop_map(Step::ForgetGarbage),
        1 => any::<usize>().prop_map(Step::AbandonPending),
        2 => Just(Step::Retry),
        1 => Just(Step::Restart),
        1 => (wild(), wild(), wild(), wild(), wild(), wild(), wild())
            .prop_map(|(ino, chunk, slice, chunk_offset, skip, len, data_len)| Step::WildCommit { ino, chunk, slice, chunk_offset, skip, len, data_len }),
        1 => (wild(), prop::collection::vec(0..SERVERS + 3, 0..8), wild())
            .prop_map(|(ino, placement, data_len)| Step::WildAllocate { ino, placement, data_len }),
        1 => (wild(), wild()).prop_map(|(ino, size)| Step::WildTruncate { ino, size }),
        1 => (prop_oneof![0..SERVERS + 2, any::<u32>()], 0u8..5, any::<bool>(), 0u8..10)
            .prop_map(|(id, state, cancel, name)| Step::WildCluster { id, state, cancel, name }),
        1 => (wild(), wild(), wild(), any::<u16>(), any::<u32>())
            .prop_map(|(ino, chunk, slice, index, to)| Step::WildMove { ino, chunk, slice, index, to }),
    ]
}

/// What a file should hold: for each byte written, the slice showing there and the offset
/// in that slice's data.
#[derive(Clone, Debug, Default)]
struct FileModel {
    size: u64,
    bytes: BTreeMap<u64, (SliceId, u64)>,
}

#[derive(Default)]
struct Coverage {
    compactions: AtomicU64,
    reencodes: AtomicU64,
    /// Re-encodes of a whole slice, for every reference to it.
    whole_reencodes: AtomicU64,
    commits: AtomicU64,
    hid_several: AtomicU64,
    /// Commits of several references to one slice at once (a flush of scattered writes).
    multi_range: AtomicU64,
    truncations: AtomicU64,
    punches: AtomicU64,
    /// Slices shown by two references at once (a hole punched through them).
    split: AtomicU64,
    wild: AtomicU64,
}

struct Run<'a> {
    sm: StateMachine,
    files: BTreeMap<InodeId, FileModel>,
    names: BTreeMap<u8, InodeId>,
    index: u64,
    seq: [u64; CLIENTS as usize],
    last: Option<(Command, Outcome)>,
    allocated: BTreeSet<SliceId>,
    forgotten: BTreeSet<SliceId>,
    /// What each compacted slice holds, byte by byte: the original source of the byte, or
    /// `None` for a zero written where a hole was.
    contents: BTreeMap<SliceId, Vec<Option<(SliceId, u64)>>>,
    coverage: &'a Coverage,
}

fn policy(n: u8) -> Policy {
    ["mirror:1", "mirror:2", "rs:4+2"][n as usize % 3]
        .parse()
        .unwrap()
}

fn pick<T: Copy>(items: &[T], i: usize) -> Option<T> {
    (!items.is_empty()).then(|| items[i % items.len()])
}

impl Run<'_> {
    fn new(coverage: &Coverage) -> Run<'_> {
        let mut sm = StateMachine::new(BTreeMap::new());
        for n in 0..SERVERS {
            let registration = super::test_registration(n);
            sm.apply(
                u64::from(n) + 1,
                Command::Register {
                    name: format!("cs-{n}"),
                    registration,
                    now: Timestamp::default(),
                },
            );
        }
        Run {
            sm,
            files: BTreeMap::new(),
            names: BTreeMap::new(),
            index: u64::from(SERVERS),
            seq: [0; CLIENTS as usize],
            last: None,
            allocated: BTreeSet::new(),
            forgotten: BTreeSet::new(),
            contents: BTreeMap::new(),
            coverage,
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp {
            secs: self.index as i64,
            nanos: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> Outcome {
        self.index += 1;
        self.sm.apply(self.index, cmd)
    }

    /// A client request with the client's next sequence number.
    fn client_op(&mut self, client: u64, op: FsOp) -> Result<FsReply, Errno> {
        let seq = self.next_seq(client);
        let cmd = Command::Fs {
            request: SessionRequest {
                client: ClientId(client),
                certificate: "client".into(),
                seq,
                acked_below: seq,
            },
            now: self.now(),
            op,
            who: None,
        };
        self.remembered(cmd)
    }

    fn next_seq(&mut self, client: u64) -> u64 {
        let s = &mut self.seq[client as usize % CLIENTS as usize];
        *s += 1;
        *s
    }

    fn remembered(&mut self, cmd: Command) -> Result<FsReply, Errno> {
        let outcome = self.apply(cmd.clone());
        self.last = Some((cmd, outcome.clone()));
        match outcome {
            Outcome::Fs(r) => r,
            other => panic!("a client command gave {other:?}"),
        }
    }

    fn file(&self, i: usize) -> Option<InodeId> {
        pick(&self.files.keys().copied().collect::<Vec<_>>(), i)
    }

    fn placement(&self, shards: usize, rotate: usize) -> Vec<Option<ChunkserverId>> {
        (0..shards)
            .map(|k| Some(ChunkserverId(((rotate + k) % SERVERS as usize) as u32 + 1)))
            .collect()
    }

    /// Where byte `at` of slice `id`'s data first came from (through compactions).
    fn source(&self, id: SliceId, at: u64) -> Option<(SliceId, u64)> {
        match self.contents.get(&id) {
            Some(bytes) => bytes.get(at as usize).copied().flatten(),
            None => Some((id, at)),
        }
    }

    /// Allocates a mirror:1 slice of `len` bytes for `ino`; its reference at `at`.
    fn allocate_at(&mut self, ino: InodeId, at: u64, len: u64) -> Option<SliceRef> {
        let layout = SliceLayout::new(policy(0), len, 65536).ok()?;
        let seq = self.next_seq(0);
        let placement = self.placement(1, 0);
        let cmd = Command::Allocate {
            request: SessionRequest {
                client: ClientId(0),
                certificate: "client".into(),
                seq,
                acked_below: seq,
            },
            now: self.now(),
            ino,
            layout,
            placement: placement.clone(),
            who: None,
        };
        let Ok(FsReply::Allocated { slice, .. }) = self.remembered(cmd) else {
            return None;
        };
        self.allocated.insert(slice);
        Some(SliceRef {
            slice,
            layout,
            placement,
            chunk_offset: at,
            skip: 0,
            len,
        })
    }

    fn do_step(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Create(n) => {
                let op = FsOp::Mknod {
                    parent: InodeId::ROOT,
                    name: vec![b'a' + n],
                    kind: FileKind::File,
                    perm: 0o644,
                    umask: 0,
                    rdev: 0,
                    caller: ME,
                };
                if let Ok(FsReply::Made { attr: a, .. }) = self.client_op(0, op) {
                    self.files.insert(a.ino, FileModel::default());
                    self.names.insert(n, a.ino);
                }
            }
            Step::Allocate {
                client,
                file,
                len,
                policy: p,
                missing,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let policy = policy(p);
                let layout = SliceLayout::new(policy, len, 65536).unwrap();
                let seq = self.next_seq(client);
                let mut placement = self.placement(policy.total_shards(), file);
                let total = placement.len();
                placement[total.saturating_sub(missing)..].fill(None);
                let enough = total.saturating_sub(missing) >= policy.min_shards();
                let cmd = Command::Allocate {
                    request: SessionRequest {
                        client: ClientId(client),
                        certificate: "client".into(),
                        seq,
                        acked_below: seq,
                    },
                    now: self.now(),
                    ino,
                    layout,
                    placement,
                    who: None,
                };
                match self.remembered(cmd) {
                    Ok(FsReply::Allocated { slice, .. }) if enough => {
                        prop_assert!(self.allocated.insert(slice), "{slice} handed out twice");
                    }
                    Err(Errno::INVAL) if !enough => {}
                    other => prop_assert!(
                        false,
                        "allocating (enough servers: {enough}) gave {other:?}"
                    ),
                }
            }
            Step::Commit {
                client,
                pending,
                chunk,
                at,
                skip,
                len,
                more,
                tamper,
            } => {
                let pendings: Vec<SliceId> = self.sm.pending.keys().copied().collect();
                let Some(id) = pick(&pendings, pending) else {
                    return Ok(());
                };
                let p = self.sm.pending[&id].clone();
                let reference = |(at, skip, len): (Offset, u64, u64)| {
                    let skip = skip % p.layout.data_len;
                    SliceRef {
                        slice: id,
                        layout: p.layout,
                        placement: p.placement.clone(),
                        chunk_offset: at.at(),
                        skip,
                        len: len.min(p.layout.data_len - skip).min(CHUNK_SIZE - at.at()),
                    }
                };
                let mut refs: Vec<SliceRef> = std::iter::once((at, skip, len))
                    .chain(more.iter().copied())
                    .map(reference)
                    .collect();
                let several = refs.len() > 1;
                let mut ino = p.ino;
                // One thing wrong in the last reference refuses them all.
                let last = refs.last_mut().expect("one at least");
                match tamper {
                    0 => {}
                    1 => last.layout.data_len += 1,
                    2 => ino = InodeId(ino.0 + 1),
                    3 => last.chunk_offset = CHUNK_SIZE - last.len + 1,
                    4 => {
                        last.placement.pop();
                    }
                    5 => last.len = 0,
                    // An id never handed out: the next one may be another pending slice
                    // of this file with the same layout and placement, which would be a
                    // valid commit.
                    7 => last.slice = SliceId(id.0 + (1 << 40)),
                    // A shard that could not be stored: fine while enough others were.
                    _ => {
                        for r in &mut refs {
                            if let Some(p) = r.placement.iter_mut().find(|p| p.is_some()) {
                                *p = None;
                            }
                        }
                    }
                }
                let degraded_ok =
                    refs[0].placement.iter().flatten().count() >= p.layout.policy.min_shards();
                let tamper = if tamper == 6 && degraded_ok {
                    0
                } else {
                    tamper
                };
                let live = self.files.contains_key(&p.ino);
                let before = self.sm.clone();
                let op = match several || skip % 2 == 1 {
                    true => FsOp::CommitSlices {
                        ino,
                        chunk,
                        slices: refs.clone(),
                    },
                    false => FsOp::CommitSlice {
                        ino,
                        chunk,
                        slice: refs[0].clone(),
                    },
                };
                let result = self.client_op(client, op);
                if tamper != 0 || !live {
                    prop_assert!(result.is_err(), "a bad commit was taken: {refs:?}");
                    prop_assert_eq!(&self.sm.ns, &before.ns);
                    prop_assert_eq!(&self.sm.garbage, &before.garbage);
                    return Ok(());
                }
                prop_assert!(result.is_ok(), "a valid commit failed: {result:?}");
                self.coverage.commits.fetch_add(1, Ordering::Relaxed);
                if several {
                    self.coverage.multi_range.fetch_add(1, Ordering::Relaxed);
                }
                let hidden = self.sm.garbage.len() - before.garbage.len();
                if hidden >= 2 {
                    self.coverage.hid_several.fetch_add(1, Ordering::Relaxed);
                }
                let model = self.files.get_mut(&ino).expect("live");
                let base = chunk * CHUNK_SIZE;
                for r in &refs {
                    for x in 0..r.len {
                        model
                            .bytes
                            .insert(base + r.chunk_offset + x, (id, r.skip + x));
                    }
                    model.size = model.size.max(base + r.chunk_end());
                }
            }
            Step::Write {
                client,
                file,
                chunk,
                at,
                len,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let allocate = Step::Allocate {
                    client,
                    file,
                    len,
                    policy: 0,
                    missing: 0,
                };
                self.do_step(allocate)?;
                let Some((&id, _)) = self.sm.pending.iter().rev().find(|(_, p)| p.ino == ino)
                else {
                    return Ok(());
                };
                let pending = self
                    .sm
                    .pending
                    .keys()
                    .position(|&p| p == id)
                    .expect("listed");
                let commit = Step::Commit {
                    client,
                    pending,
                    chunk,
                    at,
                    skip: 0,
                    len,
                    more: Vec::new(),
                    tamper: 0,
                };
                self.do_step(commit)?;
            }
            Step::Truncate {
                client,
                file,
                chunk,
                at,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let size = chunk * CHUNK_SIZE + at.at();
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let result = self.client_op(client, FsOp::SetAttr { ino, set });
                prop_assert!(result.is_ok(), "truncating gave {result:?}");
                self.coverage.truncations.fetch_add(1, Ordering::Relaxed);
                let model = self.files.get_mut(&ino).expect("live");
                model.size = size;
                model.bytes.split_off(&size);
            }
            Step::Punch {
                client,
                file,
                chunk,
                at,
                len,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let offset = chunk * CHUNK_SIZE + at.at();
                let result = self.client_op(client, FsOp::PunchHole { ino, offset, len });
                prop_assert!(result.is_ok(), "punching a hole gave {result:?}");
                self.coverage.punches.fetch_add(1, Ordering::Relaxed);
                let model = self.files.get_mut(&ino).expect("live");
                let after = model.bytes.split_off(&offset);
                model
                    .bytes
                    .extend(after.into_iter().filter(|(x, _)| *x >= offset + len));
            }
            Step::Compact {
                client,
                file,
                chunk,
                from,
                tamper,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let slices = match self.sm.ns.slices(ino, chunk, chunk) {
                    Ok(c) if !c.is_empty() => c[0].1.clone(),
                    _ => return Ok(()),
                };
                let plan = chunk_map::compaction_of(&slices, from % slices.len());
                let run = &slices[plan.start..];
                let (mut new, mut holds) = (Vec::new(), Vec::new());
                for &(a, b) in &plan.pieces {
                    let Some(mut n) = self.allocate_at(ino, a, b - a) else {
                        return Ok(());
                    };
                    let shown: Vec<Option<(SliceId, u64)>> = (a..b)
                        .map(|x| {
                            let seg = chunk_map::resolve(run, x, x + 1)[0];
                            seg.source
                                .and_then(|(i, off)| self.source(run[i].slice, off))
                        })
                        .collect();
                    holds.push((n.slice, shown));
                    if tamper == 3 && plan.start > 0 {
                        // Reaching past what the run covers would hide older bytes.
                        n.len = (n.len + 1).min(CHUNK_SIZE - n.chunk_offset);
                    }
                    new.push(n);
                }
                let mut old = run.to_vec();
                match tamper {
                    1 => old.reverse(),
                    2 => old[0].len = old[0].len.saturating_sub(1).max(1),
                    4 => new.extend(new.first().cloned()),
                    _ => {}
                }
                let changed_len = tamper == 2 && old[0].len != run[0].len;
                let reordered = tamper == 1 && old.len() > 1;
                let grew = tamper == 3
                    && new
                        .iter()
                        .zip(&plan.pieces)
                        .any(|(n, p)| n.chunk_end() > p.1);
                let faithful =
                    !(changed_len || reordered || grew || (tamper == 4 && !new.is_empty()));
                let before = self.sm.clone();
                let result = self.client_op(
                    client,
                    FsOp::ReplaceSlices {
                        ino,
                        chunk,
                        old,
                        new: new.clone(),
                    },
                );
                if new.is_empty() || !faithful {
                    prop_assert!(result.is_err(), "a bad compaction was taken");
                    prop_assert_eq!(&self.sm.ns, &before.ns);
                    prop_assert_eq!(&self.sm.garbage, &before.garbage);
                    return Ok(());
                }
                prop_assert!(result.is_ok(), "a faithful compaction failed: {result:?}");
                self.contents.extend(holds);
                // Compaction writes short holes between pieces as zeros: only the blocks
                // stored may grow.
                let (now, then) = (self.sm.ns.attr(ino).unwrap(), before.ns.attr(ino).unwrap());
                prop_assert!(now.blocks >= then.blocks, "a compaction lost stored blocks");
                let now = Attr {
                    blocks: then.blocks,
                    ..now
                };
                prop_assert_eq!(now, then, "a compaction changed the attributes");
                self.coverage.compactions.fetch_add(1, Ordering::Relaxed);
            }
            Step::Reencode {
                file,
                chunk,
                pick,
                tamper,
            } => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let slices = match self.sm.ns.slices(ino, chunk, chunk) {
                    Ok(c) if !c.is_empty() => c[0].1.clone(),
                    _ => return Ok(()),
                };
                let old = slices[pick % slices.len()].clone();
                // The whole slice (for all its references at once), or what `old` shows.
                let whole = (pick / 7) % 2 == 1;
                let (from, len) = match whole {
                    true => (0, old.layout.data_len),
                    false => (old.skip, old.len),
                };
                let layout = SliceLayout::new(policy(1), len, 65536).unwrap();
                let placement = self.placement(2, pick);
                let now = self.now();
                let reserve = Command::Reserve {
                    ino,
                    layout,
                    placement: placement.clone(),
                    now,
                };
                let Outcome::Fs(Ok(FsReply::Allocated { slice, .. })) = self.apply(reserve) else {
                    return Ok(());
                };
                self.allocated.insert(slice);
                let new = SliceRef {
                    slice,
                    layout,
                    placement,
                    chunk_offset: old.chunk_offset,
                    skip: old.skip - from,
                    len: old.len,
                };
                let (mut named, mut offered) = (old.clone(), new.clone());
                match tamper {
                    1 => named.skip += 1,
                    2 => offered.chunk_offset = (offered.chunk_offset + 1) % CHUNK_SIZE,
                    3 => offered.len = offered.len.saturating_sub(1).max(1),
                    _ => {}
                }
                let faithful = named == old && offered == new;
                let before = self.sm.clone();
                let cmd = Command::Reencode {
                    ino,
                    chunk,
                    old: named,
                    new: offered,
                    now: self.now(),
                };
                let result = self.apply(cmd);
                if !faithful {
                    prop_assert!(
                        !matches!(result, Outcome::Fs(Ok(_))),
                        "a bad re-encode was taken"
                    );
                    prop_assert_eq!(&self.sm.ns, &before.ns);
                    return Ok(());
                }
                prop_assert_eq!(&result, &Outcome::Fs(Ok(FsReply::Done)));
                let holds = (0..len).map(|i| self.source(old.slice, from + i)).collect();
                if whole {
                    self.coverage
                        .whole_reencodes
                        .fetch_add(1, Ordering::Relaxed);
                }
                self.contents.insert(slice, holds);
                let attr = (self.sm.ns.attr(ino), before.ns.attr(ino));
                prop_assert_eq!(attr.0, attr.1, "a re-encode changed the attributes");
                self.coverage.reencodes.fetch_add(1, Ordering::Relaxed);
            }
            Step::Unlink(n) => {
                let op = FsOp::Unlink {
                    parent: InodeId::ROOT,
                    name: vec![b'a' + n],
                };
                if self.client_op(1, op).is_ok() {
                    self.names.remove(&n);
                }
            }
            Step::Unlinks(names) => {
                let (mut expect, mut entries) = (Vec::new(), Vec::new());
                let mut left = self.names.clone();
                for (n, right) in names {
                    let found = left.get(&n).copied();
                    let ino = match (found, right) {
                        (Some(ino), true) => ino,
                        _ => InodeId(u64::MAX - n as u64),
                    };
                    expect.push(match found {
                        None => Err(Errno::NOENT),
                        Some(f) if f != ino => Err(Errno::STALE),
                        Some(_) => {
                            left.remove(&n);
                            Ok(())
                        }
                    });
                    let name = vec![b'a' + n];
                    let at = self.now();
                    entries.push(Unlinked {
                        parent: InodeId::ROOT,
                        name,
                        ino,
                        dir: false,
                        at,
                    });
                }
                if let Ok(reply) = self.client_op(1, FsOp::Unlinks { entries }) {
                    prop_assert_eq!(reply, FsReply::Unlinked(expect));
                    self.names = left;
                }
            }
            Step::Rename(a, b) => {
                let op = FsOp::Rename {
                    parent: InodeId::ROOT,
                    name: vec![b'a' + a],
                    new_parent: InodeId::ROOT,
                    new_name: vec![b'a' + b],
                    mode: RenameMode::Replace,
                };
                if self.client_op(2, op).is_ok() && a != b {
                    if let Some(ino) = self.names.remove(&a) {
                        self.names.insert(b, ino);
                    }
                }
            }
            Step::Reap(file) => {
                let Some(ino) = self.file(file) else {
                    return Ok(());
                };
                let now = self.now();
                self.apply(Command::Reap { ino, now });
                if self.sm.ns.attr(ino).is_err() {
                    prop_assert!(
                        !self.names.values().any(|&i| i == ino),
                        "{ino} reaped with a name"
                    );
                    self.files.remove(&ino);
                }
            }
            Step::MoveShard {
                slice,
                index,
                from,
                to,
            } => {
                let slices: Vec<(InodeId, u64, SliceId, Vec<Option<ChunkserverId>>)> = self
                    .sm
                    .ns
                    .all_slices()
                    .map(|(i, c, s)| (i, c, s.slice, s.placement.clone()))
                    .collect();
                let Some((ino, chunk, id, placement)) =
                    slices.get(slice % slices.len().max(1)).cloned()
                else {
                    return Ok(());
                };
                let from = match from {
                    Some(f) => Some(ChunkserverId(f)),
                    None => placement.get(index as usize).copied().flatten(),
                };
                self.apply(Command::MoveShard {
                    ino,
                    chunk,
                    slice: id,
                    index,
                    from,
                    to: ChunkserverId(to),
                });
            }
            Step::Lock {
                client,
                file,
                owner,
                write,
                start,
                end,
            } => {
                let ino = self.file(file).unwrap_or(InodeId(start));
                let kind = if write {
                    LockKind::Write
                } else {
                    LockKind::Read
                };
                let lock = LockRange {
                    space: LockSpace::Record,
                    kind,
                    start,
                    end,
                    pid: 1,
                };
                let lost = self.sm.locks_lost(ClientId(client));
                let before = self.sm.locks.clone();
                let result = self.client_op(client, FsOp::SetLock { ino, owner, lock });
                if lost && self.sm.ns.attr(ino).is_ok() {
                    prop_assert_eq!(
                        result,
                        Err(Errno::NOLCK),
                        "a client whose locks were lost took one"
                    );
                    prop_assert_eq!(&self.sm.locks, &before);
                }
            }
            Step::EndSession(client) => {
                // Its locks go; its replies stay, so a retry still gets the first one.
                self.apply(Command::EndSession {
                    client: ClientId(client),
                    certificate: None,
                });
            }
            Step::ResumeSession(client) => {
                self.apply(Command::ResumeSession {
                    client: ClientId(client),
                    certificate: "client".into(),
                });
            }
            Step::ForgetGarbage(i) => {
                let ids: Vec<SliceId> = self.sm.garbage.keys().copied().collect();
                let id = pick(&ids, i).unwrap_or(SliceId(i as u64));
                if self.sm.garbage.contains_key(&id) {
                    self.forgotten.insert(id);
                }
                self.apply(Command::ForgetGarbage { slices: vec![id] });
            }
            Step::AbandonPending(i) => {
                let ids: Vec<SliceId> = self.sm.pending.keys().copied().collect();
                let id = pick(&ids, i).unwrap_or(SliceId(i as u64));
                let now = self.now();
                self.apply(Command::AbandonPending {
                    slices: vec![id],
                    now,
                });
            }
            Step::Retry => {
                let Some((cmd, first)) = self.last.clone() else {
                    return Ok(());
                };
                let before = self.sm.clone();
                let again = self.apply(cmd);
                prop_assert_eq!(again, first, "a retry got another reply");
                prop_assert_eq!(&self.sm.ns, &before.ns, "a retry changed the namespace");
                prop_assert_eq!(&self.sm.pending, &before.pending);
                prop_assert_eq!(&self.sm.garbage, &before.garbage);
            }
            Step::Restart => {
                let bytes = lattice_common::codec::encode_state(&self.sm).unwrap();
                let copy: StateMachine =
                    lattice_common::codec::decode_state(&bytes, u64::MAX).unwrap();
                prop_assert_eq!(&copy, &self.sm, "the state did not survive a snapshot");
                self.sm = copy;
            }
            Step::WildCommit {
                ino,
                chunk,
                slice,
                chunk_offset,
                skip,
                len,
                data_len,
            } => {
                self.coverage.wild.fetch_add(1, Ordering::Relaxed);
                let layout = SliceLayout {
                    policy: policy(data_len as u8),
                    data_len,
                    stripe_unit: 65536,
                };
                let slice = SliceRef {
                    slice: SliceId(slice),
                    layout,
                    placement: vec![Some(ChunkserverId(1)); (skip % 9) as usize],
                    chunk_offset,
                    skip,
                    len,
                };
                let before = self.sm.ns.clone();
                let op = FsOp::CommitSlice {
                    ino: InodeId(ino),
                    chunk,
                    slice,
                };
                if self.client_op(0, op).is_ok() {
                    // Only a pending slice's exact reference commits; garbage never does.
                    prop_assert!(false, "a wild commit was taken");
                }
                prop_assert_eq!(&self.sm.ns, &before);
            }
            Step::WildAllocate {
                ino,
                placement,
                data_len,
            } => {
                self.coverage.wild.fetch_add(1, Ordering::Relaxed);
                let seq = self.next_seq(1);
                let cmd = Command::Allocate {
                    request: SessionRequest {
                        client: ClientId(1),
                        certificate: "client".into(),
                        seq,
                        acked_below: seq,
                    },
                    now: self.now(),
                    ino: InodeId(ino),
                    layout: SliceLayout {
                        policy: policy(ino as u8),
                        data_len,
                        stripe_unit: 3,
                    },
                    placement: placement
                        .into_iter()
                        .map(|id| (id > 0).then_some(ChunkserverId(id)))
                        .collect(),
                    who: None,
                };
                if let Ok(FsReply::Allocated { slice, .. }) = self.remembered(cmd) {
                    self.allocated.insert(slice);
                }
            }
            Step::WildTruncate { ino, size } => {
                self.coverage.wild.fetch_add(1, Ordering::Relaxed);
                let ino = InodeId(ino);
                let set = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let result = self.client_op(2, FsOp::SetAttr { ino, set });
                if let (Ok(_), Some(model)) = (result, self.files.get_mut(&ino)) {
                    model.size = size;
                    model.bytes.split_off(&size);
                }
            }
            Step::WildCluster {
                id,
                state,
                cancel,
                name,
            } => {
                self.coverage.wild.fetch_add(1, Ordering::Relaxed);
                use lattice_common::wire::meta::ChunkserverState as S;
                let (id, now) = (ChunkserverId(id), self.now());
                let state = [S::Up, S::Suspect, S::Down, S::Draining, S::Drained][state as usize];
                self.apply(Command::SetServerState { id, state, now });
                self.apply(Command::Drain {
                    id,
                    cancel,
                    reason: "test".into(),
                    health: Default::default(),
                    now,
                });
                let registration = Registration {
                    addr: format!("127.0.0.1:{}", 9000 + u16::from(name))
                        .parse()
                        .unwrap(),
                    disks: vec![],
                    labels: vec![("rack".into(), format!("r{name}"))],
                };
                self.apply(Command::Register {
                    name: format!("cs-{name}"),
                    registration,
                    now,
                });
                // Revocations, well formed or not: only the former are recorded.
                use lattice_common::pki::Revoke;
                let what = match name % 3 {
                    0 => Revoke::Name(format!("client:c{name}")),
                    1 => Revoke::Serial(format!("{name:x}")),
                    _ => Revoke::Name(format!("client:bad/{name}")),
                };
                let before = self.sm.cluster.revocations().clone();
                let outcome = self.apply(Command::Revoke { what: what.clone() });
                let after = self.sm.cluster.revocations();
                match what.is_valid() {
                    true => prop_assert_eq!(outcome, Outcome::Done),
                    false => prop_assert_eq!(after, &before, "{} was recorded", what),
                }
            }
            Step::WildMove {
                ino,
                chunk,
                slice,
                index,
                to,
            } => {
                self.coverage.wild.fetch_add(1, Ordering::Relaxed);
                self.apply(Command::MoveShard {
                    ino: InodeId(ino),
                    chunk,
                    slice: SliceId(slice),
                    index,
                    from: None,
                    to: ChunkserverId(to),
                });
            }
        }
        Ok(())
    }

    /// Every file reads as its model says; no slice is kept that shows nothing, and every
    /// slice ever handed out is in exactly one place (shown, pending, garbage or collected).
    fn check(&self) -> Result<(), TestCaseError> {
        if let Err(e) = self.sm.ns.check_invariants() {
            return Err(TestCaseError::fail(e));
        }
        let mut shown = BTreeSet::new();
        for (&ino, model) in &self.files {
            let attr = self
                .sm
                .ns
                .attr(ino)
                .map_err(|e| TestCaseError::fail(format!("{ino}: {e:?}")))?;
            prop_assert_eq!(attr.size, model.size, "size of {}", ino);
            let chunks = self.sm.ns.slices(ino, 0, CHUNKS).unwrap();
            let mut visible = 0u64;
            for (chunk, slices) in &chunks {
                prop_assert!(!slices.is_empty(), "an empty chunk is kept");
                let base = chunk * CHUNK_SIZE;
                let mut used = vec![false; slices.len()];
                for seg in chunk_map::resolve(slices, 0, CHUNK_SIZE) {
                    let Some((i, from)) = seg.source else {
                        let written = model.bytes.range(base + seg.start..base + seg.end).next();
                        prop_assert!(
                            written.is_none(),
                            "{ino}: a hole where the model has {written:?}"
                        );
                        continue;
                    };
                    used[i] = true;
                    for x in seg.start..seg.end {
                        let want = model.bytes.get(&(base + x)).copied();
                        let got = self.source(slices[i].slice, from + x - seg.start);
                        prop_assert_eq!(got, want, "{} byte {}", ino, base + x);
                        visible += u64::from(got.is_some());
                    }
                }
                prop_assert!(
                    used.iter().all(|&u| u),
                    "{ino} chunk {chunk} keeps a hidden slice"
                );
                let ids: BTreeSet<SliceId> = slices.iter().map(|s| s.slice).collect();
                if ids.len() < slices.len() {
                    self.coverage.split.fetch_add(1, Ordering::Relaxed);
                }
                shown.extend(ids);
            }
            prop_assert_eq!(
                visible,
                model.bytes.len() as u64,
                "visible bytes of {}",
                ino
            );
        }
        let pending: BTreeSet<SliceId> = self.sm.pending.keys().copied().collect();
        let garbage: BTreeSet<SliceId> = self.sm.garbage.keys().copied().collect();
        prop_assert!(shown.is_disjoint(&garbage), "a slice in use is garbage");
        prop_assert!(shown.is_disjoint(&pending), "a slice in use is pending");
        prop_assert!(pending.is_disjoint(&garbage), "a pending slice is garbage");
        for id in &self.allocated {
            let places = [&shown, &pending, &garbage, &self.forgotten]
                .iter()
                .filter(|s| s.contains(id))
                .count();
            prop_assert_eq!(places, 1, "{} is in {} places", id, places);
        }
        Ok(())
    }
}

fn run_steps(steps: Vec<Step>, coverage: &Coverage) -> Result<(), TestCaseError> {
    let mut run = Run::new(coverage);
    for (n, step) in steps.into_iter().enumerate() {
        let shown = format!("{step:?}");
        run.do_step(step)
            .map_err(|e| TestCaseError::fail(format!("step {n} {shown}: {e}")))?;
        run.check()
            .map_err(|e| TestCaseError::fail(format!("after step {n} {shown}: {e}")))?;
    }
    Ok(())
}

/// The property, with its coverage counted: it must have seen commits that hide several
/// slices at once (the case that once killed every metaserver).
#[test]
fn state_machine_matches_the_model() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(400);
    let coverage = Coverage::default();
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(step(), 1..250), |steps| {
        run_steps(steps, &coverage)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let (commits, several) = (
        coverage.commits.load(Ordering::Relaxed),
        coverage.hid_several.load(Ordering::Relaxed),
    );
    eprintln!(
        "{cases} cases: {commits} commits, {several} of them hiding two or more slices, {} of several ranges, {} compactions, {} re-encodes, {} truncations, {} holes punched ({} checks with a split slice), {} garbage commands",
        coverage.multi_range.load(Ordering::Relaxed),
        coverage.compactions.load(Ordering::Relaxed),
        coverage.reencodes.load(Ordering::Relaxed),
        coverage.truncations.load(Ordering::Relaxed),
        coverage.punches.load(Ordering::Relaxed),
        coverage.split.load(Ordering::Relaxed),
        coverage.wild.load(Ordering::Relaxed),
    );
    // About one per case is typical; a quarter of that means the generator lost its reach.
    assert!(
        several >= cases as u64 / 4,
        "too few commits hid several slices ({several})"
    );
    assert!(
        coverage.reencodes.load(Ordering::Relaxed) >= cases as u64 / 4,
        "too few re-encodes went in"
    );
    assert!(
        coverage.split.load(Ordering::Relaxed) >= cases as u64 / 4,
        "too few holes split a slice"
    );
    assert!(
        coverage.multi_range.load(Ordering::Relaxed) >= cases as u64 / 4,
        "too few commits of several ranges went in"
    );
    assert!(
        coverage.whole_reencodes.load(Ordering::Relaxed) >= cases as u64 / 8,
        "too few whole slices were re-encoded"
    );
}
