//! Background verification of every block checksum, at a bounded rate. A damaged shard
//! (found here, or by a client's read) is queued for the metaserver, which has it rebuilt
//! from parity onto this server.

use crate::service::{blocking, IO_PIECE};
use crate::store::{Store, StoreError};
use lattice_common::ids::ShardId;
use lattice_common::throttle::Throttle;
use lattice_common::wire::ScrubProgress;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Most damaged shards waiting to be reported; more are found again by the next pass.
const MAX_QUEUED_REPORTS: usize = 10_000;
/// Shards listed per step of a pass.
const LIST_PAGE: usize = 1024;

pub struct Scrubber {
    store: Arc<Store>,
    throttle: Throttle,
    /// A pass starts this long after the previous one started (or at once if it took longer).
    every: Duration,
    progress: Mutex<ScrubProgress>,
    reports: Mutex<BTreeSet<ShardId>>,
}

impl Scrubber {
    pub fn new(store: Arc<Store>, bytes_per_sec: u64, every: Duration) -> Self {
        Scrubber {
            store,
            throttle: Throttle::new(bytes_per_sec),
            every,
            progress: Mutex::default(),
            reports: Mutex::default(),
        }
    }

    pub fn progress(&self) -> ScrubProgress {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a damaged shard for reporting.
    pub fn report(&self, shard: ShardId) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if reports.len() < MAX_QUEUED_REPORTS {
            reports.insert(shard);
        }
    }

    /// Damaged shards not yet reported (they stay queued until `reported`).
    pub fn pending_reports(&self) -> Vec<ShardId> {
        let reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        reports.iter().copied().collect()
    }

    pub fn reported(&self, shard: ShardId) {
        self.reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&shard);
    }

    fn update(&self, f: impl FnOnce(&mut ScrubProgress)) {
        f(&mut self.progress.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs passes for the life of the process.
    pub async fn run(self: Arc<Self>) {
        loop {
            let started = Instant::now();
            self.pass().await;
            tokio::time::sleep(self.every.saturating_sub(started.elapsed())).await;
        }
    }

    async fn pass(&self) {
        let total = self.store.shard_count() as u64;
        self.update(|p| {
            p.shards_checked = 0;
            p.bytes_checked = 0;
            p.shards_total = total;
        });
        let mut after = None;
        loop {
            let (page, more) = self.store.list(after, LIST_PAGE);
            for info in &page {
                self.verify(info.shard).await;
            }
            after = page.last().map(|i| i.shard);
            if !more || after.is_none() {
                break;
            }
        }
        let p = self.progress();
        info!(
            shards = p.shards_checked,
            bytes = p.bytes_checked,
            damaged = p.damaged,
            "scrub pass done"
        );
        self.update(|p| p.passes += 1);
    }

    /// Reads every block of one shard; reports it if any fails.
    async fn verify(&self, shard: ShardId) {
        let store = self.store.clone();
        let reader = match blocking(move || store.open_reader(shard)).await {
            Ok(r) => Arc::new(r),
            Err(e) => return self.failed(shard, e),
        };
        let len = reader.header.shard_len();
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(IO_PIECE as u64);
            self.throttle.take(n).await;
            let (store, r) = (self.store.clone(), reader.clone());
            if let Err(e) = blocking(move || store.read(&r, pos, n)).await {
                return self.failed(shard, e);
            }
            pos += n;
            self.update(|p| p.bytes_checked += n);
        }
        self.update(|p| p.shards_checked += 1);
    }

    /// A checksum mismatch is damage to repair; an I/O error is left to the health
    /// counters (it may pass, and enough of them drain the server).
    fn failed(&self, shard: ShardId, e: StoreError) {
        self.update(|p| p.shards_checked += 1);
        match e {
            StoreError::NotFound(_) => {}
            StoreError::Corrupt(_) => {
                warn!(%shard, "scrub found a damaged shard: {e}");
                self.update(|p| p.damaged += 1);
                self.report(shard);
            }
            e => warn!(%shard, "scrub could not read a shard: {e}"),
        }
    }
}
