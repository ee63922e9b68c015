//! The replicated state machine: namespace, slice maps, cluster map, Raft members, client
//! sessions. `apply` is deterministic: the same commands in the same order give the same
//! state on every member (times and placements travel inside the commands).

use crate::cluster_map::ClusterMap;
use crate::locks::LockTable;
use crate::namespace::Namespace;
use lattice_common::chunk_map::SliceRef;
use lattice_common::fs::{Attr, Errno, Timestamp};
use lattice_common::grant::GrantKey;
use lattice_common::ids::{ChunkserverId, ClientId, InodeId, MetaserverId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::mount_user::Credentials;
use lattice_common::pki::Revoke;
use lattice_common::policy::{Policy, VIRTUAL_XATTR_PREFIX};
use lattice_common::wire::meta::{
    ChunkserverState, FsOp, FsQuery, FsReply, Registration, ServerAddr,
    MAX_SESSIONS_PER_CERTIFICATE, MAX_UNLINKS,
};
use lattice_common::wire::HealthCounters;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

/// Most replies remembered per client session. A client keeps a request's reply wanted
/// only while the request is in flight, and runs at most half this many past its oldest
/// (`MetaClient`); a request older than the replies forgotten is refused (EIO) when it
/// comes again, never applied twice.
const MAX_REMEMBERED_REPLIES: usize = lattice_common::wire::meta::REMEMBERED_REPLIES;
/// How the state machine and its commands are encoded on disk (see `raft_log`): bump it on
/// any change to either (new enum variants go at the end). 3: lock spaces, stored bytes
/// per file, punched holes. 4: several references committed at once, inline small files.
/// 5: certificate revocations, grant keys. 6: the user a limited mount acts as. 7: sessions
/// belong to a certificate. 8: attributes (in remembered replies) say which ACLs are set.
/// 9: and whether file capabilities are. 10: a new entry's reply carries its directory;
/// inline writes with times.
pub const STATE_FORMAT: u32 = 10;
/// A session unheard of for this long is forgotten.
const SESSION_IDLE_SECS: i64 = 3600;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A filesystem change from a client, timestamped by the leader; checked against the
    /// permissions of `who` when its mount is limited to that user.
    Fs {
        request: SessionRequest,
        now: Timestamp,
        op: FsOp,
        who: Option<Credentials>,
    },
    /// A slice allocation with the placement the leader chose (`None`: a shard left
    /// unplaced for want of servers, at most as many as the policy's spare shards less one).
    Allocate {
        request: SessionRequest,
        now: Timestamp,
        ino: InodeId,
        layout: SliceLayout,
        placement: Vec<Option<ChunkserverId>>,
        who: Option<Credentials>,
    },
    Register {
        name: String,
        registration: Registration,
        now: Timestamp,
    },
    SetServerState {
        id: ChunkserverId,
        state: ChunkserverState,
        now: Timestamp,
    },
    /// Removes an unlinked file nobody has open any more.
    Reap { ino: InodeId, now: Timestamp },
    /// Shard `index` of a slice now lives on `to` (a verified copy or rebuild is there):
    /// applied only if the shard is still placed on `from`, else the outcome is ESTALE.
    MoveShard {
        ino: InodeId,
        chunk: u64,
        slice: SliceId,
        index: u16,
        from: Option<ChunkserverId>,
        to: ChunkserverId,
    },
    /// Starts (or cancels) draining a chunkserver, saying why; a cancel records `health` (the
    /// server's counters now) as its new baseline.
    Drain {
        id: ChunkserverId,
        cancel: bool,
        reason: String,
        health: HealthCounters,
        now: Timestamp,
    },
    /// The shards of these garbage slices are deleted where their servers answered.
    ForgetGarbage { slices: Vec<SliceId> },
    /// Allocations never committed in time (the writer died): their shards are garbage.
    AbandonPending {
        slices: Vec<SliceId>,
        now: Timestamp,
    },
    /// A client unmounted or went silent: its locks go, and its lock requests fail until it
    /// says it knows ([`Command::ResumeSession`]). Its retry memory stays (a client cut off
    /// for a while still gets the first reply to a request it sends again). Sent by a
    /// client that unmounts, it names the client's `certificate`, ends only a session of
    /// that one, and forgets the session (it no longer counts against the certificate).
    EndSession {
        client: ClientId,
        certificate: Option<String>,
    },
    /// A client whose locks were released has heard so: it may take locks again.
    ResumeSession {
        client: ClientId,
        certificate: String,
    },
    /// Sets the cluster's default redundancy policy (the root directory's); with
    /// `only_if_unset`, only if none is recorded yet (a new cluster's first leader).
    DefaultPolicy {
        policy: Policy,
        only_if_unset: bool,
        now: Timestamp,
    },
    /// A slice allocation the leader makes for itself (a re-encode), outside any session.
    Reserve {
        ino: InodeId,
        layout: SliceLayout,
        placement: Vec<Option<ChunkserverId>>,
        now: Timestamp,
    },
    /// The stored slice `new` (the bytes `old` shows, under the file's policy now) takes
    /// the place of `old` if `old` is unchanged; ESTALE otherwise.
    Reencode {
        ino: InodeId,
        chunk: u64,
        old: SliceRef,
        new: SliceRef,
        now: Timestamp,
    },
    /// No server accepts the certificates `what` names any more.
    Revoke { what: Revoke },
    /// A new key signs grants (made by the leader).
    GrantKey { key: GrantKey },
}

