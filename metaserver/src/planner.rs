//! Deciding background shard work from the replicated state and the leader's view of the
//! servers: which shards to rebuild (most endangered slices first), which to copy off
//! draining servers, and which to move to even out usage. Pure: no I/O, no clock, so it is
//! tested directly; `jobs` carries the plans out.

use crate::placement::Domain;
use lattice_common::chunk_map::SliceRef;
use lattice_common::erasure::ErasureCode;
use lattice_common::ids::{ChunkserverId, InodeId, ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::policy::Policy;
use lattice_common::wire::meta::{ChunkserverState, JobKind, Redundancy};
use lattice_common::wire::ShardSource;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;

/// The leader's view of one chunkserver.
#[derive(Clone, Debug)]
pub struct ServerView {
    pub addr: SocketAddr,
    pub state: ChunkserverState,
    /// Heard from recently: its shards can be read.
    pub fresh: bool,
    pub domain: Domain,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

impl ServerView {
    pub fn readable(&self) -> bool {
        self.fresh
            && matches!(
                self.state,
                ChunkserverState::Up | ChunkserverState::Suspect | ChunkserverState::Draining
            )
    }

    fn writable(&self) -> bool {
        self.fresh && self.state == ChunkserverState::Up
    }
}

/// One shard to re-create on `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub kind: JobKind,
    pub ino: InodeId,
    pub chunk: u64,
    pub slice: SliceId,
    pub layout: SliceLayout,
    pub index: u16,
    /// Where the metadata places the shard now (the move is committed only if unchanged).
    pub from: Option<ChunkserverId>,
    pub to: ChunkserverId,
    pub to_addr: SocketAddr,
    /// A readable server holding the shard (copy instead of decoding).
    pub copy_from: Option<ShardSource>,
    /// The other readable shards (decoding sources).
    pub sources: Vec<ShardSource>,
    pub bytes: u64,
}

impl Job {
    pub fn shard(&self) -> ShardId {
        ShardId::new(self.slice, self.index)
    }
}

/// Work not started yet, by kind and (for drains) server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub shards: u64,
    pub bytes: u64,
}

#[derive(Debug, Default)]
pub struct Plan {
    /// In order of urgency.
    pub jobs: Vec<Job>,
    pub redundancy: Redundancy,
    pub backlog: BTreeMap<(JobKind, Option<ChunkserverId>), Backlog>,
    /// Shards and bytes the metadata places on each server.
    pub placed: BTreeMap<ChunkserverId, Backlog>,
    /// Policies in use that need more failure domains than the writable servers span.
    pub warnings: Vec<String>,
    /// The damaged shards still placed where they were reported (the others are gone).
    pub damage_found: HashSet<(ShardId, ChunkserverId)>,
}

/// Limits of one planning round.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most jobs returned.
    pub max_jobs: usize,
    /// A server is out of balance when its usage is off its capacity's share of the total by
    /// more than this fraction of that share.
    pub balance_tolerance: f64,
}

/// A shard job under way: its slice gets no other job, and its bytes count as moved.
#[derive(Clone, Copy, Debug)]
pub struct Busy {
    pub from: Option<ChunkserverId>,
    pub to: ChunkserverId,
    pub bytes: u64,
}

struct Urgent {
    /// Further losses the slice survives, whichever they are (fewest first).
    margin: usize,
    job: Job,
}

