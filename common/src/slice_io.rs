//! Reading and writing whole slices: parity encoding, parallel shard I/O, and reads that
//! reconstruct around shards that are missing, unreachable, slow past their deadline or
//! corrupt. Used by the fs-client and by chunkservers rebuilding a shard.

use crate::erasure::{ErasureCode, ErasureError};
use crate::ids::{ChunkserverId, ShardId, SliceId};
use crate::latency::{Latencies, ReadStats, Verdict};
use crate::layout::{LayoutError, SliceLayout};
use crate::shard_client::{ShardClient, ShardError};
use crate::wire::meta::ServerAddr;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where one shard of a slice lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ShardTarget {
    pub server: ChunkserverId,
    pub addr: SocketAddr,
}

impl From<&ServerAddr> for ShardTarget {
    fn from(s: &ServerAddr) -> Self {
        ShardTarget {
            server: s.id,
            addr: s.addr,
        }
    }
}

/// A shard that could not be used, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardProblem {
    pub index: usize,
    pub server: Option<ChunkserverId>,
    pub error: ShardError,
}

impl fmt::Display for ShardProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.server {
            Some(s) => write!(f, "shard {} on {s}: {}", self.index, self.error),
            None => write!(f, "shard {}: {}", self.index, self.error),
        }
    }
}

fn list(problems: &[ShardProblem]) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    #[error("placement names {got} shards, the policy needs {need}")]
    PlacementSize { got: usize, need: usize },
    #[error("placement puts two shards of one slice on {0}: one failure would cost two shards")]
    SharedServer(String),
    #[error("writing slice {slice}: {}", list(.problems))]
    Write {
        slice: SliceId,
        problems: Vec<ShardProblem>,
    },
    #[error("slice {slice} cannot be read: more shards lost than the policy tolerates: {}", list(.problems))]
    Lost {
        slice: SliceId,
        problems: Vec<ShardProblem>,
    },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Erasure(#[from] ErasureError),
}

/// The bytes of a read, and the shards it had to read around.
#[derive(Debug)]
pub struct SliceRead {
    pub data: Vec<u8>,
    pub problems: Vec<ShardProblem>,
}

/// A shard write is never given up on as slow sooner than this (it includes an fsync).
const WRITE_HEDGE_FLOOR: Duration = Duration::from_secs(2);

/// When a read stops waiting for a shard and reads around it instead.
#[derive(Clone, Copy, Debug)]
pub struct Hedging {
    /// Never hedge a shard sooner than this.
    pub floor: Duration,
    /// Hedge a shard that takes this many times longer than the slowest peer that answered.
    pub factor: u32,
    /// Hedge a shard read that has no peers to compare with after this long.
    pub alone: Duration,
    /// A server that failed or was hedged is read around (tried last) for this long.
    pub suspect_for: Duration,
}

