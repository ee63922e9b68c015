//! Client sessions: each belongs to the certificate that opened it, a certificate has a
//! bounded number of them, and a session's memory of replies is bounded without ever
//! applying a request twice. Also requests that do two things: both land, or neither.

use super::*;
use lattice_common::fs::Caller;
use lattice_common::fs::{FileKind, LockKind, LockRange, LockSpace};

struct Cluster {
    sm: StateMachine,
    index: u64,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            sm: StateMachine::new(BTreeMap::new()),
            index: 0,
        }
    }

    fn apply(&mut self, cmd: Command) -> Outcome {
        self.index += 1;
        self.sm.apply(self.index, cmd)
    }

    /// `op` as request `seq` of `client`, sent with `certificate`, at second `secs`.
    fn request(
        &mut self,
        (client, certificate): (u64, &str),
        (seq, acked_below): (u64, u64),
        secs: i64,
        op: FsOp,
    ) -> Result<FsReply, Errno> {
        let cmd = Command::Fs {
            request: SessionRequest {
                client: ClientId(client),
                certificate: certificate.into(),
                seq,
                acked_below,
            },
            now: Timestamp { secs, nanos: 0 },
            op,
            who: None,
        };
        match self.apply(cmd) {
            Outcome::Fs(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn mkdir(&mut self, who: (u64, &str), seq: u64, name: &str) -> Result<FsReply, Errno> {
        self.request(who, (seq, seq), 0, mkdir(name))
    }

    fn exists(&self, name: &str) -> bool {
        self.sm.ns.lookup(InodeId::ROOT, name.as_bytes()).is_ok()
    }
}

fn mkdir(name: &str) -> FsOp {
    FsOp::Mkdir {
        parent: InodeId::ROOT,
        name: name.as_bytes().to_vec(),
        perm: 0o755,
        umask: 0,
        caller: Caller::ROOT,
    }
}

#[test]
fn another_certificate_cannot_use_end_or_resume_a_session() {
    let mut c = Cluster::new();
    let file = FsOp::Mknod {
        parent: InodeId::ROOT,
        name: b"a".to_vec(),
        kind: FileKind::File,
        perm: 0o644,
        umask: 0,
        rdev: 0,
        caller: Caller::ROOT,
    };
    let Ok(FsReply::Made { attr: a, .. }) = c.request((1, "alice"), (1, 1), 0, file) else {
        panic!("mknod refused");
    };
    let lock = FsOp::SetLock {
        ino: a.ino,
        owner: 7,
        lock: LockRange {
            space: LockSpace::Record,
            kind: LockKind::Write,
            start: 0,
            end: u64::MAX,
            pid: 1,
        },
    };
    assert!(c.request((1, "alice"), (2, 2), 0, lock).is_ok());
    let held = c.sm.locks.clone();
    assert_ne!(held, LockTable::default());

    // Mallory names alice's session: refused, and nothing is applied.
    assert_eq!(c.mkdir((1, "mallory"), 3, "m"), Err(Errno::PERM));
    assert!(!c.exists("m"));
    // Not even a retry of alice's request gets alice's reply.
    assert_eq!(c.mkdir((1, "mallory"), 1, "a"), Err(Errno::PERM));
    let end = |certificate: Option<&str>| Command::EndSession {
        client: ClientId(1),
        certificate: certificate.map(String::from),
    };
    assert_eq!(c.apply(end(Some("mallory"))), Outcome::Fs(Err(Errno::PERM)));
    assert_eq!(
        c.sm.locks, held,
        "another certificate released alice's locks"
    );
    let resume = |certificate: &str| Command::ResumeSession {
        client: ClientId(1),
        certificate: certificate.into(),
    };
    assert_eq!(c.apply(resume("mallory")), Outcome::Fs(Err(Errno::PERM)));

    // The leader ends a silent session (no certificate): its locks go, the session stays
    // and hears so; it resumes.
    assert_eq!(c.apply(end(None)), Outcome::Done);
    assert_eq!(c.sm.locks, LockTable::default());
    assert!(c.sm.locks_lost(ClientId(1)));
    assert_eq!(c.apply(resume("alice")), Outcome::Done);
    assert!(!c.sm.locks_lost(ClientId(1)));
    assert_eq!(c.sm.session_certificate(ClientId(1)), Some("alice"));
    // Alice's goodbye (an unmount) forgets the session.
    assert_eq!(c.apply(end(Some("alice"))), Outcome::Done);
    assert_eq!(c.sm.session_certificate(ClientId(1)), None);
}

#[test]
fn a_certificate_has_a_bounded_number_of_sessions() {
    let mut c = Cluster::new();
    let max = MAX_SESSIONS_PER_CERTIFICATE as u64;
    for client in 0..max {
        let name = format!("d{client}");
        assert!(c.mkdir((client, "alice"), 1, &name).is_ok());
    }
    assert_eq!(c.mkdir((max, "alice"), 1, "over"), Err(Errno::USERS));
    assert!(!c.exists("over"));
    // The sessions there are go on; another certificate is not held back.
    assert!(c.mkdir((0, "alice"), 2, "again").is_ok());
    assert!(c.mkdir((max, "bob"), 1, "bob").is_ok());
    // A mount that unmounts frees its place.
    let goodbye = Command::EndSession {
        client: ClientId(0),
        certificate: Some("alice".into()),
    };
    assert_eq!(c.apply(goodbye), Outcome::Done);
    assert!(c.mkdir((max + 2, "alice"), 1, "freed").is_ok());
    // Sessions idle for an hour no longer count.
    let later = SESSION_IDLE_SECS;
    assert!(c
        .request((max + 1, "alice"), (1, 1), later, mkdir("later"))
        .is_ok());
}

#[test]
fn replies_over_the_limit_are_forgotten_and_their_requests_never_applied_twice() {
    let mut c = Cluster::new();
    let alice = (1, "alice");
    let n = MAX_REMEMBERED_REPLIES as u64 + 10;
    // A client that never acknowledges anything.
    for seq in 1..=n {
        let name = format!("d{seq}");
        assert!(c.request(alice, (seq, 1), 0, mkdir(&name)).is_ok());
    }
    // The first one again, after another session removed what it made: its reply is gone,
    // so it fails rather than running twice.
    let rmdir = FsOp::Rmdir {
        parent: InodeId::ROOT,
        name: b"d1".to_vec(),
    };
    assert!(c.request((2, "alice"), (1, 1), 0, rmdir).is_ok());
    assert_eq!(c.request(alice, (1, 1), 0, mkdir("d1")), Err(Errno::IO));
    assert!(!c.exists("d1"), "a forgotten request was applied again");
    // The last one again: the first reply.
    let last = format!("d{n}");
    assert!(c.request(alice, (n, 1), 0, mkdir(&last)).is_ok());
}

#[test]
fn a_write_with_times_lands_whole_or_not_at_all() {
    use lattice_common::fs::{SetAttr, TimeSet};
    let mut c = Cluster::new();
    let file = FsOp::Mknod {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
        kind: FileKind::File,
        perm: 0o644,
        umask: 0,
        rdev: 0,
        caller: Caller::ROOT,
    };
    let Ok(FsReply::Made { attr: f, .. }) = c.request((1, "a"), (1, 1), 5, file) else {
        panic!("mknod refused");
    };
    let then = Timestamp { secs: 1, nanos: 7 };
    let write = |set: SetAttr| FsOp::WriteInlineSetTimes {
        ino: f.ino,
        writes: vec![(0, b"hello".to_vec())],
        set,
    };
    let chmod_too = SetAttr {
        perm: Some(0o600),
        mtime: Some(TimeSet::At(then)),
        ..SetAttr::default()
    };
    assert_eq!(
        c.request((1, "a"), (2, 2), 6, write(chmod_too)),
        Err(Errno::INVAL)
    );
    assert_eq!(c.sm.ns.attr(f.ino).unwrap(), f, "nothing landed");
    let times = SetAttr {
        atime: Some(TimeSet::At(then)),
        mtime: Some(TimeSet::At(then)),
        ..SetAttr::default()
    };
    let Ok(FsReply::Committed { attr, .. }) = c.request((1, "a"), (3, 3), 7, write(times)) else {
        panic!("refused");
    };
    assert_eq!((attr.size, attr.mtime, attr.atime), (5, then, then));
    assert_eq!(attr.ctime, Timestamp { secs: 7, nanos: 0 });
    assert_eq!(c.sm.ns.attr(f.ino).unwrap(), attr);
}
