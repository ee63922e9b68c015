//! Being part of a cluster: register with the metaserver group (the certificate name is
//! the identity), then send a heartbeat with capacity and health every second.

use crate::service::Service;
use lattice_common::ids::ChunkserverId;
use lattice_common::meta_client::MetaClient;
use lattice_common::wire::meta::{Heartbeat, MetaRequest, MetaResponse, Registration};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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
    async fn register(&self) -> ChunkserverId {
        loop {
            let registration = Registration {
                addr: self.advertise,
                disks: self.service.status().await.disks,
                labels: self.labels.clone(),
            };
            match self.meta.call(&MetaRequest::Register(registration)).await {
                Ok(MetaResponse::Registered { id }) => {
                    info!(%id, addr = %self.advertise, "registered with the metaservers");
                    return id;
                }
                Ok(other) => warn!("registration refused: {other:?}"),
                Err(e) => warn!("registration failed, retrying: {e}"),
            }
            tokio::time::sleep(HEARTBEAT_EVERY).await;
        }
    }

    /// Runs for the life of the process.
    pub async fn run(self) {
        let mut id = self.register().await;
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
            };
            match self.meta.call(&MetaRequest::Heartbeat(heartbeat)).await {
                Ok(MetaResponse::HeartbeatAck) => {}
                Ok(other) => warn!("heartbeat refused: {other:?}"),
                Err(e) if e.to_string().contains("not registered") => id = self.register().await,
                Err(e) => warn!("heartbeat failed: {e}"),
            }
        }
    }
}
