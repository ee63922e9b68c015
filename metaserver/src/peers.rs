//! Raft messages to the other members over QUIC: one queue and one sender task per peer,
//! batching whatever is queued. Batches go on one lasting stream per peer, unanswered; a
//! snapshot goes as a request of its own, whose answer says it arrived. Raft tolerates
//! loss, so a full queue or a failed send drops messages (and tells Raft the peer is
//! unreachable).

use crate::core::{deliver, Input, Inputs};
use lattice_common::codec;
use lattice_common::ids::MetaserverId;
use lattice_common::pki::Role;
use lattice_common::transport::Node;
use lattice_common::wire::meta::{MetaRequest, MetaResponse, RaftBatch};
use protobuf::Message as _;
use quinn::{RecvStream, SendStream};
use raft::prelude::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 256;
/// Longest a batch may wait for room on its stream (the peer reads too slowly or is gone).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a snapshot may take to move and be acknowledged.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

type Addrs = Arc<RwLock<BTreeMap<MetaserverId, SocketAddr>>>;

pub struct Peers {
    me: MetaserverId,
    /// Where this member serves.
    addr: SocketAddr,
    node: Arc<Node>,
    runtime: tokio::runtime::Handle,
    core: Inputs,
    queues: HashMap<u64, mpsc::Sender<Out>>,
    addrs: Addrs,
    /// Sent with this member's streams: its peers see it restarted when it changes.
    incarnation: u64,
    /// What each peer's last stream to this member said of its incarnation.
    incarnations: HashMap<MetaserverId, u64>,
    /// What Raft must hear of messages not even queued (the core handles these itself:
    /// sending them to its own queue could wait on itself).
    reports: Vec<Input>,
}

impl Peers {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn new(
        me: MetaserverId,
        addr: SocketAddr,
        node: Arc<Node>,
        runtime: tokio::runtime::Handle,
        core: Inputs,
    ) -> Peers {
        Peers {
            me,
            addr,
            node,
            runtime,
            core,
            queues: HashMap::new(),
            addrs: Arc::default(),
            incarnation: rand::random(),
            incarnations: HashMap::new(),
            reports: Vec::new(),
        }
    }

    /// Reports on messages dropped since the last call, for the core to hand to Raft.
    pub fn take_reports(&mut self) -> Vec<Input> {
        std::mem::take(&mut self.reports)
    }

    /// Keeps member addresses in step with the replicated member list.
    pub fn update(&mut self, members: &BTreeMap<MetaserverId, SocketAddr>) {
        let mut addrs = self.addrs.write().unwrap_or_else(|p| p.into_inner());
        for (id, addr) in members {
            addrs.insert(*id, *addr);
        }
    }

    /// Remembers where a member that sent us messages serves (before the member list
    /// reaches a newly joined member, this is how it can answer).
    pub fn learn(&mut self, id: MetaserverId, addr: SocketAddr) {
        self.addrs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_insert(addr);
    }

    /// A member opened its stream to this one. If it has restarted since its last stream,
    /// this member's stream to it leads into a connection the member no longer knows: the
    /// sender starts over on a new one (a restart, not every new stream, so that two members
    /// do not make each other start over without end).
    pub fn opened(&mut self, id: MetaserverId, addr: SocketAddr, incarnation: u64) {
        self.learn(id, addr);
        let before = self.incarnations.insert(id, incarnation);
        if before.is_some_and(|b| b != incarnation) {
            // A full queue has a batch to send that fails on the dead stream all the same.
            let _ = self.queue(id.0).try_send(Out::Reconnect);
        }
    }

    fn queue(&mut self, to: u64) -> &mpsc::Sender<Out> {
        self.queues.entry(to).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let task = Sender {
                to,
                me: self.me,
                my_addr: self.addr,
                incarnation: self.incarnation,
                node: self.node.clone(),
                addrs: self.addrs.clone(),
                core: self.core.clone(),
                stream: None,
            };
            self.runtime.spawn(task.run(rx));
            tx
        })
    }

    pub fn send(&mut self, messages: Vec<Message>) {
        for msg in messages {
            let to = msg.to;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            if self.queue(to).try_send(Out::Message(msg)).is_err() {
                self.reports.push(Input::Unreachable(to));
                if snapshot {
                    self.reports.push(Input::SnapshotReport {
                        to,
                        delivered: false,
                    });
                }
            }
        }
    }
}

/// What a peer's sender task is handed.
enum Out {
    Message(Message),
    /// The peer restarted: the stream to it leads nowhere.
    Reconnect,
}

