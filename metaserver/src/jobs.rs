//! Carrying out background shard work on the leader: every second it asks the core for a
//! plan (see `planner`), has chunkservers rebuild or copy shards peer to peer, commits each
//! new placement through Raft, and removes the shards left behind after a grace period.
//! Everything it knows is soft state: a new leader plans afresh from the replicated state,
//! so work resumes after a failover, and each step can be repeated without harm.

use crate::core::{ask_core, Input};
use crate::gc;
use crate::planner::{Busy, Job};
use crate::state_machine::{Command, Outcome};
use lattice_common::ids::{ChunkserverId, ShardId, SliceId};
use lattice_common::shard_client::ShardClient;
use lattice_common::wire::meta::{JobKind, JobStatus};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

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
    pub tally: BTreeMap<(JobKind, Option<ChunkserverId>), Tally>,
}

impl Book {
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
                    running: self
                        .running
                        .values()
                        .filter(|j| Book::key(j) == key)
                        .count() as u64,
                    failed: t.failed,
                }
            })
            .collect()
    }
}

/// A shard to delete once its grace period is over.
pub struct Doomed {
    pub at: Instant,
    pub addr: SocketAddr,
    pub shard: ShardId,
}

pub struct Executor {
    pub core: mpsc::Sender<Input>,
    pub shards: ShardClient,
    pub settings: Settings,
    pub book: Arc<Mutex<Book>>,
    /// Old copies of moved shards, deleted after `gc_grace`.
    pub doomed: Mutex<VecDeque<Doomed>>,
    /// Woken when a job ends, so the next one starts without waiting for the tick.
    pub job_ended: tokio::sync::Notify,
}

impl Executor {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs for the life of the process; idle unless this member leads.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let collector = Arc::new(gc::Collector::new(self.clone()));
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
            let Ok(jobs) = plan else {
                // Not the leader (any more): what this member started is forgotten.
                self.book().tally.clear();
                continue;
            };
            for job in jobs {
                // One job per slice at a time: the next plan sees the first one's result.
                if self.book().running.contains_key(&job.slice) {
                    continue;
                }
                self.book().running.insert(job.slice, job.clone());
                tokio::spawn(self.clone().carry_out(job));
            }
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
            let _ = self.core.send(Input::Repaired {
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
                    self.doom(old.addr, shard);
                }
                Ok(())
            }
            Ok(other) => {
                // The slice changed meanwhile (deleted, overwritten, moved): drop the copy.
                self.doom(job.to_addr, shard);
                Err(format!("placement not committed: {other:?}"))
            }
            Err(e) => Err(format!("placement not committed: {e}")),
        }
    }

    pub fn doom(&self, addr: SocketAddr, shard: ShardId) {
        let at = Instant::now() + self.settings.gc_grace;
        let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
        doomed.push_back(Doomed { at, addr, shard });
    }

    async fn delete_doomed(&self) {
        loop {
            let next = {
                let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
                match doomed.front() {
                    Some(d) if d.at <= Instant::now() => doomed.pop_front(),
                    _ => None,
                }
            };
            let Some(d) = next else { return };
            if let Err(e) = self.shards.delete(d.addr, d.shard).await {
                warn!(shard = %d.shard, addr = %d.addr, "deleting an old copy failed (reconcile will retry): {e}");
            }
        }
    }
}
