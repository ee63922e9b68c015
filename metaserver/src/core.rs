//! The metaserver's core: one thread that owns the Raft replica, the state machine and the
//! leader's soft state (chunkserver liveness and capacity), and serves every request in
//! order, except the queries request threads answer under the lease
//! ([`crate::lease_reads`]). Blocking on the log's fsync here is intended: a Raft round is
//! not done before it.

use crate::cluster_map::ServerRecord;
use crate::deep_scrub;
use crate::fileinfo;
use crate::gc::{self, Doom, Expected, GarbageSlice, GcWork, ShardCopy};
use crate::grants::{self, SharedKeys};
use crate::jobs::{Book, Settings};
use crate::lease_reads::boot_clock_ms;
use crate::peers::Peers;
use crate::placement::{self, Candidate, Domain};
use crate::planner::{self, Busy, Job, Limits, ServerView};
use crate::reencode;
use crate::replica::{Event, MemberChange, Output, Refusal, Replica, Token, TICK};
use crate::state_machine::{Command, Outcome, SessionRequest, StateMachine};
use lattice_common::codec;
use lattice_common::fs::{Errno, StatFs, Timestamp};
use lattice_common::grant::{self, GrantKey};
use lattice_common::ids::{ChunkserverId, ClientId, InodeId, MetaserverId, ShardId, SliceId};
use lattice_common::layout::{SliceLayout, DEFAULT_STRIPE_UNIT};
use lattice_common::mount_user::Credentials;
use lattice_common::policy::{Policy, LAYOUT_XATTR};
use lattice_common::wire::meta::{
    AdminReply, ChunkserverState, ChunkserverStatusRow, ClusterStatus, FsQuery, FsReply, Heartbeat,
    JobKind, MemberStatus, Registration, LOCK_WAIT_MAX, MAX_SESSIONS_PER_CERTIFICATE,
};
use lattice_common::wire::HealthCounters;
use raft::prelude::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Most inputs handled between two Raft rounds (bounds latency under load).
const BATCH: usize = 4096;
/// A server for each shard of a slice (`None`: left unplaced).
type Placement = Vec<Option<ChunkserverId>>;

/// How often one placement problem is logged while writers retry.
const PLACEMENT_WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a request was not served here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Ask the leader (if one is known).
    NotLeader(Option<SocketAddr>),
    /// Retry shortly (e.g. leadership changed while it was in flight).
    Retry(String),
}

pub type Answer<T> = Result<T, Reject>;

/// A request to the core not answered in this long (no quorum) gets "retry".
pub const CORE_TIMEOUT: Duration = Duration::from_secs(5);

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::NotLeader(Some(l)) => write!(f, "not the leader; the leader is at {l}"),
            Reject::NotLeader(None) => write!(f, "not the leader; no leader known"),
            Reject::Retry(why) => write!(f, "{why}"),
        }
    }
}

/// Most inputs waiting for the core: past this, a request is answered "busy, retry" rather
/// than held in memory (a client retries after a pause; Raft resends what it lost).
pub const INPUT_QUEUE: usize = 4096;

/// Why a request naming another certificate's session is refused.
pub const FOREIGN_SESSION: &str = "that session belongs to another certificate";

/// Where inputs for the core go; never blocks a sender.
pub type Inputs = mpsc::SyncSender<Input>;

/// The core's input queue.
pub fn input_queue() -> (Inputs, Receiver<Input>) {
    mpsc::sync_channel(INPUT_QUEUE)
}

/// Queues `input` for the core if there is room.
pub fn offer(core: &Inputs, input: Input) -> Answer<()> {
    core.try_send(input).map_err(|e| match e {
        TrySendError::Full(_) => Reject::Retry(format!(
            "metaserver busy: {INPUT_QUEUE} requests are waiting, retry"
        )),
        TrySendError::Disconnected(_) => Reject::Retry("metaserver is shutting down".into()),
    })
}

