//! The chunkserver's request handlers: one QUIC stream per request.

use crate::grants::GrantKeys;
use crate::metrics::Stats;
use crate::rebuild;
use crate::scrub::Scrubber;
use crate::store::{Store, StoreError};
use lattice_common::codec;
use lattice_common::grant::{Access, Grant};
use lattice_common::ids::ShardId;
use lattice_common::layout::SliceLayout;
use lattice_common::pki::{PeerName, Role};
use lattice_common::slice_io::SliceIo;
use lattice_common::throttle::Throttle;
use lattice_common::wire::{
    reset, ChunkRequest, ChunkResponse, ChunkserverStatus, ErrorKind, WireError, MAX_GET_BYTES,
    MAX_LIST_PAGE,
};
use quinn::{RecvStream, SendStream, VarInt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// Shard bytes move between network and disk in pieces of this size.
pub const IO_PIECE: usize = 1 << 20;
/// A peer that sends nothing of a body for this long is cut off.
const BODY_STALL: Duration = Duration::from_secs(30);

pub struct Service {
    pub store: Arc<Store>,
    pub io: SliceIo,
    pub name: String,
    /// Paces rebuilds and copies.
    pub rebuild_rate: Throttle,
    pub scrub: Arc<Scrubber>,
    pub stats: Stats,
    /// Injected before every shard read (testing a slow server).
    pub read_delay: std::time::Duration,
    pub grants: GrantKeys,
}

impl From<StoreError> for WireError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::NotFound(_) => ErrorKind::NotFound,
            StoreError::Corrupt(_) => ErrorKind::Corrupt,
            StoreError::NoSpace(_) => ErrorKind::NoSpace,
            StoreError::Invalid(_) => ErrorKind::Invalid,
            StoreError::Io { .. } => ErrorKind::Io,
        };
        WireError::new(kind, e.to_string())
    }
}

/// Runs blocking disk work off the async threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn invalid(message: impl Into<String>) -> WireError {
    WireError::new(ErrorKind::Invalid, message)
}

async fn reply(send: &mut SendStream, resp: &ChunkResponse) {
    if let Ok(frame) = codec::encode(resp) {
        let _ = send.write_all(&frame).await;
    }
}

/// Only the metaserver and operators may remove or rebuild shards; a mount may not.
const OPERATORS: &[Role] = &[Role::Metaserver, Role::Admin];
/// What shards a server holds is for servers and admins, not mounts.
const SERVERS_AND_ADMINS: &[Role] = &[Role::Metaserver, Role::Chunkserver, Role::Admin];
/// Only admins change a server's disks.
const ADMINS: &[Role] = &[Role::Admin];

fn require(peer: &PeerName, roles: &[Role]) -> Result<(), WireError> {
    if roles.contains(&peer.role) {
        return Ok(());
    }
    let allowed: Vec<&str> = roles.iter().map(Role::as_str).collect();
    Err(WireError::new(
        ErrorKind::Denied,
        format!("{peer} may not do this; only {} may", allowed.join(", ")),
    ))
}