/// Which request of which client session a command carries: a session answers each request
/// once, and belongs to the client certificate that opened it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    pub client: ClientId,
    /// The name of the certificate the request came with.
    pub certificate: String,
    pub seq: u64,
    /// The client has every reply below this sequence number.
    pub acked_below: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Fs(Result<FsReply, Errno>),
    Registered(ChunkserverId),
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    certificate: String,
    replies: BTreeMap<u64, Result<FsReply, Errno>>,
    /// Replies below this sequence number were dropped unacknowledged (over the limit).
    forgotten_below: u64,
    last_active: Timestamp,
    /// Its locks were released while it was silent and it has not heard so yet.
    locks_lost: bool,
}

impl Session {
    /// Unheard of for [`SESSION_IDLE_SECS`] at `now` (a leader's clock, so any value).
    fn idle(&self, now: Timestamp) -> bool {
        now.secs.saturating_sub(self.last_active.secs) >= SESSION_IDLE_SECS
    }
}

/// A slice id handed out but not yet committed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingSlice {
    pub ino: InodeId,
    pub layout: SliceLayout,
    pub placement: Vec<Option<ChunkserverId>>,
    pub since: Timestamp,
}

/// A slice no file shows any more; its shards are to be deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Garbage {
    pub layout: SliceLayout,
    pub placement: Vec<Option<ChunkserverId>>,
    pub since: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    pub ns: Namespace,
    pub cluster: ClusterMap,
    /// Raft members and their addresses.
    pub members: BTreeMap<MetaserverId, SocketAddr>,
    sessions: BTreeMap<ClientId, Session>,
    pub locks: LockTable,
    pub pending: BTreeMap<SliceId, PendingSlice>,
    pub garbage: BTreeMap<SliceId, Garbage>,
    next_slice: u64,
    /// The Raft index of the last command applied.
    pub applied: u64,
}

impl StateMachine {
    pub fn new(members: BTreeMap<MetaserverId, SocketAddr>) -> Self {
        StateMachine {
            members,
            ..Default::default()
        }
    }

