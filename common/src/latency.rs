//! What a reader knows of each chunkserver it reads from: a moving average of how long its
//! shard reads take, and whether it is avoided (read around when parity can stand in)
//! because it failed, was hedged, is slow, or the metaserver says it is suspect or
//! draining. A server avoided for being slow is not tried again by a user's read: once its
//! time is up, one background probe read measures it first.

use crate::metrics::Counter;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Weight of a new sample in the moving average (1/4).
const EWMA_SHIFT: u32 = 2;
/// Reads are compared per this many bytes (smaller ones count as this size), so a large
/// read is not taken for a slow one.
const UNIT: u64 = 64 << 10;
/// A server this many times slower than the typical one is read around.
const SLOW_FACTOR: u32 = 4;
/// ... unless it is faster than this (loopback jitter is not slowness).
const SLOW_FLOOR: Duration = Duration::from_millis(20);
/// Never hedge sooner than this, whatever the averages say.
pub const MIN_HEDGE: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// Per [`UNIT`] of bytes read.
    average: Option<Duration>,
    avoid_until: Option<Instant>,
    /// A probe read is out: the server stays avoided until it answers.
    probing: bool,
}

/// Counters for metrics.
#[derive(Default)]
pub struct ReadStats {
    /// Shard reads given up on as slow, read around instead.
    pub hedged: Counter,
    /// Shard reads planned around an avoided server from the start.
    pub avoided: Counter,
    /// Background reads that measured an avoided server.
    pub probes: Counter,
}

/// Whether a read should go to a server now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Use,
    Avoid,
    /// Avoided, and its time is up: measure it with one background read first.
    Probe,
}

pub struct Latencies {
    servers: Mutex<HashMap<SocketAddr, Entry>>,
    /// How long a server is read around after it failed, was hedged, or a probe found it
    /// still slow.
    avoid_for: Duration,
    pub stats: ReadStats,
}

