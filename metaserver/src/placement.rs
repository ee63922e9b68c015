//! Choosing servers for a new slice: K+M distinct live servers, spread over failure domains
//! (racks first, then hosts) where there are enough, favouring free space so usage evens
//! out.

use lattice_common::erasure::ErasureCode;
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
#[error("policy {policy} needs at least {need} distinct servers, {have} can take new data ({full} more are up but too full)")]
pub struct PlacementError {
    pub policy: Policy,
    /// Servers needed at the least ([`Policy::min_shards`]).
    pub need: usize,
    pub have: usize,
    /// Live servers left out for lack of free space.
    pub full: usize,
}

impl PlacementError {
    /// Whether space, not live servers, is what is missing.
    pub fn out_of_space(&self) -> bool {
        self.have + self.full >= self.need
    }
}

/// Greedy placements tried for a grid, keeping the one whose lines share fewest domains.
const GRID_TRIES: usize = 16;

/// Picks a distinct server for each shard of a slice, each drawn with probability
/// proportional to its free space, first from failure domains not used yet by the shards
/// it shares a codeword with (a grid's lines: each line over distinct racks and hosts
/// where there are enough), then by any. With fewer servers than shards but at least
/// [`Policy::min_shards`], the last shards (parity first) stay unplaced (`None`): the slice
/// lands degraded and is repaired when servers allow.
pub fn place(
    policy: Policy,
    candidates: &[Candidate],
    needed_bytes: u64,
    rng: &mut impl Rng,
) -> Result<Vec<Option<ChunkserverId>>, PlacementError> {
    let pool: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| c.free_bytes >= needed_bytes)
        .collect();
    if pool.len() < policy.min_shards() {
        return Err(PlacementError {
            policy,
            need: policy.min_shards(),
            have: pool.len(),
            full: candidates.len() - pool.len(),
        });
    }
    let code = ErasureCode::new(policy).ok();
    let same_line = |a: usize, b: usize| code.as_ref().is_none_or(|c| c.same_line(a, b));
    let tries = match policy {
        Policy::Grid(_) => GRID_TRIES,
        _ => 1,
    };
    let mut best: Option<(usize, Vec<Option<ChunkserverId>>)> = None;
    for _ in 0..tries {
        let (chosen, clashes) = place_once(&pool, policy.total_shards(), &same_line, rng);
        if best.as_ref().is_none_or(|(fewest, _)| clashes < *fewest) {
            best = Some((clashes, chosen));
        }
        if clashes == 0 {
            break;
        }
    }
    Ok(best.expect("at least one try").1)
}

