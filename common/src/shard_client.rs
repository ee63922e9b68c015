//! Client side of the chunkserver protocol: one request per QUIC stream.

use crate::codec::{self, CodecError};
use crate::grant::{unix_now, Access, Grant};
use crate::ids::{ShardId, SliceId};
use crate::layout::SliceLayout;
use crate::pki::Role;
use crate::transport::Node;
use crate::wire::{
    reset, ChunkRequest, ChunkResponse, ChunkserverStatus, ErrorKind, ShardInfo, ShardSource,
    WireError,
};
use bytes::Bytes;
use quinn::{ReadError, ReadExactError, RecvStream};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default deadline of one shard request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("shard not found")]
    NotFound,
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("no space: {0}")]
    NoSpace(String),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("no answer within {0:?} while its peers answered; read around it")]
    Slow(Duration),
    #[error("its server failed or was slow moments ago; read around it")]
    Avoided,
    #[error("refused: {0}")]
    Remote(WireError),
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl From<WireError> for ShardError {
    fn from(e: WireError) -> Self {
        match e.kind {
            ErrorKind::NotFound => ShardError::NotFound,
            ErrorKind::Corrupt => ShardError::Corrupt(e.message),
            ErrorKind::NoSpace => ShardError::NoSpace(e.message),
            _ => ShardError::Remote(e),
        }
    }
}

impl From<CodecError> for ShardError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(io) => ShardError::Unreachable(io.to_string()),
            other => ShardError::Protocol(other.to_string()),
        }
    }
}

fn unexpected(resp: ChunkResponse) -> ShardError {
    match resp {
        ChunkResponse::Error(e) => e.into(),
        other => ShardError::Protocol(format!("unexpected reply {other:?}")),
    }
}

/// Longest a rebuild of one shard may take (it is rate-limited on the chunkserver).
pub const REBUILD_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Clone)]
pub struct ShardClient {
    node: Arc<Node>,
    timeout: Duration,
    /// Grants a mount was handed (with allocations and slice maps), sent with every
    /// put and get of their slices. Servers and admins need none.
    grants: Arc<Grants>,
}

/// Grants held at most; past this the expired ones go, then all (they come back with
/// the next slice map).
const MAX_GRANTS: usize = 100_000;

#[derive(Default)]
struct Grants {
    by_slice: Mutex<HashMap<(SliceId, Access), Grant>>,
}

impl Grants {
    fn find(&self, slice: SliceId, want: Access) -> Option<Grant> {
        let held = self.by_slice.lock().unwrap_or_else(|p| p.into_inner());
        let write = held.get(&(slice, Access::Write));
        match want {
            Access::Write => write.cloned(),
            Access::Read => held.get(&(slice, Access::Read)).or(write).cloned(),
        }
    }
}

impl ShardClient {
    pub fn new(node: Arc<Node>, timeout: Duration) -> Self {
        ShardClient {
            node,
            timeout,
            grants: Arc::default(),
        }
    }

