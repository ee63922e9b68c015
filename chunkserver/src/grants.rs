//! Checking the grants mounts present with shard reads and writes. The keys come with
//! every heartbeat answer; a grant signed by a key not heard of yet (one made since the
//! last heartbeat) makes this server ask the metaservers for the keys at once.

use lattice_common::grant::{self, Access, Grant, GrantKey, Refused};
use lattice_common::ids::{ChunkserverId, ShardId};
use lattice_common::meta_client::MetaClient;
use lattice_common::pki::{PeerName, Role};
use lattice_common::wire::meta::{MetaRequest, MetaResponse};
use lattice_common::wire::{ErrorKind, WireError};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Keys are asked for at most this often (a peer sending grants under made-up key ids
/// must not turn into a stream of requests to the metaservers).
const FETCH_EVERY: Duration = Duration::from_millis(500);

pub struct GrantKeys {
    keys: RwLock<Vec<GrantKey>>,
    /// None for a server outside any cluster (tests of the storage alone): mounts then
    /// cannot use it at all.
    meta: Option<MetaClient>,
    fetched: Mutex<Option<Instant>>,
    /// The id the metaservers gave this server (write grants name the server of each
    /// shard); `None` until it registers.
    me: Mutex<Option<ChunkserverId>>,
}

impl GrantKeys {
    pub fn new(meta: Option<MetaClient>) -> GrantKeys {
        GrantKeys {
            keys: RwLock::default(),
            meta,
            fetched: Mutex::default(),
            me: Mutex::default(),
        }
    }

    /// Notes the id this server registered as.
    pub fn registered(&self, id: ChunkserverId) {
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
    }

    /// Adds the keys a metaserver sent (one lagging behind never takes a key back).
    pub fn heard(&self, keys: Vec<GrantKey>) {
        grant::merge_keys(
            &mut self.keys.write().unwrap_or_else(|p| p.into_inner()),
            keys,
        );
    }

    fn verify(
        &self,
        grant: Option<&Grant>,
        what: (ShardId, Access, u64),
        peer: &PeerName,
    ) -> Result<(), Refused> {
        let here = *self.me.lock().unwrap_or_else(|p| p.into_inner());
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let now = grant::unix_now();
        grant::verify(&keys, grant, what, (&peer.to_string(), here), now)
    }

    /// Whether `peer` may `want` `shard` (`bytes` of it, for a write): servers and admins
    /// always; a mount with a grant.
    pub async fn check(
        &self,
        peer: &PeerName,
        grant: Option<&Grant>,
        (shard, want, bytes): (ShardId, Access, u64),
    ) -> Result<(), WireError> {
        if peer.role != Role::Client {
            return Ok(());
        }
        let what = (shard, want, bytes);
        let mut verdict = self.verify(grant, what, peer);
        if let Err(Refused::UnknownKey(_)) = verdict {
            if self.fetch().await {
                verdict = self.verify(grant, what, peer);
            }
        }
        verdict.map_err(|why| {
            debug!(%peer, %shard, "grant refused: {why}");
            WireError::new(
                ErrorKind::Denied,
                format!("{peer} may not {want:?} {shard}: {why}"),
            )
        })
    }

    /// Asks the metaservers for the keys; false if it was done moments ago or failed.
    async fn fetch(&self) -> bool {
        let Some(meta) = &self.meta else {
            return false;
        };
        {
            let mut last = self.fetched.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < FETCH_EVERY) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match meta.call(&MetaRequest::GrantKeys).await {
            Ok(MetaResponse::GrantKeys { keys }) => {
                self.heard(keys);
                true
            }
            Ok(other) => {
                warn!("asking for grant keys: unexpected answer {other:?}");
                false
            }
            Err(e) => {
                warn!("asking for grant keys: {e}");
                false
            }
        }
    }
}
