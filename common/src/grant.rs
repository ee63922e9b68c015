//! Shard access grants: what lets a mount read or write the shards of one slice.
//!
//! A metaserver hands a grant with each allocation (write) and each slice map (read). It
//! names the slice, the access, the certificate it was issued to and when it expires (a
//! write grant also which server takes each shard, and how large a shard may be), and
//! carries an HMAC-SHA256 under a key the metaservers keep in the cluster map and share
//! with chunkservers. A chunkserver checks it without asking anyone. Servers and admins
//! need no grant: their certificates say what they are.

use crate::ids::{ChunkserverId, ShardId, SliceId};
use ring::hmac;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How long a grant is good for. Mounts refresh slice maps far more often.
pub const GRANT_LIFETIME_SECS: u64 = 600;
/// Clocks of metaservers and chunkservers may differ by this much.
pub const CLOCK_SKEW_SECS: u64 = 60;
/// Keys the cluster map keeps: the newest signs, the one before still verifies.
pub const KEYS_KEPT: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub slice: SliceId,
    pub access: Access,
    /// For a write: the most bytes a shard may have (what the allocation was for), so a
    /// grant cannot reserve more disk than the metaserver allotted.
    pub shard_bytes: u64,
    /// For a write: the server each shard goes to (the allocation's placement), so a grant
    /// cannot spread a slice over servers and shard numbers of its holder's choosing.
    pub servers: Vec<Option<ChunkserverId>>,
    /// Unix seconds.
    pub expires: u64,
    /// Which key signed it.
    pub key: u32,
    pub mac: Vec<u8>,
}

/// A signing key. Its secret never appears in logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantKey {
    pub id: u32,
    /// Unix seconds when it was made (keys are replaced daily).
    pub created: u64,
    pub secret: [u8; 32],
}

impl fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "GrantKey {{ id: {}, created: {} }}",
            self.id, self.created
        )
    }
}

/// Why a grant was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("no grant")]
    Missing,
    #[error("grant for slice {0}, not this shard's")]
    OtherSlice(SliceId),
    #[error("read grant for a write")]
    ReadOnly,
    #[error("shard of {0} bytes is larger than granted")]
    TooLarge(u64),
    #[error("grant places shard {0} on another server")]
    OtherServer(u16),
    #[error("grant expired")]
    Expired,
    #[error("grant signed with unknown key {0}")]
    UnknownKey(u32),
    #[error("grant not issued to this certificate, or forged")]
    BadMac,
}

impl GrantKey {
    pub fn random(id: u32, created: u64) -> GrantKey {
        GrantKey {
            id,
            created,
            secret: rand::random(),
        }
    }

    fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.secret)
    }

    /// A grant of `access` to `slice` for the certificate named `holder` (`role:name`); for
    /// a write, of shards of at most `shard_bytes` on `servers` (shard i on `servers[i]`).
    pub fn grant(
        &self,
        slice: SliceId,
        access: Access,
        (shard_bytes, servers): (u64, Vec<Option<ChunkserverId>>),
        holder: &str,
        now: u64,
    ) -> Grant {
        let mut g = Grant {
            slice,
            access,
            shard_bytes,
            servers,
            expires: now + GRANT_LIFETIME_SECS,
            key: self.id,
            mac: Vec::new(),
        };
        g.mac = hmac::sign(&self.hmac_key(), &signed(&g, holder))
            .as_ref()
            .to_vec();
        g
    }
}

/// The key to sign with: the newest one made at least `settle` seconds ago, so
/// chunkservers have heard of it (a cluster's first key is not used before then either).
pub fn signing_key(keys: &[GrantKey], now: u64, settle: u64) -> Option<&GrantKey> {
    keys.iter().rev().find(|k| k.created + settle <= now)
}

/// `known` with the keys of `heard` added: keys only come and go by id, so a lagging
/// metaserver's older view never takes back a key already heard of.
pub fn merge_keys(known: &mut Vec<GrantKey>, heard: Vec<GrantKey>) {
    for key in heard {
        if !known.iter().any(|k| k.id == key.id) {
            known.push(key);
        }
    }
    known.sort_by_key(|k| k.id);
    let extra = known.len().saturating_sub(KEYS_KEPT);
    known.drain(..extra);
}

/// Checks that `grant` lets `holder` do `want` to `shard` (of `bytes`, for a write) on
/// server `here` (`None`: not registered yet) at `now`.
pub fn verify(
    keys: &[GrantKey],
    grant: Option<&Grant>,
    (shard, want, bytes): (ShardId, Access, u64),
    (holder, here): (&str, Option<ChunkserverId>),
    now: u64,
) -> Result<(), Refused> {
    let g = grant.ok_or(Refused::Missing)?;
    if g.slice != shard.slice {
        return Err(Refused::OtherSlice(g.slice));
    }
    if want == Access::Write && g.access != Access::Write {
        return Err(Refused::ReadOnly);
    }
    if want == Access::Write && bytes > g.shard_bytes {
        return Err(Refused::TooLarge(bytes));
    }
    let placed = g.servers.get(shard.index.0 as usize).copied().flatten();
    if want == Access::Write && placed.is_none_or(|p| Some(p) != here) {
        return Err(Refused::OtherServer(shard.index.0));
    }
    if g.expires + CLOCK_SKEW_SECS < now || g.expires > now + GRANT_LIFETIME_SECS + CLOCK_SKEW_SECS
    {
        return Err(Refused::Expired);
    }
    let key = keys
        .iter()
        .find(|k| k.id == g.key)
        .ok_or(Refused::UnknownKey(g.key))?;
    hmac::verify(&key.hmac_key(), &signed(g, holder), &g.mac).map_err(|_| Refused::BadMac)
}