    pub fn apply(&mut self, index: u64, cmd: Command) -> Outcome {
        self.applied = index;
        match cmd {
            Command::Fs {
                request,
                now,
                op,
                who,
            } => Outcome::Fs(self.once(&request, now, |sm| {
                let op = match &who {
                    Some(who) => sm.ns.admit(op, who)?,
                    None => op,
                };
                sm.apply_fs(request.client, op, now)
            })),
            Command::Allocate {
                request,
                now,
                ino,
                layout,
                placement,
                who,
            } => Outcome::Fs(self.once(&request, now, |sm| {
                if let Some(who) = &who {
                    let (len, avoid) = (layout.data_len, Vec::new());
                    sm.ns.admit(FsOp::AllocateSlice { ino, len, avoid }, who)?;
                }
                sm.allocate(ino, layout, placement, now)
            })),

            Command::Register {
                name,
                registration,
                now,
            } => Outcome::Registered(self.cluster.register(&name, &registration, now)),
            Command::SetServerState { id, state, now } => {
                self.cluster.set_state(id, state, now);
                Outcome::Done
            }
            Command::Reap { ino, now } => {
                if let Ok(slices) = self.ns.reap(ino) {
                    self.locks.remove_inode(ino);
                    self.discard(slices, now);
                }
                Outcome::Done
            }
            Command::EndSession {
                client,
                certificate,
            } => {
                let session = self.sessions.get_mut(&client);
                let goodbye = certificate.is_some();
                if certificate.is_some_and(|c| session.as_ref().is_some_and(|s| s.certificate != c))
                {
                    return Outcome::Fs(Err(Errno::PERM));
                }
                self.locks.release_client(client);
                match session {
                    // An unmount: nothing of it is wanted any more.
                    Some(_) if goodbye => drop(self.sessions.remove(&client)),
                    Some(s) => s.locks_lost = true,
                    None => {}
                }
                Outcome::Done
            }
            Command::ResumeSession {
                client,
                certificate,
            } => match self.sessions.get_mut(&client) {
                Some(s) if s.certificate != certificate => Outcome::Fs(Err(Errno::PERM)),
                Some(s) => {
                    s.locks_lost = false;
                    Outcome::Done
                }
                None => Outcome::Done,
            },
            Command::MoveShard {
                ino,
                chunk,
                slice,
                index,
                from,
                to,
            } => {
                if self.cluster.get(to).is_none() {
                    return Outcome::Fs(Err(Errno::INVAL));
                }
                let at = (ino, chunk, slice);
                let moved = self.ns.move_shard(at, index as usize, from, to);
                Outcome::Fs(moved.map(|()| FsReply::Done))
            }
            Command::Drain {
                id,
                cancel,
                reason,
                health,
                now,
            } => match self.cluster.drain(id, cancel, &reason, health, now) {
                true => Outcome::Done,
                false => Outcome::Fs(Err(Errno::INVAL)),
            },
            Command::DefaultPolicy {
                policy,
                only_if_unset,
                now,
            } => {
                if !only_if_unset || self.default_policy().is_none() {
                    // The root always exists and takes a policy: this cannot fail.
                    let _ = self.ns.set_policy(InodeId::ROOT, Some(policy), now);
                }
                Outcome::Done
            }
            Command::Reserve {
                ino,
                layout,
                placement,
                now,
            } => Outcome::Fs(self.allocate(ino, layout, placement, now)),
            Command::Reencode {
                ino,
                chunk,
                old,
                new,
                now,
            } => Outcome::Fs(self.reencode(ino, chunk, &old, new, now)),
            Command::GrantKey { key } => match self.cluster.add_grant_key(key) {
                true => Outcome::Done,
                false => Outcome::Fs(Err(Errno::INVAL)),
            },
            Command::Revoke { what } => match self.cluster.revoke(&what) {
                true => Outcome::Done,
                false => Outcome::Fs(Err(Errno::INVAL)),
            },
            Command::ForgetGarbage { slices } => {
                for s in slices {
                    self.garbage.remove(&s);
                }
                Outcome::Done
            }
            Command::AbandonPending { slices, now } => {
                for id in slices {
                    if let Some(p) = self.pending.remove(&id) {
                        let garbage = Garbage {
                            layout: p.layout,
                            placement: p.placement,
                            since: now,
                        };
                        self.garbage.insert(id, garbage);
                    }
                }
                Outcome::Done
            }
        }
    }