    /// Keeps grants to present with later puts and gets of their slices.
    pub fn hold_grants(&self, grants: impl IntoIterator<Item = Grant>) {
        let mut held = self
            .grants
            .by_slice
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for g in grants {
            if held.len() >= MAX_GRANTS {
                let now = unix_now();
                held.retain(|_, g| g.expires > now);
                if held.len() >= MAX_GRANTS {
                    held.clear();
                }
            }
            held.insert((g.slice, g.access), g);
        }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Runs one request against `addr` within the client's timeout; a connection that
    /// timed out is dropped so the next request reconnects (the server may have restarted).
    async fn deadline<T>(
        &self,
        addr: SocketAddr,
        work: impl Future<Output = Result<T, ShardError>>,
    ) -> Result<T, ShardError> {
        self.deadline_of(self.timeout, addr, work).await
    }

    async fn deadline_of<T>(
        &self,
        timeout: Duration,
        addr: SocketAddr,
        work: impl Future<Output = Result<T, ShardError>>,
    ) -> Result<T, ShardError> {
        let result = tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ShardError::Timeout(timeout)));
        if let Err(ShardError::Timeout(_)) = result {
            self.node.forget(addr);
        }
        result
    }

    /// Sends a request (and its body) and reads the reply frame; the stream stays open for a
    /// reply body.
    async fn exchange(
        &self,
        addr: SocketAddr,
        req: &ChunkRequest,
        body: Bytes,
    ) -> Result<(ChunkResponse, RecvStream), ShardError> {
        let (mut send, mut recv) = self
            .node
            .open(addr, Role::Chunkserver)
            .await
            .map_err(|e| ShardError::Unreachable(e.to_string()))?;
        let lost = |e: quinn::WriteError| ShardError::Unreachable(format!("{addr}: {e}"));
        // Handed to the stream as they are: a shard's bytes are not copied again here.
        let mut parts = [Bytes::from(codec::encode(req)?), body];
        // A server that refuses a request (a full disk, say) answers and stops reading it:
        // its answer, not the stopped write, is what the caller must hear.
        let mut stopped = None;
        match send.write_all_chunks(&mut parts).await {
            Ok(()) => {
                let _ = send.finish();
            }
            Err(e @ quinn::WriteError::Stopped(_)) => stopped = Some(e),
            Err(e) => return Err(lost(e)),
        }
        match codec::read_frame(&mut recv).await {
            Ok(resp) => Ok((resp, recv)),
            Err(e) => Err(stopped.map_or_else(|| ShardError::from(e), lost)),
        }
    }

    async fn call(&self, addr: SocketAddr, req: ChunkRequest) -> Result<ChunkResponse, ShardError> {
        self.deadline(addr, async {
            Ok(self.exchange(addr, &req, Bytes::new()).await?.0)
        })
        .await
    }

    pub async fn ping(&self, addr: SocketAddr) -> Result<String, ShardError> {
        match self.call(addr, ChunkRequest::Ping).await? {
            ChunkResponse::Pong { name } => Ok(name),
            other => Err(unexpected(other)),
        }
    }

    fn put_request(&self, shard: ShardId, layout: SliceLayout) -> ChunkRequest {
        let grant = self.grants.find(shard.slice, Access::Write);
        ChunkRequest::Put {
            shard,
            layout,
            grant,
        }
    }

    /// Stores a whole shard; returns once the chunkserver has it on disk (fsynced).
    pub async fn put(
        &self,
        addr: SocketAddr,
        shard: ShardId,
        layout: SliceLayout,
        data: Bytes,
    ) -> Result<(), ShardError> {
        if data.len() as u64 != layout.shard_len() {
            return Err(ShardError::Protocol(format!(
                "shard body of {} bytes, layout wants {}",
                data.len(),
                layout.shard_len()
            )));
        }
        self.deadline(addr, async {
            match self
                .exchange(addr, &self.put_request(shard, layout), data)
                .await?
                .0
            {
                ChunkResponse::Stored { .. } => Ok(()),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    /// Reads `len` bytes of a shard from `offset`, each block verified by the chunkserver.
    pub async fn get(
        &self,
        addr: SocketAddr,
        shard: ShardId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ShardError> {
        self.deadline(addr, async {
            let grant = self.grants.find(shard.slice, Access::Read);
            let req = ChunkRequest::Get {
                shard,
                offset,
                len,
                grant,
            };
            let (resp, mut recv) = self.exchange(addr, &req, Bytes::new()).await?;
            match resp {
                ChunkResponse::Data { len: got } if got == len => {}
                other => return Err(unexpected(other)),
            }
            let mut buf = vec![0u8; len as usize];
            recv.read_exact(&mut buf).await.map_err(|e| match e {
                ReadExactError::ReadError(ReadError::Reset(code))
                    if code.into_inner() == reset::CORRUPT as u64 =>
                {
                    ShardError::Corrupt(format!("{shard} on {addr}: checksum mismatch"))
                }
                other => ShardError::Unreachable(format!("{addr}: {other}")),
            })?;
            Ok(buf)
        })
        .await
    }

    pub async fn delete(&self, addr: SocketAddr, shard: ShardId) -> Result<bool, ShardError> {
        match self.call(addr, ChunkRequest::Delete { shard }).await? {
            ChunkResponse::Deleted { existed } => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    pub async fn stat(&self, addr: SocketAddr, shard: ShardId) -> Result<ShardInfo, ShardError> {
        match self.call(addr, ChunkRequest::Stat { shard }).await? {
            ChunkResponse::Stat(info) => Ok(info),
            other => Err(unexpected(other)),
        }
    }

    /// One page of the shards a chunkserver holds, after `after`; `true` if more follow.
    pub async fn list(
        &self,
        addr: SocketAddr,
        after: Option<ShardId>,
        limit: u32,
    ) -> Result<(Vec<ShardInfo>, bool), ShardError> {
        match self.call(addr, ChunkRequest::List { after, limit }).await? {
            ChunkResponse::List { shards, more } => Ok((shards, more)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn status(&self, addr: SocketAddr) -> Result<ChunkserverStatus, ShardError> {
        match self.call(addr, ChunkRequest::Status).await? {
            ChunkResponse::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        }
    }

    /// A request that may run long (a rebuild, adding or emptying a data directory), allowed
    /// up to [`REBUILD_TIMEOUT`]; an error reply becomes an error.
    pub async fn admin(
        &self,
        addr: SocketAddr,
        req: ChunkRequest,
    ) -> Result<ChunkResponse, ShardError> {
        let work = async { Ok(self.exchange(addr, &req, Bytes::new()).await?.0) };
        match self.deadline_of(REBUILD_TIMEOUT, addr, work).await? {
            ChunkResponse::Error(e) => Err(e.into()),
            other => Ok(other),
        }
    }

    /// Has `addr` rebuild (or copy, see [`ChunkRequest::Rebuild`]) a shard; may take up to
    /// [`REBUILD_TIMEOUT`].
    pub async fn rebuild(
        &self,
        addr: SocketAddr,
        shard: ShardId,
        layout: SliceLayout,
        copy_from: Option<ShardSource>,
        sources: Vec<ShardSource>,
    ) -> Result<u64, ShardError> {
        let req = ChunkRequest::Rebuild {
            shard,
            layout,
            copy_from,
            sources,
        };
        match self.admin(addr, req).await? {
            ChunkResponse::Rebuilt { bytes } => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }
}
