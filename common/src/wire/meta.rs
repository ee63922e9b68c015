//! The metaserver protocol. Every request opens its own QUIC stream and gets one reply,
//! except a member's lasting stream of Raft messages ([`MetaRequest::RaftStream`]).
//! Any member answers; a follower replies [`MetaResponse::NotLeader`] with the leader's
//! address and the client retries there.

use crate::chunk_map::SliceRef;
use crate::fs::{
    Attr, Caller, DirEntry, Errno, FileKind, LockRange, RenameMode, SetAttr, StatFs, Timestamp,
    XattrMode,
};

use crate::grant::{Grant, GrantKey};
use crate::ids::{ChunkserverId, ClientId, InodeId, MetaserverId, ShardId, SliceId};
use crate::layout::SliceLayout;
use crate::pki::{Revocations, Revoke};
use crate::policy::Policy;
use crate::wire::chunk::{DiskStatus, HealthCounters, ScrubProgress};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Largest body of Raft messages (snapshots included) one request may carry.
pub const MAX_RAFT_BATCH_BYTES: u64 = 1 << 30;
/// Most sessions (mounts, each with its client id) one client certificate has at once, so
/// that no certificate fills the replicated state with them; a new one over this gets
/// EUSERS. A fleet of more hosts needs more certificates.
pub const MAX_SESSIONS_PER_CERTIFICATE: usize = 256;
/// Replies the metaservers remember per client session, so that a retried change is
/// answered again rather than applied twice. A change sent again after that many newer ones
/// were answered is refused (EIO): its reply may be forgotten. Clients therefore never run
/// more than half as many changes past their oldest unanswered one.
pub const REMEMBERED_REPLIES: usize = 4096;
/// Longest an `AwaitLock` is held back: well inside one metaserver call attempt (1 s), so a
/// waiting lock never looks like a dead metaserver.
pub const LOCK_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(700);

