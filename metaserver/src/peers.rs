//! Raft messages to the other members over QUIC: one queue and one sender task per peer,
//! batching whatever is queued into one request. Raft tolerates loss, so a full queue or a
//! failed send drops messages (and tells Raft the peer is unreachable).

use crate::core::{deliver, Input, Inputs};
use lattice_common::codec;
use lattice_common::ids::MetaserverId;
use lattice_common::pki::Role;
use lattice_common::transport::Node;
use lattice_common::wire::meta::{MetaRequest, MetaResponse};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::debug;

const QUEUE: usize = 4096;
const MAX_BATCH: usize = 256;
/// A batch holding a snapshot may take longer to move.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

type Addrs = Arc<RwLock<BTreeMap<MetaserverId, SocketAddr>>>;

pub struct Peers {
    me: MetaserverId,
    /// Where this member serves.
    addr: SocketAddr,
    node: Arc<Node>,
    runtime: tokio::runtime::Handle,
    core: Inputs,
    queues: HashMap<u64, mpsc::Sender<Message>>,
    addrs: Addrs,
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

    pub fn send(&mut self, messages: Vec<Message>) {
        for msg in messages {
            let to = msg.to;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let queue = self.queues.entry(to).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = Sender {
                    to,
                    me: self.me,
                    my_addr: self.addr,
                    node: self.node.clone(),
                    addrs: self.addrs.clone(),
                    core: self.core.clone(),
                };
                self.runtime.spawn(task.run(rx));
                tx
            });
            if queue.try_send(msg).is_err() {
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

struct Sender {
    to: u64,
    me: MetaserverId,
    my_addr: SocketAddr,
    node: Arc<Node>,
    addrs: Addrs,
    core: Inputs,
}

impl Sender {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
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
                Some(addr) => self.send(addr, &batch, snapshot).await,
                None => Err("no address known".into()),
            };
            if let Err(e) = &result {
                debug!(to = self.to, "raft messages not delivered: {e}");
                let _ = self.core.try_send(Input::Unreachable(self.to));
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

    async fn send(
        &self,
        addr: SocketAddr,
        batch: &[Message],
        snapshot: bool,
    ) -> Result<(), String> {
        let bodies: Vec<Vec<u8>> = batch
            .iter()
            .map(|m| m.write_to_bytes().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let sizes = bodies.iter().map(|b| b.len() as u32).collect();
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
            for b in &bodies {
                send.write_all(b).await.map_err(|e| e.to_string())?;
            }
            let _ = send.finish();
            match codec::read_frame::<_, MetaResponse>(&mut recv).await {
                Ok(MetaResponse::RaftAck) => Ok(()),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        let limit = if snapshot {
            SNAPSHOT_TIMEOUT
        } else {
            SEND_TIMEOUT
        };
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(format!("no acknowledgement within {limit:?}")))
    }
}
