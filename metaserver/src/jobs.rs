//! Carrying out background shard work on the leader: every second it asks the core for a
//! plan (see `planner`), has chunkservers rebuild or copy shards peer to peer, commits each
//! new placement through Raft, and removes the shards left behind after a grace period.
//! Everything it knows is soft state: a new leader plans afresh from the replicated state,
//! so work resumes after a failover, and each step can be repeated without harm.

use crate::core::{ask_core, Answer, Input, Inputs};
use crate::deep_scrub;
use crate::gc::{self, Doom, ShardCopy};
use crate::planner::{Busy, Job};
use crate::reencode;
use crate::state_machine::{Command, Outcome};
use futures::stream::{self, StreamExt};
use lattice_common::ids::{ChunkserverId, ShardId, SliceId};
use lattice_common::shard_client::ShardClient;
use lattice_common::slice_io::SliceIo;
use lattice_common::throttle::Throttle;
use lattice_common::wire::meta::{JobKind, JobStatus};
use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Deletes in flight at once.
const PARALLEL_DELETES: usize = 16;

/// How background work is paced.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Shard rebuilds or copies running at once, cluster-wide.
    pub concurrency: usize,
    /// A server is rebalanced when its usage is off its share by more than this fraction.
    pub balance_tolerance: f64,
    /// Shards of deleted data are kept this long (readers may still hold the old map).
    pub gc_grace: Duration,
    /// An allocation not committed within this long is abandoned (its writer died).
    pub pending_grace: Duration,
    /// Shards no metadata names are deleted once older than this.
    pub orphan_grace: Duration,
    /// How often each server's shard list is compared with the metadata.
    pub reconcile_every: Duration,
    /// Bytes per second re-encoded to new policies (0: unlimited).
    pub reencode_rate: u64,
    /// Bytes per second read by the deep scrub (0: no deep scrub).
    pub deep_scrub_rate: u64,
    /// A deep scrub pass starts this long after the previous one began.
    pub deep_scrub_every: Duration,
}

/// Progress of one kind of work since this member became leader.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub done_shards: u64,
    pub done_bytes: u64,
    pub failed: u64,
}

/// What is running and what has been done (read by `status`).
#[derive(Default)]
pub struct Book {
    pub running: BTreeMap<SliceId, Job>,
    /// Slices being re-encoded.
    pub reencoding: BTreeSet<SliceId>,
    /// Slices whose re-encode failed, not tried again before the time given (so a few
    /// that cannot be done do not hold up the others).
    reencode_later: BTreeMap<SliceId, Instant>,
    pub tally: BTreeMap<(JobKind, Option<ChunkserverId>), Tally>,
    /// Copies being deleted: no job re-creates one meanwhile.
    deleting: HashSet<ShardCopy>,
}

impl Book {
    /// Records `job` as running, unless its slice has a job running or the copy it would
    /// create is being deleted (a later plan sees how either ends).
    fn start(&mut self, job: &Job) -> bool {
        let target = ShardCopy {
            shard: job.shard(),
            server: job.to,
        };
        if self.running.contains_key(&job.slice) || self.deleting.contains(&target) {
            return false;
        }
        self.running.insert(job.slice, job.clone());
        true
    }

    /// Marks copies as being deleted, leaving out those a running job is creating (its
    /// commit is about to name them): between this and [`Book::release`], the check
    /// against the metadata and the delete cannot race a job that brings a copy back.
    fn claim(&mut self, copies: Vec<(ShardCopy, Doom)>) -> Vec<(ShardCopy, Doom)> {
        let creating: HashSet<ShardCopy> = self
            .running
            .values()
            .map(|j| ShardCopy {
                shard: j.shard(),
                server: j.to,
            })
            .collect();
        copies
            .into_iter()
            .filter(|(c, _)| !creating.contains(c) && self.deleting.insert(*c))
            .collect()
    }

    fn release(&mut self, copies: &[(ShardCopy, Doom)]) {
        for (c, _) in copies {
            self.deleting.remove(c);
        }
    }

    fn key(job: &Job) -> (JobKind, Option<ChunkserverId>) {
        match job.kind {
            JobKind::Drain => (JobKind::Drain, job.from),
            k => (k, None),
        }
    }

