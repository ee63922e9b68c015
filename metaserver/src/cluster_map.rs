//! The replicated cluster map: every chunkserver ever registered, its address, labels and
//! state. Live figures (free space, health) are soft state on the leader, not here.

use lattice_common::fs::Timestamp;
use lattice_common::grant::{self, GrantKey};
use lattice_common::ids::ChunkserverId;
use lattice_common::pki::{Revocations, Revoke, MAX_REVOCATIONS};
use lattice_common::wire::meta::{ChunkserverState, Registration, ServerAddr};
use lattice_common::wire::HealthCounters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub name: String,
    pub addr: SocketAddr,
    pub state: ChunkserverState,
    pub labels: Vec<(String, String)>,
    /// Total bytes of its disks when it last registered.
    pub capacity: u64,
    pub since: Timestamp,
    /// Why it is draining or drained (an admin, a health threshold).
    pub reason: Option<String>,
    /// Its health counters when an admin last put it back in service: only what it counts
    /// beyond these can drain it again.
    pub health_baseline: HealthCounters,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    servers: BTreeMap<ChunkserverId, ServerRecord>,
    next_id: u32,
    /// Certificates no server accepts any more.
    revoked: Revocations,
    /// The keys that sign grants, oldest first.
    grant_keys: Vec<GrantKey>,
}

impl ClusterMap {
    pub fn revocations(&self) -> &Revocations {
        &self.revoked
    }

    pub fn grant_keys(&self) -> &[GrantKey] {
        &self.grant_keys
    }

    /// Adds a key that signs grants from now on (the oldest beyond `grant::KEYS_KEPT` go);
    /// false (and no change) unless its id is above every key's so far.
    pub fn add_grant_key(&mut self, key: GrantKey) -> bool {
        if self.grant_keys.last().is_some_and(|k| k.id >= key.id) {
            return false;
        }
        grant::merge_keys(&mut self.grant_keys, vec![key]);
        true
    }

    /// Adds a revocation; false (and no change) if it is malformed or the list is full.
    pub fn revoke(&mut self, what: &Revoke) -> bool {
        if !what.is_valid() || self.revoked.len() >= MAX_REVOCATIONS {
            return false;
        }
        match what {
            Revoke::Name(n) => self.revoked.names.insert(n.clone()),
            Revoke::Serial(s) => self.revoked.serials.insert(s.clone()),
        };
        true
    }

    /// Registers a chunkserver by its certificate name; a known name keeps its id and comes
    /// back up (a draining server stays draining).
    pub fn register(&mut self, name: &str, reg: &Registration, now: Timestamp) -> ChunkserverId {
        let capacity = reg.disks.iter().map(|d| d.total_bytes).sum();
        let known = self
            .servers
            .iter()
            .find(|(_, s)| s.name == name)
            .map(|(&id, _)| id);
        let id = known.unwrap_or_else(|| {
            self.next_id += 1;
            ChunkserverId(self.next_id)
        });
        let (state, reason) = match self.servers.get(&id) {
            Some(
                s @ ServerRecord {
                    state: ChunkserverState::Draining | ChunkserverState::Drained,
                    ..
                },
            ) => (s.state, s.reason.clone()),
            _ => (ChunkserverState::Up, None),
        };
        self.servers.insert(
            id,
            ServerRecord {
                name: name.to_string(),
                addr: reg.addr,
                state,
                labels: reg.labels.clone(),
                capacity,
                since: now,
                reason,
                // A restarted server counts its health from zero again.
                health_baseline: HealthCounters::default(),
            },
        );
        id
    }

    /// Starts draining a server (or with `cancel`, puts a draining or drained one back in
    /// service, remembering its health counters `now_health` as the new baseline). False for
    /// an unknown id or a server already in the wanted state.
    pub fn drain(
        &mut self,
        id: ChunkserverId,
        cancel: bool,
        reason: &str,
        now_health: HealthCounters,
        now: Timestamp,
    ) -> bool {
        let Some(s) = self.servers.get_mut(&id) else {
            return false;
        };
        let draining = matches!(
            s.state,
            ChunkserverState::Draining | ChunkserverState::Drained
        );
        if draining != cancel {
            return false;
        }
        s.state = if cancel {
            ChunkserverState::Up
        } else {
            ChunkserverState::Draining
        };
        s.reason = (!cancel).then(|| reason.to_string());
        if cancel {
            s.health_baseline = now_health;
        }
        s.since = now;
        true
    }

    pub fn set_state(
        &mut self,
        id: ChunkserverId,
        state: ChunkserverState,
        now: Timestamp,
    ) -> bool {
        match self.servers.get_mut(&id) {
            Some(s) => {
                s.state = state;
                s.since = now;
                true
            }
            None => false,
        }
    }

    pub fn get(&self, id: ChunkserverId) -> Option<&ServerRecord> {
        self.servers.get(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ChunkserverId, &ServerRecord)> {
        self.servers.iter().map(|(&id, s)| (id, s))
    }

    pub fn addr_of(&self, id: ChunkserverId) -> Option<ServerAddr> {
        self.servers.get(&id).map(|s| ServerAddr {
            id,
            addr: s.addr,
            state: s.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(port: u16) -> Registration {
        Registration {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            disks: vec![],
            labels: vec![],
        }
    }

    #[test]
    fn names_keep_their_ids_and_come_back_up() {
        let mut map = ClusterMap::default();
        let a = map.register("cs-a", &reg(1), Timestamp::default());
        let b = map.register("cs-b", &reg(2), Timestamp::default());
        assert_ne!(a, b);
        map.set_state(a, ChunkserverState::Down, Timestamp::default());
        assert_eq!(map.register("cs-a", &reg(3), Timestamp::default()), a);
        assert_eq!(map.get(a).unwrap().state, ChunkserverState::Up);
        assert_eq!(map.get(a).unwrap().addr.port(), 3);
        map.set_state(b, ChunkserverState::Draining, Timestamp::default());
        map.register("cs-b", &reg(2), Timestamp::default());
        assert_eq!(map.get(b).unwrap().state, ChunkserverState::Draining);
    }

    #[test]
    fn drain_and_cancel_keep_the_reason_while_draining() {
        let mut map = ClusterMap::default();
        let a = map.register("cs-a", &reg(1), Timestamp::default());
        let t = Timestamp::default();
        let h = HealthCounters::default();
        assert!(map.drain(a, false, "admin", h, t));
        assert!(!map.drain(a, false, "again", h, t));
        map.register("cs-a", &reg(1), Timestamp::default());
        let rec = map.get(a).unwrap();
        assert_eq!(
            (rec.state, rec.reason.as_deref()),
            (ChunkserverState::Draining, Some("admin"))
        );
        let sick = HealthCounters { io_errors: 60, ..h };
        assert!(map.drain(a, true, "", sick, t));
        assert_eq!(map.get(a).unwrap().state, ChunkserverState::Up);
        assert_eq!(map.get(a).unwrap().reason, None);
        assert_eq!(map.get(a).unwrap().health_baseline, sick);
        assert!(!map.drain(ChunkserverId(99), false, "x", h, t));
    }
}
