//! Writes the seed inputs of every fuzz target into `corpus/TARGET/seed-*`: well-formed
//! messages, files and command sequences for the fuzzer to mutate from. Run from `fuzz/`:
//! `cargo run --example seeds`.

use lattice_chunkserver::store::shard_file::{ShardHeader, ShardWriter};
use lattice_common::codec;
use lattice_common::fs::{Caller, FileKind, LockKind, LockRange, LockSpace, RenameMode, SetAttr};
use lattice_common::fs::{TimeSet, Timestamp, XattrMode};
use lattice_common::ids::{ChunkserverId, ClientId, InodeId, ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use lattice_common::pki::{self, Role};
use lattice_common::wire::meta::{FsOp, FsQuery, MetaRequest, Registration, Unlinked};
use lattice_common::wire::ChunkRequest;
use lattice_metaserver::fuzzing::frame;
use lattice_metaserver::state_machine::{Command, SessionRequest, StateMachine};
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed written");
}

fn fs(seq: u64, op: FsOp) -> Command {
    Command::Fs {
        request: SessionRequest {
            client: ClientId(1),
            certificate: "client".into(),
            seq,
            acked_below: seq,
        },
        now: Timestamp {
            secs: seq as i64,
            nanos: 0,
        },
        op,
        who: None,
    }
}

/// A short life of a cluster: servers join, a tree is made, a file allocated, changed,
/// renamed, locked and removed.
fn commands() -> Vec<Command> {
    let layout = SliceLayout::new("rs:4+2".parse().expect("policy"), 4096, 4096).expect("layout");
    let mut cmds: Vec<Command> = (1..=6)
        .map(|n| Command::Register {
            name: format!("chunkserver-{n}"),
            registration: Registration {
                addr: format!("127.0.0.1:{}", 7200 + n).parse().expect("address"),
                disks: vec![],
                labels: vec![],
            },
            now: Timestamp::default(),
        })
        .collect();
    let root = InodeId::ROOT;
    let (dir, file) = (InodeId(2), InodeId(3));
    let me = Caller {
        uid: 1000,
        gid: 1000,
    };
    let ops = vec![
        FsOp::Mkdir {
            parent: root,
            name: b"d".to_vec(),
            perm: 0o755,
            umask: 0o22,
            caller: me,
        },
        FsOp::Mknod {
            parent: dir,
            name: b"f".to_vec(),
            kind: FileKind::File,
            perm: 0o644,
            umask: 0,
            rdev: 0,
            caller: me,
        },
        FsOp::WriteInline {
            ino: file,
            writes: vec![(0, b"hello".to_vec())],
        },
        FsOp::WriteInlineSetTimes {
            ino: file,
            writes: vec![(5, b" world".to_vec())],
            set: SetAttr {
                mtime: Some(TimeSet::At(Timestamp {
                    secs: 981_173_106,
                    nanos: 5,
                })),
                ..SetAttr::default()
            },
        },
        FsOp::SetAttr {
            ino: file,
            set: SetAttr {
                perm: Some(0o600),
                mtime: Some(TimeSet::Now),
                ..SetAttr::default()
            },
        },
        FsOp::SetXattr {
            ino: file,
            name: b"user.k".to_vec(),
            value: b"v".to_vec(),
            mode: XattrMode::Either,
        },
        FsOp::Link {
            ino: file,
            parent: root,
            name: b"g".to_vec(),
        },
        FsOp::Rename {
            parent: dir,
            name: b"f".to_vec(),
            new_parent: root,
            new_name: b"h".to_vec(),
            mode: RenameMode::Replace,
        },
        FsOp::SetLock {
            ino: file,
            owner: 7,
            lock: LockRange {
                space: LockSpace::Record,
                kind: LockKind::Write,
                start: 0,
                end: 9,
                pid: 1,
            },
        },
        FsOp::Unlink {
            parent: root,
            name: b"g".to_vec(),
        },
        FsOp::Unlinks {
            entries: vec![Unlinked {
                parent: root,
                name: b"h".to_vec(),
                ino: file,
                dir: false,
                at: Timestamp::default(),
            }],
        },
    ];
    cmds.extend((1..).zip(ops).map(|(seq, op)| fs(seq, op)));
    cmds.push(Command::Allocate {
        request: SessionRequest {
            client: ClientId(1),
            certificate: "client".into(),
            seq: 100,
            acked_below: 100,
        },
        now: Timestamp::default(),
        ino: file,
        layout,
        placement: (1..=6).map(|n| Some(ChunkserverId(n))).collect(),
        who: None,
    });
    cmds
}