/// Plans work for every slice. `damaged` shards (by the server holding them) are rebuilt in
/// place; `busy` slices (with a job running) get no new job, and their moves count as done.
pub fn plan<'a>(
    slices: impl Iterator<Item = (InodeId, u64, &'a SliceRef)>,
    servers: &BTreeMap<ChunkserverId, ServerView>,
    damaged: &HashSet<(ShardId, ChunkserverId)>,
    busy: &BTreeMap<SliceId, Busy>,
    limits: Limits,
) -> Plan {
    let mut out = Plan::default();
    let mut urgent: Vec<Urgent> = Vec::new();
    let mut drains: Vec<Job> = Vec::new();
    // Bytes already headed to each server in this plan, so one plan spreads its targets.
    let mut incoming: BTreeMap<ChunkserverId, u64> = BTreeMap::new();
    for b in busy.values().filter(|b| b.from != Some(b.to)) {
        *incoming.entry(b.to).or_default() += b.bytes;
    }
    let mut healthy: Vec<(InodeId, u64, &SliceRef)> = Vec::new();
    let mut policies = HashSet::new();
    let mut codes: HashMap<Policy, Option<ErasureCode>> = HashMap::new();
    for (ino, chunk, s) in slices {
        policies.insert(s.layout.policy);
        let shard_bytes = s.layout.shard_len();
        // Which shards survive matters, not only how many (a grid's lines).
        let code = codes
            .entry(s.layout.policy)
            .or_insert_with(|| ErasureCode::new(s.layout.policy).ok())
            .clone();
        let same_line = |a: usize, b: usize| code.as_ref().is_none_or(|c| c.same_line(a, b));
        let view = |i: usize| s.placement[i].and_then(|id| servers.get(&id).map(|v| (id, v)));
        let ok = |i: usize| {
            view(i).is_some_and(|(id, v)| {
                v.readable() && !damaged.contains(&(ShardId::new(s.slice, i as u16), id))
            })
        };
        let total = s.placement.len();
        for (i, p) in s.placement.iter().enumerate() {
            let Some(p) = *p else { continue };
            let e = out.placed.entry(p).or_default();
            e.shards += 1;
            e.bytes += shard_bytes;
            let key = (ShardId::new(s.slice, i as u16), p);
            if damaged.contains(&key) {
                out.damage_found.insert(key);
            }
        }
        let surviving = (0..total).filter(|&i| ok(i)).count();
        let gone: Vec<bool> = (0..total).map(|i| !ok(i)).collect();
        let margin = code.as_ref().and_then(|c| c.margin(&gone));
        let readable = margin.is_some();
        let r = &mut out.redundancy;
        match total - surviving {
            _ if !readable => r.lost += 1,
            0 => r.healthy += 1,
            1 => r.degraded_1 += 1,
            _ => r.degraded_2_plus += 1,
        }
        let draining: Vec<usize> = (0..total)
            .filter(|&i| {
                ok(i) && view(i).is_some_and(|(_, v)| v.state == ChunkserverState::Draining)
            })
            .collect();
        if surviving == total && draining.is_empty() {
            healthy.push((ino, chunk, s));
            continue;
        }
        if busy.contains_key(&s.slice) || !readable {
            continue;
        }
        let sources: Vec<ShardSource> = (0..total)
            .filter(|&i| ok(i))
            .map(|i| {
                let (id, v) = view(i).expect("readable shards have a server");
                source(i, id, v)
            })
            .collect();
        let base = |kind, index: usize, to: (ChunkserverId, SocketAddr)| Job {
            kind,
            ino,
            chunk,
            slice: s.slice,
            layout: s.layout,
            index: index as u16,
            from: s.placement[index],
            to: to.0,
            to_addr: to.1,
            copy_from: None,
            sources: sources.clone(),
            bytes: shard_bytes,
        };
        // Shards to rebuild: on a server that is down (not one merely suspect: it may come
        // back), unplaced, or damaged.
        for i in (0..total).filter(|&i| !ok(i)) {
            let holder = view(i);
            let damaged_here = holder.is_some_and(|(_, v)| v.readable());
            // A draining server that stops answering is as good as down.
            let gone = holder.is_none_or(|(_, v)| match v.state {
                ChunkserverState::Down | ChunkserverState::Drained => true,
                ChunkserverState::Draining => !v.fresh,
                _ => false,
            });
            let key = (JobKind::Repair, None);
            let target = if damaged_here {
                holder.map(|(id, v)| (id, v.addr))
            } else if gone {
                pick_target(s, i, servers, &incoming, &same_line)
            } else {
                continue;
            };
            let backlog = out.backlog.entry(key).or_default();
            backlog.shards += 1;
            backlog.bytes += shard_bytes;
            if let Some(to) = target {
                *incoming.entry(to.0).or_default() += shard_bytes;
                urgent.push(Urgent {
                    margin: margin.unwrap_or(0),
                    job: base(JobKind::Repair, i, to),
                });
            }
        }
        for &i in &draining {
            let (from, v) = view(i).expect("draining shards have a server");
            let backlog = out.backlog.entry((JobKind::Drain, Some(from))).or_default();
            backlog.shards += 1;
            backlog.bytes += shard_bytes;
            if let Some(to) = pick_target(s, i, servers, &incoming, &same_line) {
                *incoming.entry(to.0).or_default() += shard_bytes;
                let mut job = base(JobKind::Drain, i, to);
                job.copy_from = Some(source(i, from, v));
                job.sources.retain(|src| src.index.0 as usize != i);
                drains.push(job);
            }
        }
    }
    // Decoding sources never include the shard being re-created.
    for u in &mut urgent {
        let i = u.job.index;
        u.job.sources.retain(|src| src.index.0 != i);
    }
    urgent.sort_by_key(|u| u.margin);
    out.jobs.extend(urgent.into_iter().map(|u| u.job));
    out.jobs.extend(drains);
    // Moves wait until every slice is whole: they would compete with repairs for the
    // servers' bandwidth, and a suspect server that comes back makes them moot.
    let degraded = out.redundancy.degraded_1 + out.redundancy.degraded_2_plus;
    if out.jobs.is_empty() && degraded == 0 {
        rebalance(&healthy, servers, busy, limits, &mut out);
    }
    out.jobs.truncate(limits.max_jobs);
    out.warnings = domain_warnings(&policies, servers);
    out
}