    /// Applies a client's request once: a retry gets the reply of the first attempt.
    /// Replies are kept until the client says it has them (`acked_below`). A session belongs
    /// to the certificate that opened it: EPERM for another's, EUSERS for a certificate
    /// over [`MAX_SESSIONS_PER_CERTIFICATE`].
    fn once(
        &mut self,
        request: &SessionRequest,
        now: Timestamp,
        f: impl FnOnce(&mut Self) -> Result<FsReply, Errno>,
    ) -> Result<FsReply, Errno> {
        if self.applied % 1024 == 0 {
            self.sessions.retain(|_, s| !s.idle(now));
        }
        let cert = &request.certificate;
        match self.sessions.get(&request.client) {
            Some(s) if s.certificate != *cert => return Err(Errno::PERM),
            Some(_) => {}
            None => {
                let live = |s: &&Session| s.certificate == *cert && !s.idle(now);
                if self.sessions.values().filter(live).count() >= MAX_SESSIONS_PER_CERTIFICATE {
                    return Err(Errno::USERS);
                }
            }
        }
        let session = self
            .sessions
            .entry(request.client)
            .or_insert_with(|| Session {
                certificate: cert.clone(),
                replies: BTreeMap::new(),
                forgotten_below: 0,
                last_active: now,
                locks_lost: false,
            });
        session.last_active = now;
        session.replies = session.replies.split_off(&request.acked_below);
        if let Some(reply) = session.replies.get(&request.seq) {
            return reply.clone();
        }
        if request.seq < session.forgotten_below {
            return Err(Errno::IO);
        }
        let reply = f(self);
        if let Some(session) = self.sessions.get_mut(&request.client) {
            session.replies.insert(request.seq, reply.clone());
            while session.replies.len() > MAX_REMEMBERED_REPLIES {
                if let Some((seq, _)) = session.replies.pop_first() {
                    let below = seq.saturating_add(1);
                    session.forgotten_below = session.forgotten_below.max(below);
                }
            }
        }
        reply
    }

    fn discard(&mut self, slices: Vec<SliceRef>, now: Timestamp) {
        for s in slices {
            self.garbage.insert(
                s.slice,
                Garbage {
                    layout: s.layout,
                    placement: s.placement,
                    since: now,
                },
            );
        }
    }

