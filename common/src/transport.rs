//! QUIC with TLS 1.3 and mutual authentication by the cluster CA.
//!
//! A [`Node`] is one UDP endpoint that can accept connections (servers) and open them
//! (everyone), keeping one connection per peer address and one bidirectional stream per
//! request. Both sides present a certificate; a peer whose certificate the cluster CA did not
//! sign never completes the handshake.

use crate::pki::{
    self, PeerName, Revocations, Role, CA_CERT_FILE, CERT_FILE, CLUSTER_SERVER_NAME, KEY_FILE,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, RecvStream, SendStream, TransportConfig, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

const ALPN: &[u8] = b"latticefs/1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that sends nothing (not even keep-alives) for this long is considered gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(15);
const KEEP_ALIVE: Duration = Duration::from_secs(3);
/// Flow-control windows: large enough that one stream can keep a fast link busy.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;
const MAX_STREAMS_PER_CONNECTION: u32 = 512;
/// Connections one certificate may hold open to a server at once: a mount or a server
/// needs one, so a peer opening more only closes its own older ones.
pub const MAX_CONNECTIONS_PER_PEER: usize = 16;
/// Connections a server holds at once, from all peers.
const MAX_CONNECTIONS: usize = 4096;
/// Requests one certificate has a server work on at once, over all its connections (each
/// may hold a frame of up to 4 MiB). More wait, unread, in QUIC's flow control: a peer
/// slows itself down, not the server.
pub const MAX_STREAMS_PER_PEER: usize = 256;
/// Path MTU discovery may grow packets up to this, or up to what the peer accepts (1472:
/// see `endpoint`).
const MTU_UPPER_BOUND: u16 = 9000;
/// UDP socket buffers asked for: with the kernel's default (208 KiB) a burst at full
/// window overflows the receive queue and the lost packets halve the congestion window.
const SOCKET_BUFFER: libc::c_int = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("certificates in {dir}: {message}")]
    Identity { dir: PathBuf, message: String },
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: {message}")]
    Connect { addr: SocketAddr, message: String },
    #[error("{addr} is {found}, not a {expected}: refused")]
    WrongRole {
        addr: SocketAddr,
        found: String,
        expected: Role,
    },
    #[error("connection to {addr} lost: {source}")]
    Lost {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
}

/// This process's certificate, its key, and the cluster CA it trusts.
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub name: PeerName,
}

impl Identity {
    /// Loads `ca.pem`, `cert.pem` and `key.pem` from a node directory made by [`pki::issue`].
    pub fn load(dir: &Path) -> Result<Identity, TransportError> {
        let fail = |message: String| TransportError::Identity {
            dir: dir.to_path_buf(),
            message,
        };
        let ca = CertificateDer::from_pem_file(dir.join(CA_CERT_FILE))
            .map_err(|e| fail(format!("{CA_CERT_FILE}: {e}")))?;
        let chain = CertificateDer::pem_file_iter(dir.join(CERT_FILE))
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| fail(format!("{CERT_FILE}: {e}")))?;
        let key = PrivateKeyDer::from_pem_file(dir.join(KEY_FILE))
            .map_err(|e| fail(format!("{KEY_FILE}: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| fail(format!("{CERT_FILE} holds no certificate")))?;
        let name = pki::peer_name(leaf).map_err(|e| fail(e.to_string()))?;
        Ok(Identity {
            ca,
            chain,
            key,
            name,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TransportError::Tls(format!("cluster CA: {e}")))?;
        Ok(Arc::new(roots))
    }

    fn server_config(&self) -> Result<quinn::ServerConfig, TransportError> {
        let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicServerConfig::try_from(config).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport_config());
        Ok(server)
    }

    fn client_config(&self) -> Result<quinn::ClientConfig, TransportError> {
        let tls = |e: rustls::Error| TransportError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        let crypto =
            QuicClientConfig::try_from(config).map_err(|e| TransportError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport_config());
        Ok(client)
    }
}

fn transport_config() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(IDLE_TIMEOUT.try_into().ok())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(CONNECTION_WINDOW as u64)
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// An endpoint on a UDP socket bound to `bind`, with large socket buffers. Datagrams stay
/// within quinn's default of 1472 bytes even where the path allows more: with up to 9000
/// on loopback, sequential reads measured 25% slower (segmentation offload already sends
/// small datagrams in batches).
fn endpoint(
    server: Option<quinn::ServerConfig>,
    bind: SocketAddr,
) -> std::io::Result<quinn::Endpoint> {
    let config = quinn::EndpointConfig::default();
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime"))?;
    let socket = std::net::UdpSocket::bind(bind)?;
    grow_buffers(&socket);
    quinn::Endpoint::new(config, server, socket, runtime)
}

/// Asks for SOCKET_BUFFER of send and receive buffer: beyond the system's limit (the
/// net.core.rmem_max / wmem_max sysctls) where the process may (CAP_NET_ADMIN), else up to
/// it. Smaller buffers only cost speed, so a refusal is logged, not fatal.
fn grow_buffers(socket: &std::net::UdpSocket) {
    use std::os::fd::AsRawFd;
    let set = |option: libc::c_int| {
        let value = SOCKET_BUFFER;
        // SAFETY: a valid socket descriptor, and a pointer to an int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    };
    for (forced, capped) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if !set(forced) && !set(capped) {
            debug!(error = %std::io::Error::last_os_error(), "UDP socket buffer stays small");
        }
    }
}

/// A pooled connection and the role its peer proved when it was made.
type Slot = Arc<tokio::sync::Mutex<Option<(Connection, Role)>>>;

/// One QUIC endpoint with a pool of outgoing connections (one per peer address).
pub struct Node {
    endpoint: quinn::Endpoint,
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    pub name: PeerName,
    admissions: Arc<Mutex<Admissions>>,
    /// Peers refused: checked on every incoming connection.
    revoked: RwLock<Arc<Revocations>>,
    refusals: RefusalLog,
}

/// Refused connections logged at most per window: a peer retrying in a tight loop (a
/// revoked mount, a stranger's certificate) must not fill the disk with log lines.
const REFUSALS_LOGGED: u32 = 10;
const REFUSAL_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct RefusalLog {
    /// Start of the current window, lines logged in it, refusals not logged since the last
    /// line.
    state: Mutex<(Option<std::time::Instant>, u32, u64)>,
}

impl RefusalLog {
    fn note(&self, remote: SocketAddr, why: &str) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, logged, suppressed) = &mut *s;
        if start.is_none_or(|t| t.elapsed() >= REFUSAL_WINDOW) {
            (*start, *logged) = (Some(std::time::Instant::now()), 0);
        }
        if *logged >= REFUSALS_LOGGED {
            *suppressed += 1;
            return;
        }
        *logged += 1;
        let unlogged = std::mem::take(suppressed);
        warn!(%remote, unlogged, "refused connection: {why}");
    }
}

