//! One member of the Raft group with its state machine, free of I/O except through its
//! [`Durable`](crate::raft_log::Durable) log: the caller feeds it ticks, messages from
//! peers and requests, and [`Replica::advance`] hands back messages to send and events to
//! deliver. The deterministic simulation drives exactly this code.

use crate::lease_reads::{Gate, LocalReads, Shared};
use crate::raft_log::RaftLog;
use crate::state_machine::{Command, Outcome, StateMachine};
use lattice_common::codec;
use lattice_common::ids::MetaserverId;
use protobuf::Message as _;
use raft::prelude::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, ReadState, Snapshot,
};
use raft::{RawNode, StateRole};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// A caller's handle on a request in flight.
pub type Token = u64;

/// Largest state machine snapshot accepted from a peer.
pub(crate) const MAX_STATE_BYTES: u64 = 8 << 30;
/// A read index request unanswered for this many ticks is asked again (raft-rs drops read
/// requests a new leader gets before it has committed in its term, and heartbeats get lost).
const READ_RETRY_TICKS: u32 = 10;
/// How often the caller ticks a member, at most (never faster: leases rely on it).
pub const TICK: Duration = Duration::from_millis(50);
/// A snapshot encodes the whole state machine on the core thread, during which no change
/// is applied: taken every `snapshot_every` entries alone, at a million files that was 84 MB
/// every 10,000 creates, and creates ran at a third of their speed. Waiting also for the
/// entries since the last one to reach a quarter of its size makes the cost per entry
/// constant, and bounds the log kept (in memory and replayed at start) to a quarter of the
/// state.
const LOG_SHARE: u64 = 4;
/// A leader's read lease ends this many ticks short of the election timeout, against the
/// follower's first tick coming right after the heartbeat and clock rates that differ.
const LEASE_MARGIN_TICKS: usize = 2;

#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    pub election_tick: usize,
    pub heartbeat_tick: usize,
    /// Take a snapshot and compact the log after this many applied entries.
    pub snapshot_every: u64,
    /// Election timeouts are drawn from `min_election_tick..max_election_tick` (0: the
    /// election tick), at least the election tick.
    pub min_election_tick: usize,
    /// Election timeouts are drawn from `min_election_tick..max_election_tick` (0: twice the
    /// election tick). The simulation pins it to make runs replayable.
    pub max_election_tick: usize,
    /// The time between ticks, in milliseconds (what a lease is measured against).
    pub tick_ms: u64,
    /// Whether the leader answers reads under a lease (see `Lease`).
    pub read_lease: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            election_tick: 10,
            heartbeat_tick: 2,
            snapshot_every: 10_000,
            min_election_tick: 0,
            max_election_tick: 0,
            tick_ms: TICK.as_millis() as u64,
            read_lease: true,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// The request's command was committed and applied.
    Applied { token: Token, outcome: Outcome },
    /// A membership change was applied (or refused by Raft).
    MemberChanged {
        token: Token,
        result: Result<(), String>,
    },
    /// The state machine now reflects everything committed before the read arrived: answer it.
    ReadReady { token: Token },
    /// Leadership was lost before the request completed; it may or may not take effect
    /// (a retry with the same client sequence number is safe).
    Aborted { token: Token },
}

#[derive(Debug, Default)]
pub struct Output {
    pub messages: Vec<Message>,
    pub events: Vec<Event>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<MetaserverId> },
    #[error("{0}")]
    Busy(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Add(MetaserverId, SocketAddr),
    Remove(MetaserverId),
}

pub struct Replica {
    id: u64,
    node: RawNode<RaftLog>,
    /// The state machine, which request threads also read under the lease
    /// ([`crate::lease_reads`]); only this member's core writes it, through `&mut self`, so
    /// no read guard of the core's can be alive then.
    shared: Arc<Shared>,
    snapshot_every: u64,
    /// Bytes of the entries applied since the last snapshot, and of that snapshot's state:
    /// a snapshot is taken once the first is a [`LOG_SHARE`]th of the second.
    log_bytes: u64,
    snapshot_bytes: u64,
    /// Proposal ids (in entry contexts) of this member's requests in flight.
    proposals: BTreeMap<u64, Token>,
    next_proposal: u64,
    reads_waiting: Vec<Token>,
    reads_inflight: BTreeMap<u64, ReadRound>,
    reads_ready: Vec<(u64, Vec<Token>)>,
    next_read: u64,
    was_leader: bool,
    /// The caller's monotonic clock, in milliseconds: it must count the time a paused
    /// process stood still (ticks do not).
    now_ms: u64,
    lease: Lease,
    /// Ticks since this member last heard a leader (or started), up to the election
    /// timeout: it grants no votes until then, as it may have confirmed a leader's lease.
    /// raft-rs refuses them too, but forgets the leader on any message of a higher term (a
    /// pre-vote's rejection), and a restarted member never knew it.
    ticks_since_leader: usize,
    election_tick: usize,
}