impl Default for Hedging {
    fn default() -> Self {
        Hedging {
            floor: Duration::from_millis(300),
            factor: 4,
            alone: Duration::from_secs(1),
            suspect_for: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct SliceIo {
    client: ShardClient,
    hedging: Hedging,
    latencies: Arc<Latencies>,
}

impl SliceIo {
    pub fn new(client: ShardClient) -> Self {
        SliceIo::with_hedging(client, Hedging::default())
    }

    pub fn with_hedging(client: ShardClient, hedging: Hedging) -> Self {
        SliceIo {
            client,
            hedging,
            latencies: Arc::new(Latencies::new(hedging.suspect_for)),
        }
    }

    pub fn client(&self) -> &ShardClient {
        &self.client
    }

    /// Hedges, avoided servers and probes so far.
    pub fn stats(&self) -> &ReadStats {
        &self.latencies.stats
    }

    /// Reads go around `addr` for a while when parity can stand in (the metaserver says
    /// it is suspect or draining).
    pub fn avoid_server(&self, addr: SocketAddr) {
        self.latencies.avoid(addr, Instant::now());
    }

    /// Whether shard `index` is to be read around rather than read from its server; a
    /// server whose time out is up but which was slow is probed in the background with
    /// this very read first.
    fn is_suspect(
        &self,
        target: &Option<ShardTarget>,
        probe: (SliceId, usize, &Range<u64>),
    ) -> bool {
        let Some(t) = *target else { return false };
        match self.latencies.verdict(t.addr, Instant::now()) {
            Verdict::Use => false,
            Verdict::Avoid => true,
            Verdict::Probe => {
                let (slice, index, range) = (probe.0, probe.1, probe.2.clone());
                self.latencies.stats.probes.add(1);
                let io = self.clone();
                tokio::spawn(async move {
                    // Its result feeds the averages (`fetch` records them); one that fails
                    // leaves the server avoided a while longer.
                    if io.fetch(slice, Some(t), index, range).await.is_err() {
                        io.suspect(t.addr);
                    }
                });
                true
            }
        }
    }

    fn suspect(&self, addr: SocketAddr) {
        self.latencies.avoid(addr, Instant::now());
    }

    /// Encodes `data` and stores its shards in parallel, shard i on `targets[i]` (a shard
    /// without a target is not stored: the slice lands degraded, to be repaired). Fails
    /// listing every shard that could not be stored. Once the policy's least number of
    /// shards is stored ([`Policy::min_shards`]), a shard that lags far behind its peers
    /// (a dead or sick server) is given up on like a failed one and its server read around
    /// for a while: one server must not stall every write.
    ///
    /// [`Policy::min_shards`]: crate::policy::Policy::min_shards
    pub async fn write(
        &self,
        slice: SliceId,
        layout: SliceLayout,
        data: Bytes,
        targets: &[Option<ShardTarget>],
    ) -> Result<Vec<Bytes>, SliceError> {
        check_distinct(layout, targets)?;
        let shards = encode(layout, data).await?;
        let since = Instant::now();
        let mut puts: FuturesUnordered<_> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let t = (*t)?;
                let (id, shard) = (ShardId::new(slice, i as u16), shards[i].clone());
                Some(async move { (i, t, self.client.put(t.addr, id, layout, shard).await) })
            })
            .collect();
        let mut waiting: HashMap<usize, ShardTarget> = targets
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((i, (*t)?)))
            .collect();
        let (mut stored, mut slowest) = (0, Duration::ZERO);
        let mut problems = Vec::new();
        loop {
            let patience = (slowest * self.hedging.factor).max(WRITE_HEDGE_FLOOR);
            let next = if stored >= layout.policy.min_shards() {
                match tokio::time::timeout_at((since + patience).into(), puts.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        for (index, t) in waiting.drain() {
                            self.suspect(t.addr);
                            problems.push(ShardProblem {
                                index,
                                server: Some(t.server),
                                error: ShardError::Slow(patience),
                            });
                        }
                        break;
                    }
                }
            } else {
                puts.next().await
            };
            let Some((index, t, result)) = next else {
                break;
            };
            waiting.remove(&index);
            match result {
                Ok(()) => {
                    stored += 1;
                    slowest = since.elapsed();
                }
                Err(error) => problems.push(ShardProblem {
                    index,
                    server: Some(t.server),
                    error,
                }),
            }
        }
        drop(puts);
        if problems.is_empty() {
            Ok(shards)
        } else {
            Err(SliceError::Write { slice, problems })
        }
    }

    /// Reads slice bytes `offset..offset+len`. Data shards are read in parallel; a shard
    /// without a target (`None`: its server is known dead), on a suspect server, whose read
    /// fails, or that is much slower than its peers (hedging) is rebuilt from the same range
    /// of other shards.
    pub async fn read(
        &self,
        slice: SliceId,
        layout: SliceLayout,
        targets: &[Option<ShardTarget>],
        offset: u64,
        len: u64,
    ) -> Result<SliceRead, SliceError> {
        check_size(layout, targets.len())?;
        let ranges = layout.shard_ranges(offset, len)?;
        let mut bufs: Vec<Option<Vec<u8>>> = vec![None; ranges.len()];
        let mut problems = Vec::new();
        let mut failed = Vec::new();
        // Shards skipped as suspect or slow: still worth a try if too few others answer.
        let mut last_resort = Vec::new();
        let mut fetches = Fetches::new(self, slice, targets);
        for (i, r) in ranges.iter().enumerate() {
            let Some(r) = r.clone() else { continue };
            match targets[i] {
                Some(t) if self.is_suspect(&targets[i], (slice, i, &r)) => {
                    self.latencies.stats.avoided.add(1);
                    problems.push(ShardProblem {
                        index: i,
                        server: Some(t.server),
                        error: ShardError::Avoided,
                    });
                    failed.push(i);
                    last_resort.push(i);
                }
                Some(_) => fetches.launch(i, r),
                None => {
                    problems.push(no_server(i));
                    failed.push(i);
                }
            }
        }
        while fetches.waiting() {
            match fetches.next().await {
                // A read given up on as slow may still answer: it is being read around.
                Fetched::Done(i, _) if failed.contains(&i) => {}
                Fetched::Done(i, Ok(buf)) => bufs[i] = Some(buf),
                Fetched::Done(i, Err(problem)) => {
                    problems.push(problem);
                    failed.push(i);
                }
                Fetched::Slow(slow) => {
                    // Stop waiting for them: reading around is faster.
                    for (i, problem) in slow {
                        problems.push(problem);
                        failed.push(i);
                        last_resort.push(i);
                    }
                }
                Fetched::Idle => break,
            }
        }
        drop(fetches);
        if !failed.is_empty() {
            let span = |i: &usize| ranges[*i].clone().unwrap_or_default();
            let start = failed.iter().map(|i| span(i).start).min().unwrap_or(0);
            let end = failed.iter().map(|i| span(i).end).max().unwrap_or(0);
            let known = |j: usize| -> Option<Vec<u8>> {
                let (have, buf) = (ranges.get(j)?.as_ref()?, bufs.get(j)?.as_ref()?);
                (have.start <= start && end <= have.end).then(|| {
                    buf[(start - have.start) as usize..(end - have.start) as usize].to_vec()
                })
            };
            let plan = Recovery {
                missing: &failed,
                last_resort: &last_resort,
                range: start..end,
            };
            let rebuilt = self
                .recover(slice, layout, targets, plan, known, &mut problems)
                .await?;
            for &i in &failed {
                let r = span(&i);
                let piece = rebuilt[i].as_deref().unwrap_or_default();
                bufs[i] =
                    Some(piece[(r.start - start) as usize..(r.end - start) as usize].to_vec());
            }
        }
        let data = layout.assemble(offset, len, &ranges, &bufs)?;
        Ok(SliceRead { data, problems })
    }

    /// Rebuilds `plan.range` of shards `plan.missing` from the same range of other shards,
    /// as few as the code allows (any K for Reed-Solomon, the cheapest lines of a grid):
    /// healthy servers first, suspect ones next, `plan.last_resort` last. A read that fails,
    /// or lags far behind its peers, is planned around with more reads. `known(j)` may
    /// supply shard j's piece without a read. Returns every shard's piece it has.
    pub async fn recover(
        &self,
        slice: SliceId,
        layout: SliceLayout,
        targets: &[Option<ShardTarget>],
        plan: Recovery<'_>,
        known: impl Fn(usize) -> Option<Vec<u8>>,
        problems: &mut Vec<ShardProblem>,
    ) -> Result<Vec<Option<Vec<u8>>>, SliceError> {
        check_size(layout, targets.len())?;
        let code = ErasureCode::new(layout.policy)?;
        let total = layout.policy.total_shards();
        let wanted: Vec<usize> = plan
            .missing
            .iter()
            .copied()
            .filter(|&i| i < total)
            .collect();
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; total];
        let (mut healthy, mut suspect) = (Vec::new(), Vec::new());
        for j in (0..total).filter(|j| !wanted.contains(j)) {
            match known(j) {
                Some(piece) => pieces[j] = Some(piece),
                None if self.is_suspect(&targets[j], (slice, j, &plan.range)) => suspect.push(j),
                None => healthy.push(j),
            }
        }
        // Each tier adds candidates only when the ones before it cannot do.
        let mut tiers = vec![healthy];
        tiers.push([tiers[0].clone(), suspect].concat());
        tiers.push([tiers[1].clone(), plan.last_resort.to_vec()].concat());
        let mut launched = vec![false; total];
        // Launched and not yet failed, nor given up on as slow.
        let mut counted = vec![false; total];
        let mut fetches = Fetches::new(self, slice, targets);
        loop {
            let have: Vec<bool> = pieces.iter().map(Option::is_some).collect();
            if code.reads_for(&wanted, &have, &[]) == Some(Vec::new()) {
                break;
            }
            let in_hand: Vec<bool> = (0..total).map(|j| have[j] || counted[j]).collect();
            let reads = tiers.iter().find_map(|tier| {
                let usable: Vec<usize> = tier.iter().copied().filter(|&j| !launched[j]).collect();
                code.reads_for(&wanted, &in_hand, &usable)
            });
            match reads {
                Some(reads) => {
                    for j in reads {
                        launched[j] = true;
                        counted[j] = true;
                        fetches.launch(j, plan.range.clone());
                    }
                }
                // Nothing more to read that would do: wait for the slow reads.
                None => fetches.stop_hedging(),
            }
            match fetches.next().await {
                Fetched::Done(j, Ok(piece)) => pieces[j] = Some(piece),
                Fetched::Done(j, Err(problem)) => {
                    counted[j] = false;
                    problems.push(problem);
                }
                Fetched::Slow(slow) => {
                    for (j, problem) in slow {
                        counted[j] = false;
                        problems.push(problem);
                    }
                }
                Fetched::Idle => {
                    return Err(SliceError::Lost {
                        slice,
                        problems: problems.clone(),
                    })
                }
            }
        }
        drop(fetches);
        tokio::task::spawn_blocking(move || {
            code.reconstruct_wanted(&mut pieces, &wanted)
                .map(|()| pieces)
        })
        .await
        .expect("reconstruction does not panic")
        .map_err(SliceError::from)
    }

    async fn fetch(
        &self,
        slice: SliceId,
        target: Option<ShardTarget>,
        index: usize,
        range: Range<u64>,
    ) -> Result<Vec<u8>, ShardProblem> {
        let problem = |server, error| ShardProblem {
            index,
            server,
            error,
        };
        let t = target.ok_or_else(|| no_server(index))?;
        let id = ShardId::new(slice, index as u16);
        let started = Instant::now();
        let result = self
            .client
            .get(t.addr, id, range.start, range.end - range.start)
            .await;
        match &result {
            Ok(bytes) => self.latencies.record(
                t.addr,
                started.elapsed(),
                bytes.len() as u64,
                Instant::now(),
            ),
            Err(ShardError::Timeout(_) | ShardError::Unreachable(_)) => self.suspect(t.addr),
            Err(_) => {}
        }
        result.map_err(|e| problem(Some(t.server), e))
    }
}