/// Filesystem changes. Each is applied atomically, once (a retry with the same client id
/// and sequence number gets the first reply). New variants go last: the Raft log holds
/// these encoded by their position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsOp {
    /// Creates a regular file, fifo, socket or device node; EEXIST if the name is taken.
    /// `umask` applies unless the parent directory has a default ACL, which applies instead.
    Mknod {
        parent: InodeId,
        name: Vec<u8>,
        kind: FileKind,
        perm: u16,
        umask: u16,
        rdev: u32,
        caller: Caller,
    },
    Mkdir {
        parent: InodeId,
        name: Vec<u8>,
        perm: u16,
        umask: u16,
        caller: Caller,
    },
    Symlink {
        parent: InodeId,
        name: Vec<u8>,
        target: Vec<u8>,
        caller: Caller,
    },
    Link {
        ino: InodeId,
        parent: InodeId,
        name: Vec<u8>,
    },
    Unlink {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rmdir {
        parent: InodeId,
        name: Vec<u8>,
    },
    Rename {
        parent: InodeId,
        name: Vec<u8>,
        new_parent: InodeId,
        new_name: Vec<u8>,
        mode: RenameMode,
    },
    SetAttr {
        ino: InodeId,
        set: SetAttr,
    },
    SetXattr {
        ino: InodeId,
        name: Vec<u8>,
        value: Vec<u8>,
        mode: XattrMode,
    },
    RemoveXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    /// Sets the redundancy policy of a file or directory (`None`: inherit the default).
    SetPolicy {
        ino: InodeId,
        policy: Option<Policy>,
    },
    /// Reserves a slice id and a placement for `len` bytes of `ino` (its policy decides the
    /// shape). The slice becomes visible only with [`FsOp::CommitSlice`].
    AllocateSlice {
        ino: InodeId,
        len: u64,
        /// Servers to leave out (e.g. ones that just failed a write).
        avoid: Vec<ChunkserverId>,
    },
    /// Makes a written slice part of chunk `chunk` of `ino`, growing the file to cover it
    /// and setting mtime and ctime.
    CommitSlice {
        ino: InodeId,
        chunk: u64,
        slice: SliceRef,
    },
    /// Compaction: replaces the consecutive slices `old` of a chunk (exactly as they were
    /// read) with the written slices `new`, which show the same bytes as fewer slices.
    /// ESTALE when the run changed meanwhile (the compaction is dropped); size and times
    /// stay as they are.
    ReplaceSlices {
        ino: InodeId,
        chunk: u64,
        old: Vec<SliceRef>,
        new: Vec<SliceRef>,
    },
    /// Takes, changes or drops a lock of `owner` (within the requesting client); fails with
    /// EAGAIN when another owner's lock is in the way.
    SetLock {
        ino: InodeId,
        owner: u64,
        lock: LockRange,
    },
    /// Drops every lock `owner` holds on `ino` (a close).
    ReleaseLocks {
        ino: InodeId,
        owner: u64,
    },
    /// `fallocate` punching a hole: bytes `offset..offset + len` read as zeros and take
    /// no space; the size stays.
    PunchHole {
        ino: InodeId,
        offset: u64,
        len: u64,
    },
    /// One stored slice holding several ranges of chunk `chunk` (a flush of scattered
    /// writes stores them as one slice): every reference names that slice and shows its
    /// part of the slice's data. They land together, in order, each as [`FsOp::CommitSlice`]
    /// would land it; one bad reference refuses them all.
    CommitSlices {
        ino: InodeId,
        chunk: u64,
        slices: Vec<SliceRef>,
    },
    /// A small write kept in the namespace instead of on chunkservers: each (offset,
    /// bytes), in order, into a file whose bytes are inline or that has no slices yet,
    /// ending within [`INLINE_MAX`]. EOPNOTSUPP when the file's data cannot be inline
    /// (it has slices, or the cluster holds its most inline bytes): write slices instead.
    WriteInline {
        ino: InodeId,
        writes: Vec<(u64, Vec<u8>)>,
    },
    /// Moves a file's inline bytes to the stored slice `slice` (`None` when there are no
    /// bytes), if they are still `expect` (else ESTALE: read them again).
    Uninline {
        ino: InodeId,
        expect: Vec<u8>,
        slice: Option<SliceRef>,
    },
    /// Unlinks and rmdirs a mount already answered (it sends them in batches, see the
    /// client's `unlinks`), applied in order; each removes its name only if the name still
    /// leads to its inode (else ESTALE: the name was replaced meanwhile, and what replaced
    /// it stays). Answered with one outcome per entry; at most [`MAX_UNLINKS`] entries.
    Unlinks {
        entries: Vec<Unlinked>,
    },
    /// [`FsOp::WriteInline`], then times set as [`FsOp::SetAttr`] would (`set` sets times
    /// only, else EINVAL), in one Raft round: `cp -a`, `tar x` and `rsync -a` set a small
    /// file's times right after writing it. Refused whole if either is not allowed.
    WriteInlineSetTimes {
        ino: InodeId,
        writes: Vec<(u64, Vec<u8>)>,
        set: SetAttr,
    },
}

/// A name removed by [`FsOp::Unlinks`], if it still leads to `ino`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlinked {
    pub parent: InodeId,
    pub name: Vec<u8>,
    pub ino: InodeId,
    /// An rmdir (ENOTEMPTY unless the directory is empty), else an unlink.
    pub dir: bool,
    /// When the mount answered it: the time the directory's mtime and ctime and the
    /// inode's ctime take (never before the directory's ctime, nor over a second past the
    /// metaserver's clock), so the times the mount showed meanwhile are the ones that stay.
    pub at: Timestamp,
}

/// Most entries of one [`FsOp::Unlinks`].
pub const MAX_UNLINKS: usize = 256;