impl Latencies {
    pub fn new(avoid_for: Duration) -> Self {
        Latencies {
            servers: Mutex::default(),
            avoid_for,
            stats: ReadStats::default(),
        }
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Entry>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A read of `bytes` from `addr` took `took`: the average moves; an avoided server that
    /// answered fast is used again, one that answered slowly stays avoided a while longer.
    pub fn record(&self, addr: SocketAddr, took: Duration, bytes: u64, now: Instant) {
        let took = took / units(bytes);
        let typical = self.typical();
        let mut servers = self.servers();
        let e = servers.entry(addr).or_default();
        e.average = Some(match e.average {
            None => took,
            Some(a) => a - a / (1 << EWMA_SHIFT) + took / (1 << EWMA_SHIFT),
        });
        e.probing = false;
        if e.avoid_until.is_some() {
            e.avoid_until = is_slow(took, typical).then(|| now + self.avoid_for);
        }
    }

    /// Reads go around `addr` for a while (it failed or was hedged).
    pub fn avoid(&self, addr: SocketAddr, now: Instant) {
        let until = now + self.avoid_for;
        let mut servers = self.servers();
        let e = servers.entry(addr).or_default();
        e.avoid_until = Some(e.avoid_until.map_or(until, |u| u.max(until)));
        e.probing = false;
    }

    /// Whether to read from `addr` now. A server whose avoidance ran out is used again,
    /// unless its average says it is still slow: then it is probed once, in the
    /// background, and stays avoided until the probe answers.
    pub fn verdict(&self, addr: SocketAddr, now: Instant) -> Verdict {
        let typical = self.typical();
        let mut servers = self.servers();
        let Some(e) = servers.get_mut(&addr) else {
            return Verdict::Use;
        };
        match e.avoid_until {
            None => Verdict::Use,
            Some(u) if u > now || e.probing => Verdict::Avoid,
            Some(_) if e.average.is_some_and(|a| is_slow(a, typical)) => {
                e.probing = true;
                Verdict::Probe
            }
            Some(_) => {
                e.avoid_until = None;
                Verdict::Use
            }
        }
    }

    /// The median of the servers' averages: what reading a unit usually takes.
    pub fn typical(&self) -> Option<Duration> {
        let mut all: Vec<Duration> = self.servers().values().filter_map(|e| e.average).collect();
        if all.is_empty() {
            return None;
        }
        all.sort();
        Some(all[all.len() / 2])
    }

    /// The least wait for a shard read of `bytes` before reading around it: `factor` times
    /// the typical read of that size, within `MIN_HEDGE..=ceiling` (the ceiling before
    /// anything is known).
    pub fn hedge_after(&self, factor: u32, ceiling: Duration, bytes: u64) -> Duration {
        match self.typical() {
            Some(t) => (t * units(bytes) * factor).clamp(MIN_HEDGE, ceiling.max(MIN_HEDGE)),
            None => ceiling,
        }
    }
}

fn units(bytes: u64) -> u32 {
    bytes.div_ceil(UNIT).clamp(1, u64::from(u32::MAX)) as u32
}

fn is_slow(took: Duration, typical: Option<Duration>) -> bool {
    took > SLOW_FLOOR && typical.is_some_and(|t| took > t * SLOW_FACTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], n))
    }

    #[test]
    fn a_slow_server_is_probed_not_read_by_users() {
        let l = Latencies::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for n in 1..=5 {
            l.record(addr(n), Duration::from_millis(2), 4096, t0);
        }
        for _ in 0..8 {
            l.record(addr(6), Duration::from_millis(500), 4096, t0);
        }
        assert_eq!(l.typical(), Some(Duration::from_millis(2)));
        assert_eq!(l.verdict(addr(6), t0), Verdict::Use, "never avoided yet");

        // Hedged once: avoided for a while, then probed (once) instead of used.
        let later = t0 + Duration::from_secs(5);
        l.avoid(addr(6), t0);
        assert_eq!(l.verdict(addr(6), t0), Verdict::Avoid);
        assert_eq!(l.verdict(addr(6), later), Verdict::Probe);
        assert_eq!(
            l.verdict(addr(6), later),
            Verdict::Avoid,
            "one probe at a time"
        );
        // The probe is slow again: avoided again, for another while.
        l.record(addr(6), Duration::from_millis(500), 4096, later);
        assert_eq!(l.verdict(addr(6), later), Verdict::Avoid);
        let even_later = later + Duration::from_secs(5);
        assert_eq!(l.verdict(addr(6), even_later), Verdict::Probe);
        // It got fast: one fast answer brings it back.
        l.record(addr(6), Duration::from_millis(2), 4096, even_later);
        assert_eq!(l.verdict(addr(6), even_later), Verdict::Use);

        // A server avoided for failing, but not slow, is simply used once its time is up.
        l.avoid(addr(1), t0);
        assert_eq!(l.verdict(addr(1), t0), Verdict::Avoid);
        assert_eq!(l.verdict(addr(1), later), Verdict::Use);
    }

    #[test]
    fn hedging_waits_a_few_typical_reads_within_bounds() {
        let l = Latencies::new(Duration::from_secs(5));
        let ceiling = Duration::from_millis(300);
        let now = Instant::now();
        assert_eq!(
            l.hedge_after(4, ceiling, 4096),
            ceiling,
            "nothing known yet"
        );
        l.record(addr(1), Duration::from_millis(1), 4096, now);
        assert_eq!(l.hedge_after(4, ceiling, 4096), MIN_HEDGE);
        for _ in 0..20 {
            l.record(addr(1), Duration::from_millis(40), 4096, now);
        }
        let h = l.hedge_after(4, ceiling, 4096);
        assert!(
            h > Duration::from_millis(140) && h <= Duration::from_millis(160),
            "{h:?}"
        );
        // Per unit of bytes: a 1 MiB read taking 16 times a 64 KiB one is not slow, and is
        // waited for accordingly.
        l.record(addr(2), Duration::from_millis(640), 1 << 20, now);
        assert_eq!(l.verdict(addr(2), now), Verdict::Use);
        let big = l.hedge_after(4, Duration::from_secs(10), 1 << 20);
        assert!(big > Duration::from_millis(2000), "{big:?}");
        for _ in 0..20 {
            l.record(addr(1), Duration::from_secs(1), 4096, now);
        }
        assert_eq!(l.hedge_after(4, ceiling, 4096), ceiling);
    }
}