impl Service {
    pub async fn handle(
        self: Arc<Self>,
        peer: Arc<PeerName>,
        mut send: SendStream,
        mut recv: RecvStream,
    ) {
        let req: ChunkRequest = match codec::read_request(&mut recv).await {
            Ok(req) => req,
            Err(e) => {
                debug!(%peer, "bad request: {e}");
                return reply(&mut send, &ChunkResponse::Error(invalid(e.to_string()))).await;
            }
        };
        let resp = match req {
            ChunkRequest::Get {
                shard,
                offset,
                len,
                grant,
            } => {
                if let Err(e) = self
                    .grants
                    .check(&peer, grant.as_ref(), (shard, Access::Read, 0))
                    .await
                {
                    return reply(&mut send, &ChunkResponse::Error(e)).await;
                }
                return self.get(&mut send, shard, offset, len).await;
            }
            ChunkRequest::Ping => Ok(ChunkResponse::Pong {
                name: self.name.clone(),
            }),
            ChunkRequest::Put {
                shard,
                layout,
                grant,
            } => match self.may_put(&peer, grant.as_ref(), shard, layout).await {
                Ok(()) => self.put(&mut recv, shard, layout).await,
                Err(e) => Err(e),
            },
            ChunkRequest::Delete { shard } => match require(&peer, OPERATORS) {
                Ok(()) => self
                    .on_disk(move |s| s.delete(shard))
                    .await
                    .map(|existed| ChunkResponse::Deleted { existed }),
                Err(e) => Err(e),
            },
            ChunkRequest::Stat { shard } => match require(&peer, SERVERS_AND_ADMINS) {
                Ok(()) => self
                    .on_disk(move |s| s.stat(shard))
                    .await
                    .map(ChunkResponse::Stat),
                Err(e) => Err(e),
            },
            ChunkRequest::List { after, limit } => match require(&peer, SERVERS_AND_ADMINS) {
                Ok(()) => {
                    let limit = limit.min(MAX_LIST_PAGE) as usize;
                    let (shards, more) = self.store.list(after, limit);
                    Ok(ChunkResponse::List { shards, more })
                }
                Err(e) => Err(e),
            },
            ChunkRequest::Status => Ok(ChunkResponse::Status(self.status().await)),
            ChunkRequest::AddDisk { path } => match require(&peer, ADMINS) {
                Ok(()) => self
                    .on_disk(move |s| s.add_disk(std::path::Path::new(&path)))
                    .await
                    .map(|shards| ChunkResponse::DiskAdded { shards }),
                Err(e) => Err(e),
            },
            ChunkRequest::RemoveDisk { path } => match require(&peer, ADMINS) {
                Ok(()) => self
                    .on_disk(move |s| s.remove_disk(std::path::Path::new(&path)))
                    .await
                    .map(|m| ChunkResponse::DiskRemoved {
                        moved_shards: m.shards,
                        moved_bytes: m.bytes,
                    }),
                Err(e) => Err(e),
            },
            ChunkRequest::Rebuild {
                shard,
                layout,
                copy_from,
                sources,
            } => match require(&peer, OPERATORS) {
                Ok(()) => {
                    let sources = rebuild::Sources {
                        copy_from,
                        peers: sources,
                    };
                    let (store, io, rate) = (&self.store, &self.io, &self.rebuild_rate);
                    let rebuilt = rebuild::rebuild(store, io, rate, shard, layout, sources).await;
                    rebuilt.map(|bytes| {
                        self.stats.rebuilds.add(1);
                        self.stats.rebuild_bytes.add(bytes);
                        ChunkResponse::Rebuilt { bytes }
                    })
                }
                Err(e) => Err(e),
            },
        };
        let resp = resp.unwrap_or_else(|e| {
            self.stats.errors.add(1);
            if e.kind != ErrorKind::NotFound {
                warn!(%peer, "request failed: {e}");
            }
            ChunkResponse::Error(e)
        });
        reply(&mut send, &resp).await;
        let _ = send.finish();
    }

    async fn on_disk<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, WireError> {
        let store = self.store.clone();
        Ok(blocking(move || f(&store)).await?)
    }

    pub async fn status(&self) -> ChunkserverStatus {
        let store = self.store.clone();
        ChunkserverStatus {
            name: self.name.clone(),
            disks: blocking(move || store.disk_status()).await,
            health: self.store.health.snapshot(),
            scrub: self.scrub.progress(),
        }
    }

    /// A mount writes only with a write grant, and only shards not stored yet: a slice's
    /// shards are written once, and replaced only by a rebuild the metaserver orders.
    async fn may_put(
        &self,
        peer: &PeerName,
        grant: Option<&Grant>,
        shard: ShardId,
        layout: SliceLayout,
    ) -> Result<(), WireError> {
        let what = (shard, Access::Write, layout.shard_len());
        self.grants.check(peer, grant, what).await?;
        if peer.role == Role::Client && self.store.stat(shard).is_ok() {
            return Err(WireError::new(
                ErrorKind::Denied,
                format!("{shard} is stored already; a mount may not replace it"),
            ));
        }
        Ok(())
    }