/// Queues `input` for the core, waiting for room: for the few inputs Raft must not lose.
pub async fn deliver(core: &Inputs, mut input: Input) {
    loop {
        match core.try_send(input) {
            Err(TrySendError::Full(back)) => input = back,
            _ => return,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Hands an input to the core and waits (up to [`CORE_TIMEOUT`]) for its answer.
pub async fn ask_core<T>(
    core: &Inputs,
    make: impl FnOnce(oneshot::Sender<Answer<T>>) -> Input,
) -> Answer<T> {
    let (tx, rx) = oneshot::channel();
    offer(core, make(tx))?;
    match tokio::time::timeout(CORE_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Reject::Retry("metaserver core stopped".into())),
        Err(_) => Err(Reject::Retry(format!(
            "no quorum answered within {CORE_TIMEOUT:?}"
        ))),
    }
}

/// Health counts at which the leader drains a chunkserver before it fails (0: never).
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthLimits {
    pub io_errors: u64,
    pub checksum_errors: u64,
    pub slow_ops: u64,
}

impl HealthLimits {
    /// Why a server with these counters should be drained, if it should.
    pub fn breached(&self, h: &HealthCounters) -> Option<String> {
        [
            ("I/O errors", h.io_errors, self.io_errors),
            ("checksum errors", h.checksum_errors, self.checksum_errors),
            ("slow operations", h.slow_ops, self.slow_ops),
        ]
        .into_iter()
        .find(|&(_, count, limit)| limit > 0 && count >= limit)
        .map(|(what, count, limit)| {
            format!("predictive drain: {count} {what} reached the limit of {limit}")
        })
    }
}

/// How the leader maintains redundancy.
#[derive(Clone, Copy, Debug)]
pub struct Upkeep {
    pub jobs: Settings,
    pub health: HealthLimits,
    /// The default policy a new cluster's first leader records.
    pub default_policy: Policy,
}
/// Timing of failure detection.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// A chunkserver silent this long is suspect (gets no new data).
    pub suspect_after: Duration,
    /// A chunkserver silent this long is down.
    pub down_after: Duration,
    /// A client silent this long loses its session (locks, open files).
    pub session_timeout: Duration,
}

pub enum Input {
    Step(Message),
    /// A member serves at this address (learned from its messages).
    PeerAddr(MetaserverId, SocketAddr),
    /// A member opened its stream of Raft messages to this one.
    PeerStream {
        id: MetaserverId,
        addr: SocketAddr,
        incarnation: u64,
    },
    Unreachable(u64),
    SnapshotReport {
        to: u64,
        delivered: bool,
    },
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Answer<Outcome>>,
    },
    Allocate {
        request: SessionRequest,
        ino: InodeId,
        len: u64,
        avoid: Vec<ChunkserverId>,
        who: Option<Credentials>,
        reply: oneshot::Sender<Answer<Outcome>>,
    },
    /// A slice allocation for the leader's own re-encoding, under `policy`.
    Reserve {
        ino: InodeId,
        policy: Policy,
        len: u64,
        reply: oneshot::Sender<Answer<Outcome>>,
    },
    /// Up to `max` slices to re-encode, leaving out `skip` (leader only).
    Reencodes {
        skip: BTreeSet<SliceId>,
        max: usize,
        reply: oneshot::Sender<Answer<Vec<reencode::Candidate>>>,
    },
    /// The next slice for the deep scrub after `after` (leader only).
    ScrubNext {
        after: Option<deep_scrub::Cursor>,
        reply: oneshot::Sender<Answer<Option<deep_scrub::Next>>>,
    },
    /// A read-only request, made as `who` when the mount is limited to that user.
    Query {
        query: FsQuery,
        who: Option<Credentials>,
        reply: oneshot::Sender<Answer<Result<FsReply, Errno>>>,
    },
    Register {
        name: String,
        registration: Registration,
        reply: oneshot::Sender<Answer<Outcome>>,
    },
    Heartbeat {
        name: String,
        heartbeat: Heartbeat,
        reply: oneshot::Sender<Answer<()>>,
    },
    /// A mount lives, with these files open; answers whether its locks were lost, or why
    /// its certificate may not keep that session.
    KeepAlive {
        client: ClientId,
        certificate: String,
        open: Vec<InodeId>,
        reply: oneshot::Sender<Answer<Result<bool, &'static str>>>,
    },
    Member {
        change: MemberChange,
        reply: oneshot::Sender<Answer<Result<(), String>>>,
    },
    Status {
        reply: oneshot::Sender<Answer<ClusterStatus>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Digest {
        reply: oneshot::Sender<AdminReply>,
    },
    /// Up to `max_jobs` shard jobs for slices not `busy`, with the term this member leads
    /// in (leader only).
    Plan {
        busy: BTreeMap<SliceId, Busy>,
        max_jobs: usize,
        reply: oneshot::Sender<Answer<(u64, Vec<Job>)>>,
    },
    /// Which of these copies may be deleted now, with their servers' addresses (see
    /// [`gc::deletable`]); answered as a linearizable read, so never from a stale state.
    Deletable {
        copies: Vec<(ShardCopy, Doom)>,
        reply: oneshot::Sender<Answer<Vec<(ShardCopy, SocketAddr)>>>,
    },
    GcWork {
        reply: oneshot::Sender<Answer<GcWork>>,
    },
    /// What the metadata places on `server`.
    Expected {
        server: ChunkserverId,
        reply: oneshot::Sender<Answer<Expected>>,
    },
    /// A chunkserver (by certificate name) reports one of its shards damaged.
    ReportDamage {
        name: String,
        shard: ShardId,
        reply: oneshot::Sender<Answer<()>>,
    },
    /// The leader's own finding: a shard placed on `server` is damaged or missing.
    Damaged {
        shard: ShardId,
        server: ChunkserverId,
    },
    /// A damaged shard was rewritten in place.
    Repaired {
        shard: ShardId,
        server: ChunkserverId,
    },
    Drain {
        id: ChunkserverId,
        cancel: bool,
        reply: oneshot::Sender<Answer<Outcome>>,
    },
    /// Prometheus text: this member's progress, and the cluster if it leads.
    Metrics {
        reply: oneshot::Sender<String>,
    },
}

enum Waiter {
    Proposal(oneshot::Sender<Answer<Outcome>>),
    Member(oneshot::Sender<Answer<Result<(), String>>>),
    Read(
        FsQuery,
        Option<Credentials>,
        oneshot::Sender<Answer<Result<FsReply, Errno>>>,
    ),
    Status(oneshot::Sender<Answer<ClusterStatus>>),
    Deletable(
        Vec<(ShardCopy, Doom)>,
        oneshot::Sender<Answer<Vec<(ShardCopy, SocketAddr)>>>,
    ),
}

/// Most `AwaitLock` queries held back at once; more are answered at once (the client then
/// waits a little on its own).
const MAX_LOCK_WAITS: usize = 16_384;

/// An `AwaitLock` held back until its conflict goes or its time is up.
struct LockWait {
    query: FsQuery,
    reply: oneshot::Sender<Answer<Result<FsReply, Errno>>>,
    until: Instant,
}

/// What the leader knows of a client from its keepalives.
struct ClientSession {
    seen: Instant,
    /// The unlinked files it has open.
    open: HashSet<InodeId>,
    certificate: String,
}

/// What the leader knows of a chunkserver from its heartbeats.
struct Live {
    seen: Instant,
    heartbeat: Heartbeat,
}

pub struct Core {
    replica: Replica,
    inputs: Receiver<Input>,
    peers: Peers,
    waiters: HashMap<Token, Waiter>,
    next_token: Token,
    live: HashMap<ChunkserverId, Live>,
    sessions: HashMap<ClientId, ClientSession>,
    leader_since: Option<Instant>,
    liveness: Liveness,
    rng: rand::rngs::StdRng,
    upkeep: Upkeep,
    book: Arc<Mutex<Book>>,
    /// Shards found damaged or missing, by the server holding them (soft state: scrub and
    /// reconcile find them again after a failover).
    damaged: HashSet<(ShardId, ChunkserverId)>,
    /// The last placement problem logged, and when.
    placement_warned: Option<(String, Instant)>,
    lock_waits: Vec<LockWait>,
    /// The applied index the held-back lock queries were last checked at.
    lock_waits_checked: u64,
    /// The grant keys of the applied cluster map, for the request handlers.
    keys: SharedKeys,
}

impl Core {
    pub fn new(
        replica: Replica,
        inputs: Receiver<Input>,
        peers: Peers,
        liveness: Liveness,
        upkeep: Upkeep,
        book: Arc<Mutex<Book>>,
        keys: SharedKeys,
    ) -> Core {
        Core {
            replica,
            inputs,
            peers,
            waiters: HashMap::new(),
            next_token: 1,
            live: HashMap::new(),
            sessions: HashMap::new(),
            leader_since: None,
            liveness,
            rng: rand::SeedableRng::from_entropy(),
            upkeep,
            book,
            damaged: HashSet::new(),
            placement_warned: None,
            lock_waits: Vec::new(),
            lock_waits_checked: 0,
            keys,
        }
    }

    /// Runs until every sender of inputs is gone. Returns an error if the Raft log could not
    /// be written (the member must stop: it cannot promise durability any more).
    pub fn run(mut self) -> Result<(), String> {
        let mut next_tick = Instant::now() + TICK;
        let mut next_duty = Instant::now();
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.inputs.recv_timeout(wait) {
                Ok(input) => {
                    self.handle(input);
                    for _ in 0..BATCH {
                        match self.inputs.try_recv() {
                            Ok(input) => self.handle(input),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            self.set_clock();
            let now = Instant::now();
            if now >= next_tick {
                self.replica.tick();
                // Never two ticks closer than TICK: a follower's election timeout counted in
                // ticks must not pass faster than the leader's lease counted in real time.
                next_tick = now + TICK;
            }
            let members = self.replica.sm().members.clone();
            let peers = &mut self.peers;
            let out = self.replica.advance(&mut |msgs| {
                peers.update(&members);
                peers.send(msgs)
            })?;
            self.dispatch(out);
            for report in self.peers.take_reports() {
                self.handle(report);
            }
            self.enforce_revocations();
            self.share_grant_keys();
            self.answer_lock_waits();
            if now >= next_duty {
                self.leader_duties();
                next_duty = now + Duration::from_secs(1);
            }
        }
    }

    /// Hands the cluster map's revocations to this member's endpoint, which refuses and
    /// disconnects those peers. Revocations only accumulate, so a changed count is a change.
    fn enforce_revocations(&mut self) {
        let sm = self.replica.sm();
        let revoked = sm.cluster.revocations();
        if revoked.len() != self.peers.node().revocations().len() {
            self.peers.node().set_revocations(revoked);
        }
    }

    /// Hands the cluster map's grant keys to the request handlers when they changed.
    fn share_grant_keys(&mut self) {
        let sm = self.replica.sm();
        let applied = sm.cluster.grant_keys();
        let newest = |keys: &[GrantKey]| keys.last().map(|k| k.id);
        // Read first: this runs on every turn of the loop, and handlers sign under the lock.
        if newest(&self.keys.read().unwrap_or_else(|p| p.into_inner())) != newest(applied) {
            *self.keys.write().unwrap_or_else(|p| p.into_inner()) = applied.to_vec();
        }
    }

    fn token(&mut self, waiter: Waiter) -> Token {
        let t = self.next_token;
        self.next_token += 1;
        self.waiters.insert(t, waiter);
        t
    }

    fn reject(&self, refusal: &Refusal) -> Reject {
        match refusal {
            Refusal::NotLeader { leader } => {
                Reject::NotLeader(leader.and_then(|id| self.replica.sm().members.get(&id).copied()))
            }
            Refusal::Busy(why) => Reject::Retry(why.to_string()),
        }
    }

    fn not_leader(&self) -> Reject {
        let leader = self.replica.leader().filter(|&l| l != self.replica.id());
        Reject::NotLeader(leader.and_then(|id| self.replica.sm().members.get(&id).copied()))
    }

    fn propose(&mut self, cmd: Command, reply: oneshot::Sender<Answer<Outcome>>) {
        let token = self.token(Waiter::Proposal(reply));
        if let Err(r) = self.replica.propose(&cmd, token) {
            let reject = self.reject(&r);
            if let Some(Waiter::Proposal(reply)) = self.waiters.remove(&token) {
                let _ = reply.send(Err(reject));
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Step(msg) => self.replica.step(msg),
            Input::PeerAddr(id, addr) => self.peers.learn(id, addr),
            Input::PeerStream {
                id,
                addr,
                incarnation,
            } => self.peers.opened(id, addr, incarnation),
            Input::Unreachable(id) => self.replica.report_unreachable(id),
            Input::SnapshotReport { to, delivered } => self.replica.report_snapshot(to, delivered),
            Input::Propose { cmd, reply } => self.propose(cmd, reply),
            Input::Allocate {
                request,
                ino,
                len,
                avoid,
                who,
                reply,
            } => {
                let command = |layout, placement, now| Command::Allocate {
                    request,
                    now,
                    ino,
                    layout,
                    placement,
                    who,
                };
                self.allocate(ino, None, len, &avoid, reply, command);
            }
            Input::Reserve {
                ino,
                policy,
                len,
                reply,
            } => {
                let command = |layout, placement, now| Command::Reserve {
                    ino,
                    layout,
                    placement,
                    now,
                };
                self.allocate(ino, Some(policy), len, &[], reply, command);
            }
            Input::Reencodes { skip, max, reply } => {
                let answer = match self.replica.is_leader() {
                    true => {
                        let sm = self.replica.sm();
                        Ok(reencode::find(&sm, &self.views(&sm), &skip, max).0)
                    }
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::ScrubNext { after, reply } => {
                let answer = match self.replica.is_leader() {
                    true => {
                        let sm = self.replica.sm();
                        Ok(deep_scrub::next_after(&sm, &self.views(&sm), after))
                    }
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::Query { query, who, reply } => {
                let token = self.token(Waiter::Read(query, who, reply));
                self.read(token);
            }
            Input::Register {
                name,
                registration,
                reply,
            } => {
                let cmd = Command::Register {
                    name,
                    registration,
                    now: Timestamp::now(),
                };
                self.propose(cmd, reply);
            }
            Input::Heartbeat {
                name,
                heartbeat,
                reply,
            } => {
                let _ = reply.send(self.heartbeat(&name, heartbeat));
            }
            Input::KeepAlive {
                client,
                certificate,
                open,
                reply,
            } => {
                let answer = match self.replica.is_leader() {
                    true => Ok(self.keep_alive(client, certificate, open)),
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::Member { change, reply } => {
                let token = self.token(Waiter::Member(reply));
                if let Err(r) = self.replica.change_members(&change, token) {
                    let reject = self.reject(&r);
                    if let Some(Waiter::Member(reply)) = self.waiters.remove(&token) {
                        let _ = reply.send(Err(reject));
                    }
                }
            }
            Input::Status { reply } => {
                let token = self.token(Waiter::Status(reply));
                self.read(token);
            }
            Input::Snapshot { reply } => {
                let _ = reply.send(self.replica.snapshot_now());
            }
            Input::Plan {
                busy,
                max_jobs,
                reply,
            } => {
                let answer = match self.replica.is_leader() {
                    true => Ok((self.replica.term(), self.plan(&busy, max_jobs))),
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::Deletable { copies, reply } => {
                let token = self.token(Waiter::Deletable(copies, reply));
                self.read(token);
            }
            Input::GcWork { reply } => {
                let answer = match self.replica.is_leader() {
                    true => Ok(self.gc_work()),
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::Expected { server, reply } => {
                let answer = match self.replica.is_leader() {
                    true => Ok(self.expected(server)),
                    false => Err(self.not_leader()),
                };
                let _ = reply.send(answer);
            }
            Input::ReportDamage { name, shard, reply } => {
                let sm = self.replica.sm();
                let server = sm.cluster.iter().find(|(_, s)| s.name == name);
                let server = server.map(|(id, _)| id);
                drop(sm);
                let answer = match (self.replica.is_leader(), server) {
                    (false, _) => Err(self.not_leader()),
                    (true, None) => Err(Reject::Retry(format!("{name} is not registered"))),
                    (true, Some(id)) => {
                        warn!(%shard, server = %id, "damaged shard reported");
                        self.damaged.insert((shard, id));
                        Ok(())
                    }
                };
                let _ = reply.send(answer);
            }
            Input::Damaged { shard, server } => {
                self.damaged.insert((shard, server));
            }
            Input::Repaired { shard, server } => {
                self.damaged.remove(&(shard, server));
            }
            Input::Drain { id, cancel, reply } => {
                // A cancel overrules the health check: only errors counted from now on count.
                let health = self.live.get(&id).map(|l| l.heartbeat.health);
                let cmd = Command::Drain {
                    id,
                    cancel,
                    reason: "drained by an admin".to_string(),
                    health: health.unwrap_or_default(),
                    now: Timestamp::now(),
                };
                self.propose(cmd, reply);
            }
            Input::Metrics { reply } => {
                let me = crate::metrics::Member {
                    leader: self.replica.is_leader(),
                    term: self.replica.term(),
                    applied: self.replica.sm().applied,
                    snapshot: self.replica.snapshot_index(),
                    reads_answered_here: self.replica.answered_here(),
                };
                let status = me.leader.then(|| self.status());
                let _ = reply.send(crate::metrics::render(&me, status.as_ref()));
            }
            Input::Digest { reply } => {
                let sm = self.replica.sm();
                let digest = codec::encode_state(&*sm)
                    .map(|b| crc32c::crc32c(&b))
                    .unwrap_or(0);
                let _ = reply.send(AdminReply::Digest {
                    member: self.replica.id(),
                    leader: self.replica.leader(),
                    applied: sm.applied,
                    digest,
                });
            }
        }
    }

    /// Tells the replica the time, as a lease must be checked against it: this thread may
    /// have stood still (a paused process, a slow disk) since it last looked.
    fn set_clock(&mut self) {
        self.replica.set_clock(boot_clock_ms());
    }

    fn read(&mut self, token: Token) {
        self.set_clock();
        if let Err(r) = self.replica.read(token) {
            let reject = self.reject(&r);
            self.fail(token, reject);
        }
    }

    fn fail(&mut self, token: Token, reject: Reject) {
        match self.waiters.remove(&token) {
            Some(Waiter::Proposal(reply)) => drop(reply.send(Err(reject))),
            Some(Waiter::Member(reply)) => drop(reply.send(Err(reject))),
            Some(Waiter::Read(_, _, reply)) => drop(reply.send(Err(reject))),
            Some(Waiter::Status(reply)) => drop(reply.send(Err(reject))),
            Some(Waiter::Deletable(_, reply)) => drop(reply.send(Err(reject))),
            None => {}
        }
    }

    fn dispatch(&mut self, out: Output) {
        self.peers.update(&self.replica.sm().members);
        self.peers.send(out.messages);
        for event in out.events {
            match event {
                Event::Applied { token, outcome } => {
                    if let Some(Waiter::Proposal(reply)) = self.waiters.remove(&token) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Event::MemberChanged { token, result } => {
                    if let Some(Waiter::Member(reply)) = self.waiters.remove(&token) {
                        let _ = reply.send(Ok(result));
                    }
                }
                Event::ReadReady { token } => match self.waiters.remove(&token) {
                    Some(Waiter::Read(query, who, reply)) => {
                        let answer = self.answer(&query, who.as_ref());
                        let held = matches!(answer, Ok(FsReply::Lock(Some(_))));
                        if matches!(query, FsQuery::AwaitLock { .. })
                            && held
                            && self.lock_waits.len() < MAX_LOCK_WAITS
                        {
                            let until = Instant::now() + LOCK_WAIT_MAX;
                            self.lock_waits.push(LockWait {
                                query,
                                reply,
                                until,
                            });
                        } else {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Some(Waiter::Status(reply)) => {
                        let _ = reply.send(Ok(self.status()));
                    }
                    Some(Waiter::Deletable(copies, reply)) => {
                        let _ = reply.send(Ok(gc::deletable(&self.replica.sm(), &copies)));
                    }
                    _ => {}
                },
                Event::Aborted { token } => {
                    self.fail(token, Reject::Retry("leadership changed; retry".into()))
                }
            }
        }
        let leader = self.replica.is_leader();
        match (leader, self.leader_since) {
            (true, None) => {
                info!(term = self.replica.term(), "became leader");
                self.leader_since = Some(Instant::now());
            }
            (false, Some(_)) => {
                info!(leader = ?self.replica.leader(), "no longer leader");
                self.leader_since = None;
                self.live.clear();
                self.sessions.clear();
            }
            _ => {}
        }
    }

    /// Answers the held-back lock queries whose conflict went (by the entries applied
    /// since the last look), whose time is up, or whose asker left.
    fn answer_lock_waits(&mut self) {
        let now = Instant::now();
        let applied = self.replica.sm().applied;
        let due = |w: &LockWait| w.until <= now || w.reply.is_closed();
        if applied == self.lock_waits_checked && !self.lock_waits.iter().any(due) {
            return;
        }
        self.lock_waits_checked = applied;
        let mut kept = Vec::with_capacity(self.lock_waits.len());
        for w in std::mem::take(&mut self.lock_waits) {
            let answer = self.answer(&w.query, None);
            if matches!(answer, Ok(FsReply::Lock(Some(_)))) && !due(&w) {
                kept.push(w);
            } else {
                let _ = w.reply.send(Ok(answer));
            }
        }
        self.lock_waits = kept;
    }

    /// The answer to a query. Those not `StateMachine::query`'s must be among the ones
    /// [`crate::lease_reads::answered_from_state`] leaves to the core.
    fn answer(&self, query: &FsQuery, who: Option<&Credentials>) -> Result<FsReply, Errno> {
        match query {
            FsQuery::StatFs => {
                let (mut total, mut free, mut used) = (0u64, 0u64, 0u64);
                for l in self.live.values() {
                    for d in &l.heartbeat.disks {
                        total += d.total_bytes;
                        free += d.free_bytes;
                        used += d.shard_bytes;
                    }
                }
                Ok(FsReply::StatFs(StatFs {
                    total_bytes: total,
                    free_bytes: free,
                    used_bytes: used,
                    inodes: self.replica.sm().ns.inode_count(),
                }))
            }
            FsQuery::GetXattr { ino, name } if name == LAYOUT_XATTR => {
                let sm = self.replica.sm();
                fileinfo::describe(&sm, &self.views(&sm), *ino).map(FsReply::Xattr)
            }
            q => self.replica.sm().query(q, who),
        }
    }

    fn heartbeat(&mut self, name: &str, heartbeat: Heartbeat) -> Answer<()> {
        if !self.replica.is_leader() {
            return Err(self.not_leader());
        }
        match self.replica.sm().cluster.get(heartbeat.id) {
            Some(rec) if rec.name == name => {}
            _ => {
                return Err(Reject::Retry(format!(
                    "{name} is not registered as {}",
                    heartbeat.id
                )))
            }
        }
        let id = heartbeat.id;
        self.live.insert(
            id,
            Live {
                seen: Instant::now(),
                heartbeat,
            },
        );
        Ok(())
    }

    /// Whether the leader has heard from a server recently enough to rely on it (a new
    /// leader trusts the map until it has had time to hear from everyone).
    fn fresh(&self, id: ChunkserverId) -> bool {
        let settled = self
            .leader_since
            .is_some_and(|t| t.elapsed() > self.liveness.suspect_after);
        match self.live.get(&id) {
            Some(l) => l.seen.elapsed() < self.liveness.suspect_after,
            None => !settled,
        }
    }

    fn candidates(&self, avoid: &[ChunkserverId]) -> Vec<Candidate> {
        self.replica
            .sm()
            .cluster
            .iter()
            .filter(|(id, s)| {
                s.state == ChunkserverState::Up && !avoid.contains(id) && self.fresh(*id)
            })
            .map(|(id, s)| Candidate {
                id,
                free_bytes: self.free_bytes(id, s),
                domain: domain_of(s),
            })
            .collect()
    }

    fn free_bytes(&self, id: ChunkserverId, s: &ServerRecord) -> u64 {
        match self.live.get(&id) {
            Some(l) => l.heartbeat.disks.iter().map(|d| d.free_bytes).sum(),
            None => s.capacity,
        }
    }

    /// Places a new slice of `ino` (under `policy`, else its file's) and proposes the
    /// command `command` makes of its layout and servers; the reply says why not otherwise.
    fn allocate(
        &mut self,
        ino: InodeId,
        policy: Option<Policy>,
        len: u64,
        avoid: &[ChunkserverId],
        reply: oneshot::Sender<Answer<Outcome>>,
        command: impl FnOnce(SliceLayout, Placement, Timestamp) -> Command,
    ) {
        match self.plan_allocation(ino, policy, len, avoid) {
            Ok(Ok((layout, placement))) => {
                let cmd = command(layout, placement, Timestamp::now());
                self.propose(cmd, reply);
            }
            Ok(Err(errno)) => {
                let _ = reply.send(Ok(Outcome::Fs(Err(errno))));
            }
            Err(reject) => {
                let _ = reply.send(Err(reject));
            }
        }
    }

    /// The layout and servers of a new slice, or the errno to fail it with: EAGAIN while
    /// too few servers are up to store it even degraded (the client waits and retries),
    /// ENOSPC when enough are up but too full.
    /// `policy` overrides the file's (a re-encode knows what it wants).
    fn plan_allocation(
        &mut self,
        ino: InodeId,
        policy: Option<Policy>,
        len: u64,
        avoid: &[ChunkserverId],
    ) -> Answer<Result<(SliceLayout, Placement), Errno>> {
        if !self.replica.is_leader() {
            return Err(self.not_leader());
        }
        let policy = match policy.map_or_else(
            || self.replica.sm().policy_of(ino, self.upkeep.default_policy),
            Ok,
        ) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let Ok(layout) = SliceLayout::new(policy, len, DEFAULT_STRIPE_UNIT) else {
            return Ok(Err(Errno::INVAL));
        };
        let candidates = self.candidates(avoid);
        match placement::place(policy, &candidates, layout.shard_len() * 2, &mut self.rng) {
            Ok(servers) => {
                let missing = servers.iter().filter(|s| s.is_none()).count();
                if missing > 0 {
                    self.placement_trouble(format!(
                        "{ino}: a new {policy} slice lands degraded, {missing} shard(s) to be \
                         rebuilt once servers allow: only {} server(s) can take data",
                        candidates.len()
                    ));
                }
                Ok(Ok((layout, servers)))
            }
            Err(e) => {
                self.placement_trouble(format!("{ino}: cannot place a slice: {e}"));
                Ok(Err(if e.out_of_space() {
                    Errno::NOSPC
                } else {
                    Errno::AGAIN
                }))
            }
        }
    }

    /// Logs a placement problem, at most one line per reason every ten seconds (writers
    /// retry while servers are missing).
    fn placement_trouble(&mut self, what: String) {
        let reason: String = what.split_once(": ").map_or(&*what, |(_, r)| r).into();
        let now = Instant::now();
        if self
            .placement_warned
            .as_ref()
            .is_some_and(|(r, at)| *r == reason && now.duration_since(*at) < PLACEMENT_WARN_EVERY)
        {
            return;
        }
        warn!("{what}");
        self.placement_warned = Some((reason, now));
    }

    /// Once a second on the leader: silent chunkservers become suspect then down, silent
    /// clients lose their sessions, and unlinked files nobody has open are removed.
    fn leader_duties(&mut self) {
        let Some(since) = self.leader_since else {
            return;
        };
        let now = Timestamp::now();
        if self.replica.sm().default_policy().is_none() {
            let policy = self.upkeep.default_policy;
            info!(%policy, "recording the cluster's default redundancy policy");
            let cmd = Command::DefaultPolicy {
                policy,
                only_if_unset: true,
                now,
            };
            let (reply, _) = oneshot::channel();
            self.propose(cmd, reply);
        }
        let keys = self.replica.sm().cluster.grant_keys().to_vec();
        let secs = grant::unix_now();
        if grants::key_due(&keys, secs) {
            let id = keys.last().map_or(1, |k| k.id + 1);
            info!(id, "making a new key for grants");
            let cmd = Command::GrantKey {
                key: GrantKey::random(id, secs),
            };
            let (reply, _) = oneshot::channel();
            self.propose(cmd, reply);
        }
        // A new leader first waits a full timeout so every live client can be heard from.
        if since.elapsed() >= self.liveness.session_timeout {
            self.session_duties(now);
        }
        if since.elapsed() < self.liveness.down_after {
            return;
        }
        let changes: Vec<(ChunkserverId, ChunkserverState)> = self
            .replica
            .sm()
            .cluster
            .iter()
            .filter_map(|(id, s)| {
                let silent = self
                    .live
                    .get(&id)
                    .map_or(since.elapsed(), |l| l.seen.elapsed());
                let want = if silent >= self.liveness.down_after {
                    ChunkserverState::Down
                } else if silent >= self.liveness.suspect_after {
                    ChunkserverState::Suspect
                } else {
                    ChunkserverState::Up
                };
                match (s.state, want) {
                    (ChunkserverState::Up | ChunkserverState::Suspect, ChunkserverState::Down) => {
                        Some((id, want))
                    }
                    (ChunkserverState::Up, ChunkserverState::Suspect) => Some((id, want)),
                    (ChunkserverState::Suspect | ChunkserverState::Down, ChunkserverState::Up) => {
                        Some((id, want))
                    }
                    _ => None,
                }
            })
            .collect();
        for (id, state) in changes {
            info!(%id, ?state, "chunkserver state changes");
            let (reply, _) = oneshot::channel();
            self.propose(Command::SetServerState { id, state, now }, reply);
        }
        self.predictive_drain(now);
    }

    /// Drains servers whose health counters predict a failure.
    fn predictive_drain(&mut self, now: Timestamp) {
        let failing: Vec<(ChunkserverId, String)> = self
            .replica
            .sm()
            .cluster
            .iter()
            .filter(|(_, s)| matches!(s.state, ChunkserverState::Up | ChunkserverState::Suspect))
            .filter_map(|(id, s)| {
                let health = self.live.get(&id)?.heartbeat.health;
                Some((
                    id,
                    self.upkeep
                        .health
                        .breached(&health.since(&s.health_baseline))?,
                ))
            })
            .collect();
        for (id, reason) in failing {
            warn!(%id, "{reason}: draining it");
            let (reply, _) = oneshot::channel();
            let cmd = Command::Drain {
                id,
                cancel: false,
                reason,
                health: HealthCounters::default(),
                now,
            };
            self.propose(cmd, reply);
        }
    }

    /// The leader's view of every chunkserver, for planning. Takes the state the caller
    /// holds: no second read guard is taken on the core thread.
    fn views(&self, sm: &StateMachine) -> BTreeMap<ChunkserverId, ServerView> {
        sm.cluster
            .iter()
            .map(|(id, s)| {
                let disks = self.live.get(&id).map(|l| l.heartbeat.disks.as_slice());
                let disks = disks.unwrap_or_default();
                let view = ServerView {
                    addr: s.addr,
                    state: s.state,
                    fresh: self.live.contains_key(&id) && self.fresh(id),
                    domain: domain_of(s),
                    used_bytes: disks.iter().map(|d| d.shard_bytes).sum(),
                    free_bytes: disks.iter().map(|d| d.free_bytes).sum(),
                };
                (id, view)
            })
            .collect()
    }

    fn planned(
        &self,
        sm: &StateMachine,
        busy: &BTreeMap<SliceId, Busy>,
        max_jobs: usize,
    ) -> planner::Plan {
        let damaged: HashSet<(ShardId, ChunkserverId)> = self.damaged.clone();
        let limits = Limits {
            max_jobs,
            balance_tolerance: self.upkeep.jobs.balance_tolerance,
        };
        let views = self.views(sm);
        planner::plan(sm.ns.all_slices(), &views, &damaged, busy, limits)
    }

    /// Jobs for the executor; also notices draining servers that hold nothing any more.
    fn plan(&mut self, busy: &BTreeMap<SliceId, Busy>, max_jobs: usize) -> Vec<Job> {
        // Until it has heard from every live server, a new leader would take them for lost.
        let settled = self
            .leader_since
            .is_some_and(|t| t.elapsed() > self.liveness.suspect_after);
        if !settled {
            return Vec::new();
        }
        let plan = self.planned(&self.replica.sm(), busy, max_jobs);
        // Damage reports about shards deleted or moved since are moot.
        self.damaged.retain(|d| plan.damage_found.contains(d));
        let sm = self.replica.sm();
        let emptied: Vec<ChunkserverId> = sm
            .cluster
            .iter()
            .filter(|(id, s)| {
                s.state == ChunkserverState::Draining
                    && !plan.placed.contains_key(id)
                    && !sm
                        .pending
                        .values()
                        .any(|p| p.placement.contains(&Some(*id)))
                    && self.live.get(id).is_none_or(|l| l.heartbeat.shards == 0)
            })
            .map(|(id, _)| id)
            .collect();
        drop(sm);
        for id in emptied {
            info!(%id, "draining server holds nothing any more: drained");
            let (reply, _) = oneshot::channel();
            let now = Timestamp::now();
            let state = ChunkserverState::Drained;
            self.propose(Command::SetServerState { id, state, now }, reply);
        }
        plan.jobs
    }

    fn gc_work(&self) -> GcWork {
        const MAX_SLICES: usize = 1000;
        let sm = self.replica.sm();
        let now = Timestamp::now();
        let views = self.views(&sm);
        let readable = |id: &ChunkserverId| {
            views.get(id).filter(|v| {
                v.fresh && v.state != ChunkserverState::Down && v.state != ChunkserverState::Drained
            })
        };
        let older =
            |since: Timestamp, grace: Duration| now.secs - since.secs >= grace.as_secs() as i64;
        let garbage = sm
            .garbage
            .iter()
            .filter(|(_, g)| older(g.since, self.upkeep.jobs.gc_grace))
            .take(MAX_SLICES)
            .map(|(&slice, g)| {
                let shards = g
                    .placement
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        let server = (*p)?;
                        readable(&server)?;
                        let shard = ShardId::new(slice, i as u16);
                        Some(ShardCopy { shard, server })
                    })
                    .collect();
                GarbageSlice {
                    slice,
                    bytes: g.layout.data_len,
                    shards,
                }
            })
            .collect();
        let abandon = sm
            .pending
            .iter()
            .filter(|(_, p)| older(p.since, self.upkeep.jobs.pending_grace))
            .take(MAX_SLICES)
            .map(|(&id, _)| id)
            .collect();
        let servers = views
            .iter()
            .filter(|(id, _)| readable(id).is_some())
            .map(|(&id, v)| (id, v.addr, v.state == ChunkserverState::Draining))
            .collect();
        GcWork {
            garbage,
            abandon,
            servers,
        }
    }

    fn expected(&self, server: ChunkserverId) -> Expected {
        let sm = self.replica.sm();
        let mut out = Expected::default();
        let on = |placement: &[Option<ChunkserverId>], slice: SliceId| {
            placement
                .iter()
                .enumerate()
                .filter(|(_, p)| **p == Some(server))
                .map(|(i, _)| ShardId::new(slice, i as u16))
                .collect::<Vec<_>>()
        };
        for (_, _, s) in sm.ns.all_slices() {
            out.committed.extend(on(&s.placement, s.slice));
        }
        for (&slice, g) in &sm.garbage {
            out.transient.extend(on(&g.placement, slice));
        }
        for (&slice, p) in &sm.pending {
            out.transient.extend(on(&p.placement, slice));
        }
        out
    }

    /// Notes that `client` lives with `open` files. Only unlinked ones are kept (no other
    /// can be reaped), so a session costs what its orphans cost, however many files it has
    /// open.
    fn keep_alive(
        &mut self,
        client: ClientId,
        certificate: String,
        open: Vec<InodeId>,
    ) -> Result<bool, &'static str> {
        let sm = self.replica.sm();
        let known = self.sessions.get(&client).map(|s| s.certificate.as_str());
        if known
            .or(sm.session_certificate(client))
            .is_some_and(|c| c != certificate)
        {
            return Err(FOREIGN_SESSION);
        }
        if known.is_none()
            && self
                .sessions
                .values()
                .filter(|s| s.certificate == certificate)
                .count()
                >= MAX_SESSIONS_PER_CERTIFICATE
        {
            return Err("this certificate has as many sessions as one may have");
        }
        let orphans = sm.ns.orphans();
        let open = open
            .into_iter()
            .filter(|ino| orphans.contains_key(ino))
            .collect();
        let seen = Instant::now();
        let session = ClientSession {
            seen,
            open,
            certificate,
        };
        self.sessions.insert(client, session);
        Ok(sm.locks_lost(client))
    }

    fn live_session(&self, client: &ClientId) -> bool {
        self.sessions
            .get(client)
            .is_some_and(|s| s.seen.elapsed() < self.liveness.session_timeout)
    }

    fn session_duties(&mut self, now: Timestamp) {
        let sm = self.replica.sm();
        let ended: Vec<ClientId> = sm
            .locks
            .clients()
            .into_iter()
            .filter(|c| !self.live_session(c))
            .collect();
        let grace = self.liveness.session_timeout.as_secs() as i64;
        let reap: Vec<InodeId> = sm
            .ns
            .orphans()
            .iter()
            .filter(|(ino, since)| {
                now.secs - since.secs >= grace
                    && !self
                        .sessions
                        .iter()
                        .any(|(c, s)| s.open.contains(ino) && self.live_session(c))
            })
            .map(|(&ino, _)| ino)
            .collect();
        drop(sm);
        for client in ended {
            info!(
                ?client,
                "client silent: its session ends and its locks are released"
            );
            self.sessions.remove(&client);
            let (reply, _) = oneshot::channel();
            let ended = Command::EndSession {
                client,
                certificate: None,
            };
            self.propose(ended, reply);
        }
        for ino in reap {
            let (reply, _) = oneshot::channel();
            self.propose(Command::Reap { ino, now }, reply);
        }
        let timeout = self.liveness.session_timeout;
        self.sessions.retain(|_, s| s.seen.elapsed() < timeout);
    }

    fn status(&self) -> ClusterStatus {
        let sm = self.replica.sm();
        let leader = self.replica.id();
        let default_policy = sm.default_policy();
        let members = sm
            .members
            .iter()
            .map(|(&id, &addr)| MemberStatus {
                id,
                addr,
                leader: id == leader,
            })
            .collect();
        let plan = self.planned(&sm, &BTreeMap::new(), 0);
        let chunkservers = sm
            .cluster
            .iter()
            .map(|(id, s)| {
                let live = self.live.get(&id);
                let disks = live
                    .map(|l| l.heartbeat.disks.as_slice())
                    .unwrap_or_default();
                let placed = plan.placed.get(&id).copied().unwrap_or_default();
                ChunkserverStatusRow {
                    id,
                    name: s.name.clone(),
                    addr: s.addr,
                    state: s.state,
                    reason: s.reason.clone(),
                    labels: s.labels.clone(),
                    placed_shards: placed.shards,
                    placed_bytes: placed.bytes,
                    scrub: live.map(|l| l.heartbeat.scrub).unwrap_or_default(),
                    used_bytes: disks.iter().map(|d| d.shard_bytes).sum(),
                    free_bytes: disks.iter().map(|d| d.free_bytes).sum(),
                    shards: live.map_or(0, |l| l.heartbeat.shards),
                    health: live.map_or(HealthCounters::default(), |l| l.heartbeat.health),
                    last_heartbeat_ms: live.map(|l| l.seen.elapsed().as_millis() as u64),
                }
            })
            .collect();
        ClusterStatus {
            leader,
            default_policy,
            term: self.replica.term(),
            applied_index: sm.applied,
            snapshot_index: self.replica.snapshot_index(),
            members,
            chunkservers,
            inodes: sm.ns.inode_count(),
            slices: sm.ns.all_slices().count() as u64,
            redundancy: plan.redundancy,
            jobs: {
                let mut backlog = plan.backlog;
                let views = self.views(&sm);
                let (_, left) = reencode::find(&sm, &views, &BTreeSet::new(), 0);
                if left.shards > 0 {
                    backlog.insert((JobKind::Reencode, None), left);
                }
                self.book
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .status(&backlog)
            },
            warnings: plan.warnings,
            revoked: sm.cluster.revocations().clone(),
        }
    }
}

fn domain_of(s: &ServerRecord) -> Domain {
    Domain::of(&s.labels, &s.name)
}

/// Member ids and addresses from `ID=ADDR` pairs.
pub fn parse_members(pairs: &[String]) -> Result<BTreeMap<MetaserverId, SocketAddr>, String> {
    pairs
        .iter()
        .map(|p| {
            let (id, addr) = p
                .split_once('=')
                .ok_or_else(|| format!("{p:?} is not ID=ADDR"))?;
            let id: u64 = id
                .parse()
                .map_err(|_| format!("{p:?}: id is not a number"))?;
            if id == 0 {
                return Err(format!("{p:?}: member ids start at 1"));
            }
            let addr = addr.parse().map_err(|_| format!("{p:?}: bad address"))?;
            Ok((MetaserverId(id), addr))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_input_queue_answers_retry_at_once() {
        let (core, _inputs) = mpsc::sync_channel(1);
        offer(&core, Input::Unreachable(1)).unwrap();
        // Unbounded, the request would wait for the core and time out with another answer.
        let answer = ask_core(&core, |reply| Input::Status { reply }).await;
        let Err(Reject::Retry(why)) = answer else {
            panic!("{answer:?}");
        };
        assert!(why.contains("busy"), "{why}");
    }
}