fn source(i: usize, id: ChunkserverId, v: &ServerView) -> ShardSource {
    ShardSource {
        index: lattice_common::ids::ShardIndex(i as u16),
        server: id,
        addr: v.addr,
    }
}

/// A writable server for shard `index` of `s`: not holding another of its shards, in a
/// failure domain none of its line mates uses if there is one (for a grid; all other
/// shards otherwise), then none of the others, then the emptiest.
fn pick_target(
    s: &SliceRef,
    index: usize,
    servers: &BTreeMap<ChunkserverId, ServerView>,
    incoming: &BTreeMap<ChunkserverId, u64>,
    same_line: &impl Fn(usize, usize) -> bool,
) -> Option<(ChunkserverId, SocketAddr)> {
    let others: Vec<(usize, ChunkserverId)> = s
        .placement
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != index)
        .filter_map(|(i, p)| Some((i, (*p)?)))
        .collect();
    let domains = |line_only: bool| -> Vec<&Domain> {
        others
            .iter()
            .filter(|(i, _)| !line_only || same_line(index, *i))
            .filter_map(|(_, id)| servers.get(id).map(|v| &v.domain))
            .collect()
    };
    let (mates, used) = (domains(true), domains(false));
    let need = s.layout.shard_len();
    servers
        .iter()
        .filter(|(id, v)| {
            v.writable()
                && !others.iter().any(|(_, o)| o == *id)
                && Some(**id) != s.placement[index]
        })
        .filter(|(id, v)| v.free_bytes >= need + incoming.get(id).copied().unwrap_or(0))
        .min_by_key(|(id, v)| {
            let load = v.used_bytes + incoming.get(id).copied().unwrap_or(0);
            (
                v.domain.overlap(&mates),
                v.domain.overlap(&used),
                load,
                **id,
            )
        })
        .map(|(id, v)| (*id, v.addr))
}

