//! Garbage collection on the leader: shards of deleted or overwritten slices (after a grace
//! period, since readers may still hold the old slice map), allocations whose writer never
//! committed, and orphan shards that no metadata names (left by failed writes, interrupted
//! moves, or a server that was away while its shards were rebuilt elsewhere). A shard
//! still named by the metadata is never deleted. Each server's shard list is also compared
//! with the metadata the other way: a named shard that is missing is reported for repair.

use crate::core::{ask_core, Input};
use crate::jobs::Executor;
use crate::state_machine::Command;
use futures::stream::{self, StreamExt};
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
/// Deletes in flight at once.
const PARALLEL_DELETES: usize = 16;

/// A garbage slice past its grace period: its shards on servers that answer.
#[derive(Debug)]
pub struct GarbageSlice {
    pub slice: SliceId,
    pub bytes: u64,
    pub shards: Vec<(ShardId, SocketAddr)>,
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
        let shards: Vec<(ShardId, SocketAddr)> =
            garbage.iter().flat_map(|g| g.shards.clone()).collect();
        let client = &self.exec.shards;
        let deleted = stream::iter(shards)
            .map(|(shard, addr)| async move {
                match client.delete(addr, shard).await {
                    Ok(_) => 1u64,
                    Err(e) => {
                        warn!(%shard, %addr, "deleting a garbage shard failed (reconcile will retry): {e}");
                        0
                    }
                }
            })
            .buffer_unordered(PARALLEL_DELETES)
            .fold(0u64, |n, d| async move { n + d })
            .await;
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
            let _ = self.exec.core.send(Input::Damaged {
                shard: *shard,
                server,
            });
        }
        if !orphans.is_empty() {
            info!(%server, shards = orphans.len(), "deleting orphan shards");
        }
        for shard in orphans {
            if let Err(e) = client.delete(addr, shard).await {
                warn!(%shard, %server, "deleting an orphan failed: {e}");
            }
        }
        Ok(())
    }
}