/// Open incoming connections, by peer, oldest first.
#[derive(Default)]
struct Admissions {
    by_peer: HashMap<PeerName, std::collections::VecDeque<(u64, Connection)>>,
    /// Each connected peer's permits for requests at work.
    streams: HashMap<PeerName, Arc<Semaphore>>,
    total: usize,
    next: u64,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    admissions: Arc<Mutex<Admissions>>,
    peer: PeerName,
    id: u64,
    streams: Arc<Semaphore>,
}

impl Admissions {
    /// Admits `conn` of `peer`. A peer at its limit loses its oldest connection (a client
    /// that exited without closing leaves one behind until the idle timeout; the new one
    /// is the live one). Refused only when the server as a whole is full.
    fn admit(
        this: &Arc<Mutex<Admissions>>,
        peer: &PeerName,
        conn: &Connection,
    ) -> Result<Admitted, String> {
        let mut a = this.lock().unwrap_or_else(|p| p.into_inner());
        let full = a.by_peer.get(peer).map_or(0, |q| q.len()) >= MAX_CONNECTIONS_PER_PEER;
        if !full && a.total >= MAX_CONNECTIONS {
            return Err(format!("{} connections open", a.total));
        }
        a.next += 1;
        let id = a.next;
        if !full {
            a.total += 1;
        }
        let mine = a.by_peer.entry(peer.clone()).or_default();
        if full {
            if let Some((_, oldest)) = mine.pop_front() {
                oldest.close(VarInt::from_u32(3), b"replaced by a newer connection");
            }
        }
        mine.push_back((id, conn.clone()));
        let streams = a
            .streams
            .entry(peer.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_STREAMS_PER_PEER)))
            .clone();
        Ok(Admitted {
            admissions: this.clone(),
            peer: peer.clone(),
            id,
            streams,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut a = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(mine) = a.by_peer.get_mut(&self.peer) else {
            return;
        };
        // Absent if it was closed to make room (its place went to the newer one).
        let Some(at) = mine.iter().position(|(id, _)| *id == self.id) else {
            return;
        };
        mine.remove(at);
        if mine.is_empty() {
            a.by_peer.remove(&self.peer);
            a.streams.remove(&self.peer);
        }
        a.total -= 1;
    }
}

impl Node {
    /// An endpoint that accepts connections on `bind` and can also open them.
    pub fn server(bind: SocketAddr, identity: &Identity) -> Result<Arc<Node>, TransportError> {
        let mut endpoint = endpoint(Some(identity.server_config()?), bind)
            .map_err(|source| TransportError::Bind { addr: bind, source })?;
        endpoint.set_default_client_config(identity.client_config()?);
        Ok(Node::wrap(endpoint, identity))
    }