/// Moves shards of healthy slices from servers above their share of the data to servers
/// below it, where the move keeps the slice's servers distinct.
fn rebalance(
    healthy: &[(InodeId, u64, &SliceRef)],
    servers: &BTreeMap<ChunkserverId, ServerView>,
    busy: &BTreeMap<SliceId, Busy>,
    limits: Limits,
    out: &mut Plan,
) {
    let writable: BTreeMap<ChunkserverId, &ServerView> = servers
        .iter()
        .filter(|(_, v)| v.writable())
        .map(|(id, v)| (*id, v))
        .collect();
    // Load is what the metadata places on a server: exact, and current the moment a move
    // commits (disk usage lags behind, old copies stay until collected).
    let mut load: BTreeMap<ChunkserverId, f64> = writable
        .keys()
        .map(|id| (*id, out.placed.get(id).map_or(0, |p| p.bytes) as f64))
        .collect();
    for b in busy.values() {
        if let Some(l) = b.from.and_then(|from| load.get_mut(&from)) {
            *l -= b.bytes as f64;
        }
        if let Some(l) = load.get_mut(&b.to) {
            *l += b.bytes as f64;
        }
    }
    let used: f64 = load.values().sum();
    let capacity: u128 = writable
        .values()
        .map(|v| (v.used_bytes + v.free_bytes) as u128)
        .sum();
    if writable.len() < 2 || capacity == 0 {
        return;
    }
    // Each server's share of the data, in bytes, by its capacity.
    let share = |v: &ServerView| used * (v.used_bytes + v.free_bytes) as f64 / capacity as f64;
    let tol = limits.balance_tolerance;
    let over = |id: &ChunkserverId, load: &BTreeMap<ChunkserverId, f64>| {
        load[id] > share(writable[id]) * (1.0 + tol)
    };
    let under = |id: &ChunkserverId, load: &BTreeMap<ChunkserverId, f64>| {
        load[id] < share(writable[id]) * (1.0 - tol)
    };
    if !writable.keys().any(|id| under(id, &load)) {
        return;
    }
    for &(ino, chunk, s) in healthy {
        if out.jobs.len() >= limits.max_jobs {
            break;
        }
        if busy.contains_key(&s.slice) {
            continue;
        }
        let bytes = s.layout.shard_len();
        for (i, from) in s.placement.iter().enumerate() {
            let Some(from) = *from else { continue };
            if !writable.contains_key(&from) || !over(&from, &load) {
                continue;
            }
            let holders: Vec<ChunkserverId> = s.placement.iter().flatten().copied().collect();
            // A move must leave the target no fuller (for its share) than the source, or
            // shards would bounce between servers when they are few.
            let fill = |id: &ChunkserverId, extra: f64| (load[id] + extra) / share(writable[id]);
            let Some((&to, _)) = writable
                .iter()
                .filter(|(id, _)| !holders.contains(id) && under(id, &load))
                .filter(|(_, v)| v.free_bytes > 2 * bytes)
                .filter(|(id, _)| fill(id, bytes as f64) <= fill(&from, -(bytes as f64)))
                .min_by(|a, b| load[a.0].total_cmp(&load[b.0]))
            else {
                continue;
            };
            let (v_from, v_to) = (writable[&from], writable[&to]);
            *load.get_mut(&from).expect("writable") -= bytes as f64;
            *load.get_mut(&to).expect("writable") += bytes as f64;
            let backlog = out.backlog.entry((JobKind::Rebalance, None)).or_default();
            backlog.shards += 1;
            backlog.bytes += bytes;
            let sources = s
                .placement
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .filter_map(|(j, p)| p.and_then(|id| servers.get(&id).map(|v| source(j, id, v))))
                .collect();
            out.jobs.push(Job {
                kind: JobKind::Rebalance,
                ino,
                chunk,
                slice: s.slice,
                layout: s.layout,
                index: i as u16,
                from: Some(from),
                to,
                to_addr: v_to.addr,
                copy_from: Some(source(i, from, v_from)),
                sources,
                bytes,
            });
            break;
        }
    }
}

