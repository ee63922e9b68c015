//! `lattice.layout`: where a file's data lives, slice by slice (as `mfsfileinfo` shows it
//! for MooseFS): the policy each slice is stored under, the server of each shard, and
//! whether the slice is healthy, degraded, lost or being re-encoded to the file's policy.

use crate::planner::ServerView;
use crate::state_machine::StateMachine;
use lattice_common::chunk_map::CHUNK_SIZE;
use lattice_common::erasure::ErasureCode;
use lattice_common::fs::{Errno, FileKind};
use lattice_common::ids::{ChunkserverId, InodeId};
use lattice_common::policy::Policy;
use lattice_common::wire::meta::ChunkserverState;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;

/// The report stops before this many bytes (an xattr value holds at most 64 KiB).
const MAX_REPORT: usize = 60 * 1024;

/// The text of `lattice.layout` for `ino`; for a directory, only its policy.
pub fn describe(
    sm: &StateMachine,
    servers: &BTreeMap<ChunkserverId, ServerView>,
    ino: InodeId,
) -> Result<Vec<u8>, Errno> {
    let attr = sm.ns.attr(ino)?;
    let policy = sm.effective_policy(ino)?;
    let whence = match (attr.policy.is_some(), ino == InodeId::ROOT) {
        (_, true) => "cluster default",
        (true, _) => "own",
        (false, _) if attr.kind == FileKind::Dir => "inherited",
        (false, _) => "cluster default",
    };
    let mut out = format!("policy {policy} ({whence})\n");
    if attr.kind != FileKind::File {
        return Ok(out.into_bytes());
    }
    if let Some(d) = sm.ns.inline_data(ino)? {
        let held = d.bytes.len();
        let _ = writeln!(
            out,
            "size {} with {held} bytes inline (on the metaservers)",
            attr.size
        );
        return Ok(out.into_bytes());
    }
    let slices: Vec<_> = sm.ns.all_slices_of(ino)?.collect();
    let _ = writeln!(out, "size {} in {} slices", attr.size, slices.len());
    let mut codes: HashMap<Policy, Option<ErasureCode>> = HashMap::new();
    for (n, (chunk, s)) in slices.iter().enumerate() {
        if out.len() > MAX_REPORT {
            let _ = writeln!(out, "... and {} more slices", slices.len() - n);
            break;
        }
        let shard_state = |p: &Option<ChunkserverId>| match p {
            None => Some("unplaced"),
            Some(id) => match servers.get(id) {
                None => Some("unknown"),
                Some(v) if !v.fresh => Some("silent"),
                Some(v) => match v.state {
                    ChunkserverState::Up => None,
                    ChunkserverState::Suspect => Some("suspect"),
                    ChunkserverState::Down => Some("down"),
                    ChunkserverState::Draining => Some("draining"),
                    ChunkserverState::Drained => Some("drained"),
                },
            },
        };
        let gone: Vec<bool> = s
            .placement
            .iter()
            .map(|p| {
                !p.and_then(|id| servers.get(&id))
                    .is_some_and(|v| v.readable())
            })
            .collect();
        let code = codes
            .entry(s.layout.policy)
            .or_insert_with(|| ErasureCode::new(s.layout.policy).ok());
        let mut state = match gone.iter().filter(|&&g| g).count() {
            _ if !code.as_ref().is_some_and(|c| c.decodable(&gone)) => "lost".to_string(),
            0 => "healthy".to_string(),
            n => format!("degraded ({n} shards missing)"),
        };
        if s.layout.policy != policy {
            state.push_str(", re-encoding");
        }
        let start = chunk * CHUNK_SIZE + s.chunk_offset;
        let _ = write!(
            out,
            "slice {} at {}..{} {} {}:",
            s.slice,
            start,
            start + s.len,
            s.layout.policy,
            state
        );
        for (i, p) in s.placement.iter().enumerate() {
            let _ = match (p, shard_state(p)) {
                (None, _) => write!(out, " {i}:-"),
                (Some(id), None) => write!(out, " {i}:{id}"),
                (Some(id), Some(st)) => write!(out, " {i}:{id}({st})"),
            };
        }
        out.push('\n');
    }
    Ok(out.into_bytes())
}
