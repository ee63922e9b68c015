//! Garbage collection on the leader: shards of deleted or overwritten slices (after a grace
//! period, since readers may still hold the old slice map), allocations whose writer never
//! committed, and orphan shards that no metadata names (left by failed writes, interrupted
//! moves, or a server that was away while its shards were rebuilt elsewhere). A shard
//! still named by the metadata is never deleted: every delete is checked against the
//! replicated state as it is when the delete is sent ([`deletable`]), not as it was when the
//! delete was decided. Each server's shard list is also compared with the metadata the other
//! way: a named shard that is missing is reported for repair.

use crate::core::{ask_core, Input};
use crate::jobs::Executor;
use crate::state_machine::{Command, StateMachine};
use lattice_common::ids::{ChunkserverId, ShardId, SliceId};
use lattice_common::wire::MAX_LIST_PAGE;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// A collection round starts at most this often.
const ROUND_EVERY: Duration = Duration::from_secs(5);

/// One copy of a shard: the server holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardCopy {
    pub shard: ShardId,
    pub server: ChunkserverId,
}

/// Why a copy is to be deleted, which decides what the metadata must say for it to go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doom {
    /// Left behind by a move, or listed by its server and named nowhere (an orphan): it
    /// goes only while the metadata names it nowhere.
    Unnamed,
    /// Of a garbage slice: it goes only while the slice is garbage with this copy in its
    /// placement.
    Garbage,
}

/// The copies of `doomed` that may be deleted now by the replicated state `sm`, each with
/// its server's address now. A copy that a file's slice or a pending allocation places on
/// its server is never deleted (it was moved back there, say, since it was doomed); an
/// unnamed copy that garbage names is left to the collection of that garbage; a copy on a
/// server the cluster map does not know is left alone.
pub fn deletable(sm: &StateMachine, doomed: &[(ShardCopy, Doom)]) -> Vec<(ShardCopy, SocketAddr)> {
    let slices: HashSet<SliceId> = doomed.iter().map(|(c, _)| c.shard.slice).collect();
    let copies = |slice: SliceId, placement: &[Option<ChunkserverId>]| {
        placement
            .iter()
            .enumerate()
            .filter_map(move |(i, p)| {
                let server = (*p)?;
                let shard = ShardId::new(slice, i as u16);
                Some(ShardCopy { shard, server })
            })
            .collect::<Vec<_>>()
    };
    let mut live = HashSet::new();
    for (_, _, s) in sm
        .ns
        .all_slices()
        .filter(|(_, _, s)| slices.contains(&s.slice))
    {
        live.extend(copies(s.slice, &s.placement));
    }
    let mut garbage = HashSet::new();
    for &slice in &slices {
        if let Some(p) = sm.pending.get(&slice) {
            live.extend(copies(slice, &p.placement));
        }
        if let Some(g) = sm.garbage.get(&slice) {
            garbage.extend(copies(slice, &g.placement));
        }
    }
    doomed
        .iter()
        .filter(|(c, why)| {
            !live.contains(c)
                && match why {
                    Doom::Unnamed => !garbage.contains(c),
                    Doom::Garbage => garbage.contains(c),
                }
        })
        .filter_map(|&(c, _)| Some((c, sm.cluster.get(c.server)?.addr)))
        .collect()
}

/// A garbage slice past its grace period: its shards on servers that answer.
#[derive(Debug)]
pub struct GarbageSlice {
    pub slice: SliceId,
    pub bytes: u64,
    pub shards: Vec<ShardCopy>,
}

/// Work the core hands out for one round.
#[derive(Debug, Default)]
pub struct GcWork {
    pub garbage: Vec<GarbageSlice>,
    /// Allocations past their grace period.
    pub abandon: Vec<SliceId>,
    /// Servers whose shards can be listed now, and whether each is draining.
    pub servers: Vec<(ChunkserverId, SocketAddr, bool)>,
}

/// What the metadata expects one server to hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// Shards of committed slices placed there.
    pub committed: HashSet<ShardId>,
    /// Shards of pending allocations and of garbage not yet collected.
    pub transient: HashSet<ShardId>,
}