/// The most bytes a file may hold inline (offsets `0..INLINE_MAX`).
pub const INLINE_MAX: u64 = 16 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsQuery {
    Lookup {
        parent: InodeId,
        name: Vec<u8>,
    },
    GetAttr {
        ino: InodeId,
    },
    /// Entries after `cookie` (0: from the start; `.` and `..` are not listed).
    ReadDir {
        ino: InodeId,
        cookie: u64,
        limit: u32,
    },
    ReadLink {
        ino: InodeId,
    },
    GetXattr {
        ino: InodeId,
        name: Vec<u8>,
    },
    ListXattr {
        ino: InodeId,
    },
    StatFs,
    /// The slices of chunks `first..=last` of a file.
    Slices {
        ino: InodeId,
        first: u64,
        last: u64,
    },
    /// The first lock of another owner that conflicts with `lock`, if any.
    GetLock {
        ino: InodeId,
        client: ClientId,
        owner: u64,
        lock: LockRange,
    },
    /// Like `GetLock`, but the leader holds the answer back while the conflict lasts, up to
    /// [`LOCK_WAIT_MAX`]: a blocked `F_SETLKW` or `flock` hears at once that the lock
    /// came free, without polling.
    AwaitLock {
        ino: InodeId,
        client: ClientId,
        owner: u64,
        lock: LockRange,
    },
    /// `lseek` with `SEEK_DATA` (`data`) or `SEEK_HOLE`: answered with `Offset`.
    Seek {
        ino: InodeId,
        offset: u64,
        data: bool,
    },
    /// As `ReadDir`, each entry with its attributes, answered with `EntriesPlus`: what a
    /// FUSE readdirplus needs, in one call.
    ReadDirPlus {
        ino: InodeId,
        cookie: u64,
        limit: u32,
    },
}

/// Where a chunkserver is and whether it is worth asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAddr {
    pub id: ChunkserverId,
    pub addr: SocketAddr,
    pub state: ChunkserverState,
}