/// One greedy placement, and how many times a shard shares a rack or host with one of its
/// line mates placed before it.
fn place_once(
    pool: &[&Candidate],
    total: usize,
    same_line: &impl Fn(usize, usize) -> bool,
    rng: &mut impl Rng,
) -> (Vec<Option<ChunkserverId>>, usize) {
    let mut pool = pool.to_vec();
    let placed = total.min(pool.len());
    let mut chosen = Vec::with_capacity(total);
    let mut domains: Vec<&Domain> = Vec::with_capacity(placed);
    let mut clashes = 0;
    while chosen.len() < placed {
        let k = chosen.len();
        let mates: Vec<&Domain> = (0..k)
            .filter(|&j| same_line(k, j))
            .map(|j| domains[j])
            .collect();
        // Draw from the servers that share least with the line mates, then with all.
        let key = |c: &Candidate| (c.domain.overlap(&mates), c.domain.overlap(&domains));
        let least = pool
            .iter()
            .map(|c| key(c))
            .min()
            .expect("the pool outnumbers what is still needed");
        let from: Vec<usize> = (0..pool.len()).filter(|&i| key(pool[i]) == least).collect();
        let weights: u128 = from.iter().map(|&i| pool[i].free_bytes as u128 + 1).sum();
        let mut ticket = rng.gen_range(0..weights);
        let mut pick = from[0];
        for &i in &from {
            let weight = pool[i].free_bytes as u128 + 1;
            if ticket < weight {
                pick = i;
                break;
            }
            ticket -= weight;
        }
        clashes += least.0 .1 + usize::from(least.0 .0);
        let c = pool.swap_remove(pick);
        domains.push(&c.domain);
        chosen.push(Some(c.id));
    }
    chosen.resize(total, None);
    (chosen, clashes)
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
            let racks: BTreeSet<u32> = m.iter().flatten().map(|id| id.0 % 3).collect();
            assert_eq!(racks.len(), 3);
            let rs = place("rs:4+2".parse().unwrap(), &c, 1, &mut rng).unwrap();
            let mut per_rack = [0; 3];
            for id in rs.iter().flatten() {
                per_rack[(id.0 % 3) as usize] += 1;
            }
            assert_eq!(per_rack, [2, 2, 2]);
        }
    }

    #[test]
    fn every_line_of_a_grid_spans_distinct_racks_when_there_are_enough() {
        // Lines of 5 (grid:4x4+1) over 5 racks of 6 servers, lines of 3 (grid:2x2+1 and
        // grid:2x2x2+1) over 3 racks of 4 and 9 servers: one rack lost costs each line at
        // most one shard, so every loss is repaired from its lines.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for (policy, racks, per_rack) in [
            ("grid:4x4+1", 5, 6),
            ("grid:2x2+1", 3, 4),
            ("grid:2x2x2+1", 3, 9),
        ] {
            let policy: Policy = policy.parse().unwrap();
            let code = ErasureCode::new(policy).unwrap();
            let c: Vec<Candidate> = (0..racks * per_rack)
                .map(|i| {
                    let labels = [("rack".to_string(), format!("r{}", i % racks))];
                    Candidate {
                        id: ChunkserverId(i),
                        free_bytes: 1 << 30,
                        domain: Domain::of(&labels, &format!("h{i}")),
                    }
                })
                .collect();
            for _ in 0..50 {
                let p = place(policy, &c, 1, &mut rng).unwrap();
                let rack = |i: usize| p[i].unwrap().0 % racks;
                for a in 0..p.len() {
                    for b in (a + 1..p.len()).filter(|&b| code.same_line(a, b)) {
                        assert_ne!(rack(a), rack(b), "{policy}: shards {a} and {b}: {p:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn too_few_servers_land_degraded_down_to_one_spare_shard() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let rs = "rs:4+2".parse().unwrap();
        let five = place(rs, &candidates(5, 5), 1, &mut rng).unwrap();
        assert_eq!(five.iter().flatten().count(), 5);
        assert_eq!(five[5], None, "the parity shard is the one left out");
        let err = place(rs, &candidates(4, 4), 1, &mut rng).unwrap_err();
        assert_eq!((err.need, err.have, err.out_of_space()), (5, 4, false));
        let mirror2 = place("mirror:2".parse().unwrap(), &candidates(1, 1), 1, &mut rng);
        assert!(
            mirror2.is_err(),
            "a second copy is the least a mirror lands with"
        );
        let full = vec![Candidate {
            id: ChunkserverId(1),
            free_bytes: 10,
            domain: Domain::of(&[], "a"),
        }];
        let err = place("mirror:1".parse().unwrap(), &full, 11, &mut rng).unwrap_err();
        assert!(err.out_of_space());
    }

    #[test]
    fn free_space_attracts_shards() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut c = candidates(4, 4);
        c[0].free_bytes = 100 << 30;
        let hits = (0..1000)
            .filter(|_| {
                place("mirror:1".parse().unwrap(), &c, 1, &mut rng).unwrap()[0]
                    == Some(ChunkserverId(0))
            })
            .count();
        assert!(hits > 900, "the emptiest server got {hits} of 1000");
    }

    proptest! {
        #[test]
        fn shards_land_on_distinct_servers_and_domains_first(n in 6u32..20, domains in 1u32..8, seed: u64) {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let policy: Policy = "rs:4+2".parse().unwrap();
            let chosen: Vec<ChunkserverId> = place(policy, &candidates(n, domains), 1, &mut rng).unwrap().into_iter().flatten().collect();
            let distinct: BTreeSet<_> = chosen.iter().collect();
            prop_assert_eq!(distinct.len(), 6);
            let used: BTreeSet<u32> = chosen.iter().map(|id| id.0 % domains).collect();
            prop_assert_eq!(used.len(), 6.min(domains as usize));
        }
    }
}
