//! The metaserver's request handlers: decode, check who may ask, hand to the core, answer.

use crate::core::{ask_core, offer, Answer, Input, Inputs, Reject, FOREIGN_SESSION};
use crate::grants::{self, SharedKeys};
use crate::lease_reads::{boot_clock_ms, LocalReads};
use crate::replica::MemberChange;
use crate::state_machine::{Command, Outcome, SessionRequest};
use lattice_common::codec;
use lattice_common::fs::{Errno, Timestamp};
use lattice_common::mount_user::Credentials;
use lattice_common::pki::{PeerName, Role};
use lattice_common::transport::Node;
use lattice_common::wire::meta::{
    AdminReply, AdminRequest, FsOp, FsReply, MetaRequest, MetaResponse, RaftBatch,
    MAX_RAFT_BATCH_BYTES,
};
use lattice_common::wire::{ErrorKind, WireError};
use protobuf::Message as _;
use quinn::{RecvStream, SendStream};
use std::sync::Arc;
use tokio::sync::oneshot;
use tracing::debug;

/// Most Raft messages one request may carry.
const MAX_RAFT_BATCH: usize = 1024;

pub struct Service {
    core: Inputs,
    /// This member's endpoint: its revocations (kept current by the core) go to
    /// chunkservers with every heartbeat answer.
    node: Arc<Node>,
    /// The keys grants are signed with (kept current by the core).
    keys: SharedKeys,
    /// Queries answered here under the leader's lease, without the core.
    reads: LocalReads,
}

/// What becomes of a Raft message the core has no room for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loss {
    /// The request fails, so its sender hears of it (a snapshot's sender must).
    Refused,
    /// It is dropped, as Raft allows: the stream goes on.
    Tolerated,
}

/// A request that ends early, with the response that says why.
type Early = Box<MetaResponse>;

fn error(kind: ErrorKind, message: impl Into<String>) -> Early {
    Box::new(MetaResponse::Error(WireError::new(kind, message)))
}

fn unavailable(message: impl Into<String>) -> Early {
    error(ErrorKind::Unavailable, message)
}

/// The user `op` is checked as, and `op` with what it creates owned by that user: a
/// limited mount acts as its certificate's user whatever caller it names (only client
/// certificates carry a user: `pki::peer_name` refuses one on any other).
fn acting_user(peer: &PeerName, mut op: FsOp) -> (Option<Credentials>, FsOp) {
    let Some(who) = peer.user.credentials() else {
        return (None, op);
    };
    if let FsOp::Mknod { caller, .. } | FsOp::Mkdir { caller, .. } | FsOp::Symlink { caller, .. } =
        &mut op
    {
        *caller = who.caller();
    }
    (Some(who.clone()), op)
}

fn allow(peer: &PeerName, roles: &[Role]) -> Result<(), Early> {
    if roles.contains(&peer.role) {
        Ok(())
    } else {
        Err(error(
            ErrorKind::Denied,
            format!("{peer} may not make this request"),
        ))
    }
}

impl Service {
    pub fn new(core: Inputs, node: Arc<Node>, keys: SharedKeys, reads: LocalReads) -> Service {
        Service {
            core,
            node,
            keys,
            reads,
        }
    }

    /// A file-system answer with the grants the asking mount needs to use it.
    fn signed(
        &self,
        peer: &PeerName,
        mut reply: Result<FsReply, Errno>,
    ) -> Result<MetaResponse, Early> {
        if !grants::sign(&self.keys, &peer.to_string(), &mut reply) {
            return Err(unavailable("no key to sign grants with yet; retry"));
        }
        Ok(MetaResponse::Fs(reply))
    }

    fn input(&self, input: Input) -> Result<(), Early> {
        offer(&self.core, input).map_err(|e| unavailable(e.to_string()))
    }