fn main() {
    let cmds = commands();
    let encoded: Vec<Vec<u8>> = cmds
        .iter()
        .map(|c| codec::encode_state(c).expect("encodes"))
        .collect();
    write(
        "commands",
        "life",
        &frame(&encoded.iter().map(|e| (0, e.clone())).collect::<Vec<_>>()),
    );

    let mut sm = StateMachine::default();
    for (index, cmd) in (1..).zip(cmds) {
        sm.apply(index, cmd);
    }
    let state = codec::encode_state(&sm).expect("state encodes");
    write("snapshot", "state", &state);
    let mut snapshot = Snapshot::default();
    snapshot.set_data(state.into());
    snapshot.mut_metadata().index = encoded.len() as u64;
    snapshot.mut_metadata().term = 1;
    let body = snapshot.write_to_bytes().expect("snapshot encodes");
    write("snapshot", "body", &body);

    // A log after that snapshot: base, configuration, hard state, then the same commands
    // again as entries (records are framed by raft_files).
    let base = [
        snapshot.get_metadata().index.to_le_bytes(),
        1u64.to_le_bytes(),
    ]
    .concat();
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    let mut hs = HardState::default();
    hs.term = 1;
    hs.commit = snapshot.get_metadata().index;
    let mut entries = Vec::new();
    for (i, e) in encoded.iter().enumerate() {
        let mut entry = Entry::default();
        entry.index = snapshot.get_metadata().index + 1 + i as u64;
        entry.term = 1;
        entry.data = e.clone().into();
        let bytes = entry.write_to_bytes().expect("entry encodes");
        entries.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        entries.extend_from_slice(&bytes);
    }
    let parts = vec![
        (0xff, body),
        (4, base),
        (3, cs.write_to_bytes().expect("encodes")),
        (2, hs.write_to_bytes().expect("encodes")),
        (1, entries),
        (0xfe, vec![9, 0, 0, 0, 1]),
    ];
    write("raft_files", "log", &frame(&parts));

    let layout = SliceLayout::new("rs:4+2".parse().expect("policy"), 40_000, 4096).expect("layout");
    let shard = ShardId::new(SliceId(5), 1);
    let requests = vec![
        MetaRequest::Query(FsQuery::Lookup {
            parent: InodeId::ROOT,
            name: b"d".to_vec(),
        }),
        MetaRequest::KeepAlive {
            client: ClientId(3),
            open: vec![InodeId(3)],
        },
    ];
    for (i, r) in requests.iter().enumerate() {
        write(
            "wire",
            &format!("meta-{i}"),
            &codec::encode(r).expect("encodes")[6..],
        );
    }
    let get = ChunkRequest::Get {
        shard,
        offset: 0,
        len: 100,
        grant: None,
    };
    write(
        "wire",
        "chunk-get",
        &codec::encode(&get).expect("encodes")[6..],
    );

    let scratch = std::env::temp_dir().join(format!("lattice-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch");
    let header = ShardHeader::new(shard, layout);
    let (tmp, dest) = (scratch.join("tmp"), scratch.join("shard"));
    let mut writer = ShardWriter::create(header, tmp, dest.clone()).expect("shard writer");
    let data: Vec<u8> = (0..layout.shard_len()).map(|i| (i * 7) as u8).collect();
    writer.write(&data).expect("shard data");
    writer.finish().expect("shard finished");
    let mut input = vec![0u8];
    input.extend_from_slice(&100u64.to_le_bytes());
    input.extend_from_slice(&5000u64.to_le_bytes());
    input.extend_from_slice(&std::fs::read(&dest).expect("shard file"));
    write("shard_file", "rs-4-2", &input);

    let ca = scratch.join("ca");
    pki::init_ca(&ca, "seeds").expect("CA");
    pki::issue(&ca, Role::Chunkserver, "cs", &scratch.join("cs")).expect("certificate");
    let der = pki::certificate_der(&scratch.join("cs")).expect("certificate");
    write("certificate", "chunkserver", &der);
    let _ = std::fs::remove_dir_all(&scratch);
}
