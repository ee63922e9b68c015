//! Choosing servers for a new slice: K+M distinct live servers, spread over failure domains
//! (racks first, then hosts) where there are enough, favouring free space so usage evens
//! out.

use lattice_common::ids::ChunkserverId;
use lattice_common::policy::Policy;
use rand::Rng;

/// Where a server sits: servers sharing a host, or a rack, can fail together.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Domain {
    /// Its `rack` label; its host where it has none.
    pub rack: String,
    /// Its `host` label; its own name where it has none.
    pub host: String,
}

impl Domain {
    /// From a server's labels (`rack=...`, `host=...`) and name.
    pub fn of(labels: &[(String, String)], name: &str) -> Domain {
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let host = label("host").unwrap_or_else(|| name.to_string());
        Domain {
            rack: label("rack").unwrap_or_else(|| host.clone()),
            host,
        }
    }

    /// How much a shard here would share with shards in `used`: whether its host holds one
    /// already, then how many its rack holds. Lower is safer.
    pub fn overlap(&self, used: &[&Domain]) -> (bool, usize) {
        let host = used.iter().any(|d| d.host == self.host);
        (host, used.iter().filter(|d| d.rack == self.rack).count())
    }
}

/// A server that may take new shards.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: ChunkserverId,
    pub free_bytes: u64,
    pub domain: Domain,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy} needs {need} distinct servers, only {have} can take new data")]
pub struct PlacementError {
    pub policy: Policy,
    pub need: usize,
    pub have: usize,
}

/// The policy a file without its own gets: Reed-Solomon 4+2 once six servers are up,
/// mirroring on smaller clusters.
pub fn default_policy(live_servers: usize) -> Policy {
    match live_servers {
        n if n >= 6 => Policy::ReedSolomon { data: 4, parity: 2 },
        n => Policy::Mirror {
            copies: n.clamp(1, 3) as u8,
        },
    }
}

/// Picks `policy.total_shards()` distinct servers, each shard's server drawn with
/// probability proportional to its free space, first from failure domains not used yet.
pub fn place(
    policy: Policy,
    candidates: &[Candidate],
    needed_bytes: u64,
    rng: &mut impl Rng,
) -> Result<Vec<ChunkserverId>, PlacementError> {
    let need = policy.total_shards();
    let mut pool: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.free_bytes >= needed_bytes)
        .collect();
    if pool.len() < need {
        return Err(PlacementError {
            policy,
            need,
            have: pool.len(),
        });
    }
    let mut chosen = Vec::with_capacity(need);
    let mut domains: Vec<&Domain> = Vec::with_capacity(need);
    while chosen.len() < need {
        // Draw from the servers that share least with those chosen so far.
        let least = (0..pool.len())
            .map(|i| pool[i].domain.overlap(&domains))
            .min()
            .expect("the pool outnumbers what is still needed");
        let from: Vec<usize> = (0..pool.len())
            .filter(|&i| pool[i].domain.overlap(&domains) == least)
            .collect();
        let total: u128 = from.iter().map(|&i| pool[i].free_bytes as u128 + 1).sum();
        let mut ticket = rng.gen_range(0..total);
        let mut pick = from[0];
        for &i in &from {
            let weight = pool[i].free_bytes as u128 + 1;
            if ticket < weight {
                pick = i;
                break;
            }
            ticket -= weight;
        }
        let c = pool.swap_remove(pick);
        domains.push(&c.domain);
        chosen.push(c.id);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use std::collections::BTreeSet;

    fn candidates(n: u32, domains: u32) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: ChunkserverId(i),
                free_bytes: 1 << 30,
                domain: Domain::of(&[], &format!("host{}", i % domains)),
            })
            .collect()
    }

    #[test]
    fn racks_are_spread_over_before_hosts() {
        // 3 racks of 4 hosts: mirror:3 lands in 3 racks, rs:4+2 in 6 distinct hosts over all
        // 3 racks (2 per rack).
        let c: Vec<Candidate> = (0..12u32)
            .map(|i| {
                let labels = [
                    ("rack".to_string(), format!("r{}", i % 3)),
                    ("host".to_string(), format!("h{i}")),
                ];
                Candidate {
                    id: ChunkserverId(i),
                    free_bytes: 1 << 30,
                    domain: Domain::of(&labels, "x"),
                }
            })
            .collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let m = place("mirror:3".parse().unwrap(), &c, 1, &mut rng).unwrap();
            let racks: BTreeSet<u32> = m.iter().map(|id| id.0 % 3).collect();
            assert_eq!(racks.len(), 3);
            let rs = place("rs:4+2".parse().unwrap(), &c, 1, &mut rng).unwrap();
            let mut per_rack = [0; 3];
            for id in &rs {
                per_rack[(id.0 % 3) as usize] += 1;
            }
            assert_eq!(per_rack, [2, 2, 2]);
        }
    }

    #[test]
    fn default_policy_grows_with_the_cluster() {
        assert_eq!(default_policy(1).to_string(), "mirror:1");
        assert_eq!(default_policy(2).to_string(), "mirror:2");
        assert_eq!(default_policy(5).to_string(), "mirror:3");
        assert_eq!(default_policy(6).to_string(), "rs:4+2");
    }

    #[test]
    fn too_few_servers_is_an_error() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let err = place("rs:4+2".parse().unwrap(), &candidates(5, 5), 1, &mut rng).unwrap_err();
        assert_eq!((err.need, err.have), (6, 5));
        let full = vec![Candidate {
            id: ChunkserverId(1),
            free_bytes: 10,
            domain: Domain::of(&[], "a"),
        }];
        assert!(place("mirror:1".parse().unwrap(), &full, 11, &mut rng).is_err());
    }

    #[test]
    fn free_space_attracts_shards() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut c = candidates(4, 4);
        c[0].free_bytes = 100 << 30;
        let hits = (0..1000)
            .filter(|_| {
                place("mirror:1".parse().unwrap(), &c, 1, &mut rng).unwrap()[0] == ChunkserverId(0)
            })
            .count();
        assert!(hits > 900, "the emptiest server got {hits} of 1000");
    }

    proptest! {
        #[test]
        fn shards_land_on_distinct_servers_and_domains_first(n in 6u32..20, domains in 1u32..8, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let policy: Policy = "rs:4+2".parse().unwrap();
            let chosen = place(policy, &candidates(n, domains), 1, &mut rng).unwrap();
            let distinct: BTreeSet<_> = chosen.iter().collect();
            prop_assert_eq!(distinct.len(), 6);
            let used: BTreeSet<u32> = chosen.iter().map(|id| id.0 % domains).collect();
            prop_assert_eq!(used.len(), 6.min(domains as usize));
        }
    }
}
