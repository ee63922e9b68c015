//! Messages of the chunkserver protocol. Each request opens its own QUIC stream; a request
//! frame may be followed by raw bytes (a shard body) and so may the response frame.

use crate::grant::Grant;
use crate::ids::{ChunkserverId, ShardId, ShardIndex};
use crate::layout::SliceLayout;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;

/// Most shards listed per `List` reply.
pub const MAX_LIST_PAGE: u32 = 10_000;
/// Most bytes one `Get` may ask for.
pub const MAX_GET_BYTES: u64 = 64 << 20;

/// QUIC stream reset codes a chunkserver uses when it must stop streaming a `Data` body.
pub mod reset {
    /// A block failed its checksum: the bytes already sent are good, the rest are not.
    pub const CORRUPT: u32 = 1;
    /// The disk failed while reading.
    pub const IO: u32 = 2;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkRequest {
    Ping,
    /// Store a shard. Followed by exactly `layout.shard_len()` raw bytes. A mount needs a
    /// write grant for the slice, and may not replace a stored shard.
    Put {
        shard: ShardId,
        layout: SliceLayout,
        grant: Option<Grant>,
    },
    /// Read `len` bytes of a shard from `offset`, verified against the block checksums. A
    /// mount needs a grant for the slice.
    Get {
        shard: ShardId,
        offset: u64,
        len: u64,
        grant: Option<Grant>,
    },
    Delete {
        shard: ShardId,
    },
    Stat {
        shard: ShardId,
    },
    /// Shards in id order, starting after `after`.
    List {
        after: Option<ShardId>,
        limit: u32,
    },
    /// Capacity and health.
    Status,
    /// Rebuild `shard` locally: copied range by range from `copy_from` (a server that still
    /// holds it) when given, else (and wherever the copy fails) decoded from the same ranges
    /// of the surviving `sources`. Replaces a local copy of the shard (a scrub repair).
    Rebuild {
        shard: ShardId,
        layout: SliceLayout,
        copy_from: Option<ShardSource>,
        sources: Vec<ShardSource>,
    },
    /// Admin: start storing shards in another data directory (absolute path) too.
    AddDisk {
        path: String,
    },
    /// Admin: move every shard off a data directory to the others, then stop using it.
    RemoveDisk {
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSource {
    pub index: ShardIndex,
    pub server: ChunkserverId,
    pub addr: SocketAddr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkResponse {
    Pong {
        name: String,
    },
    Stored {
        bytes: u64,
    },
    /// Followed by exactly `len` raw bytes (or a stream reset, see [`reset`]).
    Data {
        len: u64,
    },
    Deleted {
        existed: bool,
    },
    Stat(ShardInfo),
    List {
        shards: Vec<ShardInfo>,
        more: bool,
    },
    Status(ChunkserverStatus),
    Rebuilt {
        bytes: u64,
    },
    /// The directory is in use, holding `shards` shards already there.
    DiskAdded {
        shards: u64,
    },
    DiskRemoved {
        moved_shards: u64,
        moved_bytes: u64,
    },
    Error(WireError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub shard: ShardId,
    pub layout: SliceLayout,
    /// Index of the data directory that holds it.
    pub disk: u32,
    /// Bytes the shard file takes on disk, header and checksums included.
    pub file_bytes: u64,
    /// When it was stored (Unix seconds): orphan collection leaves young shards alone.
    pub stored_secs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatus {
    pub path: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub shard_bytes: u64,
    pub shards: u64,
}

/// Counters that predict a failing server (since it started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCounters {
    pub io_errors: u64,
    pub checksum_errors: u64,
    pub slow_ops: u64,
}

impl HealthCounters {
    /// What was counted after `base` was taken (a restarted server counts from zero).
    pub fn since(&self, base: &HealthCounters) -> HealthCounters {
        HealthCounters {
            io_errors: self.io_errors.saturating_sub(base.io_errors),
            checksum_errors: self.checksum_errors.saturating_sub(base.checksum_errors),
            slow_ops: self.slow_ops.saturating_sub(base.slow_ops),
        }
    }
}

/// How far the background checksum scrub has got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubProgress {
    /// Full passes over every shard finished since start.
    pub passes: u64,
    /// Shards and bytes verified in the current pass.
    pub shards_checked: u64,
    pub bytes_checked: u64,
    /// Shards in the current pass (as listed when it began).
    pub shards_total: u64,
    /// Damaged shards found (and reported) since start.
    pub damaged: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverStatus {
    pub name: String,
    pub disks: Vec<DiskStatus>,
    pub health: HealthCounters,
    pub scrub: ScrubProgress,
}

impl ChunkserverStatus {
    pub fn used_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.shard_bytes).sum()
    }
    pub fn free_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.free_bytes).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    NotFound,
    /// Stored bytes failed their checksum.
    Corrupt,
    /// No disk has room.
    NoSpace,
    /// The request is malformed or out of bounds.
    Invalid,
    /// A disk failed.
    Io,
    /// Not enough peers answered (e.g. during a rebuild).
    Unavailable,
    /// The caller's certificate does not allow this request.
    Denied,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireError {
    pub kind: ErrorKind,
    pub message: String,
}

impl WireError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}