/// A read index round in flight.
struct ReadRound {
    tokens: Vec<Token>,
    /// Ticks since it was issued.
    age: u32,
    /// When it was issued, and in which term: once a quorum answers its heartbeat, no other
    /// member can be elected for an election timeout from then.
    issued_ms: u64,
    term: u64,
}

/// While a leader holds a lease, no other member can have been elected, so it answers
/// reads from its own state without a round of heartbeats first.
#[derive(Clone, Copy, Default)]
struct Lease {
    term: u64,
    until_ms: u64,
    /// The read index of the rounds that gave it: at least every entry of earlier terms
    /// (a round of this term completes only once the leader committed an entry of it).
    index: u64,
    /// How long a confirmed round holds, in milliseconds (0: no leases).
    length_ms: u64,
}

fn raft_config(id: u64, applied: u64, t: &Tuning) -> raft::Config {
    raft::Config {
        id,
        election_tick: t.election_tick,
        heartbeat_tick: t.heartbeat_tick,
        applied,
        max_size_per_msg: 4 << 20,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        // A read index round waits for a quorum to acknowledge a heartbeat sent after it
        // started. Leases (see `Lease`) are kept here, in real time: raft-rs counts them in
        // ticks, and a leader paused past its election timeout, whose followers have since
        // elected another, would answer from its old state.
        read_only_option: raft::ReadOnlyOption::Safe,
        // Followers learn a new commit index from the next append or heartbeat rather than
        // from one more append sent for it alone: that message and its answer were half
        // of each round's network and scheduling work. Nothing is read from followers.
        skip_bcast_commit: true,
        min_election_tick: t.min_election_tick,
        max_election_tick: t.max_election_tick,
        ..Default::default()
    }
}

fn context(id: u64, n: u64) -> Vec<u8> {
    [id.to_le_bytes(), n.to_le_bytes()].concat()
}

fn parse_context(ctx: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_le_bytes(ctx.get(0..8)?.try_into().ok()?);
    let n = u64::from_le_bytes(ctx.get(8..16)?.try_into().ok()?);
    Some((id, n))
}

impl Replica {
    /// Starts a member from its log. A member with an empty log and `bootstrap` members
    /// starts a new group with them (every founding member must be given the same list); a
    /// member with an empty log and none waits to be added and sent a snapshot.
    pub fn new(
        id: MetaserverId,
        mut log: RaftLog,
        bootstrap: &BTreeMap<MetaserverId, SocketAddr>,
        tuning: Tuning,
        logger: &slog::Logger,
        proposal_seed: u64,
    ) -> Result<Replica, String> {
        let empty =
            log.snapshot_metadata().index == 0 && raft::Storage::last_index(&log).unwrap_or(0) == 0;
        let data = if empty && !bootstrap.is_empty() {
            let founding = founding_snapshot(bootstrap)?;
            let data = founding.data.clone();
            log.apply_snapshot(founding)
                .map_err(|e| format!("writing the founding snapshot: {e}"))?;
            data
        } else {
            log.take_snapshot_data()
        };
        let sm: StateMachine = if data.is_empty() {
            StateMachine::default()
        } else {
            codec::decode_state(&data, MAX_STATE_BYTES)
                .map_err(|e| format!("reading the snapshot: {e}"))?
        };
        let data_len = data.len() as u64;
        let applied = log.snapshot_metadata().index;
        let node = RawNode::new(&raft_config(id.0, applied, &tuning), log, logger)
            .map_err(|e| e.to_string())?;
        Ok(Replica {
            id: id.0,
            node,
            shared: Arc::new(Shared::new(sm)),
            snapshot_every: tuning.snapshot_every,
            log_bytes: 0,
            snapshot_bytes: data_len,
            proposals: BTreeMap::new(),
            next_proposal: proposal_seed,
            reads_waiting: Vec::new(),
            reads_inflight: BTreeMap::new(),
            reads_ready: Vec::new(),
            next_read: 0,
            was_leader: false,
            now_ms: 0,
            lease: Lease {
                length_ms: match tuning.read_lease {
                    true => tuning.election_tick.saturating_sub(LEASE_MARGIN_TICKS) as u64,
                    false => 0,
                } * tuning.tick_ms,
                ..Lease::default()
            },
            ticks_since_leader: 0,
            election_tick: tuning.election_tick,
        })
    }

