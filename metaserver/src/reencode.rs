//! Live re-encoding: when a file's policy changes (`setfattr -n lattice.policy`, or the
//! cluster default for files without their own), the leader rewrites its slices under the
//! new policy in the background. For each healthy slice it reads every shard and checks
//! them against each other (a bad shard is repaired first, never copied), stores what the
//! slice shows as a new slice under the file's policy, whole (a re-encode never leaves data
//! less protected than it found it), and swaps it in (`Command::Reencode`) only if the old
//! slice still shows exactly that.
//!
//! The file stays readable and writable throughout: a write lands as a newer slice, which
//! stays on top of the swapped one; a truncation or compaction that changed the slice
//! meanwhile makes the swap fail, and the next plan finds what is left. Old shards become
//! garbage only once the swap is committed, and are deleted after the grace period. Nothing
//! here is remembered beyond the replicated state, so a new leader resumes where the old
//! one stopped (an allocation it never committed is abandoned and collected).

use crate::core::{ask_core, Input};
use crate::deep_scrub::{read_checked, Checked};
use crate::jobs::Executor;
use crate::planner::{Backlog, ServerView};
use crate::state_machine::{Command, Outcome, StateMachine};
use bytes::Bytes;
use lattice_common::chunk_map::SliceRef;
use lattice_common::fs::Timestamp;
use lattice_common::ids::{ChunkserverId, InodeId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::policy::Policy;
use lattice_common::slice_io::ShardTarget;
use lattice_common::wire::meta::{FsReply, ServerAddr};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// Slices re-encoded at once, cluster-wide (each also waits for the byte-rate limit).
pub const PARALLEL: usize = 2;
/// A slice whose re-encode failed waits this long before the next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// One slice stored under another policy than its file's.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub ino: InodeId,
    pub chunk: u64,
    pub slice: SliceRef,
    pub to: Policy,
    /// The chunk shows the slice through several references (a flush of scattered
    /// writes): the whole slice is re-encoded once, for all of them.
    pub whole: bool,
    /// Where its shards can be read (`None`: placed nowhere readable now).
    pub targets: Vec<Option<ShardTarget>>,
}

impl Candidate {
    /// The bytes of the old slice the new one holds: (from, len) in its data.
    fn span(&self) -> (u64, u64) {
        match self.whole {
            true => (0, self.slice.layout.data_len),
            false => (self.slice.skip, self.slice.len),
        }
    }
}

/// Up to `max` slices to re-encode, leaving out `skip` (being re-encoded, or failed a
/// moment ago) and slices with a shard not readable now (repair comes first: a re-encode
/// reads and checks every shard, so it never copies a bad one into the new slice); and how
/// much is left in all (slices, bytes).
pub fn find(
    sm: &StateMachine,
    servers: &BTreeMap<ChunkserverId, ServerView>,
    skip: &BTreeSet<SliceId>,
    max: usize,
) -> (Vec<Candidate>, Backlog) {
    let mut found = Vec::new();
    let mut backlog = Backlog::default();
    let mut targets_of: HashMap<InodeId, Option<Policy>> = HashMap::new();
    for (ino, chunk, s) in sm.ns.all_slices() {
        let to = *targets_of
            .entry(ino)
            .or_insert_with(|| sm.target_policy(ino));
        let Some(to) = to.filter(|&p| p != s.layout.policy) else {
            continue;
        };
        backlog.shards += 1;
        backlog.bytes += s.len;
        if found.len() >= max || skip.contains(&s.slice) {
            continue;
        }
        let targets = read_targets(s, servers);
        if targets.iter().all(Option::is_some) {
            found.push(Candidate {
                ino,
                chunk,
                slice: s.clone(),
                to,
                whole: sm.ns.references(ino, chunk, s.slice) > 1,
                targets,
            });
        }
    }
    (found, backlog)
}

