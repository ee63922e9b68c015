//! Entry points for the fuzz targets under `fuzz/` and for the replay of their corpora in
//! the tests: each takes untrusted bytes and must return, whatever they hold. A panic here
//! is a finding: in the log reader it would keep a member from starting, in `apply` it
//! would repeat on every replica.
//!
//! Inputs are cut into frames `[tag u8][len u16 LE][len bytes]` (a short last frame takes
//! what is left), so that the fuzzer can build records with true checksums around bytes
//! of its choosing instead of stopping at the first checksum.

use crate::raft_log;
use crate::replica::MAX_STATE_BYTES;
use crate::state_machine::{Command, StateMachine};
use lattice_common::codec;
use protobuf::Message as _;
use raft::prelude::Snapshot;
use std::path::Path;

/// Tag of a frame holding the snapshot file's body (framed with a true header).
const SNAPSHOT_BODY: u8 = 0xff;
/// Tag of a frame whose bytes go into the log as they are (a torn or damaged tail).
const RAW: u8 = 0xfe;

fn frames(mut bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        let (&tag, rest) = bytes.split_first()?;
        let (len, rest) = match rest.split_first_chunk::<2>() {
            Some((len, rest)) => (u16::from_le_bytes(*len) as usize, rest),
            None => (rest.len(), rest),
        };
        let (frame, rest) = rest.split_at(len.min(rest.len()));
        bytes = rest;
        Some((tag, frame))
    })
}

/// A member's Raft files as it reads them at start: a snapshot file and the log beside it.
/// Every frame but [`SNAPSHOT_BODY`] and [`RAW`] ones is a log record of that kind.
pub fn raft_files(bytes: &[u8]) {
    let mut snapshot = Snapshot::default();
    let mut log = Vec::new();
    for (tag, frame) in frames(bytes) {
        match tag {
            SNAPSHOT_BODY => match raft_log::decode_snapshot(&raft_log::snapshot_file(frame)) {
                Ok(s) => snapshot = s,
                Err(_) => return,
            },
            RAW => log.extend_from_slice(frame),
            kind => log.extend(raft_log::record(kind, frame)),
        }
    }
    let path = Path::new("fuzz/log");
    if let Ok(replayed) = raft_log::replay(&log, path) {
        let _ = raft_log::assemble(snapshot, replayed, path);
    }
}

/// A snapshot file, raw and with a true header, and the state machine inside it. What
/// decodes must encode, and decode again to what encodes the same.
pub fn snapshot(bytes: &[u8]) {
    let _ = raft_log::decode_snapshot(bytes);
    let data = match raft_log::decode_snapshot(&raft_log::snapshot_file(bytes)) {
        Ok(snapshot) => snapshot.get_data().to_vec(),
        Err(_) => bytes.to_vec(),
    };
    let Ok(sm) = codec::decode_state::<StateMachine>(&data, MAX_STATE_BYTES) else {
        return;
    };
    let once = codec::encode_state(&sm).expect("a decoded state encodes");
    let again: StateMachine = codec::decode_state(&once, MAX_STATE_BYTES).expect("decodes");
    assert_eq!(
        codec::encode_state(&again).expect("encodes"),
        once,
        "not stable"
    );
    let mut snap = Snapshot::default();
    snap.set_data(once.into());
    assert!(raft_log::decode_snapshot(&raft_log::snapshot_file(
        &snap.write_to_bytes().expect("encodes")
    ))
    .is_ok());
}

/// Commands as log entries hold them (one per frame, the tag ignored), each applied in
/// turn to one state machine, as every replica would.
pub fn commands(bytes: &[u8]) {
    let mut sm = StateMachine::default();
    for (index, (_, frame)) in (1..).zip(frames(bytes)) {
        if let Ok(cmd) = codec::decode_state::<Command>(frame, MAX_STATE_BYTES) {
            sm.apply(index, cmd);
        }
    }
}

/// Frames `(tag, bytes)` as [`frames`] reads them: how seeds for the corpora are made.
pub fn frame(parts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, bytes) in parts {
        let len = u16::try_from(bytes.len()).expect("a frame of at most 64 KiB");
        out.push(*tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lattice_common::fuzzing::replay_corpus;

    #[test]
    fn the_corpora_replay() {
        assert!(replay_corpus("raft_files", raft_files) > 0);
        assert!(replay_corpus("snapshot", snapshot) > 0);
        assert!(replay_corpus("commands", commands) > 0);
    }

    #[test]
    fn frames_read_back_what_frame_wrote() {
        let parts = vec![(1, b"abc".to_vec()), (RAW, vec![]), (7, vec![9; 300])];
        let read: Vec<(u8, Vec<u8>)> = frames(&frame(&parts))
            .map(|(t, b)| (t, b.to_vec()))
            .collect();
        assert_eq!(read, parts);
        let short: Vec<_> = frames(&[5, 9]).collect();
        assert_eq!(short, vec![(5, &[9u8][..])]);
    }
}