/// Warns about policies whose shards cannot all sit in distinct failure domains.
fn domain_warnings(
    policies: &HashSet<lattice_common::policy::Policy>,
    servers: &BTreeMap<ChunkserverId, ServerView>,
) -> Vec<String> {
    let writable: Vec<&ServerView> = servers.values().filter(|v| v.writable()).collect();
    let hosts: BTreeSet<&str> = writable.iter().map(|v| v.domain.host.as_str()).collect();
    let racks: BTreeSet<&str> = writable.iter().map(|v| v.domain.rack.as_str()).collect();
    let mut policies: Vec<_> = policies.iter().collect();
    policies.sort_by_key(|p| p.to_string());
    policies
        .into_iter()
        .filter_map(|p| {
            let need = p.total_shards();
            if need > writable.len() {
                Some(format!(
                    "policy {p} needs {need} servers but only {} can take data: lost shards of its slices cannot all be rebuilt",
                    writable.len()
                ))
            } else if p.line_len() > hosts.len() {
                Some(format!(
                    "policy {p} spreads {need} shards over only {} failure domains (hosts): losing one host can cost a slice more than one shard of a codeword",
                    hosts.len()
                ))
            } else if p.line_len() > racks.len() && p.tolerance() < need.div_ceil(racks.len()) {
                Some(format!(
                    "policy {p} spreads {need} shards over only {} racks: losing one rack can cost a slice more shards than it tolerates",
                    racks.len()
                ))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_common::layout::DEFAULT_STRIPE_UNIT;
    use lattice_common::policy::Policy;

    const RS42: Policy = Policy::ReedSolomon { data: 4, parity: 2 };

    fn servers(n: u32) -> BTreeMap<ChunkserverId, ServerView> {
        (1..=n)
            .map(|i| {
                let view = ServerView {
                    addr: format!("127.0.0.1:{}", 7000 + i).parse().unwrap(),
                    state: ChunkserverState::Up,
                    fresh: true,
                    domain: Domain::of(&[], &format!("host{i}")),
                    used_bytes: 0,
                    free_bytes: 1 << 40,
                };
                (ChunkserverId(i), view)
            })
            .collect()
    }

    fn slice(id: u64, on: &[u32]) -> SliceRef {
        let layout = SliceLayout::new(RS42, 4 << 20, DEFAULT_STRIPE_UNIT).unwrap();
        SliceRef {
            slice: SliceId(id),
            layout,
            placement: on.iter().map(|&s| Some(ChunkserverId(s))).collect(),
            chunk_offset: 0,
            skip: 0,
            len: 4 << 20,
        }
    }

    fn run(slices: &[SliceRef], servers: &BTreeMap<ChunkserverId, ServerView>) -> Plan {
        let limits = Limits {
            max_jobs: 100,
            balance_tolerance: 0.1,
        };
        let all = slices.iter().map(|s| (InodeId(2), 0, s));
        plan(all, servers, &HashSet::new(), &BTreeMap::new(), limits)
    }

    #[test]
    fn repairs_the_most_endangered_first_onto_fresh_servers() {
        let mut view = servers(8);
        let slices = [slice(1, &[1, 2, 3, 4, 5, 6]), slice(2, &[1, 7, 3, 4, 5, 8])];
        view.get_mut(&ChunkserverId(7)).unwrap().state = ChunkserverState::Down;
        view.get_mut(&ChunkserverId(8)).unwrap().state = ChunkserverState::Down;
        let p = run(&slices, &view);
        assert_eq!(p.redundancy.healthy, 1);
        assert_eq!(p.redundancy.degraded_2_plus, 1);
        assert_eq!(p.jobs.len(), 2);
        for job in &p.jobs {
            assert_eq!(job.slice, SliceId(2));
            assert_eq!(job.kind, JobKind::Repair);
            assert!(![1, 3, 4, 5, 7, 8].contains(&job.to.0), "{job:?}");
            assert!(job.copy_from.is_none());
            assert!(job.sources.iter().all(|s| s.index.0 != job.index));
            assert_eq!(job.sources.len(), 4);
        }
        assert_ne!(p.jobs[0].to, p.jobs[1].to);
    }

    #[test]
    fn endangered_means_fewest_further_losses_survived_across_policies() {
        let mut view = servers(10);
        for down in [7, 8, 9] {
            view.get_mut(&ChunkserverId(down)).unwrap().state = ChunkserverState::Down;
        }
        // Two copies of three left (one more loss survivable) against four shards of
        // rs:4+2 (none): the Reed-Solomon slice has more survivors but is first.
        let mut mirror = slice(1, &[1, 2, 9]);
        mirror.layout = SliceLayout::new("mirror:3".parse().unwrap(), 4 << 20, 65536).unwrap();
        let rs = slice(2, &[1, 7, 3, 4, 5, 8]);
        let p = run(&[mirror, rs], &view);
        let order: Vec<u64> = p.jobs.iter().map(|j| j.slice.0).collect();
        assert_eq!(order, [2, 2, 1]);
    }

    #[test]
    fn a_grid_is_safe_over_as_many_racks_as_its_longest_line() {
        let in_racks = |racks: u32| {
            let mut view = servers(30);
            for (id, v) in view.iter_mut() {
                let labels = [("rack".to_string(), format!("r{}", id.0 % racks))];
                v.domain = Domain::of(&labels, &format!("h{}", id.0));
            }
            view
        };
        let grid: Policy = "grid:4x4+1".parse().unwrap();
        let rs: Policy = "rs:16+3".parse().unwrap();
        let warned = |p: Policy, racks| domain_warnings(&HashSet::from([p]), &in_racks(racks));
        // Lines of 5 over 5 racks: a rack lost costs each line one shard at most.
        assert!(warned(grid, 5).is_empty(), "{:?}", warned(grid, 5));
        assert_eq!(warned(grid, 4).len(), 1);
        // 19 shards of one codeword over 5 racks: 4 in one rack, 3 survivable.
        assert_eq!(warned(rs, 5).len(), 1);
    }

    #[test]
    fn a_suspect_server_is_not_repaired_yet() {
        let mut view = servers(7);
        let v = view.get_mut(&ChunkserverId(2)).unwrap();
        v.state = ChunkserverState::Suspect;
        v.fresh = false;
        let p = run(&[slice(1, &[1, 2, 3, 4, 5, 6])], &view);
        assert_eq!(p.redundancy.degraded_1, 1);
        assert!(p.jobs.is_empty());
    }

    #[test]
    fn draining_shards_are_copied_and_damaged_ones_rewritten_in_place() {
        let mut view = servers(7);
        view.get_mut(&ChunkserverId(6)).unwrap().state = ChunkserverState::Draining;
        let damaged = HashSet::from([(ShardId::new(SliceId(1), 0), ChunkserverId(1))]);
        let limits = Limits {
            max_jobs: 10,
            balance_tolerance: 0.1,
        };
        let s = slice(1, &[1, 2, 3, 4, 5, 6]);
        let all = std::iter::once((InodeId(2), 0, &s));
        let p = plan(all, &view, &damaged, &BTreeMap::new(), limits);
        let repair = &p.jobs[0];
        assert_eq!((repair.kind, repair.index), (JobKind::Repair, 0));
        assert_eq!(
            (repair.from, repair.to),
            (Some(ChunkserverId(1)), ChunkserverId(1))
        );
        let drain = &p.jobs[1];
        assert_eq!(
            (drain.kind, drain.index, drain.to),
            (JobKind::Drain, 5, ChunkserverId(7))
        );
        assert_eq!(drain.copy_from.as_ref().unwrap().server, ChunkserverId(6));
        let key = (JobKind::Drain, Some(ChunkserverId(6)));
        assert_eq!(p.backlog[&key].shards, 1);
        // Busy slices wait.
        let all = std::iter::once((InodeId(2), 0, &s));
        let busy = BTreeMap::from([(
            SliceId(1),
            Busy {
                from: Some(ChunkserverId(6)),
                to: ChunkserverId(7),
                bytes: 1,
            },
        )]);
        assert!(plan(all, &view, &damaged, &busy, limits).jobs.is_empty());
    }

    #[test]
    fn lost_slices_are_counted_and_left_alone() {
        let mut view = servers(6);
        for i in [1, 2, 3] {
            view.get_mut(&ChunkserverId(i)).unwrap().state = ChunkserverState::Down;
        }
        let p = run(&[slice(1, &[1, 2, 3, 4, 5, 6])], &view);
        assert_eq!(p.redundancy.lost, 1);
        assert!(p.jobs.is_empty());
    }

    #[test]
    fn new_servers_receive_shards_until_usage_is_even() {
        let view = servers(8);
        let slices: Vec<SliceRef> = (1..=40).map(|i| slice(i, &[1, 2, 3, 4, 5, 6])).collect();
        let p = run(&slices, &view);
        assert!(!p.jobs.is_empty());
        let mut to = BTreeMap::new();
        for j in &p.jobs {
            assert_eq!(j.kind, JobKind::Rebalance);
            assert!(j.to == ChunkserverId(7) || j.to == ChunkserverId(8));
            assert!(j.copy_from.is_some());
            *to.entry(j.to).or_insert(0) += 1;
        }
        // Each new server gets about its share (1/8 of 240 shards = 30), none too much.
        for n in to.values() {
            assert!((20..=33).contains(n), "{to:?}");
        }
        // Once even, nothing moves.
        let even: Vec<SliceRef> = (0..40u32)
            .map(|i| {
                let on: Vec<u32> = (0..6).map(|k| (i * 6 + k) % 8 + 1).collect();
                slice(i as u64 + 1, &on)
            })
            .collect();
        assert!(run(&even, &view).jobs.is_empty());
    }

    #[test]
    fn nothing_moves_while_a_slice_waits_for_a_suspect_server() {
        let mut view = servers(8);
        let slices: Vec<SliceRef> = (1..=40).map(|i| slice(i, &[1, 2, 3, 4, 5, 6])).collect();
        assert!(
            !run(&slices, &view).jobs.is_empty(),
            "servers 7 and 8 are empty"
        );
        let v = view.get_mut(&ChunkserverId(6)).unwrap();
        v.state = ChunkserverState::Suspect;
        v.fresh = false;
        let p = run(&slices, &view);
        assert_eq!(p.redundancy.degraded_1, 40);
        assert!(p.jobs.is_empty(), "{:?}", p.jobs);
    }

    #[test]
    fn moves_under_way_count_so_a_new_server_is_not_overfilled() {
        let view = servers(8);
        let slices: Vec<SliceRef> = (1..=40).map(|i| slice(i, &[1, 2, 3, 4, 5, 6])).collect();
        let bytes = slices[0].layout.shard_len();
        // 30 shards (server 7's whole share) are already on their way to server 7.
        let busy: BTreeMap<SliceId, Busy> = (100..130)
            .map(|i| {
                let from = Some(ChunkserverId(1 + (i % 6) as u32));
                (
                    SliceId(i),
                    Busy {
                        from,
                        to: ChunkserverId(7),
                        bytes,
                    },
                )
            })
            .collect();
        let limits = Limits {
            max_jobs: 100,
            balance_tolerance: 0.1,
        };
        let all = slices.iter().map(|s| (InodeId(2), 0, s));
        let p = plan(all, &view, &HashSet::new(), &busy, limits);
        assert!(
            p.jobs.iter().all(|j| j.to == ChunkserverId(8)),
            "{:?}",
            p.jobs
        );
    }

    #[test]
    fn a_one_shard_difference_does_not_bounce() {
        // 7 slices of 6 shards on 7 servers: 6 each, except one server with 5 and one with 7.
        let mut on: Vec<Vec<u32>> = (0..7u32)
            .map(|i| (0..6).map(|k| (i + k) % 7 + 1).collect())
            .collect();
        on[0][0] = 7;
        on[0].swap(0, 5);
        let slices: Vec<SliceRef> = on
            .iter()
            .enumerate()
            .map(|(i, o)| slice(i as u64 + 1, o))
            .collect();
        let p = run(&slices, &servers(7));
        assert!(p.jobs.len() <= 1, "{:?}", p.jobs);
    }

    #[test]
    fn warns_when_shards_cannot_spread_over_domains() {
        let mut view = servers(6);
        for (i, v) in view.values_mut().enumerate() {
            v.domain = Domain::of(&[], &format!("host{}", i % 4));
        }
        let p = run(&[slice(1, &[1, 2, 3, 4, 5, 6])], &view);
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0].contains("4 failure domains"),
            "{:?}",
            p.warnings
        );
        assert!(run(&[slice(1, &[1, 2, 3, 4, 5, 6])], &servers(6))
            .warnings
            .is_empty());
        // Six hosts in two racks: a rack holds three shards, more than rs:4+2 tolerates.
        let mut view = servers(6);
        for (i, v) in view.values_mut().enumerate() {
            let labels = [("rack".to_string(), format!("r{}", i % 2))];
            v.domain = Domain::of(&labels, &format!("host{i}"));
        }
        let p = run(&[slice(1, &[1, 2, 3, 4, 5, 6])], &view);
        assert!(p.warnings[0].contains("2 racks"), "{:?}", p.warnings);
    }
}