fn no_server(index: usize) -> ShardProblem {
    ShardProblem {
        index,
        server: None,
        error: ShardError::Unreachable("no live server holds it".into()),
    }
}

type FetchResult = (usize, Result<Vec<u8>, ShardProblem>);

/// What [`Fetches::next`] saw.
enum Fetched {
    Done(usize, Result<Vec<u8>, ShardProblem>),
    /// These reads lag far behind their peers (they keep running; their servers are now
    /// suspect).
    Slow(Vec<(usize, ShardProblem)>),
    /// Nothing is in flight.
    Idle,
}

/// Shard reads in flight, each with the time it was launched, which decides when it is
/// slower than its peers.
struct Fetches<'a> {
    io: &'a SliceIo,
    slice: SliceId,
    targets: &'a [Option<ShardTarget>],
    inflight: FuturesUnordered<futures::future::BoxFuture<'a, FetchResult>>,
    /// Reads out: where, since when, how many bytes.
    pending: HashMap<usize, (ShardTarget, Instant, u64)>,
    /// How long the slowest read that answered took.
    slowest: Option<Duration>,
    hedging: bool,
}

impl<'a> Fetches<'a> {
    fn new(io: &'a SliceIo, slice: SliceId, targets: &'a [Option<ShardTarget>]) -> Self {
        Fetches {
            io,
            slice,
            targets,
            inflight: FuturesUnordered::new(),
            pending: HashMap::new(),
            slowest: None,
            hedging: true,
        }
    }