    pub fn note_collected(&mut self, shards: u64, bytes: u64) {
        let t = self.tally.entry((JobKind::Collect, None)).or_default();
        t.done_shards += shards;
        t.done_bytes += bytes;
    }

    /// Rows for `status`, with the backlog the planner sees.
    pub fn status(
        &self,
        backlog: &BTreeMap<(JobKind, Option<ChunkserverId>), crate::planner::Backlog>,
    ) -> Vec<JobStatus> {
        let mut keys: Vec<_> = self.tally.keys().chain(backlog.keys()).copied().collect();
        keys.extend(self.running.values().map(Book::key));
        if !self.reencoding.is_empty() {
            keys.push((JobKind::Reencode, None));
        }
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .map(|key| {
                let t = self.tally.get(&key).copied().unwrap_or_default();
                let b = backlog.get(&key).copied().unwrap_or_default();
                JobStatus {
                    kind: key.0,
                    server: key.1,
                    done_shards: t.done_shards,
                    done_bytes: t.done_bytes,
                    remaining_shards: b.shards,
                    remaining_bytes: b.bytes,
                    running: match key.0 {
                        JobKind::Reencode => self.reencoding.len() as u64,
                        _ => self
                            .running
                            .values()
                            .filter(|j| Book::key(j) == key)
                            .count() as u64,
                    },
                    failed: t.failed,
                }
            })
            .collect()
    }
}

/// Copies left behind by moves, deleted after `gc_grace`: soft state of one leadership term.
#[derive(Default)]
pub struct DeleteQueue {
    /// The term this member leads in (`None`: it does not lead).
    term: Option<u64>,
    queue: VecDeque<(Instant, ShardCopy)>,
}

impl DeleteQueue {
    /// Notes whether, and in which term, this member leads. Leaving a term drops the queue:
    /// what a deposed leader decided may have been undone since, and a new leader works
    /// from the replicated state (copies never deleted are orphans, which reconciliation
    /// removes).
    pub fn lead(&mut self, term: Option<u64>) {
        if term != self.term {
            self.queue.clear();
            self.term = term;
        }
    }

    /// Queues a copy to delete at `at`; dropped unless this member leads.
    pub fn push(&mut self, at: Instant, copy: ShardCopy) {
        if self.term.is_some() {
            self.queue.push_back((at, copy));
        }
    }

    /// Takes the copies due by `now` off the queue.
    pub fn due(&mut self, now: Instant) -> Vec<ShardCopy> {
        let n = self.queue.partition_point(|(at, _)| *at <= now);
        self.queue.drain(..n).map(|(_, c)| c).collect()
    }
}

pub struct Executor {
    pub core: Inputs,
    pub shards: ShardClient,
    pub settings: Settings,
    pub book: Arc<Mutex<Book>>,
    /// Old copies of moved shards, deleted after `gc_grace`.
    pub doomed: Mutex<DeleteQueue>,
    /// Woken when a job ends, so the next one starts without waiting for the tick.
    pub job_ended: tokio::sync::Notify,
    /// Paces re-encoding (`Settings::reencode_rate`).
    pub reencode_rate: Throttle,
    /// Reads and writes whole slices for re-encoding.
    pub slices: SliceIo,
    /// Paces the deep scrub (`Settings::deep_scrub_rate`).
    pub deep_scrub_rate: Throttle,
}