    /// Hands a request to the core and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Answer<T>>) -> Input,
    ) -> Result<T, Early> {
        match ask_core(&self.core, make).await {
            Ok(v) => Ok(v),
            Err(Reject::NotLeader(leader)) => Err(Box::new(MetaResponse::NotLeader { leader })),
            Err(Reject::Retry(why)) => Err(unavailable(why)),
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<PeerName>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let resp = match codec::read_request::<_, MetaRequest>(&mut recv).await {
            Ok(req) => self
                .serve(&peer, req, &mut recv)
                .await
                .unwrap_or_else(|e| *e),
            Err(e) => {
                debug!(%peer, "bad request: {e}");
                *error(ErrorKind::Invalid, e.to_string())
            }
        };
        if let Ok(frame) = codec::encode(&resp) {
            let _ = send.write_all(&frame).await;
        }
        let _ = send.finish();
    }

    async fn serve(
        &self,
        peer: &PeerName,
        req: MetaRequest,
        recv: &mut RecvStream,
    ) -> Result<MetaResponse, Early> {
        let fs_users = [Role::Client, Role::Admin];
        match req {
            MetaRequest::Mutate {
                client,
                seq,
                acked_below,
                op,
            } => {
                allow(peer, &fs_users)?;
                let (who, op) = acting_user(peer, op);
                let request = SessionRequest {
                    client,
                    certificate: peer.name.clone(),
                    seq,
                    acked_below,
                };
                let outcome = match op {
                    FsOp::AllocateSlice { ino, len, avoid } => {
                        self.ask(|reply| Input::Allocate {
                            request,
                            ino,
                            len,
                            avoid,
                            who,
                            reply,
                        })
                        .await?
                    }
                    op => {
                        let cmd = Command::Fs {
                            request,
                            now: Timestamp::now(),
                            op,
                            who,
                        };
                        self.ask(|reply| Input::Propose { cmd, reply }).await?
                    }
                };
                match outcome {
                    Outcome::Fs(r) => self.signed(peer, r),
                    other => Err(error(
                        ErrorKind::Invalid,
                        format!("unexpected outcome {other:?}"),
                    )),
                }
            }
            MetaRequest::Query(query) => {
                allow(peer, &fs_users)?;
                let who = peer.user.credentials().cloned();
                let r = match self.reads.answer(boot_clock_ms(), &query, who.as_ref()) {
                    Some(r) => r,
                    None => self.ask(|reply| Input::Query { query, who, reply }).await?,
                };
                self.signed(peer, r)
            }
            MetaRequest::Register(registration) => {
                allow(peer, &[Role::Chunkserver])?;
                let name = peer.name.clone();
                match self
                    .ask(|reply| Input::Register {
                        name,
                        registration,
                        reply,
                    })
                    .await?
                {
                    Outcome::Registered(id) => Ok(MetaResponse::Registered { id }),
                    other => Err(error(
                        ErrorKind::Invalid,
                        format!("unexpected outcome {other:?}"),
                    )),
                }
            }
            MetaRequest::GrantKeys => {
                allow(peer, &[Role::Chunkserver])?;
                let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
                Ok(MetaResponse::GrantKeys { keys })
            }
            MetaRequest::Heartbeat(heartbeat) => {
                allow(peer, &[Role::Chunkserver])?;
                let name = peer.name.clone();
                self.ask(|reply| Input::Heartbeat {
                    name,
                    heartbeat,
                    reply,
                })
                .await?;
                let revoked = (*self.node.revocations()).clone();
                let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
                Ok(MetaResponse::HeartbeatAck { revoked, keys })
            }
            MetaRequest::ReportDamage { shard } => {
                allow(peer, &[Role::Chunkserver])?;
                let name = peer.name.clone();
                self.ask(|reply| Input::ReportDamage { name, shard, reply })
                    .await?;
                Ok(MetaResponse::DamageNoted)
            }
            MetaRequest::KeepAlive { client, open } => {
                allow(peer, &fs_users)?;
                let certificate = peer.name.clone();
                let lost = self
                    .ask(|reply| Input::KeepAlive {
                        client,
                        certificate,
                        open,
                        reply,
                    })
                    .await?;
                Ok(match lost {
                    Ok(true) => MetaResponse::LocksLost,
                    Ok(false) => MetaResponse::KeepAliveAck,
                    Err(why) => return Err(error(ErrorKind::Denied, why)),
                })
            }
            MetaRequest::ResumeSession { client } => {
                allow(peer, &fs_users)?;
                let certificate = peer.name.clone();
                self.session_change(Command::ResumeSession {
                    client,
                    certificate,
                })
                .await
            }
            MetaRequest::Goodbye { client } => {
                allow(peer, &fs_users)?;
                let certificate = Some(peer.name.clone());
                self.session_change(Command::EndSession {
                    client,
                    certificate,
                })
                .await
            }
            MetaRequest::Admin(req) => {
                allow(peer, &[Role::Admin])?;
                self.admin(req).await
            }
            MetaRequest::Raft { from, addr, sizes } => {
                allow(peer, &[Role::Metaserver])?;
                self.input(Input::PeerAddr(from, addr))?;
                self.raft(from, sizes, recv, Loss::Refused).await?;
                Ok(MetaResponse::RaftAck)
            }
            MetaRequest::RaftStream {
                from,
                addr,
                incarnation,
            } => {
                allow(peer, &[Role::Metaserver])?;
                self.input(Input::PeerStream {
                    id: from,
                    addr,
                    incarnation,
                })?;
                loop {
                    let batch = codec::read_frame::<_, RaftBatch>(recv)
                        .await
                        .map_err(|e| error(ErrorKind::Invalid, format!("raft stream: {e}")))?;
                    self.raft(from, batch.sizes, recv, Loss::Tolerated).await?;
                }
            }
        }
    }

    /// Ends or resumes a session: only one of the caller's certificate.
    async fn session_change(&self, cmd: Command) -> Result<MetaResponse, Early> {
        match self.ask(|reply| Input::Propose { cmd, reply }).await? {
            Outcome::Fs(Err(_)) => Err(error(ErrorKind::Denied, FOREIGN_SESSION)),
            _ => Ok(MetaResponse::KeepAliveAck),
        }
    }

    async fn admin(&self, req: AdminRequest) -> Result<MetaResponse, Early> {
        let change = match req {
            AdminRequest::Status => {
                let status = self.ask(|reply| Input::Status { reply }).await?;
                return Ok(MetaResponse::Admin(AdminReply::Status(Box::new(status))));
            }
            AdminRequest::Snapshot => {
                let (tx, rx) = oneshot::channel();
                self.input(Input::Snapshot { reply: tx })?;
                return match rx.await {
                    Ok(Ok(())) => Ok(MetaResponse::Admin(AdminReply::Done)),
                    Ok(Err(e)) => Err(error(ErrorKind::Io, e)),
                    Err(_) => Err(unavailable("metaserver core stopped")),
                };
            }
            AdminRequest::Digest => {
                let (tx, rx) = oneshot::channel();
                self.input(Input::Digest { reply: tx })?;
                return rx
                    .await
                    .map(MetaResponse::Admin)
                    .map_err(|_| unavailable("metaserver core stopped"));
            }
            AdminRequest::Drain { id, cancel } => {
                return match self.ask(|reply| Input::Drain { id, cancel, reply }).await? {
                    Outcome::Done => Ok(MetaResponse::Admin(AdminReply::Done)),
                    _ if cancel => Err(error(
                        ErrorKind::Invalid,
                        format!("{id} is unknown or not draining"),
                    )),
                    _ => Err(error(
                        ErrorKind::Invalid,
                        format!("{id} is unknown or already draining"),
                    )),
                };
            }
            AdminRequest::SetDefaultPolicy { policy } => {
                let cmd = Command::DefaultPolicy {
                    policy,
                    only_if_unset: false,
                    now: Timestamp::now(),
                };
                self.ask(|reply| Input::Propose { cmd, reply }).await?;
                return Ok(MetaResponse::Admin(AdminReply::Done));
            }
            AdminRequest::Revoke { what } => {
                let cmd = Command::Revoke { what: what.clone() };
                return match self.ask(|reply| Input::Propose { cmd, reply }).await? {
                    Outcome::Done => Ok(MetaResponse::Admin(AdminReply::Done)),
                    _ => Err(error(
                        ErrorKind::Invalid,
                        format!("{what} cannot be revoked: malformed, or the list is full"),
                    )),
                };
            }
            AdminRequest::AddMember { id, addr } => MemberChange::Add(id, addr),
            AdminRequest::RemoveMember { id } => MemberChange::Remove(id),
        };
        match self.ask(|reply| Input::Member { change, reply }).await? {
            Ok(()) => Ok(MetaResponse::Admin(AdminReply::Done)),
            Err(e) => Err(error(ErrorKind::Invalid, e)),
        }
    }

    /// Hands the `sizes.len()` Raft messages that follow on `recv` to the core.
    async fn raft(
        &self,
        from: lattice_common::ids::MetaserverId,
        sizes: Vec<u32>,
        recv: &mut RecvStream,
        loss: Loss,
    ) -> Result<(), Early> {
        let total: u64 = sizes.iter().map(|&s| s as u64).sum();
        if sizes.len() > MAX_RAFT_BATCH || total > MAX_RAFT_BATCH_BYTES {
            return Err(error(ErrorKind::Invalid, "raft batch too large"));
        }
        for size in sizes {
            let mut buf = vec![0u8; size as usize];
            recv.read_exact(&mut buf)
                .await
                .map_err(|e| error(ErrorKind::Invalid, format!("raft batch cut short: {e}")))?;
            let msg = raft::prelude::Message::parse_from_bytes(&buf)
                .map_err(|e| error(ErrorKind::Invalid, format!("bad raft message: {e}")))?;
            if msg.from != from.0 {
                return Err(error(
                    ErrorKind::Invalid,
                    "raft message from another member",
                ));
            }
            match self.input(Input::Step(msg)) {
                Err(e) if loss == Loss::Refused => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}