    fn launch(&mut self, index: usize, range: Range<u64>) {
        let (io, slice, target) = (self.io, self.slice, self.targets[index]);
        if let Some(t) = target {
            let bytes = range.end - range.start;
            self.pending.insert(index, (t, Instant::now(), bytes));
        }
        self.inflight.push(Box::pin(async move {
            (index, io.fetch(slice, target, index, range).await)
        }));
    }

    /// Whether reads are out that have not been given up on.
    fn waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Waits only for completions from now on.
    fn stop_hedging(&mut self) {
        self.hedging = false;
    }

    async fn next(&mut self) -> Fetched {
        let h = self.io.hedging;
        // Once a peer has answered, a read is compared with it, and at least with a few
        // typical reads of its size (timed so far), never less than 50 ms nor more than
        // the floor; before that, only a read out for `alone` is given up on.
        let known = &self.io.latencies;
        let bytes = self.pending.values().map(|p| p.2).max().unwrap_or(0);
        let hedge_after = match self.slowest {
            Some(d) => (d * h.factor).max(known.hedge_after(h.factor, h.floor, bytes)),
            None => h.alone,
        };
        let first = self.pending.values().map(|p| p.1).min();
        let next = match first.filter(|_| self.hedging) {
            Some(first) => {
                match tokio::time::timeout_at((first + hedge_after).into(), self.inflight.next())
                    .await
                {
                    Ok(next) => next,
                    Err(_) => return Fetched::Slow(self.give_up_on_slow(hedge_after)),
                }
            }
            None => self.inflight.next().await,
        };
        match next {
            None => Fetched::Idle,
            Some((index, result)) => {
                if let Some((_, at, _)) = self.pending.remove(&index) {
                    if result.is_ok() {
                        self.slowest = self.slowest.max(Some(at.elapsed()));
                    }
                }
                Fetched::Done(index, result)
            }
        }
    }