    async fn put(
        &self,
        recv: &mut RecvStream,
        shard: ShardId,
        layout: SliceLayout,
    ) -> Result<ChunkResponse, WireError> {
        let (mut writer, disk) = self.on_disk(move |s| s.create(shard, layout)).await?;
        let total = layout.shard_len();
        let mut buf = vec![0u8; IO_PIECE.min(total as usize)];
        let mut remaining = total;
        while remaining > 0 {
            let n = (remaining as usize).min(IO_PIECE);
            let got = tokio::time::timeout(BODY_STALL, recv.read_exact(&mut buf[..n])).await;
            match got {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(invalid(format!("shard body ended early: {e}"))),
                Err(_) => return Err(invalid("shard body stalled")),
            }
            remaining -= n as u64;
            (writer, buf) =
                blocking(move || writer.write(&buf[..n]).map(|()| (writer, buf))).await?;
        }
        if let Ok(Some(_)) = recv.read_chunk(1, true).await {
            return Err(invalid(format!("shard body longer than its {total} bytes")));
        }
        let store = self.store.clone();
        let info = blocking(move || store.commit(writer, disk)).await?;
        self.stats.puts.add(1);
        self.stats.put_bytes.add(total);
        debug!(%shard, bytes = info.file_bytes, "stored");
        Ok(ChunkResponse::Stored {
            bytes: info.file_bytes,
        })
    }

    /// Streams a verified range. A checksum failure before the first byte is an error reply;
    /// after it, a stream reset with [`reset::CORRUPT`] (the bytes sent so far are good).
    async fn get(&self, send: &mut SendStream, shard: ShardId, offset: u64, len: u64) {
        if !self.read_delay.is_zero() {
            tokio::time::sleep(self.read_delay).await;
        }
        if len > MAX_GET_BYTES {
            let e = invalid(format!("a read of {len} bytes is over {MAX_GET_BYTES}"));
            return reply(send, &ChunkResponse::Error(e)).await;
        }
        let end = offset.saturating_add(len);
        let piece_end = move |pos: u64| end.min((pos / IO_PIECE as u64 + 1) * IO_PIECE as u64);
        // The open (usually a kept file) and the first piece go to the disk thread together:
        // a small read is one hop off the network threads, not two.
        let store = self.store.clone();
        let first = blocking(move || {
            let reader = store.reader(shard)?;
            if end > reader.header.shard_len() {
                return Err(StoreError::Invalid(format!(
                    "range {offset}+{len} outside shard of {} bytes",
                    reader.header.shard_len()
                )));
            }
            let piece = store.read(&reader, offset, piece_end(offset) - offset)?;
            Ok((reader, piece))
        })
        .await;
        let (reader, mut piece) = match first {
            Ok(first) => first,
            Err(e) => {
                if let StoreError::Corrupt(_) = e {
                    self.scrub.report(shard);
                }
                return reply(send, &ChunkResponse::Error(e.into())).await;
            }
        };
        reply(send, &ChunkResponse::Data { len }).await;
        let mut pos = offset;
        loop {
            let n = piece.len() as u64;
            if send.write_chunk(piece).await.is_err() {
                return;
            }
            self.stats.get_bytes.add(n);
            pos += n;
            if pos >= end {
                break;
            }
            let next = piece_end(pos);
            let (store, r) = (self.store.clone(), reader.clone());
            piece = match blocking(move || store.read(&r, pos, next - pos)).await {
                Ok(p) => p,
                Err(e) => {
                    if let StoreError::Corrupt(_) = e {
                        self.scrub.report(shard);
                    }
                    warn!(%shard, "read failed mid-stream: {e}");
                    let code = match e {
                        StoreError::Corrupt(_) => reset::CORRUPT,
                        _ => reset::IO,
                    };
                    let _ = send.reset(VarInt::from_u32(code));
                    return;
                }
            };
        }
        self.stats.gets.add(1);
        let _ = send.finish();
    }
}