    /// An endpoint that only opens connections.
    pub fn client(identity: &Identity) -> Result<Arc<Node>, TransportError> {
        let bind: SocketAddr = "[::]:0".parse().expect("literal address");
        let mut endpoint = endpoint(None, bind)
            .or_else(|_| endpoint(None, "0.0.0.0:0".parse().expect("literal address")))
            .map_err(|source| TransportError::Bind { addr: bind, source })?;
        endpoint.set_default_client_config(identity.client_config()?);
        Ok(Node::wrap(endpoint, identity))
    }

    fn wrap(endpoint: quinn::Endpoint, identity: &Identity) -> Arc<Node> {
        Arc::new(Node {
            endpoint,
            pool: Mutex::new(HashMap::new()),
            name: identity.name.clone(),
            admissions: Arc::default(),
            revoked: RwLock::default(),
            refusals: RefusalLog::default(),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// A connection to `addr`, whose certificate must prove `expect`: a peer holding another
    /// role's certificate from the same CA is refused, whatever address it answers on.
    async fn connection(
        &self,
        addr: SocketAddr,
        expect: Role,
    ) -> Result<Connection, TransportError> {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(addr)
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some((conn, role)) = slot.as_ref().filter(|(c, _)| c.close_reason().is_none()) {
            return match *role == expect {
                true => Ok(conn.clone()),
                false => Err(TransportError::WrongRole {
                    addr,
                    found: role.to_string(),
                    expected: expect,
                }),
            };
        }
        let fail = |message: String| TransportError::Connect { addr, message };
        let connecting = self
            .endpoint
            .connect(addr, CLUSTER_SERVER_NAME)
            .map_err(|e| fail(e.to_string()))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| fail(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let peer = peer_of(&conn).map_err(fail)?;
        if peer.role != expect {
            conn.close(VarInt::from_u32(1), b"wrong role");
            return Err(TransportError::WrongRole {
                addr,
                found: peer.to_string(),
                expected: expect,
            });
        }
        *slot = Some((conn.clone(), peer.role));
        Ok(conn)
    }

    /// Whether a pooled connection to `addr` is open (not closed by either side).
    pub fn connected(&self, addr: SocketAddr) -> bool {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned();
        slot.and_then(|s| s.try_lock().ok().and_then(|c| c.clone()))
            .is_some_and(|(conn, _)| conn.close_reason().is_none())
    }

    /// Drops the pooled connection to `addr` (call after a request on it timed out: the peer
    /// may have restarted, and a dead connection otherwise lingers until its idle timeout).
    pub fn forget(&self, addr: SocketAddr) {
        let slot = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        if let Some((conn, _)) = slot.and_then(|s| s.try_lock().ok().and_then(|c| c.clone())) {
            conn.close(VarInt::from_u32(2), b"unresponsive");
        }
    }

    /// Opens a request stream to the `expect` server at `addr`, reconnecting once if the
    /// pooled connection died.
    pub async fn open(
        &self,
        addr: SocketAddr,
        expect: Role,
    ) -> Result<(SendStream, RecvStream), TransportError> {
        let mut attempt = 0;
        loop {
            let conn = self.connection(addr, expect).await?;
            match conn.open_bi().await {
                Ok(streams) => return Ok(streams),
                Err(source) if attempt > 0 => return Err(TransportError::Lost { addr, source }),
                Err(_) => attempt += 1,
            }
        }
    }

    /// Accepts connections until the endpoint closes, handing each request stream of each
    /// authenticated peer to `handler` on its own task, within the connection limits.
    pub async fn serve<H, F>(self: Arc<Self>, handler: H)
    where
        H: Fn(Arc<PeerName>, SendStream, RecvStream) -> F + Send + Sync + Clone + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        while let Some(incoming) = self.endpoint.accept().await {
            let handler = handler.clone();
            let node = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let refused = |why: String| node.refusals.note(remote, &why);
                let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return refused(e.to_string()),
                    Err(_) => return refused("handshake timed out".into()),
                };
                let peer = match peer_of(&conn) {
                    Ok(peer) => Arc::new(peer),
                    Err(e) => {
                        refused(e);
                        return conn.close(VarInt::from_u32(1), b"unidentified peer");
                    }
                };
                if node.revocations().covers(&peer) {
                    refused(format!("{peer} (serial {}) is revoked", peer.serial));
                    return conn.close(VarInt::from_u32(4), b"certificate revoked");
                }
                let admitted = match Admissions::admit(&node.admissions, &peer, &conn) {
                    Ok(admitted) => admitted,
                    Err(e) => {
                        refused(e);
                        return conn.close(VarInt::from_u32(3), b"too many connections");
                    }
                };
                debug!(%remote, %peer, "connection accepted");
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let Ok(permit) = admitted.streams.clone().acquire_owned().await else {
                        break;
                    };
                    let work = handler(peer.clone(), send, recv);
                    tokio::spawn(async move {
                        work.await;
                        drop(permit);
                    });
                }
            });
        }
    }

    pub fn revocations(&self) -> Arc<Revocations> {
        self.revoked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Refuses the peers `revoked` covers from now on, and closes their open connections.
    pub fn set_revocations(&self, revoked: &Revocations) {
        {
            let mut current = self.revoked.write().unwrap_or_else(|p| p.into_inner());
            if **current == *revoked {
                return;
            }
            *current = Arc::new(revoked.clone());
        }
        let admissions = self.admissions.lock().unwrap_or_else(|p| p.into_inner());
        for (peer, conns) in &admissions.by_peer {
            if revoked.covers(peer) {
                warn!(%peer, serial = %peer.serial, connections = conns.len(), "closing the connections of a revoked certificate");
                for (_, conn) in conns {
                    conn.close(VarInt::from_u32(4), b"certificate revoked");
                }
            }
        }
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint.close(VarInt::from_u32(0), b"shutting down");
    }
}

