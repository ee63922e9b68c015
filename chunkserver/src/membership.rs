//! Being part of a cluster: register with the metaserver group (the certificate name is
//! the identity), then send a heartbeat with capacity, health and scrub progress every
//! second, and report damaged shards.

use crate::service::Service;
use lattice_common::ids::ChunkserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::wire::meta::{Heartbeat, MetaRequest, MetaResponse, Registration};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{info, warn};

pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

pub struct Membership {
    pub meta: MetaClient,
    pub service: Arc<Service>,
    /// The address peers and clients reach this server at.
    pub advertise: SocketAddr,
    pub labels: Vec<(String, String)>,
}

impl Membership {
    /// Registers, retrying until `deadline` (forever without one).
    pub async fn register(&self, deadline: Option<Instant>) -> anyhow::Result<ChunkserverId> {
        loop {
            let registration = Registration {
                addr: self.advertise,
                disks: self.service.status().await.disks,
                labels: self.labels.clone(),
            };
            let why = match self.meta.call(&MetaRequest::Register(registration)).await {
                Ok(MetaResponse::Registered { id }) => {
                    info!(%id, addr = %self.advertise, "registered with the metaservers");
                    self.service.grants.registered(id);
                    return Ok(id);
                }
                Ok(other) => format!("registration refused: {other:?}"),
                Err(e) => format!("registration failed: {e}"),
            };
            if deadline.is_some_and(|d| Instant::now() + HEARTBEAT_EVERY > d) {
                anyhow::bail!("{why}");
            }
            warn!("{why}; retrying");
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    }

    /// Runs for the life of the process, as server `id`.
    pub async fn run(self, mut id: ChunkserverId) {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tick.tick().await;
            let status = self.service.status().await;
            let heartbeat = Heartbeat {
                id,
                addr: self.advertise,
                shards: status.disks.iter().map(|d| d.shards).sum(),
                disks: status.disks,
                health: status.health,
                scrub: status.scrub,
            };
            match self.meta.call(&MetaRequest::Heartbeat(heartbeat)).await {
                Ok(MetaResponse::HeartbeatAck { revoked, keys }) => {
                    self.meta.node().set_revocations(&revoked);
                    self.service.grants.heard(keys);
                }
                Ok(other) => warn!("heartbeat refused: {other:?}"),
                Err(e) if e.to_string().contains("not registered") => {
                    id = self.register(None).await.unwrap_or(id)
                }
                Err(e) => warn!("heartbeat failed: {e}"),
            }
            self.report_damage().await;
        }
    }

    async fn report_damage(&self) {
        let scrub = &self.service.scrub;
        for shard in scrub.pending_reports() {
            match self.meta.call(&MetaRequest::ReportDamage { shard }).await {
                Ok(MetaResponse::DamageNoted) => scrub.reported(shard),
                Ok(other) => return warn!(%shard, "damage report refused: {other:?}"),
                Err(e) => return warn!(%shard, "damage report failed: {e}"),
            }
        }
    }
}
