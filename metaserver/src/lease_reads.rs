//! Reads answered by the thread that received them, while the leader holds its lease.
//!
//! The core thread applies the log and publishes here whether this member may answer from
//! its own state (it leads, under a lease no other member can be elected within). A query
//! then costs no hop to the core thread and back, and never waits behind its log fsync:
//! on two cores each hop is a thread wake-up of 50-150 us.
//!
//! Why such an answer is linearizable: the state only moves forward, and every write was
//! answered only after it was applied here, so a read sees every write acknowledged
//! before it was asked. Writes earlier leaders acknowledged are covered too: a lease
//! starts with a read round of this term, which completes only once this leader committed
//! an entry of its own, and no answer is given before that round's index is applied.

use crate::state_machine::StateMachine;
use lattice_common::fs::Errno;
use lattice_common::mount_user::Credentials;
use lattice_common::policy::LAYOUT_XATTR;
use lattice_common::wire::meta::{FsQuery, FsReply};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the core last published of its lease. All zero: answer nothing here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// Answers here only before this time (ms on the members' boot clock): the lease's
    /// first half. In the second half queries go to the core, whose reads renew the lease.
    pub answer_until_ms: u64,
    /// The state must have applied this far: the read index of the rounds that gave the
    /// lease. Writes of earlier leaders are all before it, and this one answers a write
    /// only once it applied it.
    pub applied_from: u64,
}

/// The state machine and the gate, shared by the core thread (the only writer) and the
/// threads answering requests.
pub struct Shared {
    sm: RwLock<StateMachine>,
    gate: Mutex<Gate>,
    answered: AtomicU64,
}

impl Shared {
    pub fn new(sm: StateMachine) -> Shared {
        Shared {
            sm: RwLock::new(sm),
            gate: Mutex::default(),
            answered: AtomicU64::default(),
        }
    }

    /// The state, for the core to read. Poisoning is ignored here (nothing that applies
    /// commands may panic); request threads refuse a poisoned state (see `current`).
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        self.sm.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, StateMachine> {
        self.sm.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn publish(&self, gate: Gate) {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = gate;
    }

    fn gate(&self) -> Gate {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, if a query may be answered from it at `now_ms` without the core.
    pub fn current(&self, now_ms: u64) -> Option<RwLockReadGuard<'_, StateMachine>> {
        // Closed on followers: they never wait for the lock.
        if now_ms >= self.gate().answer_until_ms {
            return None;
        }
        // A state poisoned by a panic while applying may be half applied.
        let sm = self.sm.read().ok()?;
        // Again once the state is ours: the core may have stepped down meanwhile.
        let gate = self.gate();
        (now_ms < gate.answer_until_ms && sm.applied >= gate.applied_from).then_some(sm)
    }

    /// Queries answered here since this member started.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }
}

/// The handle request threads hold.
#[derive(Clone)]
pub struct LocalReads(pub(crate) Arc<Shared>);

impl LocalReads {
    /// The answer to `query`, if this member may give it here and now; `None` sends it to
    /// the core.
    pub fn answer(
        &self,
        now_ms: u64,
        query: &FsQuery,
        who: Option<&Credentials>,
    ) -> Option<Result<FsReply, Errno>> {
        if !answered_from_state(query) {
            return None;
        }
        let sm = self.0.current(now_ms)?;
        let answer = sm.query(query, who);
        self.0.count();
        Some(answer)
    }
}

/// Whether the answer is the state machine's alone ([`StateMachine::query`]). The others
/// need what only the core holds: chunkservers' heartbeats (`StatFs`, the layout's
/// health), or a wait for a lock to come free.
pub fn answered_from_state(query: &FsQuery) -> bool {
    match query {
        FsQuery::StatFs | FsQuery::AwaitLock { .. } => false,
        FsQuery::GetXattr { name, .. } => name != LAYOUT_XATTR,
        _ => true,
    }
}

/// Milliseconds since boot, counting time the machine was suspended (CLOCK_BOOTTIME;
/// `Instant` is CLOCK_MONOTONIC, which stops meanwhile and would stretch a lease). A clock
/// that cannot be read reads as the end of time: no lease holds.
pub fn boot_clock_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return u64::MAX;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec as u64 / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_answers_only_inside_the_gate_and_once_it_applied_the_commits() {
        let shared = Shared::new(StateMachine::default());
        shared.write().applied = 5;
        assert!(shared.current(0).is_none(), "no lease published yet");
        shared.publish(Gate {
            answer_until_ms: 1000,
            applied_from: 7,
        });
        assert!(
            shared.current(10).is_none(),
            "the lease's index not applied yet"
        );
        shared.write().applied = 7;
        assert!(shared.current(999).is_some());
        assert!(
            shared.current(1000).is_none(),
            "past the lease's first half"
        );
        shared.publish(Gate::default());
        assert!(shared.current(10).is_none(), "no longer leading");
    }

    #[test]
    fn what_needs_the_core_goes_to_the_core() {
        let reads = LocalReads(Arc::new(Shared::new(StateMachine::default())));
        reads.0.publish(Gate {
            answer_until_ms: 1000,
            applied_from: 0,
        });
        let layout = FsQuery::GetXattr {
            ino: lattice_common::ids::InodeId::ROOT,
            name: LAYOUT_XATTR.to_vec(),
        };
        for q in [FsQuery::StatFs, layout] {
            assert!(reads.answer(1, &q, None).is_none(), "{q:?}");
        }
        let q = FsQuery::GetAttr {
            ino: lattice_common::ids::InodeId::ROOT,
        };
        assert!(reads.answer(1, &q, None).is_some());
        assert_eq!(reads.0.answered(), 1);
    }
}