pub struct Collector {
    exec: Arc<Executor>,
    running: AtomicBool,
    last_round: Mutex<Option<Instant>>,
    reconciled: Mutex<HashMap<ChunkserverId, Instant>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Collector {
    pub fn new(exec: Arc<Executor>) -> Self {
        Collector {
            exec,
            running: AtomicBool::new(false),
            last_round: Mutex::new(None),
            reconciled: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a round should start now (none running, the last one long enough ago).
    pub fn due(&self) -> bool {
        let last = *self.last_round.lock().unwrap_or_else(|p| p.into_inner());
        !self.running.load(Ordering::Acquire) && last.is_none_or(|t| t.elapsed() >= ROUND_EVERY)
    }

    pub async fn round(self: Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let work = ask_core(&self.exec.core, |reply| Input::GcWork { reply }).await;
        if let Ok(work) = work {
            self.collect_garbage(work.garbage).await;
            if !work.abandon.is_empty() {
                info!(
                    slices = work.abandon.len(),
                    "abandoning allocations never committed"
                );
                let cmd = Command::AbandonPending {
                    slices: work.abandon,
                    now: lattice_common::fs::Timestamp::now(),
                };
                let _ = ask_core(&self.exec.core, |reply| Input::Propose { cmd, reply }).await;
            }
            self.reconcile_one(&work.servers).await;
        }
        *self.last_round.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        self.running.store(false, Ordering::Release);
    }

    async fn collect_garbage(&self, garbage: Vec<GarbageSlice>) {
        if garbage.is_empty() {
            return;
        }
        let copies = garbage
            .iter()
            .flat_map(|g| g.shards.iter().map(|&c| (c, Doom::Garbage)))
            .collect();
        let deleted = match self.exec.delete(copies).await {
            Ok(n) => n,
            Err(e) => {
                warn!("garbage left for a later round: {e}");
                return;
            }
        };
        let bytes = garbage.iter().map(|g| g.bytes).sum();
        let slices: Vec<SliceId> = garbage.into_iter().map(|g| g.slice).collect();
        info!(slices = slices.len(), shards = deleted, "garbage collected");
        self.exec
            .book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .note_collected(deleted, bytes);
        let cmd = Command::ForgetGarbage { slices };
        let _ = ask_core(&self.exec.core, |reply| Input::Propose { cmd, reply }).await;
    }

    /// Compares the shard list of the server reconciled longest ago (if due) with the
    /// metadata: deletes orphans, reports missing shards.
    async fn reconcile_one(&self, servers: &[(ChunkserverId, SocketAddr, bool)]) {
        let every = self.exec.settings.reconcile_every;
        let next = {
            let done = self.reconciled.lock().unwrap_or_else(|p| p.into_inner());
            servers
                .iter()
                .filter(|(id, _, _)| done.get(id).is_none_or(|t| t.elapsed() >= every))
                .min_by_key(|(id, _, _)| done.get(id).copied())
                .copied()
        };
        let Some((server, addr, draining)) = next else {
            return;
        };
        if let Err(e) = self.reconcile(server, addr, draining).await {
            warn!(%server, "reconciling shards failed: {e}");
        }
        self.reconciled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server, Instant::now());
    }

    async fn reconcile(
        &self,
        server: ChunkserverId,
        addr: SocketAddr,
        draining: bool,
    ) -> Result<(), String> {
        // Taken before the listing: a shard placed here meanwhile is simply not checked.
        let expected = ask_core(&self.exec.core, |reply| Input::Expected { server, reply })
            .await
            .map_err(|e| e.to_string())?;
        let client = &self.exec.shards;
        let mut listed = HashSet::new();
        let mut orphans = Vec::new();
        let young = unix_now().saturating_sub(self.exec.settings.orphan_grace.as_secs());
        let mut after = None;
        loop {
            let (page, more) = client
                .list(addr, after, MAX_LIST_PAGE)
                .await
                .map_err(|e| e.to_string())?;
            for info in &page {
                listed.insert(info.shard);
                let named = expected.committed.contains(&info.shard)
                    || expected.transient.contains(&info.shard);
                // Nothing is ever placed on a draining server, so its unnamed shards are
                // orphans however young.
                if !named && (draining || info.stored_secs < young) {
                    orphans.push(info.shard);
                }
            }
            after = page.last().map(|i| i.shard);
            if !more || after.is_none() {
                break;
            }
        }
        for shard in expected.committed.difference(&listed) {
            warn!(%shard, %server, "a shard the metadata places here is missing: rebuilding it");
            let _ = self.exec.core.try_send(Input::Damaged {
                shard: *shard,
                server,
            });
        }
        if orphans.is_empty() {
            return Ok(());
        }
        info!(%server, shards = orphans.len(), "deleting orphan shards");
        let copies = orphans
            .into_iter()
            .map(|shard| (ShardCopy { shard, server }, Doom::Unnamed))
            .collect();
        self.exec.delete(copies).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::{Outcome, SessionRequest};
    use lattice_common::chunk_map::SliceRef;
    use lattice_common::fs::{Caller, FileKind, Timestamp};
    use lattice_common::ids::{ClientId, InodeId};
    use lattice_common::layout::SliceLayout;
    use lattice_common::wire::meta::{FsOp, FsReply, Registration};
    use std::collections::BTreeMap;

    /// A state machine fed commands the way the Raft log feeds it.
    struct Sm {
        sm: StateMachine,
        index: u64,
        seq: u64,
    }

    impl Sm {
        fn new(servers: u32) -> Sm {
            let mut sm = Sm {
                sm: StateMachine::new(BTreeMap::new()),
                index: 0,
                seq: 0,
            };
            for n in 1..=servers {
                let registration = Registration {
                    addr: format!("127.0.0.1:{}", 9000 + n).parse().unwrap(),
                    disks: vec![],
                    labels: vec![],
                };
                let name = format!("cs-{n}");
                let now = Timestamp::default();
                let cmd = Command::Register {
                    name,
                    registration,
                    now,
                };
                assert_eq!(sm.apply(cmd), Outcome::Registered(ChunkserverId(n)));
            }
            sm
        }

        fn apply(&mut self, cmd: Command) -> Outcome {
            self.index += 1;
            self.sm.apply(self.index, cmd)
        }

        fn fs(&mut self, op: FsOp) -> FsReply {
            self.seq += 1;
            let cmd = Command::Fs {
                request: SessionRequest {
                    client: ClientId(1),
                    certificate: "client".into(),
                    seq: self.seq,
                    acked_below: self.seq,
                },
                now: Timestamp::default(),
                op,
                who: None,
            };
            match self.apply(cmd) {
                Outcome::Fs(Ok(reply)) => reply,
                other => panic!("{other:?}"),
            }
        }

        fn create(&mut self, name: &str) -> InodeId {
            let op = FsOp::Mknod {
                parent: InodeId::ROOT,
                name: name.as_bytes().to_vec(),
                kind: FileKind::File,
                perm: 0o644,
                umask: 0,
                rdev: 0,
                caller: Caller::ROOT,
            };
            match self.fs(op) {
                FsReply::Made { attr: a, .. } => a.ino,
                other => panic!("{other:?}"),
            }
        }

        /// Allocates a two-copy slice of `ino` on `on`; commits it unless `pending`.
        fn slice(&mut self, ino: InodeId, on: [u32; 2], pending: bool) -> SliceId {
            let layout = SliceLayout::new("mirror:2".parse().unwrap(), 1000, 65536).unwrap();
            let placement: Vec<_> = on.iter().map(|&s| Some(ChunkserverId(s))).collect();
            self.seq += 1;
            let cmd = Command::Allocate {
                request: SessionRequest {
                    client: ClientId(1),
                    certificate: "client".into(),
                    seq: self.seq,
                    acked_below: self.seq,
                },
                now: Timestamp::default(),
                ino,
                layout,
                placement: placement.clone(),
                who: None,
            };
            let Outcome::Fs(Ok(FsReply::Allocated { slice, .. })) = self.apply(cmd) else {
                panic!("allocation refused");
            };
            if !pending {
                let slice = SliceRef {
                    slice,
                    layout,
                    placement,
                    chunk_offset: 0,
                    skip: 0,
                    len: 1000,
                };
                self.fs(FsOp::CommitSlice {
                    ino,
                    chunk: 0,
                    slice,
                });
            }
            slice
        }

        fn move_shard(&mut self, ino: InodeId, slice: SliceId, from: u32, to: u32) {
            let cmd = Command::MoveShard {
                ino,
                chunk: 0,
                slice,
                index: 0,
                from: Some(ChunkserverId(from)),
                to: ChunkserverId(to),
            };
            assert_eq!(self.apply(cmd), Outcome::Fs(Ok(FsReply::Done)));
        }

        /// Which of `copies` (shard 0 of `slice` on each server) may go, by their servers.
        fn deletable(&self, slice: SliceId, on: &[u32], why: Doom) -> Vec<u32> {
            let doomed: Vec<(ShardCopy, Doom)> =
                on.iter().map(|&s| (copy(slice, s), why)).collect();
            deletable(&self.sm, &doomed)
                .into_iter()
                .map(|(c, addr)| {
                    assert_eq!(addr.port(), 9000 + c.server.0 as u16, "stale address");
                    c.server.0
                })
                .collect()
        }
    }

    fn copy(slice: SliceId, server: u32) -> ShardCopy {
        ShardCopy {
            shard: ShardId::new(slice, 0),
            server: ChunkserverId(server),
        }
    }

    #[test]
    fn a_copy_moved_back_before_its_delete_is_kept() {
        let mut sm = Sm::new(4);
        let ino = sm.create("f");
        let x = sm.slice(ino, [1, 2], false);
        // Moved off server 1 (a drain, say): the copy left there is doomed.
        sm.move_shard(ino, x, 1, 3);
        assert_eq!(sm.deletable(x, &[1], Doom::Unnamed), [1]);
        // Before the grace period ends the shard moves back (the drain was cancelled and the
        // rebalancer chose server 1 again): the queued delete must not take it.
        sm.move_shard(ino, x, 3, 1);
        assert_eq!(sm.deletable(x, &[1, 3], Doom::Unnamed), [3]);
        // Shard 1 of the slice was never moved: its copy on server 2 stays too.
        let other = (
            ShardCopy {
                shard: ShardId::new(x, 1),
                server: ChunkserverId(2),
            },
            Doom::Unnamed,
        );
        assert!(deletable(&sm.sm, &[other]).is_empty());
        // A server the cluster map does not know is not sent anything.
        assert!(sm.deletable(x, &[9], Doom::Unnamed).is_empty());
    }

    #[test]
    fn a_pending_allocation_keeps_its_copies() {
        let mut sm = Sm::new(3);
        let ino = sm.create("f");
        let y = sm.slice(ino, [1, 2], true);
        assert!(sm.deletable(y, &[1], Doom::Unnamed).is_empty());
        assert_eq!(sm.deletable(y, &[3], Doom::Unnamed), [3]);
    }

    #[test]
    fn garbage_copies_go_only_while_garbage() {
        let mut sm = Sm::new(3);
        let ino = sm.create("f");
        let x = sm.slice(ino, [1, 2], false);
        // Still a file's data: not garbage, whatever the collector was told.
        assert!(sm.deletable(x, &[1], Doom::Garbage).is_empty());
        sm.fs(FsOp::Unlink {
            parent: InodeId::ROOT,
            name: b"f".to_vec(),
        });
        let now = Timestamp::default();
        sm.apply(Command::Reap { ino, now });
        assert!(sm.sm.garbage.contains_key(&x), "unlinked data is garbage");
        assert_eq!(sm.deletable(x, &[1, 3], Doom::Garbage), [1]);
        // Unnamed copies of garbage are left to the collector.
        assert!(sm.deletable(x, &[1], Doom::Unnamed).is_empty());
        sm.apply(Command::ForgetGarbage { slices: vec![x] });
        assert!(sm.deletable(x, &[1], Doom::Garbage).is_empty());
        assert_eq!(sm.deletable(x, &[1], Doom::Unnamed), [1]);
    }
}