/// Answers. New variants go last: snapshots hold the replies sessions remember, encoded by
/// their position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsReply {
    Attr(Attr),
    Entries(Vec<DirEntry>),
    Link(Vec<u8>),
    Xattr(Vec<u8>),
    XattrNames(Vec<Vec<u8>>),
    StatFs(StatFs),
    /// Shard i goes to `placement[i]`; `None` when too few servers could take data (the
    /// slice then lands degraded and is repaired when servers allow).
    Allocated {
        slice: SliceId,
        layout: SliceLayout,
        placement: Vec<Option<ServerAddr>>,
        /// To write its shards (added by the metaserver that answers; never replicated).
        grant: Option<Grant>,
    },
    /// Per chunk, its slices oldest first; plus every server they name.
    Slices {
        attr: Attr,
        chunks: Vec<(u64, Vec<SliceRef>)>,
        servers: Vec<ServerAddr>,
        /// To read the slices (added by the metaserver that answers).
        grants: Vec<Grant>,
    },
    Lock(Option<LockRange>),
    /// A committed slice: the file's attributes now, and how many slices its chunk holds
    /// (the writer compacts a chunk that holds many).
    Committed {
        attr: Attr,
        slices: u32,
    },
    Done,
    Offset(u64),
    /// A directory's attributes, its parent, and entries with their attributes.
    EntriesPlus {
        dir: Attr,
        parent: InodeId,
        entries: Vec<(DirEntry, Attr)>,
    },
    /// The answer to `Slices` for a file whose bytes are inline: bytes `0..data.len()`
    /// (zeros past them up to the size).
    Inline {
        attr: Attr,
        data: Vec<u8>,
    },
    /// The outcome of each entry of [`FsOp::Unlinks`], in order.
    Unlinked(Vec<Result<(), Errno>>),
    /// A new entry (mknod, mkdir, symlink, link): its inode's attributes, and its
    /// directory's after the change (boxed: most replies are smaller).
    Made {
        attr: Attr,
        parent: Box<Attr>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChunkserverState {
    Up,
    /// Missed heartbeats; not given new shards.
    Suspect,
    Down,
    /// Its shards are being moved away; not given new shards.
    Draining,
    /// Holds nothing any more; may be stopped.
    Drained,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub addr: SocketAddr,
    pub disks: Vec<DiskStatus>,
    /// Failure-domain labels, e.g. `host=a`, `rack=r1`.
    pub labels: Vec<(String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: ChunkserverId,
    pub addr: SocketAddr,
    pub disks: Vec<DiskStatus>,
    pub health: HealthCounters,
    pub scrub: ScrubProgress,
    pub shards: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    Status,
    /// Adds a metaserver to the Raft group (it must be started with `--join`).
    AddMember {
        id: MetaserverId,
        addr: SocketAddr,
    },
    RemoveMember {
        id: MetaserverId,
    },
    /// Takes a state machine snapshot now and compacts the log.
    Snapshot,
    /// This member's own view (answered by any member, not only the leader): how far it
    /// has applied the log and a checksum of its state machine there.
    Digest,
    /// Starts draining a chunkserver (its shards are copied elsewhere, it gets no new
    /// ones), or with `cancel` puts a draining or drained server back in service.
    Drain {
        id: ChunkserverId,
        cancel: bool,
    },
    /// Changes the cluster's default redundancy policy (what files and directories without
    /// their own store new data under).
    SetDefaultPolicy {
        policy: Policy,
    },
    /// No server accepts the certificates this names any more; their connections close.
    Revoke {
        what: Revoke,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: MetaserverId,
    pub addr: SocketAddr,
    pub leader: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkserverStatusRow {
    pub id: ChunkserverId,
    pub name: String,
    pub addr: SocketAddr,
    pub state: ChunkserverState,
    /// Why it is in that state, when something other than its heartbeats decided it (an
    /// admin's drain, a health threshold).
    pub reason: Option<String>,
    pub labels: Vec<(String, String)>,
    /// Shards the metadata places on it, and their bytes.
    pub placed_shards: u64,
    pub placed_bytes: u64,
    pub scrub: ScrubProgress,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub shards: u64,
    pub health: HealthCounters,
    pub last_heartbeat_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub leader: MetaserverId,
    /// The cluster's default redundancy policy (recorded by the first leader).
    pub default_policy: Option<Policy>,
    pub term: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub members: Vec<MemberStatus>,
    pub chunkservers: Vec<ChunkserverStatusRow>,
    pub inodes: u64,
    pub slices: u64,
    pub redundancy: Redundancy,
    pub jobs: Vec<JobStatus>,
    /// Things an admin should know (e.g. a policy that cannot spread over enough domains).
    pub warnings: Vec<String>,
    /// Certificates no server accepts.
    pub revoked: Revocations,
}

impl ClusterStatus {
    /// Every slice has all its shards readable.
    pub fn fully_redundant(&self) -> bool {
        let r = &self.redundancy;
        r.degraded_1 == 0 && r.degraded_2_plus == 0 && r.lost == 0 && r.healthy == self.slices
    }

    /// Bytes of `kind` work this leader has done.
    pub fn done_bytes(&self, kind: JobKind) -> u64 {
        self.jobs
            .iter()
            .filter(|j| j.kind == kind)
            .map(|j| j.done_bytes)
            .sum()
    }
}

/// Slices by how many of their shards are readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redundancy {
    pub healthy: u64,
    pub degraded_1: u64,
    /// Missing two or more shards but still readable.
    pub degraded_2_plus: u64,
    /// Fewer shards readable than the policy needs to decode.
    pub lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JobKind {
    /// Rebuilding shards of down servers (or damaged ones) from parity.
    Repair,
    /// Copying a draining server's shards elsewhere.
    Drain,
    /// Moving shards from fuller to emptier servers.
    Rebalance,
    /// Deleting shards no slice needs any more.
    Collect,
    /// Rewriting slices under their file's new policy (counted in slices, not shards).
    Reencode,
    /// Checking that parity matches data across each slice's shards (counted in slices;
    /// `failed` counts mismatches found).
    DeepScrub,
}

/// A kind of background work and how far it has got (since this leader took over).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    pub kind: JobKind,
    /// The server it is about, for a drain.
    pub server: Option<ChunkserverId>,
    pub done_shards: u64,
    pub done_bytes: u64,
    pub remaining_shards: u64,
    pub remaining_bytes: u64,
    pub running: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminReply {
    Status(Box<ClusterStatus>),
    Digest {
        member: MetaserverId,
        leader: Option<MetaserverId>,
        applied: u64,
        digest: u32,
    },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaRequest {
    Mutate {
        client: ClientId,
        seq: u64,
        /// Every request of this client below this sequence number has its reply: the
        /// metaserver may forget those replies.
        acked_below: u64,
        op: FsOp,
    },

    Query(FsQuery),
    /// A chunkserver announces itself (its certificate name is its identity).
    Register(Registration),
    Heartbeat(Heartbeat),
    /// A chunkserver found a shard it holds damaged (a scrub or a read failed its checksum):
    /// the metaserver has it rebuilt there from parity.
    ReportDamage {
        shard: ShardId,
    },
    /// A client is alive and has these files open (the metaserver keeps unlinked files
    /// while someone has them open, and drops the locks of clients that go silent).
    KeepAlive {
        client: ClientId,
        open: Vec<InodeId>,
    },
    /// A client unmounts: its locks go at once.
    Goodbye {
        client: ClientId,
    },
    /// A client heard that its locks were released while it was silent
    /// ([`MetaResponse::LocksLost`]) and has told its holders: it may take locks again.
    ResumeSession {
        client: ClientId,
    },
    Admin(AdminRequest),
    /// Raft messages from another member, followed by `sizes.iter().sum()` raw bytes: each
    /// a protobuf-encoded `eraftpb::Message`. `addr` is where the sender serves (a member
    /// that has just joined knows nobody's address until it learns them this way).
    Raft {
        from: MetaserverId,
        addr: SocketAddr,

        sizes: Vec<u32>,
    },
    /// A chunkserver asks for the keys that sign grants (it met one signed by a key it did
    /// not know yet).
    GrantKeys,
    /// Opens a member's lasting stream of Raft messages (everything but snapshots): until the
    /// stream ends, [`RaftBatch`] frames, each followed by its messages' raw bytes as in
    /// [`MetaRequest::Raft`]. Nothing is answered: Raft tolerates lost messages, and a stream
    /// per batch with an answer cost several packets and wake-ups per message. `incarnation`
    /// changes when the sender restarts: its peers then drop their own streams to it, which
    /// would otherwise lead into its old connection until that times out.
    RaftStream {
        from: MetaserverId,
        addr: SocketAddr,
        incarnation: u64,
    },
}

/// One batch on a [`MetaRequest::RaftStream`]: the sizes of the Raft messages that follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftBatch {
    pub sizes: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    Fs(Result<FsReply, Errno>),
    /// Ask the leader instead (`None`: no leader known right now; retry shortly).
    NotLeader {
        leader: Option<SocketAddr>,
    },
    Registered {
        id: ChunkserverId,
    },
    /// With the certificates revoked, which the chunkserver refuses from then on.
    HeartbeatAck {
        revoked: Revocations,
        keys: Vec<GrantKey>,
    },
    GrantKeys {
        keys: Vec<GrantKey>,
    },
    DamageNoted,
    KeepAliveAck,
    /// To a keepalive: this client went silent for longer than the session timeout, and its
    /// locks were released (others may hold them now).
    LocksLost,
    Admin(AdminReply),
    RaftAck,
    /// The request could not be served (no quorum, shutting down, malformed, not allowed).
    Error(crate::wire::chunk::WireError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// The Raft log and snapshots hold operations and replies encoded by variant position:
    /// one inserted before others would make an upgraded metaserver read old entries as
    /// other operations.
    #[test]
    fn stored_variants_keep_their_positions() {
        let tag = |bytes: Vec<u8>| bytes[0];
        let (ino, name) = (InodeId(2), b"n".to_vec());
        let rename = FsOp::Rename {
            parent: ino,
            name: name.clone(),
            new_parent: ino,
            new_name: name,
            mode: RenameMode::Replace,
        };
        let uninline = FsOp::Uninline {
            ino,
            expect: Vec::new(),
            slice: None,
        };
        let unlinks = FsOp::Unlinks {
            entries: Vec::new(),
        };
        let ops = [(rename, 6), (uninline, 19), (unlinks, 20)];
        for (op, at) in ops {
            assert_eq!(tag(codec::encode_state(&op).unwrap()), at, "{op:?}");
        }
        let replies = [
            (FsReply::Done, 10),
            (FsReply::Offset(1), 11),
            (FsReply::Unlinked(Vec::new()), 14),
        ];
        for (reply, at) in replies {
            assert_eq!(tag(codec::encode_state(&reply).unwrap()), at, "{reply:?}");
        }
    }
}
