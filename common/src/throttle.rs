//! A byte-rate limit shared by concurrent tasks (repair, scrub), so background work leaves
//! room for user I/O.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Longest one `take` sleeps, so a huge request cannot stall everything behind it forever.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct Throttle {
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    /// When the bytes granted so far will have been "spent" at `rate`.
    busy_until: Mutex<Instant>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Throttle {
            rate: bytes_per_sec,
            busy_until: Mutex::new(Instant::now()),
        }
    }

    /// How long a caller taking `bytes` now must wait; books them.
    pub fn book(&self, bytes: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.rate as f64);
        let now = Instant::now();
        let mut busy = self.busy_until.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*busy).max(now);
        *busy = start + cost;
        (start - now).min(MAX_WAIT)
    }

    /// Waits until `bytes` more fit within the rate.
    pub async fn take(&self, bytes: u64) {
        let wait = self.book(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Throttle::new(0);
        assert_eq!(t.book(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn bookings_queue_up_at_the_rate() {
        let t = Throttle::new(1 << 20);
        assert!(t.book(1 << 20) < Duration::from_millis(5));
        let second = t.book(1 << 20);
        assert!(second > Duration::from_millis(900) && second <= Duration::from_secs(1));
        assert!(t.book(1 << 30) <= MAX_WAIT);
    }
}
