//! Live re-encoding: when a file's policy changes (`setfattr -n lattice.policy`, or the
//! cluster default for files without their own), the leader rewrites its slices under the
//! new policy in the background. For each slice it reads what the slice shows (decoding
//! around missing shards), stores those bytes as a new slice under the file's policy, and
//! swaps it in (`Command::Reencode`) only if the old slice still shows exactly that.
//!
//! The file stays readable and writable throughout: a write lands as a newer slice, which
//! stays on top of the swapped one; a truncation or compaction that changed the slice
//! meanwhile makes the swap fail, and the next plan finds what is left. Old shards become
//! garbage only once the swap is committed, and are deleted after the grace period. Nothing
//! here is remembered beyond the replicated state, so a new leader resumes where the old
//! one stopped (an allocation it never committed is abandoned and collected).

use crate::core::{ask_core, Input};
use crate::jobs::Executor;
use crate::planner::{Backlog, ServerView};
use crate::state_machine::{Command, Outcome, StateMachine};
use bytes::Bytes;
use lattice_common::chunk_map::SliceRef;
use lattice_common::fs::Timestamp;
use lattice_common::ids::{ChunkserverId, InodeId, SliceId};
use lattice_common::policy::Policy;
use lattice_common::slice_io::{ShardTarget, SliceError, SliceIo};
use lattice_common::wire::meta::FsReply;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Slices re-encoded at once, cluster-wide (each also waits for the byte-rate limit).
pub const PARALLEL: usize = 2;

/// One slice stored under another policy than its file's.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub ino: InodeId,
    pub chunk: u64,
    pub slice: SliceRef,
    pub to: Policy,
    /// Where its shards can be read (`None`: placed nowhere readable now).
    pub targets: Vec<Option<ShardTarget>>,
}

/// Up to `max` slices to re-encode, leaving out `skip` (being re-encoded) and slices whose
/// survivors could not be decoded anyway; and how much is left in all (slices, bytes).
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
        found.push(Candidate {
            ino,
            chunk,
            slice: s.clone(),
            to,
            targets: read_targets(s, servers),
        });
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

/// Re-encodes one slice; returns the bytes rewritten.
pub async fn reencode(exec: &Executor, io: &SliceIo, c: &Candidate) -> Result<u64, String> {
    let old = &c.slice;
    exec.reencode_rate.take(old.len).await;
    let read = io
        .read(old.slice, old.layout, &c.targets, old.skip, old.len)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let allocated = ask_core(&exec.core, |reply| Input::Reserve {
        ino: c.ino,
        policy: c.to,
        len: old.len,
        reply,
    })
    .await
    .map_err(|e| format!("allocating: {e}"))?;
    let Outcome::Fs(Ok(FsReply::Allocated {
        slice,
        layout,
        placement,
    })) = allocated
    else {
        return Err(format!("allocating: {allocated:?}"));
    };
    let targets: Vec<Option<ShardTarget>> = placement
        .iter()
        .map(|s| {
            s.as_ref().map(|s| ShardTarget {
                server: s.id,
                addr: s.addr,
            })
        })
        .collect();
    let mut placed: Vec<Option<ChunkserverId>> =
        targets.iter().map(|t| t.map(|t| t.server)).collect();
    match io
        .write(slice, layout, Bytes::from(read.data), &targets)
        .await
    {
        Ok(_) => {}
        Err(SliceError::Write { problems, .. })
            if placed.iter().flatten().count() - problems.len() >= layout.policy.min_shards() =>
        {
            for p in &problems {
                placed[p.index] = None;
            }
        }
        Err(e) => {
            abandon(exec, slice).await;
            return Err(format!("writing: {e}"));
        }
    }
    let cmd = Command::Reencode {
        ino: c.ino,
        chunk: c.chunk,
        old: old.clone(),
        new: SliceRef {
            slice,
            layout,
            placement: placed,
            chunk_offset: old.chunk_offset,
            skip: 0,
            len: old.len,
        },
        now: Timestamp::now(),
    };
    match ask_core(&exec.core, |reply| Input::Propose { cmd, reply }).await {
        Ok(Outcome::Fs(Ok(_))) => Ok(old.len),
        other => {
            // Changed meanwhile (truncated, compacted, removed): the next plan sees what is left.
            abandon(exec, slice).await;
            Err(format!("not swapped in: {other:?}"))
        }
    }
}

/// Gives up an allocation that was not swapped in: its shards become garbage now.
async fn abandon(exec: &Executor, slice: SliceId) {
    let cmd = Command::AbandonPending {
        slices: vec![slice],
        now: Timestamp::now(),
    };
    let _ = ask_core(&exec.core, |reply| Input::Propose { cmd, reply }).await;
}
