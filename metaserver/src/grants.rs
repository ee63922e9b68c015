//! Grants for mounts: the keys live in the cluster map (made by the leader, replaced
//! daily); each member's core hands them to its request handlers, which sign a write grant
//! into every allocation and read grants into every slice map they answer a mount with.

use lattice_common::fs::Errno;
use lattice_common::grant::{self, Access, GrantKey};
use lattice_common::ids::SliceId;
use lattice_common::wire::meta::FsReply;
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

/// A key signs grants for this long before the leader makes the next.
pub const KEY_LIFETIME_SECS: u64 = 86_400;
/// A new key is used only once it is this old, so chunkservers have heard of it (they
/// hear with each heartbeat, every second, and ask when they meet an unknown one). A new
/// cluster's mounts wait this long for their first grants.
const SETTLE_SECS: u64 = 2;

/// The keys as this member last applied them.
pub type SharedKeys = Arc<RwLock<Vec<GrantKey>>>;

/// Whether the leader should make a new key now.
pub fn key_due(keys: &[GrantKey], now: u64) -> bool {
    keys.last()
        .is_none_or(|k| k.created + KEY_LIFETIME_SECS <= now)
}

/// Adds the grants `holder` needs to use `reply`; false if there is no key to sign with
/// yet (a cluster a few seconds old).
pub fn sign(keys: &SharedKeys, holder: &str, reply: &mut Result<FsReply, Errno>) -> bool {
    let keys = keys.read().unwrap_or_else(|p| p.into_inner());
    let now = grant::unix_now();
    let key = grant::signing_key(&keys, now, SETTLE_SECS);
    match (reply, key) {
        (
            Ok(FsReply::Allocated {
                slice,
                layout,
                placement,
                grant,
            }),
            Some(key),
        ) => {
            let servers = placement.iter().map(|p| p.as_ref().map(|s| s.id)).collect();
            let shards = (layout.shard_len(), servers);
            *grant = Some(key.grant(*slice, Access::Write, shards, holder, now));
        }
        (Ok(FsReply::Slices { chunks, grants, .. }), Some(key)) => {
            let slices: BTreeSet<SliceId> = chunks
                .iter()
                .flat_map(|(_, refs)| refs.iter().map(|r| r.slice))
                .collect();
            *grants = slices
                .into_iter()
                .map(|s| key.grant(s, Access::Read, (0, Vec::new()), holder, now))
                .collect();
        }
        (Ok(FsReply::Allocated { .. } | FsReply::Slices { .. }), None) => return false,
        _ => {}
    }
    true
}