    /// The reads out for `hedge_after` or longer: their servers are avoided for a while
    /// and the reads are left to run, unwaited for.
    fn give_up_on_slow(&mut self, hedge_after: Duration) -> Vec<(usize, ShardProblem)> {
        let now = Instant::now();
        let late: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.1 + hedge_after <= now)
            .map(|(&i, _)| i)
            .collect();
        let slow: Vec<(usize, ShardProblem)> = late
            .into_iter()
            .filter_map(|index| {
                let (t, _, _) = self.pending.remove(&index)?;
                self.io.suspect(t.addr);
                let error = ShardError::Slow(hedge_after);
                let server = Some(t.server);
                Some((
                    index,
                    ShardProblem {
                        index,
                        server,
                        error,
                    },
                ))
            })
            .collect();
        self.io.latencies.stats.hedged.add(slow.len() as u64);
        slow
    }
}

/// What [`SliceIo::recover`] rebuilds.
pub struct Recovery<'a> {
    /// Shards whose pieces are wanted (not read).
    pub missing: &'a [usize],
    /// Of those, shards that may still be read if nothing else is left.
    pub last_resort: &'a [usize],
    pub range: Range<u64>,
}

async fn encode(layout: SliceLayout, data: Bytes) -> Result<Vec<Bytes>, SliceError> {
    let code = ErasureCode::new(layout.policy)?;
    let shards = tokio::task::spawn_blocking(move || code.encode_slice(&layout, &data))
        .await
        .expect("encoding does not panic")?;
    Ok(shards.into_iter().map(Bytes::from).collect())
}

fn check_size(layout: SliceLayout, got: usize) -> Result<(), SliceError> {
    let need = layout.policy.total_shards();
    if got == need {
        Ok(())
    } else {
        Err(SliceError::PlacementSize { got, need })
    }
}

fn check_distinct(layout: SliceLayout, targets: &[Option<ShardTarget>]) -> Result<(), SliceError> {
    check_size(layout, targets.len())?;
    let mut servers = HashSet::new();
    let mut addrs = HashSet::new();
    for t in targets.iter().flatten() {
        if !servers.insert(t.server) {
            return Err(SliceError::SharedServer(t.server.to_string()));
        }
        if !addrs.insert(t.addr) {
            return Err(SliceError::SharedServer(t.addr.to_string()));
        }
    }
    Ok(())
}