/// The bytes a grant's MAC covers: every field but the key id (a wrong id finds the wrong
/// key, which fails the MAC) and the MAC itself.
fn signed(g: &Grant, holder: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(33 + 5 * g.servers.len() + holder.len());
    msg.extend_from_slice(&g.slice.0.to_le_bytes());
    msg.push(g.access as u8);
    msg.extend_from_slice(&g.shard_bytes.to_le_bytes());
    msg.extend_from_slice(&(g.servers.len() as u64).to_le_bytes());
    for s in &g.servers {
        msg.push(s.is_some() as u8);
        msg.extend_from_slice(&s.map_or(0, |id| id.0).to_le_bytes());
    }
    msg.extend_from_slice(&g.expires.to_le_bytes());
    msg.extend_from_slice(holder.as_bytes());
    msg
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_verify_only_for_their_slice_access_holder_and_time() {
        let (k1, k2) = (GrantKey::random(1, 1000), GrantKey::random(2, 5000));
        let keys = vec![k1.clone(), k2.clone()];
        let shard = ShardId::new(SliceId(7), 3);
        let now = 10_000;
        let here = Some(ChunkserverId(13));
        let servers: Vec<_> = (10..16).map(|n| Some(ChunkserverId(n))).collect();
        let g = signing_key(&keys, now, 10).unwrap().grant(
            SliceId(7),
            Access::Write,
            (4096, servers),
            "client:a",
            now,
        );
        assert_eq!(g.key, 2);
        let ok = |g: &Grant, want, holder, at| {
            verify(&keys, Some(g), (shard, want, 4096), (holder, here), at)
        };
        assert_eq!(ok(&g, Access::Write, "client:a", now), Ok(()));
        assert_eq!(ok(&g, Access::Read, "client:a", now + 599), Ok(()));
        assert_eq!(ok(&g, Access::Write, "client:b", now), Err(Refused::BadMac));
        assert_eq!(
            ok(&g, Access::Write, "client:a", now + 700),
            Err(Refused::Expired)
        );
        let other = ShardId::new(SliceId(8), 3);
        let holder = ("client:a", here);
        assert_eq!(
            verify(&keys, Some(&g), (other, Access::Read, 0), holder, now),
            Err(Refused::OtherSlice(SliceId(7)))
        );
        assert_eq!(
            verify(&keys, None, (shard, Access::Read, 0), holder, now),
            Err(Refused::Missing)
        );
        // A write grant stores each shard only where the allocation placed it.
        for (index, server) in [
            (3, Some(ChunkserverId(14))),
            (4, here),
            (3, None),
            (9, here),
        ] {
            let shard = ShardId::new(SliceId(7), index);
            assert_eq!(
                verify(
                    &keys,
                    Some(&g),
                    (shard, Access::Write, 1),
                    ("client:a", server),
                    now
                ),
                Err(Refused::OtherServer(index)),
                "shard {index} on {server:?}"
            );
        }
        let mut moved = g.clone();
        moved.servers[4] = here;
        let shard_4 = ShardId::new(SliceId(7), 4);
        assert_eq!(
            verify(
                &keys,
                Some(&moved),
                (shard_4, Access::Write, 1),
                holder,
                now
            ),
            Err(Refused::BadMac)
        );
        let read = k1.grant(SliceId(7), Access::Read, (0, Vec::new()), "client:a", now);
        assert_eq!(ok(&read, Access::Read, "client:a", now), Ok(()));
        assert_eq!(
            ok(&read, Access::Write, "client:a", now),
            Err(Refused::ReadOnly)
        );
        // Tampering with any field breaks the MAC.
        let mut forged = read.clone();
        forged.access = Access::Write;
        forged.shard_bytes = 1 << 20;
        forged.servers = g.servers.clone();
        assert_eq!(
            ok(&forged, Access::Write, "client:a", now),
            Err(Refused::BadMac)
        );
        let mut longer = read.clone();
        longer.expires += 60;
        assert_eq!(
            ok(&longer, Access::Read, "client:a", now),
            Err(Refused::BadMac)
        );
        assert_eq!(
            verify(
                std::slice::from_ref(&k2),
                Some(&read),
                (shard, Access::Read, 0),
                holder,
                now
            ),
            Err(Refused::UnknownKey(1))
        );
        // A key just made is not used while an older one exists.
        assert_eq!(signing_key(&keys, 5005, 10).unwrap().id, 1);
        assert!(
            signing_key(std::slice::from_ref(&k2), 5005, 10).is_none(),
            "a first key settles too"
        );
        // Hearing an older view adds nothing and takes nothing back.
        let (mut known, k3) = (vec![k2.clone()], GrantKey::random(3, 9000));
        merge_keys(&mut known, vec![k1.clone()]);
        assert_eq!(known.iter().map(|k| k.id).collect::<Vec<_>>(), [1, 2]);
        merge_keys(&mut known, vec![k2.clone(), k3]);
        assert_eq!(known.iter().map(|k| k.id).collect::<Vec<_>>(), [2, 3]);
        merge_keys(&mut known, vec![]);
        assert_eq!(known.len(), 2);
        assert!(format!("{k1:?}").find("secret").is_none());
    }
}
