//! Deep scrub: at a low rate the leader reads every slice's shards, range by range, and
//! checks that parity still matches data. A chunkserver's own scrub checks each block
//! against its checksum only, which a shard written wrong, or replaced, passes. A shard that
//! the others outvote (rebuilt from them, every codeword agrees again) is reported damaged
//! and rebuilt in place, like one that failed its checksum; a mismatch that no single shard
//! explains is logged for an admin. Progress is soft state: a new leader starts a new pass.

use crate::core::{ask_core, Input};
use crate::jobs::Executor;
use crate::planner::ServerView;
use crate::state_machine::StateMachine;
use futures::future::join_all;
use lattice_common::chunk_map::SliceRef;
use lattice_common::erasure::{Consistency, ErasureCode};
use lattice_common::ids::{ChunkserverId, InodeId, ShardId};
use lattice_common::slice_io::ShardTarget;
use lattice_common::throttle::Throttle;
use lattice_common::wire::meta::JobKind;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Bytes of each shard checked at once.
const RANGE: u64 = 1 << 20;
/// A slice costs at least this much of the rate, however small (so tiny files are not
/// re-read in a tight loop).
const MIN_COST: u64 = 64 << 10;

/// Where a pass has got to: (inode, chunk, index in the chunk's slice list).
pub type Cursor = (InodeId, u64, usize);

/// The next slice to check.
#[derive(Clone, Debug)]
pub struct Next {
    pub at: Cursor,
    pub ino: InodeId,
    pub slice: SliceRef,
    pub targets: Vec<Option<ShardTarget>>,
}

/// The slice after `after` (from the start when `None`); `None` at the end.
pub fn next_after(
    sm: &StateMachine,
    servers: &BTreeMap<ChunkserverId, ServerView>,
    after: Option<Cursor>,
) -> Option<Next> {
    let (at, s) = sm.ns.slice_after(after)?;
    Some(Next {
        at,
        ino: at.0,
        slice: s.clone(),
        targets: crate::reencode::read_targets(s, servers),
    })
}

/// What reading a slice's shards and checking them against each other found.
pub enum Checked {
    /// Every codeword agrees; the data shards whole when asked for; bytes read.
    Consistent(Option<Vec<Vec<u8>>>, u64),
    /// Not every shard could be read (repair's business first).
    Unreadable,
    Mismatch(String),
}

/// Runs for the life of the process: one pass over every slice, then a pause until
/// `every` has passed since the pass began; idle while this member does not lead.
pub async fn run(exec: Arc<Executor>, every: Duration) {
    let mut cursor: Option<Cursor> = None;
    let mut pass_began = Instant::now();
    loop {
        let next = ask_core(&exec.core, |reply| Input::ScrubNext {
            after: cursor,
            reply,
        })
        .await;
        let next = match next {
            Ok(Some(n)) => n,
            Ok(None) => {
                if cursor.is_some() {
                    info!(
                        "deep scrub pass done in {:.0}s",
                        pass_began.elapsed().as_secs_f64()
                    );
                }
                let rest = every.saturating_sub(pass_began.elapsed());
                tokio::time::sleep(rest.max(Duration::from_secs(1))).await;
                (cursor, pass_began) = (None, Instant::now());
                continue;
            }
            Err(_) => {
                // Not the leader: a new term starts a new pass.
                tokio::time::sleep(Duration::from_secs(1)).await;
                (cursor, pass_began) = (None, Instant::now());
                continue;
            }
        };
        cursor = Some(next.at);
        exec.deep_scrub_rate.take(MIN_COST).await;
        let found = read_checked(
            exec.as_ref(),
            &next.slice,
            &next.targets,
            &exec.deep_scrub_rate,
            false,
        )
        .await;
        let mut book = exec.book.lock().unwrap_or_else(|p| p.into_inner());
        let t = book.tally.entry((JobKind::DeepScrub, None)).or_default();
        match found {
            Checked::Consistent(_, bytes) => {
                t.done_shards += 1;
                t.done_bytes += bytes;
            }
            Checked::Unreadable => {}
            Checked::Mismatch(what) => {
                t.failed += 1;
                warn!(ino = %next.ino, slice = %next.slice.slice, "deep scrub: {what}");
            }
        }
    }
}

/// Reads every shard of `slice` whole, range by range at `rate`, and checks that they
/// agree; keeps the data shards with `keep`. A shard the others outvote is reported damaged
/// (the repair path rebuilds it in place).
pub async fn read_checked(
    exec: &Executor,
    slice: &SliceRef,
    targets: &[Option<ShardTarget>],
    rate: &Throttle,
    keep: bool,
) -> Checked {
    let layout = slice.layout;
    let Ok(code) = ErasureCode::new(layout.policy) else {
        return Checked::Unreadable;
    };
    let Some(targets) = targets
        .iter()
        .copied()
        .collect::<Option<Vec<ShardTarget>>>()
    else {
        return Checked::Unreadable;
    };
    let shard_len = layout.shard_len();
    let k = layout.policy.data_shards();
    let mut kept: Vec<Vec<u8>> = vec![Vec::new(); if keep { k } else { 0 }];
    let (mut at, mut read) = (0, 0);
    while at < shard_len {
        let len = RANGE.min(shard_len - at);
        rate.take(len * targets.len() as u64).await;
        let gets = targets.iter().enumerate().map(|(i, t)| {
            let shard = ShardId::new(slice.slice, i as u16);
            exec.shards.get(t.addr, shard, at, len)
        });
        let Ok(pieces) = join_all(gets)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
        else {
            // Unreachable, damaged or moved meanwhile: other upkeep deals with that.
            return Checked::Unreadable;
        };
        read += len * targets.len() as u64;
        let code = code.clone();
        let checked = tokio::task::spawn_blocking(move || (code.check(&pieces), pieces)).await;
        let pieces = match checked {
            Ok((Ok(Consistency::Consistent), pieces)) => pieces,
            Ok((Ok(Consistency::Corrupt(j)), _)) => {
                let (shard, server) = (ShardId::new(slice.slice, j as u16), targets[j].server);
                let _ = exec.core.try_send(Input::Damaged { shard, server });
                return Checked::Mismatch(format!(
                    "shard {shard} on {server} disagrees with the parity of the others at bytes \
                     {at}..{}: rebuilding it in place",
                    at + len
                ));
            }
            Ok((Ok(Consistency::Ambiguous), _)) => {
                return Checked::Mismatch(format!(
                    "{} shards disagree at bytes {at}..{} and no single shard explains it \
                     (servers {:?}): check them",
                    layout.policy,
                    at + len,
                    targets.iter().map(|t| t.server).collect::<Vec<_>>()
                ));
            }
            Ok((Err(e), _)) => return Checked::Mismatch(format!("cannot check: {e}")),
            Err(e) => return Checked::Mismatch(format!("check failed: {e}")),
        };
        for (whole, piece) in kept.iter_mut().zip(pieces) {
            whole.extend_from_slice(&piece);
        }
        at += len;
    }
    Checked::Consistent(keep.then_some(kept), read)
}