    fn apply_fs(&mut self, client: ClientId, op: FsOp, now: Timestamp) -> Result<FsReply, Errno> {
        let ns = &mut self.ns;
        match op {
            FsOp::Mknod {
                parent,
                name,
                kind,
                perm,
                umask,
                rdev,
                caller,
            } => ns
                .mknod(parent, &name, kind, (perm, umask), rdev, caller, now)
                .and_then(|a| made(ns, a, parent)),
            FsOp::Mkdir {
                parent,
                name,
                perm,
                umask,
                caller,
            } => ns
                .mkdir(parent, &name, (perm, umask), caller, now)
                .and_then(|a| made(ns, a, parent)),
            FsOp::Symlink {
                parent,
                name,
                target,
                caller,
            } => ns
                .symlink(parent, &name, &target, caller, now)
                .and_then(|a| made(ns, a, parent)),
            FsOp::Link { ino, parent, name } => ns
                .link(ino, parent, &name, now)
                .and_then(|a| made(ns, a, parent)),
            FsOp::Unlink { parent, name } => ns.unlink(parent, &name, now).map(|()| FsReply::Done),
            FsOp::Rmdir { parent, name } => ns.rmdir(parent, &name, now).map(|()| FsReply::Done),
            FsOp::Unlinks { entries } if entries.len() > MAX_UNLINKS => Err(Errno::INVAL),
            FsOp::Unlinks { entries } => Ok(FsReply::Unlinked(
                entries
                    .iter()
                    .map(|u| ns.unlink_if((u.parent, &u.name, u.ino), u.dir, u.at, now))
                    .collect(),
            )),
            FsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                mode,
            } => ns
                .rename(parent, &name, new_parent, &new_name, mode, now)
                .map(|()| FsReply::Done),
            FsOp::SetAttr { ino, set } => {
                let (attr, released) = ns.setattr(ino, &set, now)?;
                self.discard(released, now);
                Ok(FsReply::Attr(attr))
            }
            FsOp::SetXattr {
                ino, name, value, ..
            } if name.starts_with(VIRTUAL_XATTR_PREFIX) => self
                .set_virtual_xattr(ino, &name, &value, now)
                .map(|()| FsReply::Done),
            FsOp::RemoveXattr { ino, name } if name.starts_with(VIRTUAL_XATTR_PREFIX) => self
                .remove_virtual_xattr(ino, &name, now)
                .map(|()| FsReply::Done),
            FsOp::SetXattr {
                ino,
                name,
                value,
                mode,
            } => ns
                .setxattr(ino, &name, &value, mode, now)
                .map(|()| FsReply::Done),
            FsOp::RemoveXattr { ino, name } => {
                ns.removexattr(ino, &name, now).map(|()| FsReply::Done)
            }
            FsOp::SetPolicy { ino, policy } => ns.set_policy(ino, policy, now).map(FsReply::Attr),
            // The leader turns allocations into `Command::Allocate`.
            FsOp::AllocateSlice { .. } => Err(Errno::INVAL),
            FsOp::CommitSlice { ino, chunk, slice } => self.commit(ino, chunk, vec![slice], now),
            FsOp::CommitSlices { ino, chunk, slices } => self.commit(ino, chunk, slices, now),
            FsOp::WriteInline { ino, writes } => {
                let attr = self.ns.write_inline(ino, &writes, now)?;
                Ok(FsReply::Committed { attr, slices: 0 })
            }
            // Times alone cannot fail once the write succeeded (the file exists) and release
            // no slices: the two land together or not at all.
            FsOp::WriteInlineSetTimes { set, .. } if !set.only_times() => Err(Errno::INVAL),
            FsOp::WriteInlineSetTimes { ino, writes, set } => {
                self.ns.write_inline(ino, &writes, now)?;
                let (attr, released) = self.ns.setattr(ino, &set, now)?;
                self.discard(released, now);
                Ok(FsReply::Committed { attr, slices: 0 })
            }
            FsOp::Uninline { ino, expect, slice } => {
                if let Some(s) = &slice {
                    self.check_stored(ino, s)?;
                }
                let id = slice.as_ref().map(|s| s.slice);
                self.ns.uninline(ino, &expect, slice)?;
                if let Some(id) = id {
                    self.pending.remove(&id);
                }
                Ok(FsReply::Done)
            }
            FsOp::ReplaceSlices {
                ino,
                chunk,
                old,
                new,
            } => self.replace(ino, chunk, &old, new, now),
            FsOp::SetLock { ino, owner, lock } => {
                self.ns.attr(ino)?;
                if self.locks_lost(client) {
                    // It holds nothing it thinks it holds: it must hear so before going on.
                    return Err(Errno::NOLCK);
                }
                self.locks
                    .set(ino, client, owner, lock)
                    .map(|()| FsReply::Done)
            }
            FsOp::PunchHole { ino, offset, len } => {
                let (attr, released) = ns.punch_hole(ino, offset, len, now)?;
                self.discard(released, now);
                Ok(FsReply::Attr(attr))
            }
            FsOp::ReleaseLocks { ino, owner } => {
                self.locks.release_owner(ino, client, owner);
                Ok(FsReply::Done)
            }
        }
    }

    fn allocate(
        &mut self,
        ino: InodeId,
        layout: SliceLayout,
        placement: Vec<Option<ChunkserverId>>,
        now: Timestamp,
    ) -> Result<FsReply, Errno> {
        self.ns.is_file(ino)?;
        if layout.check().is_err() || !well_placed(layout, &placement) {
            return Err(Errno::INVAL);
        }
        let servers: Vec<Option<ServerAddr>> = placement
            .iter()
            .map(|p| match p {
                Some(id) => self.cluster.addr_of(*id).map(Some).ok_or(Errno::INVAL),
                None => Ok(None),
            })
            .collect::<Result<_, _>>()?;
        self.next_slice += 1;
        let slice = SliceId(self.next_slice);
        self.pending.insert(
            slice,
            PendingSlice {
                ino,
                layout,
                placement,
                since: now,
            },
        );
        Ok(FsReply::Allocated {
            slice,
            layout,
            placement: servers,
            grant: None,
        })
    }

    /// Commits a stored slice: the references to it, which all name it and its servers
    /// alike.
    fn commit(
        &mut self,
        ino: InodeId,
        chunk: u64,
        refs: Vec<SliceRef>,
        now: Timestamp,
    ) -> Result<FsReply, Errno> {
        let first = refs.first().ok_or(Errno::INVAL)?;
        let id = first.slice;
        let alike = refs
            .iter()
            .all(|r| (r.slice, r.layout, &r.placement) == (id, first.layout, &first.placement));
        if !alike {
            return Err(Errno::INVAL);
        }
        self.check_stored(ino, first)?;
        let (attr, hidden) = self.ns.commit_slice(ino, chunk, refs, now)?;
        self.pending.remove(&id);
        self.discard(hidden, now);
        let slices = self
            .ns
            .slices(ino, chunk, chunk)?
            .first()
            .map_or(0, |(_, s)| s.len());
        Ok(FsReply::Committed {
            attr,
            slices: slices as u32,
        })
    }

    /// Compaction: the slices `new`, stored, take the place of the run `old`.
    fn replace(
        &mut self,
        ino: InodeId,
        chunk: u64,
        old: &[SliceRef],
        new: Vec<SliceRef>,
        now: Timestamp,
    ) -> Result<FsReply, Errno> {
        let distinct: BTreeSet<SliceId> = new.iter().map(|s| s.slice).collect();
        if new.len() > old.len() || distinct.len() != new.len() {
            return Err(Errno::INVAL);
        }
        for s in &new {
            self.check_stored(ino, s)?;
        }
        let ids: Vec<SliceId> = new.iter().map(|s| s.slice).collect();
        let released = self.ns.replace_slices(ino, chunk, old, new)?;
        for id in ids {
            self.pending.remove(&id);
        }
        self.discard(released, now);
        Ok(FsReply::Done)
    }

    /// Whether `slice` is a stored allocation of `ino`: it may name fewer servers than its
    /// allocation did (shards that could not be stored), never other ones, and never fewer
    /// than the policy's least.
    fn check_stored(&self, ino: InodeId, slice: &SliceRef) -> Result<(), Errno> {
        let pending = self.pending.get(&slice.slice).ok_or(Errno::STALE)?;
        let subset = pending.placement.len() == slice.placement.len()
            && pending
                .placement
                .iter()
                .zip(&slice.placement)
                .all(|(p, s)| s.is_none() || s == p);
        if pending.ino != ino
            || pending.layout != slice.layout
            || !subset
            || !well_placed(slice.layout, &slice.placement)
            || !slice.is_valid()
        {
            return Err(Errno::INVAL);
        }
        Ok(())
    }

    /// Answers a read-only request (statfs needs live capacity and is answered elsewhere),
    /// if `who` (a limited mount's user) may make it.
    pub fn query(&self, q: &FsQuery, who: Option<&Credentials>) -> Result<FsReply, Errno> {
        let ns = &self.ns;
        if let Some(who) = who {
            ns.admit_query(q, who)?;
        }
        match q {
            FsQuery::Lookup { parent, name } => ns.lookup(*parent, name).map(FsReply::Attr),
            FsQuery::GetAttr { ino } => ns.attr(*ino).map(FsReply::Attr),
            FsQuery::ReadDir { ino, cookie, limit } => {
                ns.readdir(*ino, *cookie, *limit).map(FsReply::Entries)
            }
            FsQuery::ReadLink { ino } => ns.readlink(*ino).map(FsReply::Link),
            FsQuery::GetXattr { ino, name } if name.starts_with(VIRTUAL_XATTR_PREFIX) => {
                self.get_virtual_xattr(*ino, name).map(FsReply::Xattr)
            }
            FsQuery::GetXattr { ino, name } => ns.getxattr(*ino, name).map(FsReply::Xattr),
            FsQuery::ListXattr { ino } => {
                let names = ns.listxattr(*ino)?;
                Ok(FsReply::XattrNames(match who {
                    Some(who) => Namespace::listable(names, who),
                    None => names,
                }))
            }
            FsQuery::StatFs => Err(Errno::INVAL),
            FsQuery::Seek { ino, offset, data } => {
                ns.seek(*ino, *offset, *data).map(FsReply::Offset)
            }
            FsQuery::ReadDirPlus { ino, cookie, limit } => {
                let entries = ns
                    .readdir(*ino, *cookie, *limit)?
                    .into_iter()
                    .map(|e| ns.attr(e.ino).map(|a| (e, a)))
                    .collect::<Result<_, Errno>>()?;
                Ok(FsReply::EntriesPlus {
                    dir: ns.attr(*ino)?,
                    parent: ns.lookup(*ino, b"..")?.ino,
                    entries,
                })
            }
            FsQuery::GetLock {
                ino,
                client,
                owner,
                lock,
            }
            | FsQuery::AwaitLock {
                ino,
                client,
                owner,
                lock,
            } => {
                ns.attr(*ino)?;
                Ok(FsReply::Lock(
                    self.locks.conflict(*ino, *client, *owner, lock),
                ))
            }
            FsQuery::Slices { ino, first, last } => {
                if let Some(d) = ns.inline_data(*ino)? {
                    return Ok(FsReply::Inline {
                        attr: ns.attr(*ino)?,
                        data: d.bytes.clone(),
                    });
                }
                let chunks = ns.slices(*ino, *first, *last)?;
                let ids: BTreeSet<ChunkserverId> = chunks
                    .iter()
                    .flat_map(|(_, slices)| {
                        slices
                            .iter()
                            .flat_map(|s| s.placement.iter().flatten().copied())
                    })
                    .collect();
                let servers = ids
                    .into_iter()
                    .filter_map(|id| self.cluster.addr_of(id))
                    .collect();
                Ok(FsReply::Slices {
                    attr: ns.attr(*ino)?,
                    chunks,
                    servers,
                    grants: Vec::new(),
                })
            }
        }
    }

    /// The name of the certificate whose session `client` is.
    pub fn session_certificate(&self, client: ClientId) -> Option<&str> {
        self.sessions.get(&client).map(|s| s.certificate.as_str())
    }

    /// Whether `client`'s locks were released (it went silent) without its hearing so.
    pub fn locks_lost(&self, client: ClientId) -> bool {
        self.sessions.get(&client).is_some_and(|s| s.locks_lost)
    }

    /// The cluster's default redundancy policy, once recorded.
    pub fn default_policy(&self) -> Option<Policy> {
        self.ns.attr(InodeId::ROOT).ok()?.policy
    }

    /// The policy new data of `ino` gets: its own, else the cluster's default, else
    /// `fallback` (a cluster whose first leader has not recorded its default yet).
    pub fn policy_of(&self, ino: InodeId, fallback: Policy) -> Result<Policy, Errno> {
        self.ns.is_file(ino)?;
        let own = self.ns.attr(ino)?.policy;
        Ok(own.or(self.default_policy()).unwrap_or(fallback))
    }
}