/// Where each shard of `s` can be read now (`None`: placed nowhere readable).
pub fn read_targets(
    s: &SliceRef,
    servers: &BTreeMap<ChunkserverId, ServerView>,
) -> Vec<Option<ShardTarget>> {
    s.placement
        .iter()
        .map(|p| {
            let id = (*p)?;
            let v = servers.get(&id).filter(|v| v.readable())?;
            Some(ShardTarget {
                server: id,
                addr: v.addr,
            })
        })
        .collect()
}

/// Re-encodes one slice; returns the bytes rewritten. The new slice goes in only whole:
/// every shard placed and stored (a re-encode must not leave data less protected than it
/// found it), from shards checked against each other.
pub async fn reencode(exec: &Executor, c: &Candidate) -> Result<u64, String> {
    let old = &c.slice;
    let (from, len) = c.span();
    let allocated = ask_core(&exec.core, |reply| Input::Reserve {
        ino: c.ino,
        policy: c.to,
        len,
        reply,
    })
    .await
    .map_err(|e| format!("allocating: {e}"))?;
    let Outcome::Fs(Ok(FsReply::Allocated {
        slice,
        layout,
        placement,
        ..
    })) = allocated
    else {
        return Err(format!("allocating: {allocated:?}"));
    };
    let stored = store(exec, c, slice, layout, &placement).await;
    let new = match stored {
        Ok(placed) => SliceRef {
            slice,
            layout,
            placement: placed,
            chunk_offset: old.chunk_offset,
            skip: old.skip - from,
            len: old.len,
        },
        Err(e) => {
            abandon(exec, slice).await;
            return Err(e);
        }
    };
    let cmd = Command::Reencode {
        ino: c.ino,
        chunk: c.chunk,
        old: old.clone(),
        new,
        now: Timestamp::now(),
    };
    match ask_core(&exec.core, |reply| Input::Propose { cmd, reply }).await {
        Ok(Outcome::Fs(Ok(_))) => Ok(len),
        other => {
            // Changed meanwhile (truncated, compacted, removed): the next plan sees what is left.
            abandon(exec, slice).await;
            Err(format!("not swapped in: {other:?}"))
        }
    }
}

/// Reads what the old slice shows, or all of it (every shard, checked), and stores it
/// whole as `slice`.
async fn store(
    exec: &Executor,
    c: &Candidate,
    slice: SliceId,
    layout: SliceLayout,
    placement: &[Option<ServerAddr>],
) -> Result<Vec<Option<ChunkserverId>>, String> {
    let targets: Vec<Option<ShardTarget>> = placement
        .iter()
        .map(|s| s.as_ref().map(ShardTarget::from))
        .collect();
    if targets.iter().any(Option::is_none) {
        return Err(format!(
            "too few servers for a whole {} slice",
            layout.policy
        ));
    }
    let old = &c.slice;
    let data_shards = match read_checked(exec, old, &c.targets, &exec.reencode_rate, true).await {
        Checked::Consistent(Some(shards), _) => shards,
        Checked::Consistent(None, _) | Checked::Unreadable => {
            return Err("reading: not every shard could be read".into())
        }
        Checked::Mismatch(what) => return Err(format!("reading: {what}")),
    };
    let whole = 0..old.layout.shard_len();
    let ranges = vec![Some(whole); data_shards.len()];
    let bufs: Vec<Option<&Vec<u8>>> = data_shards.iter().map(Some).collect();
    let (from, len) = c.span();
    let data = old
        .layout
        .assemble(from, len, &ranges, &bufs)
        .map_err(|e| format!("reading: {e}"))?;
    exec.slices
        .write(slice, layout, Bytes::from(data), &targets)
        .await
        .map_err(|e| format!("writing: {e}"))?;
    Ok(targets.iter().map(|t| t.map(|t| t.server)).collect())
}

/// Gives up an allocation that was not swapped in: its shards become garbage now.
async fn abandon(exec: &Executor, slice: SliceId) {
    let cmd = Command::AbandonPending {
        slices: vec![slice],
        now: Timestamp::now(),
    };
    let _ = ask_core(&exec.core, |reply| Input::Propose { cmd, reply }).await;
}