impl Executor {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn doomed(&self) -> std::sync::MutexGuard<'_, DeleteQueue> {
        self.doomed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs for the life of the process; idle unless this member leads.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let collector = Arc::new(gc::Collector::new(self.clone()));
        if self.settings.deep_scrub_rate > 0 {
            tokio::spawn(deep_scrub::run(
                self.clone(),
                self.settings.deep_scrub_every,
            ));
        }
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.job_ended.notified() => {}
            }
            let busy: BTreeMap<SliceId, Busy> = self
                .book()
                .running
                .iter()
                .map(|(&slice, j)| {
                    let busy = Busy {
                        from: j.from,
                        to: j.to,
                        bytes: j.bytes,
                    };
                    (slice, busy)
                })
                .collect();
            let free = self.settings.concurrency.saturating_sub(busy.len());
            let plan = ask_core(&self.core, |reply| Input::Plan {
                busy,
                max_jobs: free,
                reply,
            })
            .await;
            let Ok((term, jobs)) = plan else {
                // Not the leader (any more): what this member started is forgotten.
                self.book().tally.clear();
                self.doomed().lead(None);
                continue;
            };
            self.doomed().lead(Some(term));
            for job in jobs {
                // One job per slice at a time: the next plan sees the first one's result.
                if self.book().start(&job) {
                    tokio::spawn(self.clone().carry_out(job));
                }
            }
            self.start_reencodes().await;
            if collector.due() {
                tokio::spawn(collector.clone().round());
            }
            self.delete_doomed().await;
        }
    }

    async fn carry_out(self: Arc<Self>, job: Job) {
        let result = self.rebuild_and_commit(&job).await;
        let mut book = self.book();
        book.running.remove(&job.slice);
        let t = book.tally.entry(Book::key(&job)).or_default();
        match result {
            Ok(()) => {
                t.done_shards += 1;
                t.done_bytes += job.bytes;
            }
            Err(e) => {
                t.failed += 1;
                warn!(shard = %job.shard(), to = %job.to, kind = ?job.kind, "shard job failed: {e}");
            }
        }
        drop(book);
        self.job_ended.notify_one();
    }

    /// Starts re-encoding slices stored under another policy than their file's, up to
    /// [`reencode::PARALLEL`] at once.
    async fn start_reencodes(self: &Arc<Self>) {
        let (skip, max) = {
            let mut book = self.book();
            let now = Instant::now();
            book.reencode_later.retain(|_, until| *until > now);
            let max = reencode::PARALLEL.saturating_sub(book.reencoding.len());
            let skip: BTreeSet<SliceId> = book
                .reencoding
                .iter()
                .chain(book.reencode_later.keys())
                .copied()
                .collect();
            (skip, max)
        };
        if max == 0 {
            return;
        }
        let Ok(found) = ask_core(&self.core, |reply| Input::Reencodes { skip, max, reply }).await
        else {
            return;
        };
        for c in found {
            self.book().reencoding.insert(c.slice.slice);
            let exec = self.clone();
            tokio::spawn(async move {
                let result = reencode::reencode(&exec, &c).await;
                let mut book = exec.book();
                book.reencoding.remove(&c.slice.slice);
                let t = book.tally.entry((JobKind::Reencode, None)).or_default();
                match result {
                    Ok(bytes) => {
                        t.done_shards += 1;
                        t.done_bytes += bytes;
                    }
                    Err(e) => {
                        t.failed += 1;
                        let retry = Instant::now() + reencode::RETRY_AFTER;
                        book.reencode_later.insert(c.slice.slice, retry);
                        warn!(ino = %c.ino, slice = %c.slice.slice, to = %c.to, "re-encoding failed (retried in {:?}): {e}", reencode::RETRY_AFTER);
                    }
                }
                drop(book);
                exec.job_ended.notify_one();
            });
        }
    }

    async fn rebuild_and_commit(&self, job: &Job) -> Result<(), String> {
        let shard = job.shard();
        self.shards
            .rebuild(
                job.to_addr,
                shard,
                job.layout,
                job.copy_from.clone(),
                job.sources.clone(),
            )
            .await
            .map_err(|e| format!("rebuild on {}: {e}", job.to))?;
        if job.from == Some(job.to) {
            // Rewritten in place (it was damaged): the placement stands.
            let _ = self.core.try_send(Input::Repaired {
                shard,
                server: job.to,
            });
            return Ok(());
        }
        let cmd = Command::MoveShard {
            ino: job.ino,
            chunk: job.chunk,
            slice: job.slice,
            index: job.index,
            from: job.from,
            to: job.to,
        };
        let outcome = ask_core(&self.core, |reply| Input::Propose { cmd, reply }).await;
        match outcome {
            Ok(Outcome::Fs(Ok(_))) => {
                info!(%shard, from = ?job.from, to = %job.to, kind = ?job.kind, "shard moved");
                if let Some(old) = &job.copy_from {
                    self.doom(shard, old.server);
                }
                Ok(())
            }
            Ok(other) => {
                // The slice changed meanwhile (deleted, overwritten, moved): drop the copy.
                self.doom(shard, job.to);
                Err(format!("placement not committed: {other:?}"))
            }
            Err(e) => Err(format!("placement not committed: {e}")),
        }
    }

    fn doom(&self, shard: ShardId, server: ChunkserverId) {
        let at = Instant::now() + self.settings.gc_grace;
        self.doomed().push(at, ShardCopy { shard, server });
    }

    async fn delete_doomed(&self) {
        let due = self.doomed().due(Instant::now());
        if due.is_empty() {
            return;
        }
        let copies = due.into_iter().map(|c| (c, Doom::Unnamed)).collect();
        if let Err(e) = self.delete(copies).await {
            warn!("old copies left for reconciliation: {e}");
        }
    }

    /// Deletes those of `copies` that the replicated state lets go now (see
    /// [`gc::deletable`]); returns how many were deleted. Fails, deleting nothing, unless
    /// this member still leads with everything committed applied (a linearizable read).
    pub async fn delete(&self, copies: Vec<(ShardCopy, Doom)>) -> Answer<u64> {
        let claimed = self.book().claim(copies);
        let check = claimed.clone();
        let checked = ask_core(&self.core, |reply| Input::Deletable {
            copies: check,
            reply,
        })
        .await;
        let deleted = match checked {
            Ok(ok) => {
                stream::iter(ok)
                    .map(|(c, addr)| async move {
                        match self.shards.delete(addr, c.shard).await {
                            Ok(_) => 1u64,
                            Err(e) => {
                                warn!(shard = %c.shard, server = %c.server, %addr, "deleting a shard copy failed (reconciliation retries): {e}");
                                0
                            }
                        }
                    })
                    .buffer_unordered(PARALLEL_DELETES)
                    .fold(0u64, |n, d| async move { n + d })
                    .await
            }
            Err(e) => {
                self.book().release(&claimed);
                return Err(e);
            }
        };
        self.book().release(&claimed);
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_common::ids::InodeId;
    use lattice_common::layout::SliceLayout;

    fn copy(slice: u64, server: u32) -> ShardCopy {
        ShardCopy {
            shard: ShardId::new(SliceId(slice), 0),
            server: ChunkserverId(server),
        }
    }

    #[test]
    fn a_leadership_change_drops_queued_deletes() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let mut q = DeleteQueue::default();
        q.push(t0, copy(1, 1));
        assert!(q.due(later).is_empty(), "queued while not leading");

        q.lead(Some(3));
        q.push(t0, copy(1, 1));
        q.push(later, copy(2, 1));
        q.lead(Some(3));
        assert_eq!(q.due(t0), [copy(1, 1)], "kept within the term, in order");
        assert!(q.due(t0).is_empty());

        // Deposed: nothing it queued is deleted, even if it leads again later.
        q.lead(None);
        q.lead(Some(3));
        assert!(q.due(later).is_empty());
        q.push(t0, copy(3, 1));
        // Re-elected between two looks (a later term): dropped as well.
        q.lead(Some(5));
        assert!(q.due(later).is_empty());
    }

    #[test]
    fn a_copy_being_deleted_is_not_recreated_meanwhile() {
        let layout = SliceLayout::new("mirror:2".parse().unwrap(), 1000, 65536).unwrap();
        let job = |slice: u64, to: u32| Job {
            kind: JobKind::Rebalance,
            ino: InodeId(2),
            chunk: 0,
            slice: SliceId(slice),
            layout,
            index: 0,
            from: Some(ChunkserverId(9)),
            to: ChunkserverId(to),
            to_addr: "127.0.0.1:9000".parse().unwrap(),
            copy_from: None,
            sources: vec![],
            bytes: 1000,
        };
        let mut book = Book::default();
        // A job moving shard 0 of slice 1 back to server 1 runs: its copy there is spared.
        assert!(book.start(&job(1, 1)));
        let claimed = book.claim(vec![
            (copy(1, 1), Doom::Unnamed),
            (copy(2, 1), Doom::Unnamed),
        ]);
        assert_eq!(claimed, [(copy(2, 1), Doom::Unnamed)]);
        // While that copy is being deleted, no job re-creates it; one elsewhere may start.
        assert!(!book.start(&job(2, 1)));
        assert!(book.start(&job(2, 3)));
        // Nor is a copy claimed twice by concurrent deleters.
        assert!(book.claim(vec![(copy(2, 1), Doom::Unnamed)]).is_empty());
        book.release(&claimed);
        book.running.clear();
        assert!(book.start(&job(2, 1)));
    }
}