/// The reply to a change that made an entry: its inode's attributes and its directory's
/// (whose times and link count it changed; the mount answers the kernel's next look at them
/// from these instead of asking again).
fn made(ns: &Namespace, attr: Attr, parent: InodeId) -> Result<FsReply, Errno> {
    let parent = Box::new(ns.attr(parent)?);
    Ok(FsReply::Made { attr, parent })
}

/// One entry per shard, distinct servers, and at least the policy's least number placed.
fn well_placed(layout: SliceLayout, placement: &[Option<ChunkserverId>]) -> bool {
    let placed: BTreeSet<_> = placement.iter().flatten().collect();
    placement.len() == layout.policy.total_shards()
        && placed.len() == placement.iter().flatten().count()
        && placed.len() >= layout.policy.min_shards()
}

mod policies;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod session_tests;

/// A chunkserver's registration for tests: `127.0.0.1:(9000 + n)`, one roomy disk.
#[cfg(test)]
fn test_registration(n: u32) -> Registration {
    Registration {
        addr: format!("127.0.0.1:{}", 9000 + n).parse().unwrap(),
        disks: vec![lattice_common::wire::chunk::DiskStatus {
            path: "/d".into(),
            total_bytes: 1 << 40,
            free_bytes: 1 << 40,
            shard_bytes: 0,
            shards: 0,
        }],
        labels: vec![],
    }
}