/// The lasting stream to a peer. The receiving half is kept: dropping it would ask the peer
/// to stop reading.
struct Stream {
    addr: SocketAddr,
    send: SendStream,
    _recv: RecvStream,
}

struct Sender {
    to: u64,
    me: MetaserverId,
    my_addr: SocketAddr,
    incarnation: u64,
    node: Arc<Node>,
    addrs: Addrs,
    core: Inputs,
    stream: Option<Stream>,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Out>) {
        while let Some(first) = rx.recv().await {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(out) = next.take() {
                match out {
                    Out::Message(m) => batch.push(m),
                    Out::Reconnect => self.drop_stream(),
                }
                if batch.len() < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let snapshot = batch
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
            let addr = self
                .addrs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&MetaserverId(self.to))
                .copied();
            let result = match addr {
                Some(addr) if snapshot => self.request(addr, &batch).await,
                Some(addr) => self.stream(addr, &batch).await,
                None => Err("no address known".into()),
            };
            if let Err(e) = &result {
                debug!(to = self.to, "raft messages not delivered: {e}");
                let _ = self.core.try_send(Input::Unreachable(self.to));
                // Its connection is forgotten just below.
                self.stream = None;
                if let Some(addr) = addr {
                    self.node.forget(addr);
                }
            }
            if snapshot {
                // Lost, it would leave the member waiting for a snapshot it never gets.
                let report = Input::SnapshotReport {
                    to: self.to,
                    delivered: result.is_ok(),
                };
                deliver(&self.core, report).await;
            }
        }
    }

    /// Forgets the stream and the connection it is on, so the next batch opens both anew.
    fn drop_stream(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.node.forget(stream.addr);
        }
    }

    /// Puts a batch on the lasting stream to `addr`, opening it first if need be. Done when
    /// the bytes are queued for sending: nothing is answered.
    async fn stream(&mut self, addr: SocketAddr, batch: &[Message]) -> Result<(), String> {
        let (sizes, bodies) = encode(batch)?;
        let mut bytes = codec::encode(&RaftBatch { sizes }).map_err(|e| e.to_string())?;
        bytes.extend_from_slice(&bodies);
        if self.stream.as_ref().is_some_and(|s| s.addr != addr) {
            self.drop_stream();
        }
        let work = async {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => {
                    let opened = self.open(addr).await?;
                    self.stream.insert(opened)
                }
            };
            stream
                .send
                .write_all(&bytes)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(SEND_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(format!("not taken within {SEND_TIMEOUT:?}")))
    }

    /// Opens the lasting stream to `addr` and says who sends on it.
    async fn open(&self, addr: SocketAddr) -> Result<Stream, String> {
        let (mut send, recv) = self
            .node
            .open(addr, Role::Metaserver)
            .await
            .map_err(|e| e.to_string())?;
        let hello = codec::encode(&MetaRequest::RaftStream {
            from: self.me,
            addr: self.my_addr,
            incarnation: self.incarnation,
        })
        .map_err(|e| e.to_string())?;
        send.write_all(&hello).await.map_err(|e| e.to_string())?;
        Ok(Stream {
            addr,
            send,
            _recv: recv,
        })
    }

    /// Sends a batch as a request of its own and waits for its answer.
    async fn request(&self, addr: SocketAddr, batch: &[Message]) -> Result<(), String> {
        let (sizes, bodies) = encode(batch)?;
        let frame = codec::encode(&MetaRequest::Raft {
            from: self.me,
            addr: self.my_addr,
            sizes,
        })
        .map_err(|e| e.to_string())?;
        let work = async {
            let (mut send, mut recv) = self
                .node
                .open(addr, Role::Metaserver)
                .await
                .map_err(|e| e.to_string())?;
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
            send.write_all(&bodies).await.map_err(|e| e.to_string())?;
            let _ = send.finish();
            match codec::read_frame::<_, MetaResponse>(&mut recv).await {
                Ok(MetaResponse::RaftAck) => Ok(()),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(SNAPSHOT_TIMEOUT, work)
            .await
            .unwrap_or_else(|_| Err(format!("no acknowledgement within {SNAPSHOT_TIMEOUT:?}")))
    }
}

/// The messages' sizes, and their bytes end to end.
fn encode(batch: &[Message]) -> Result<(Vec<u32>, Vec<u8>), String> {
    let mut sizes = Vec::with_capacity(batch.len());
    let mut bytes = Vec::new();
    for m in batch {
        let before = bytes.len();
        m.write_to_vec(&mut bytes).map_err(|e| e.to_string())?;
        sizes.push((bytes.len() - before) as u32);
    }
    Ok((sizes, bytes))
}