fn peer_of(conn: &Connection) -> Result<PeerName, String> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no peer certificate")?;
    let leaf = certs.first().ok_or("empty peer certificate chain")?;
    pki::peer_name(leaf).map_err(|e| e.to_string())
}

/// Waits for SIGTERM or Ctrl-C: how a server is asked to stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Writes where a server listens to `path`, atomically (readers never see half an address):
/// how scripts and supervisors learn a port picked at start.
pub fn write_addr_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_in_a_burst_are_counted_not_logged() {
        let log = RefusalLog::default();
        let remote: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..1000 {
            log.note(remote, "certificate revoked");
        }
        let (_, logged, unlogged) = *log.state.lock().unwrap();
        assert_eq!(
            (logged, unlogged),
            (REFUSALS_LOGGED, 1000 - REFUSALS_LOGGED as u64)
        );
        // The next window logs again, saying how many went unlogged.
        log.state.lock().unwrap().0 = Some(std::time::Instant::now() - REFUSAL_WINDOW);
        log.note(remote, "certificate revoked");
        let (_, logged, unlogged) = *log.state.lock().unwrap();
        assert_eq!((logged, unlogged), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_peer_has_at_most_its_share_of_requests_at_work() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        pki::init_ca(&ca, "test").unwrap();
        let identity = |role, name: &str| {
            let certs = dir.path().join(name);
            pki::issue(&ca, role, name, &certs).unwrap();
            Identity::load(&certs).unwrap()
        };
        let server = Node::server(
            "127.0.0.1:0".parse().unwrap(),
            &identity(Role::Metaserver, "m"),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        // The greedy peer's requests wait at the gate until the end; others answer at once.
        let gate = Arc::new(Semaphore::new(0));
        let (at_work, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (g, w, d) = (gate.clone(), at_work.clone(), done.clone());
        tokio::spawn(server.serve(move |peer, mut send, _recv| {
            let (gate, at_work, done) = (g.clone(), w.clone(), d.clone());
            async move {
                if peer.name == "greedy" {
                    at_work.fetch_add(1, Ordering::SeqCst);
                    drop(gate.acquire().await);
                    done.fetch_add(1, Ordering::SeqCst);
                }
                let _ = send.write_all(b"ok").await;
                let _ = send.finish();
            }
        }));
        let greedy = Node::client(&identity(Role::Client, "greedy")).unwrap();
        let extra = 50;
        let mut streams = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PEER + extra {
            let (mut send, recv) = greedy.open(addr, Role::Metaserver).await.unwrap();
            send.write_all(b"?").await.unwrap();
            streams.push((send, recv));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while at_work.load(Ordering::SeqCst) < MAX_STREAMS_PER_PEER {
            assert!(
                std::time::Instant::now() < deadline,
                "requests never started"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Another certificate is served meanwhile, and the greedy one still has only its
        // share at work.
        let honest = Node::client(&identity(Role::Client, "honest")).unwrap();
        let (mut send, mut recv) = honest.open(addr, Role::Metaserver).await.unwrap();
        send.write_all(b"?").await.unwrap();
        let _ = send.finish();
        assert_eq!(recv.read_to_end(16).await.unwrap(), b"ok");
        assert_eq!(at_work.load(Ordering::SeqCst), MAX_STREAMS_PER_PEER);
        // Its others waited, not refused: all are answered once the first ones end.
        gate.add_permits(MAX_STREAMS_PER_PEER + extra);
        for (_send, mut recv) in streams {
            assert_eq!(recv.read_to_end(16).await.unwrap(), b"ok");
        }
        assert_eq!(done.load(Ordering::SeqCst), MAX_STREAMS_PER_PEER + extra);
    }
}
