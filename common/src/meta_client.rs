//! Talking to the metaserver group: find the leader, follow redirects, retry through
//! elections and dead members until a deadline. Mutations carry a session id and sequence
//! number so a retry is applied at most once.

use crate::codec;
use crate::fs::Errno;
use crate::ids::ClientId;
use crate::pki::Role;
use crate::transport::Node;
use crate::wire::meta::{
    AdminReply, AdminRequest, FsOp, FsQuery, FsReply, MetaRequest, MetaResponse, REMEMBERED_REPLIES,
};
use crate::wire::ErrorKind;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::debug;

/// How long one attempt may take before another member is tried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before trying again when no member knows a leader.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// A member that failed an attempt is tried last for this long.
const SHUNNED_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MetaError {
    /// The deadline, and each member with its last failure.
    #[error("no metaserver answered within {0:?} ({1})")]
    Unavailable(Duration, String),
    #[error("{0}")]
    Refused(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

pub struct MetaClient {
    node: Arc<Node>,
    servers: Vec<SocketAddr>,
    leader: Mutex<Option<SocketAddr>>,
    next_server: AtomicUsize,
    /// Members that failed an attempt lately, and when; tried only when all others have.
    failed: Mutex<HashMap<SocketAddr, Instant>>,
    client: ClientId,
    seq: AtomicU64,
    in_flight: InFlight,
    deadline: Duration,
}

/// How far past its oldest unanswered change a client sends: a change retried after more
/// than [`REMEMBERED_REPLIES`] newer ones were answered would be refused with EIO even if it
/// never happened (its reply may be the one forgotten). One change held up by retries while
/// 63 others ran on was refused so, creating a million files.
const SEQ_WINDOW: u64 = REMEMBERED_REPLIES as u64 / 2;

/// Sequence numbers of changes still waiting for their reply.
#[derive(Default)]
struct InFlight {
    seqs: Mutex<BTreeSet<u64>>,
    answered: tokio::sync::Notify,
}

impl InFlight {
    fn seqs(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.seqs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `seq` in flight once it is within [`SEQ_WINDOW`] of the oldest change in
    /// flight; returns the oldest (every reply below it is no longer wanted).
    async fn enter(&self, seq: u64) -> u64 {
        loop {
            let answered = self.answered.notified();
            {
                let mut seqs = self.seqs();
                let oldest = *seqs.first().unwrap_or(&seq);
                if seq.saturating_sub(oldest) < SEQ_WINDOW {
                    seqs.insert(seq);
                    return oldest.min(seq);
                }
            }
            answered.await;
        }
    }

    fn leave(&self, seq: u64) {
        self.seqs().remove(&seq);
        self.answered.notify_waiters();
    }
}

impl MetaClient {
    /// A client of the group whose members include `servers`; each call retries for up to
    /// `deadline`.
    pub fn new(node: Arc<Node>, servers: Vec<SocketAddr>, deadline: Duration) -> Self {
        MetaClient {
            node,
            servers,
            leader: Mutex::new(None),
            next_server: AtomicUsize::new(0),
            failed: Mutex::new(HashMap::new()),
            client: ClientId(rand_u64()),
            seq: AtomicU64::new(1),
            in_flight: InFlight::default(),
            deadline,
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// This client's session id (locks and retried requests belong to it).
    pub fn client_id(&self) -> ClientId {
        self.client
    }

    fn leader(&self) -> std::sync::MutexGuard<'_, Option<SocketAddr>> {
        self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member to try next: the known leader, else the next in turn that has not failed
    /// lately.
    fn target(&self) -> Option<SocketAddr> {
        if let Some(l) = *self.leader() {
            return Some(l);
        }
        let n = self.servers.len();
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let recently = |a: &SocketAddr| failed.get(a).is_some_and(|t| t.elapsed() < SHUNNED_FOR);
        let start = self.next_server.fetch_add(1, Ordering::Relaxed);
        let order = (0..n).map(|k| self.servers[(start + k) % n]);
        order
            .clone()
            .find(|a| !recently(a))
            .or_else(|| order.clone().next())
    }

    async fn attempt(
        &self,
        addr: SocketAddr,
        req: &MetaRequest,
        timeout: Duration,
    ) -> Result<MetaResponse, String> {
        let work = async {
            let (mut send, mut recv) = self
                .node
                .open(addr, Role::Metaserver)
                .await
                .map_err(|e| e.to_string())?;
            let frame = codec::encode(req).map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            codec::read_frame::<_, MetaResponse>(&mut recv)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
    }

    /// Sends `req` to one member, once, whether or not it leads.
    pub async fn call_at(
        &self,
        addr: SocketAddr,
        req: &MetaRequest,
    ) -> Result<MetaResponse, MetaError> {
        self.attempt(addr, req, ATTEMPT_TIMEOUT)
            .await
            .map_err(|e| MetaError::Unavailable(ATTEMPT_TIMEOUT, format!("{addr}: {e}")))
    }

    /// Sends `req` to the leader, following redirects and retrying until the deadline.
    pub async fn call(&self, req: &MetaRequest) -> Result<MetaResponse, MetaError> {
        let start = Instant::now();
        // The last outcome from each member tried (a failure names them all).
        let mut tried: BTreeMap<SocketAddr, String> = BTreeMap::new();
        loop {
            let Some(addr) = self.target() else {
                return Err(MetaError::Unavailable(
                    self.deadline,
                    "no metaserver addresses".into(),
                ));
            };
            // No attempt outlasts the deadline: the caller hears back in time.
            let left = self.deadline.saturating_sub(start.elapsed());
            match self.attempt(addr, req, left.min(ATTEMPT_TIMEOUT)).await {
                Ok(MetaResponse::NotLeader { leader }) => {
                    let elsewhere = leader.filter(|&l| l != addr);
                    *self.leader() = elsewhere;
                    let why = match elsewhere {
                        Some(l) => format!("not the leader, pointed to {l}"),
                        None => "not the leader, knows no leader".to_string(),
                    };
                    tried.insert(addr, why);
                    if elsewhere.is_none() {
                        self.pause(start).await;
                    }
                }
                Ok(MetaResponse::Error(e)) if e.kind == ErrorKind::Unavailable => {
                    debug!(%addr, "metaserver unavailable: {}", e.message);
                    tried.insert(addr, e.message);
                    *self.leader() = None;
                    self.pause(start).await;
                }
                Ok(MetaResponse::Error(e)) => return Err(MetaError::Refused(e.to_string())),
                Ok(resp) => {
                    *self.leader() = Some(addr);
                    return Ok(resp);
                }
                Err(e) => {
                    debug!(%addr, "metaserver request failed: {e}");
                    tried.insert(addr, e);
                    *self.leader() = None;
                    self.node.forget(addr);
                    self.failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(addr, Instant::now());
                }
            }
            if start.elapsed() >= self.deadline {
                return Err(MetaError::Unavailable(self.deadline, self.outcomes(&tried)));
            }
        }
    }

    /// Waits before the next attempt, never past the deadline.
    async fn pause(&self, start: Instant) {
        let left = self.deadline.saturating_sub(start.elapsed());
        tokio::time::sleep(RETRY_PAUSE.min(left)).await;
    }

    /// Every member with its last outcome: the configured ones in order (also those the
    /// deadline left untried), then leaders they pointed to.
    fn outcomes(&self, tried: &BTreeMap<SocketAddr, String>) -> String {
        let untried = "not tried before the deadline";
        let redirects = tried.keys().filter(|a| !self.servers.contains(a));
        self.servers
            .iter()
            .chain(redirects)
            .map(|a| format!("{a}: {}", tried.get(a).map_or(untried, String::as_str)))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Applies a filesystem change (exactly once, however often it is retried).
    pub async fn mutate(&self, op: FsOp) -> Result<Result<FsReply, Errno>, MetaError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let acked_below = self.in_flight.enter(seq).await;
        let req = MetaRequest::Mutate {
            client: self.client,
            seq,
            acked_below,
            op,
        };
        let result = self.call(&req).await;
        // Given up or answered: either way this sequence number is never sent again.
        self.in_flight.leave(seq);
        match result? {
            MetaResponse::Fs(r) => Ok(r),
            other => Err(MetaError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// An admin request (the client needs an admin certificate).
    pub async fn admin(&self, req: AdminRequest) -> Result<AdminReply, MetaError> {
        match self.call(&MetaRequest::Admin(req)).await? {
            MetaResponse::Admin(reply) => Ok(reply),
            other => Err(MetaError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn query(&self, q: FsQuery) -> Result<Result<FsReply, Errno>, MetaError> {
        match self.call(&MetaRequest::Query(q)).await? {
            MetaResponse::Fs(r) => Ok(r),
            other => Err(MetaError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{self, Role};
    use crate::transport::Identity;
    use crate::wire::meta::FsQuery;

    #[test]
    fn changes_wait_for_the_oldest_unanswered_one_past_the_window() {
        use futures::FutureExt;
        let in_flight = InFlight::default();
        assert_eq!(in_flight.enter(1).now_or_never(), Some(1));
        // Change 1 stays unanswered (retried, say) while the next ones come and go.
        for seq in 2..=SEQ_WINDOW {
            assert_eq!(in_flight.enter(seq).now_or_never(), Some(1), "{seq}");
            in_flight.leave(seq);
        }
        let mut next = Box::pin(in_flight.enter(SEQ_WINDOW + 1));
        assert_eq!((&mut next).now_or_never(), None, "ran past the window");
        in_flight.leave(1);
        assert_eq!(next.now_or_never(), Some(SEQ_WINDOW + 1));
        // One that enters after a newer one acknowledges nothing above itself.
        assert_eq!(
            in_flight.enter(SEQ_WINDOW + 3).now_or_never(),
            Some(SEQ_WINDOW + 1)
        );
        in_flight.leave(SEQ_WINDOW + 1);
        assert_eq!(
            in_flight.enter(SEQ_WINDOW + 2).now_or_never(),
            Some(SEQ_WINDOW + 2)
        );
    }

    /// Addresses where nothing listens: ports the system handed out, then freed.
    fn dead_addrs(n: usize) -> Vec<SocketAddr> {
        let sockets: Vec<std::net::UdpSocket> = (0..n)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        sockets.iter().map(|s| s.local_addr().unwrap()).collect()
    }

    #[test]
    fn unavailable_names_every_member_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        pki::init_ca(&ca, "test").unwrap();
        let certs = dir.path().join("client");
        pki::issue(&ca, Role::Client, "client", &certs).unwrap();
        let identity = Identity::load(&certs).unwrap();
        let members = dead_addrs(3);
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Time for one full attempt and half of another: the third member is never tried.
        let deadline = ATTEMPT_TIMEOUT * 3 / 2;
        let started = Instant::now();
        let err = rt.block_on(async {
            let node = Node::client(&identity).unwrap();
            let client = MetaClient::new(node, members.clone(), deadline);
            client.query(FsQuery::StatFs).await.unwrap_err()
        });
        let took = started.elapsed();
        let MetaError::Unavailable(_, list) = &err else {
            panic!("{err}");
        };
        let named: Vec<(&str, &str)> = list
            .split("; ")
            .map(|entry| entry.split_once(": ").unwrap_or((entry, "")))
            .collect();
        let addrs: Vec<String> = members.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            named.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
            addrs,
            "{err}"
        );
        assert!(named.iter().all(|(_, why)| !why.is_empty()), "{err}");
        assert!(
            err.to_string().contains("not tried before the deadline"),
            "{err}"
        );
        assert!(took < deadline + ATTEMPT_TIMEOUT / 2, "took {took:?}");
    }
}