    pub fn id(&self) -> MetaserverId {
        MetaserverId(self.id)
    }

    /// The state machine. Hold the guard briefly: this member's next apply waits for the
    /// guards of request threads, and they for its write guard.
    pub fn sm(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.shared.read()
    }

    fn sm_mut(&mut self) -> RwLockWriteGuard<'_, StateMachine> {
        self.shared.write()
    }

    /// What request threads answer queries with under the lease.
    pub fn local_reads(&self) -> LocalReads {
        LocalReads(self.shared.clone())
    }

    /// Queries request threads answered under the lease since this member started.
    pub fn answered_here(&self) -> u64 {
        self.shared.answered()
    }

    /// Tells request threads whether they may answer from this member's state: only while
    /// it leads under a lease in its first half. Called whenever Raft may have changed
    /// that, and before any message leaves that could let another member lead (a
    /// leadership transfer).
    fn publish_lease(&self) {
        let gate = match self.lease_left() {
            Some(_) => Gate {
                answer_until_ms: self.lease.until_ms.saturating_sub(self.lease.length_ms / 2),
                applied_from: self.lease.index,
            },
            None => Gate::default(),
        };
        self.shared.publish(gate);
    }

    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    pub fn leader(&self) -> Option<MetaserverId> {
        match self.node.raft.leader_id {
            0 => None,
            id => Some(MetaserverId(id)),
        }
    }

    #[cfg(test)]
    pub fn describe(&self) -> String {
        let r = &self.node.raft;
        format!(
            "role {:?} term {} leader {} commit {} last {} applied {} snapshot {} voters {:?} progress4 {:?}",
            r.state,
            r.term,
            r.leader_id,
            r.raft_log.committed,
            r.raft_log.last_index(),
            self.sm().applied,
            self.snapshot_index(),
            self.node.store().conf_state().voters,
            r.prs().get(4).map(|p| format!("{:?} matched {} next {} pending_snap {}", p.state, p.matched, p.next_idx, p.pending_snapshot))
        )
    }

    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    pub fn snapshot_index(&self) -> u64 {
        self.node.store().snapshot_metadata().index
    }

    fn not_leader(&self) -> Refusal {
        Refusal::NotLeader {
            leader: self.leader(),
        }
    }

    pub fn tick(&mut self) {
        self.node.tick();
        self.ticks_since_leader = (self.ticks_since_leader + 1).min(self.election_tick);
        let mut retry = Vec::new();
        self.reads_inflight.retain(|_, round| {
            round.age += 1;
            if round.age > READ_RETRY_TICKS {
                retry.append(&mut round.tokens);
                false
            } else {
                true
            }
        });
        self.reads_waiting.extend(retry);
        self.publish_lease();
    }

    /// Moves the member's clock (monotonic milliseconds) forward; call it before `read` and
    /// `advance`. A clock that stands still only shortens leases.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// Hands a message from a peer to Raft; malformed or stale messages are dropped, and so
    /// are those for another member (queued for a removed member that served at this
    /// address: Raft would take them for its own, and a commit index beyond this log panics).
    /// Vote requests are dropped within an election timeout of hearing a leader (see
    /// `ticks_since_leader`).
    pub fn step(&mut self, msg: Message) {
        use raft::prelude::MessageType::{
            MsgAppend, MsgHeartbeat, MsgRequestPreVote, MsgRequestVote, MsgSnapshot,
        };
        if msg.to != self.id {
            return;
        }
        match msg.get_msg_type() {
            MsgAppend | MsgHeartbeat | MsgSnapshot if msg.term >= self.term() => {
                self.ticks_since_leader = 0;
            }
            MsgRequestVote | MsgRequestPreVote if self.ticks_since_leader < self.election_tick => {
                return;
            }
            _ => {}
        }
        let _ = self.node.step(msg);
        self.publish_lease();
    }

    pub fn report_unreachable(&mut self, id: u64) {
        self.node.report_unreachable(id);
    }

    pub fn report_snapshot(&mut self, id: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.node.report_snapshot(id, status);
    }

    pub fn propose(&mut self, cmd: &Command, token: Token) -> Result<(), Refusal> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let data = codec::encode_state(cmd).map_err(|_| self.not_leader())?;
        let n = self.next_proposal;
        self.next_proposal = self.next_proposal.wrapping_add(1);
        self.node
            .propose(context(self.id, n), data)
            .map_err(|_| self.not_leader())?;
        self.proposals.insert(n, token);
        Ok(())
    }

    pub fn change_members(&mut self, change: &MemberChange, token: Token) -> Result<(), Refusal> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        // Raft would quietly turn a second change into an empty entry.
        if self.node.raft.has_pending_conf() {
            return Err(Refusal::Busy(
                "a membership change is still being applied; retry shortly",
            ));
        }
        let mut single = ConfChangeSingle::default();
        let mut cc = ConfChangeV2::default();
        match change {
            MemberChange::Add(id, addr) => {
                single.change_type = ConfChangeType::AddNode;
                single.node_id = id.0;
                cc.set_context(addr.to_string().into_bytes().into());
            }
            MemberChange::Remove(id) => {
                single.change_type = ConfChangeType::RemoveNode;
                single.node_id = id.0;
            }
        }
        cc.mut_changes().push(single);
        let n = self.next_proposal;
        self.next_proposal = self.next_proposal.wrapping_add(1);
        self.node
            .propose_conf_change(context(self.id, n), cc)
            .map_err(|_| self.not_leader())?;
        self.proposals.insert(n, token);
        Ok(())
    }

    /// Queues a linearizable read: [`Event::ReadReady`] comes once the state machine has
    /// applied everything committed before now. Under a lease that is everything this
    /// leader has committed; otherwise it waits for a read index round, which renews the
    /// lease.
    pub fn read(&mut self, token: Token) -> Result<(), Refusal> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        match self.lease_left() {
            Some(left) => {
                let committed = self.node.raft.raft_log.committed;
                self.reads_ready.push((committed, vec![token]));
                if left < self.lease.length_ms / 2 && self.reads_inflight.is_empty() {
                    self.start_read_round(Vec::new());
                }
            }
            None => self.reads_waiting.push(token),
        }
        Ok(())
    }

    /// Milliseconds left of this leader's lease, if it holds one.
    fn lease_left(&self) -> Option<u64> {
        let r = &self.node.raft;
        let valid = r.state == StateRole::Leader
            && r.term == self.lease.term
            && r.lead_transferee.is_none()
            && self.now_ms < self.lease.until_ms;
        valid.then(|| self.lease.until_ms - self.now_ms)
    }

    /// Starts a read index round for the reads waiting, unless one is in flight: reads that
    /// arrive meanwhile share the next round, so a busy leader sends few.
    fn issue_reads(&mut self) {
        if self.reads_waiting.is_empty() || !self.reads_inflight.is_empty() {
            return;
        }
        let tokens = std::mem::take(&mut self.reads_waiting);
        self.start_read_round(tokens);
    }

    fn start_read_round(&mut self, tokens: Vec<Token>) {
        let ctx = self.next_read;
        self.next_read += 1;
        let round = ReadRound {
            tokens,
            age: 0,
            issued_ms: self.now_ms,
            term: self.term(),
        };
        self.reads_inflight.insert(ctx, round);
        self.node.read_index(ctx.to_le_bytes().to_vec());
    }

    fn read_state(&mut self, rs: ReadState) {
        let Ok(ctx) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
            return;
        };
        if let Some(round) = self.reads_inflight.remove(&u64::from_le_bytes(ctx)) {
            if round.term == self.term() && self.lease.length_ms > 0 {
                let until_ms = round.issued_ms.saturating_add(self.lease.length_ms);
                if self.lease.term != round.term {
                    self.lease.index = 0;
                }
                if self.lease.term != round.term || self.lease.until_ms < until_ms {
                    self.lease.term = round.term;
                    self.lease.until_ms = until_ms;
                }
                self.lease.index = self.lease.index.max(rs.index);
            }
            if !round.tokens.is_empty() {
                self.reads_ready.push((rs.index, round.tokens));
            }
        }
    }

    /// Persists, applies and collects whatever Raft has ready. An error means the log could
    /// not be written: the member must stop.
    /// `send_early` gets the messages that may leave before this member's own log write
    /// (a leader's appends: followers then persist while the leader does).
    pub fn advance(&mut self, send_early: &mut dyn FnMut(Vec<Message>)) -> Result<Output, String> {
        let mut out = Output::default();
        // A round that ends here lets the reads waiting for it start the next one.
        loop {
            self.issue_reads();
            if !self.node.has_ready() {
                break;
            }
            self.handle_ready(&mut out, send_early)?;
        }
        self.after(&mut out)?;
        self.publish_lease();
        Ok(out)
    }

    fn handle_ready(
        &mut self,
        out: &mut Output,
        send_early: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), String> {
        self.publish_lease();
        let mut ready = self.node.ready();
        let early = ready.take_messages();
        if !early.is_empty() {
            send_early(early);
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        self.apply(ready.take_committed_entries(), out)?;
        let store_err = |e: raft::Error| format!("raft log: {e}");
        // Entries and hard state together: one write, one sync.
        let hs = ready.hs().cloned();
        self.node
            .mut_store()
            .persist(ready.entries(), hs)
            .map_err(store_err)?;
        for rs in ready.take_read_states() {
            self.read_state(rs);
        }
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node
                .mut_store()
                .set_commit(commit)
                .map_err(store_err)?;
        }
        out.messages.extend(light.take_messages());
        self.apply(light.take_committed_entries(), out)?;
        self.node.advance_apply();
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), String> {
        let sm: StateMachine = codec::decode_state(snap.get_data(), MAX_STATE_BYTES)
            .map_err(|e| format!("snapshot from the leader is unreadable: {e}"))?;
        self.node
            .mut_store()
            .apply_snapshot(snap)
            .map_err(|e| format!("installing a snapshot: {e}"))?;
        // The old state is dropped once the lock is free: request threads wait meanwhile.
        let old = std::mem::replace(&mut *self.sm_mut(), sm);
        drop(old);
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) -> Result<(), String> {
        for entry in entries {
            if entry.index <= self.sm().applied {
                continue;
            }
            self.log_bytes += entry.data.len() as u64;
            let mine = parse_context(&entry.context)
                .filter(|(id, _)| *id == self.id)
                .and_then(|(_, n)| self.proposals.remove(&n));
            match entry.get_entry_type() {
                // A new leader's empty entry, or a proposal Raft refused (a second membership
                // change while one is pending becomes an empty entry).
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm_mut().applied = entry.index;
                    if let Some(token) = mine {
                        out.events.push(Event::Aborted { token });
                    }
                }
                EntryType::EntryNormal => {
                    let outcome = match codec::decode_state::<Command>(&entry.data, MAX_STATE_BYTES)
                    {
                        Ok(cmd) => self.sm_mut().apply(entry.index, cmd),
                        // Every member skips the same undecodable entry the same way.
                        Err(_) => {
                            self.sm_mut().applied = entry.index;
                            Outcome::Done
                        }
                    };
                    if let Some(token) = mine {
                        out.events.push(Event::Applied { token, outcome });
                    }
                }
                EntryType::EntryConfChangeV2 | EntryType::EntryConfChange => {
                    let result = self.apply_conf_change(&entry);
                    self.sm_mut().applied = entry.index;
                    if let Some(token) = mine {
                        out.events.push(Event::MemberChanged { token, result });
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), String> {
        let cc = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?
        } else {
            let v1 = raft::prelude::ConfChange::parse_from_bytes(&entry.data)
                .map_err(|e| e.to_string())?;
            raft_proto::ConfChangeI::into_v2(v1)
        };
        let cs = self
            .node
            .apply_conf_change(&cc)
            .map_err(|e| e.to_string())?;
        self.node
            .mut_store()
            .set_conf_state(cs)
            .map_err(|e| e.to_string())?;
        let addr = std::str::from_utf8(&cc.context)
            .ok()
            .and_then(|s| s.parse().ok());
        for change in cc.get_changes() {
            let id = MetaserverId(change.node_id);
            match (change.get_change_type(), addr) {
                (ConfChangeType::AddNode | ConfChangeType::AddLearnerNode, Some(addr)) => {
                    self.sm_mut().members.insert(id, addr);
                }
                (ConfChangeType::RemoveNode, _) => {
                    self.sm_mut().members.remove(&id);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Housekeeping after each round: reads that may now be answered, requests orphaned by a
    /// lost leadership, and snapshots.
    fn after(&mut self, out: &mut Output) -> Result<(), String> {
        let applied = self.sm().applied;
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.reads_ready.drain(..).partition(|(i, _)| *i <= applied);
        self.reads_ready = waiting;
        for (_, tokens) in ready {
            out.events
                .extend(tokens.into_iter().map(|token| Event::ReadReady { token }));
        }
        let leader = self.is_leader();
        if self.was_leader && !leader {
            let aborted = std::mem::take(&mut self.proposals)
                .into_values()
                .chain(self.reads_waiting.drain(..))
                .chain(
                    std::mem::take(&mut self.reads_inflight)
                        .into_values()
                        .flat_map(|round| round.tokens),
                )
                .chain(self.reads_ready.drain(..).flat_map(|(_, t)| t));
            out.events
                .extend(aborted.map(|token| Event::Aborted { token }));
        }
        self.was_leader = leader;
        let due = snapshot_due(
            applied.saturating_sub(self.snapshot_index()),
            self.snapshot_every,
            self.log_bytes,
            self.snapshot_bytes,
        );
        if (due || self.node.store().take_snapshot_wanted()) && applied > self.snapshot_index() {
            self.snapshot_now()?;
        }
        Ok(())
    }

    /// Writes a snapshot of the state machine and compacts the log up to it.
    pub fn snapshot_now(&mut self) -> Result<(), String> {
        let (data, applied) = {
            let sm = self.sm();
            let data = codec::encode_state(&*sm).map_err(|e| e.to_string())?;
            (data, sm.applied)
        };
        (self.log_bytes, self.snapshot_bytes) = (0, data.len() as u64);
        self.node
            .mut_store()
            .compact(applied, data)
            .map_err(|e| format!("compacting the raft log: {e}"))
    }
}

/// Whether to snapshot after `entries` applied since the last snapshot, `log_bytes` long,
/// when that snapshot's state was `snapshot_bytes` long.
fn snapshot_due(entries: u64, every: u64, log_bytes: u64, snapshot_bytes: u64) -> bool {
    entries >= every && log_bytes >= snapshot_bytes / LOG_SHARE
}

/// The snapshot every founding member starts from: index 1, the founding voters, and an
/// empty state machine that knows their addresses. New members catch up from the leader's
/// snapshots, never from an empty log.
fn founding_snapshot(members: &BTreeMap<MetaserverId, SocketAddr>) -> Result<Snapshot, String> {
    let mut sm = StateMachine::new(members.clone());
    sm.applied = 1;
    let data = codec::encode_state(&sm).map_err(|e| e.to_string())?;
    let mut snap = Snapshot::default();
    snap.set_data(data.into());
    let meta = snap.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = members.keys().map(|m| m.0).collect();
    Ok(snap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft_log::{MemDisk, Persisted};
    use raft::prelude::MessageType;

    #[test]
    fn a_large_state_is_snapshotted_once_its_log_is_a_quarter_of_it() {
        let million_files = 84 << 20;
        assert!(!snapshot_due(10_000, 10_000, 2 << 20, million_files));
        assert!(snapshot_due(100_000, 10_000, 21 << 20, million_files));
        assert!(!snapshot_due(9_999, 10_000, 21 << 20, million_files));
        // A small state: every `every` entries, as before.
        assert!(snapshot_due(10_000, 10_000, 1 << 20, 100 << 10));
        assert!(snapshot_due(25, 25, 100, 0));
    }

    #[test]
    fn a_message_for_another_member_is_dropped() {
        let log = RaftLog::new(Persisted::default(), Box::new(MemDisk::default()));
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut joining = Replica::new(
            MetaserverId(4),
            log,
            &BTreeMap::new(),
            Tuning::default(),
            &logger,
            0,
        )
        .unwrap();
        // The leader's heartbeat to the removed member 3, which had its log up to 52.
        let heartbeat = Message {
            msg_type: MessageType::MsgHeartbeat,
            from: 2,
            to: 3,
            term: 2,
            commit: 52,
            ..Default::default()
        };
        joining.step(heartbeat);
        joining.advance(&mut |_| {}).unwrap();
        assert_eq!((joining.term(), joining.leader()), (0, None));
    }
}
