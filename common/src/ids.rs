//! Identifiers shared by every process. Each is a distinct type so a slice id can never be
//! passed where a chunkserver id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One immutable write of file data; allocated by the metaserver, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SliceId(pub u64);

/// Position of a shard inside its slice's redundancy shape. For `mirror:N` and `rs:K+M` it is
/// the linear index (data shards first, then parity); shapes with coordinates (grid parity)
/// map their coordinates to this same linear index, so stored shards keep their address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardIndex(pub u16);

/// One shard of one slice: the unit a chunkserver stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ShardId {
    pub slice: SliceId,
    pub index: ShardIndex,
}

/// A chunkserver, as registered in the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkserverId(pub u32);

impl ShardId {
    pub fn new(slice: SliceId, index: u16) -> Self {
        ShardId {
            slice,
            index: ShardIndex(index),
        }
    }
}

impl fmt::Display for SliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for ShardIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slice, self.index)
    }
}

impl fmt::Display for ChunkserverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cs{}", self.0)
    }
}

/// A file, directory, symlink or special file in the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InodeId(pub u64);

impl InodeId {
    pub const ROOT: InodeId = InodeId(1);
}

/// A member of the metaserver Raft group (its Raft node id, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MetaserverId(pub u64);

/// One client session (a mount or a tool); mutations carry it with a sequence number so a
/// retried request is applied once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientId(pub u64);

impl fmt::Display for InodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ino{}", self.0)
    }
}

impl fmt::Display for MetaserverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ms{}", self.0)
    }
}
