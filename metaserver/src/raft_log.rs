//! The Raft log: entries, hard state, configuration and the latest state machine snapshot.
//!
//! [`RaftLog`] is what raft-rs reads (it implements `raft::Storage` from memory); every
//! change also goes to a [`Durable`] backend before it counts. [`DiskLog`] is the real one:
//!
//! ```text
//! <dir>/log       records [len u32][crc32c u32][kind u8][payload], appended and fsynced;
//!                 the first names the snapshot the log continues; zeros follow the last
//! <dir>/snapshot  [magic][crc32c u32][len u64][index][term][conf state][state machine]
//! <dir>/format    "latticefs-state N": how the state machine and commands are encoded
//! ```
//! State of another format is refused, not misread: bincode has no field names, so an old
//! snapshot read by a newer layout decodes into garbage rather than failing.
//! The zeros are written ahead of the records ([`ZEROS_AHEAD`] at a time): a record written
//! over them changes no file size or extent, so its fdatasync is a data flush without a
//! journal commit (about half the time of an appending one on ext4 here, and it is on every
//! Raft round's critical path). Replay ends at the first record whose bytes are all zero.
//! A torn record at the end of `log` (a crash mid-write, never acknowledged) is cut off at
//! start; a bad record followed by valid ones is damage, and the member refuses to start.
//! Compaction and snapshot installs write a new snapshot, then a new `log` holding only what
//! follows it, each by write-fsync-rename-fsync; a crash between the two leaves the old log
//! beside the new snapshot, and replay reads it against that snapshot.

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

const SNAPSHOT_MAGIC: &[u8; 8] = b"LATSNAP1";
const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_BASE: u8 = 4;
/// Largest single log record (a batch of entries); larger appends are split.
const MAX_RECORD: usize = 64 << 20;
/// Zeros written past the log's last record each time records reach the end of the file.
const ZEROS_AHEAD: usize = 4 << 20;

/// Everything a member keeps across restarts.
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub snapshot: Snapshot,
    pub entries: Vec<Entry>,
}

/// Where Raft state becomes durable. Each call returns only once its change would survive
/// a crash.
pub trait Durable: Send {
    /// Appends `entries` and records `hs` in one write. Without `sync` the change may be
    /// lost in a crash: only for a hard state whose commit index alone moved (a restarted
    /// member learns the commit index again from its leader).
    fn save(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> std::io::Result<()>;
    fn set_conf_state(&mut self, cs: &ConfState) -> std::io::Result<()>;
    /// Replaces the snapshot and keeps only `rest` (entries after it) in the log.
    fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hs: &HardState,
        rest: &[Entry],
    ) -> std::io::Result<()>;
    /// The latest snapshot saved, with its data.
    fn load_snapshot(&self) -> std::io::Result<Snapshot>;
}

/// The in-memory view raft-rs reads, kept in step with its [`Durable`] backend.
pub struct RaftLog {
    state: Persisted,
    durable: Box<dyn Durable>,
    /// raft-rs asked for a snapshot newer than the one held.
    snapshot_wanted: AtomicBool,
}

fn store_err(e: std::io::Error) -> raft::Error {
    raft::Error::Io(e)
}

impl RaftLog {
    pub fn new(state: Persisted, durable: Box<dyn Durable>) -> Self {
        RaftLog {
            state,
            durable,
            snapshot_wanted: AtomicBool::new(false),
        }
    }

    fn snapshot_index(&self) -> u64 {
        self.state.snapshot.get_metadata().index
    }

    /// The snapshot's state machine, as read at start (once: afterwards the snapshot is
    /// only on disk, read again when a follower needs it; held here it would double the
    /// memory the namespace takes).
    pub fn take_snapshot_data(&mut self) -> bytes::Bytes {
        self.state.snapshot.take_data()
    }

    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        self.state.snapshot.get_metadata()
    }

    #[cfg(test)]
    pub fn conf_state(&self) -> &ConfState {
        &self.state.conf_state
    }

    #[cfg(test)]
    pub fn hard_state(&self) -> &HardState {
        &self.state.hard_state
    }

    /// Whether raft-rs wanted a fresher snapshot (clears the flag).
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.swap(false, Ordering::Relaxed)
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.state
            .entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    #[cfg(test)]
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        self.persist(entries, None)
    }

    /// Appends `entries` and sets the hard state, with one write and one sync (what a Raft
    /// round must make durable before its messages go out).
    pub fn persist(&mut self, entries: &[Entry], hs: Option<HardState>) -> raft::Result<()> {
        let Some(first) = entries.first() else {
            if let Some(hs) = hs {
                self.set_hard_state(hs)?;
            }
            return Ok(());
        };
        if first.index < self.first() || first.index > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Other(
                format!(
                    "append at {} outside {}..={}",
                    first.index,
                    self.first(),
                    self.last() + 1
                )
                .into(),
            )));
        }
        self.durable
            .save(entries, hs.as_ref(), true)
            .map_err(store_err)?;
        let keep = (first.index - self.first()) as usize;
        self.state.entries.truncate(keep);
        self.state.entries.extend_from_slice(entries);
        if let Some(hs) = hs {
            self.state.hard_state = hs;
        }
        Ok(())
    }

    /// Sets the hard state; synced unless only the commit index moved.
    pub fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        let old = &self.state.hard_state;
        let sync = (hs.term, hs.vote) != (old.term, old.vote);
        self.durable.save(&[], Some(&hs), sync).map_err(store_err)?;
        self.state.hard_state = hs;
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hs = self.state.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()> {
        self.durable.set_conf_state(&cs).map_err(store_err)?;
        self.state.conf_state = cs;
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index < self.snapshot_index() {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let mut hs = self.state.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.durable
            .save_snapshot(&snapshot, &hs, &[])
            .map_err(store_err)?;
        self.state.conf_state = meta.get_conf_state().clone();
        self.state.hard_state = hs;
        self.state.entries.clear();
        self.state.snapshot = without_data(snapshot);
        Ok(())
    }

    /// Records a snapshot of the state machine at `index` (applied) and drops the log up
    /// to it.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snapshot_index() {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.state.conf_state.clone());
        let drop = (index - self.snapshot_index()) as usize;
        let rest = &self.state.entries[drop.min(self.state.entries.len())..];
        self.durable
            .save_snapshot(&snapshot, &self.state.hard_state, rest)
            .map_err(store_err)?;
        self.state
            .entries
            .drain(..drop.min(self.state.entries.len()));
        self.state.snapshot = without_data(snapshot);
        Ok(())
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.state.hard_state.clone(),
            conf_state: self.state.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut out =
            self.state.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.state.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A member added after the snapshot was taken would refuse it (it is not in its
        // configuration): such a member needs a fresher one.
        let cs = self.snapshot_metadata().get_conf_state();
        let knows_to = cs.voters.contains(&to) || cs.learners.contains(&to);
        if self.snapshot_index() >= request_index && self.snapshot_index() > 0 && knows_to {
            let held = self.snapshot_metadata();
            match self.durable.load_snapshot() {
                Ok(s) if s.get_metadata() == held => return Ok(s),
                Ok(s) => warn!(
                    held = held.index,
                    read = s.get_metadata().index,
                    "the snapshot read back is not the one this member holds"
                ),
                Err(e) => warn!("reading the snapshot back to send it: {e}"),
            }
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ))
        } else {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ))
        }
    }
}

fn without_data(mut snapshot: Snapshot) -> Snapshot {
    snapshot.clear_data();
    snapshot
}

/// Drops entries at `index` and after (the log is contiguous).
fn truncate_from(entries: &mut Vec<Entry>, index: u64) {
    match entries.first() {
        Some(f) if index > f.index => entries.truncate((index - f.index) as usize),
        Some(_) => entries.clear(),
        None => {}
    }
}

/// Raft state in memory only, shared so a simulated crash can restart from it.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct MemDisk(pub std::sync::Arc<std::sync::Mutex<Persisted>>);

#[cfg(test)]
impl Durable for MemDisk {
    /// An unsynced save is lost, as the worst crash would lose it.
    fn save(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> std::io::Result<()> {
        if !sync {
            return Ok(());
        }
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(first) = entries.first() {
            truncate_from(&mut p.entries, first.index);
            p.entries.extend_from_slice(entries);
        }
        if let Some(hs) = hs {
            p.hard_state = hs.clone();
        }
        Ok(())
    }
    fn set_conf_state(&mut self, cs: &ConfState) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).conf_state = cs.clone();
        Ok(())
    }
    fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hs: &HardState,
        rest: &[Entry],
    ) -> std::io::Result<()> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.snapshot = snapshot.clone();
        p.conf_state = snapshot.get_metadata().get_conf_state().clone();
        p.hard_state = hs.clone();
        p.entries = rest.to_vec();
        Ok(())
    }
    fn load_snapshot(&self) -> std::io::Result<Snapshot> {
        Ok(self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot
            .clone())
    }
}

/// Raft state in files under one directory, fsynced before every acknowledgement.
pub struct DiskLog {
    dir: PathBuf,
    log: File,
    /// Where the next record goes; zeros follow up to `len`.
    end: u64,
    /// The log file's length.
    len: u64,
    /// Tests: fail `save_snapshot` right after this step, as a crash there would.
    #[cfg(test)]
    pub crash_after: Option<(&'static str, Step)>,
}

/// The steps of replacing a file, after each of which a crash leaves something different
/// on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The new contents are in `<name>.tmp`, fsynced.
    Written,
    /// Renamed over `<name>`; the rename may not be durable yet.
    Renamed,
    /// The directory is fsynced: the rename is durable.
    DirSynced,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `pieces`, one after another, to `dir/name` atomically and durably; `reached`
/// hears of each step.
fn replace_file(
    dir: &Path,
    name: &str,
    pieces: &[&[u8]],
    mut reached: impl FnMut(Step) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let path = dir.join(name);
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    for piece in pieces {
        f.write_all(piece)?;
    }
    f.sync_all()?;
    reached(Step::Written)?;
    std::fs::rename(&tmp, &path)?;
    reached(Step::Renamed)?;
    sync_dir(dir)?;
    reached(Step::DirSynced)
}

pub(crate) fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// The record that starts every log file: the snapshot (index, term) it continues.
fn base_record(index: u64, term: u64) -> Vec<u8> {
    record(
        KIND_BASE,
        &[index.to_le_bytes(), term.to_le_bytes()].concat(),
    )
}

fn entries_records(entries: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut payload = Vec::new();
    for e in entries {
        let bytes = e.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
        if !payload.is_empty() && payload.len() + bytes.len() + 4 > MAX_RECORD {
            out.extend(record(KIND_ENTRIES, &payload));
            payload.clear();
        }
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&bytes);
    }
    if !payload.is_empty() {
        out.extend(record(KIND_ENTRIES, &payload));
    }
    Ok(out)
}

/// A log file that continues `snapshot` with `hs` and `rest`.
fn log_after(snapshot: &Snapshot, hs: &HardState, rest: &[Entry]) -> std::io::Result<Vec<u8>> {
    let meta = snapshot.get_metadata();
    let cs = meta
        .get_conf_state()
        .write_to_bytes()
        .map_err(|e| invalid(e.to_string()))?;
    let hs = hs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
    let mut log = base_record(meta.index, meta.term);
    log.extend(record(KIND_CONF_STATE, &cs));
    log.extend(record(KIND_HARD_STATE, &hs));
    log.extend(entries_records(rest)?);
    Ok(log)
}

/// A snapshot file as the pieces it is written from: the state machine (the largest part
/// by far) is written from the snapshot's own buffer, not copied into the file's encoding.
/// The same bytes as [`snapshot_file`] of the snapshot's encoding: its state field first,
/// then its metadata field, as protobuf writes them.
fn snapshot_pieces(s: &Snapshot) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let data = s.get_data();
    let mut data_field = Vec::new();
    if !data.is_empty() {
        let mut out = protobuf::CodedOutputStream::vec(&mut data_field);
        out.write_tag(1, protobuf::wire_format::WireTypeLengthDelimited)
            .and_then(|()| out.write_raw_varint64(data.len() as u64))
            .and_then(|()| out.flush())
            .map_err(|e| invalid(e.to_string()))?;
    }
    let mut metadata = Snapshot::default();
    if s.has_metadata() {
        metadata.set_metadata(s.get_metadata().clone());
    }
    let metadata_field = metadata
        .write_to_bytes()
        .map_err(|e| invalid(e.to_string()))?;
    let mut head = snapshot_header(&[&data_field, data, &metadata_field]);
    head.extend_from_slice(&data_field);
    Ok((head, metadata_field))
}

/// The header of a snapshot file whose body is `body`, in pieces.
fn snapshot_header(body: &[&[u8]]) -> Vec<u8> {
    let crc = body.iter().fold(crc32c::crc32c(&[]), |crc, piece| {
        crc32c::crc32c_append(crc, piece)
    });
    let len: usize = body.iter().map(|piece| piece.len()).sum();
    let mut out = Vec::with_capacity(20);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out
}

/// A snapshot file holding `body` (an encoded `Snapshot`).
pub(crate) fn snapshot_file(body: &[u8]) -> Vec<u8> {
    let mut out = snapshot_header(&[body]);
    out.extend_from_slice(body);
    out
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> std::io::Result<Snapshot> {
    if bytes.len() < 20 || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(invalid("snapshot file has no header".into()));
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let body = &bytes[20..];
    if body.len() as u64 != len || crc32c::crc32c(body) != crc {
        return Err(invalid("snapshot file is damaged".into()));
    }
    Snapshot::parse_from_bytes(body).map_err(|e| invalid(e.to_string()))
}

/// How to recover a member whose durable state is damaged (README: "Re-seeding a
/// metaserver member").
const RESEED: &str = "this member's Raft state cannot be trusted: re-seed it from its peers \
(stop it; `metaserver member remove --id ID`; empty its data directory; start it with \
`metaserver serve --join` under a new id; `metaserver member add --id NEW_ID --addr ADDR`: \
it then gets a snapshot from the leader)";

fn damaged(path: &Path, at: usize, why: &str) -> std::io::Error {
    invalid(format!(
        "{} is damaged at byte {at}: {why}; {RESEED}",
        path.display()
    ))
}

/// A log file read back.
#[derive(Default)]
pub(crate) struct Replayed {
    /// The snapshot (index, term) the file continues; none in files written before base
    /// records existed.
    base: Option<(u64, u64)>,
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    entries: Vec<Entry>,
    /// Length of the whole records (what follows is a torn tail).
    whole: usize,
}

/// The record at `at`, if its length and checksum hold: its kind and payload.
fn check_record(bytes: &[u8], at: usize) -> Result<(u8, &[u8]), &'static str> {
    let rest = &bytes[at..];
    if rest.len() < 9 {
        return Err("a record header cut short");
    }
    let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD + 1 {
        return Err("an impossible record length");
    }
    if rest.len() - 8 < len {
        return Err("a record running past the end of the file");
    }
    let body = &rest[8..8 + len];
    if crc32c::crc32c(body) != crc {
        return Err("a checksum mismatch");
    }
    Ok((body[0], &body[1..]))
}

/// The first offset after the bad record at `bad` where a valid record starts. A crash
/// mid-append leaves only the one record being written, so any such record means the bad
/// one was damaged after it was written.
fn next_valid_record(bytes: &[u8], bad: usize) -> Option<usize> {
    let valid = |at: usize| {
        at < bytes.len()
            && check_record(bytes, at)
                .is_ok_and(|(kind, _)| (KIND_ENTRIES..=KIND_BASE).contains(&kind))
    };
    // Where the bad record says it ends is the likeliest place (a damaged body).
    let claimed = bytes
        .get(bad..bad + 4)
        .map(|len| bad + 8 + u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize);
    claimed
        .into_iter()
        .chain(bad + 1..bytes.len())
        .find(|&at| valid(at))
}

impl Replayed {
    fn read(&mut self, at: usize, kind: u8, payload: &[u8]) -> Result<(), String> {
        let parse_err = |e: protobuf::ProtobufError| e.to_string();
        match kind {
            KIND_ENTRIES => {
                let mut p = payload;
                while !p.is_empty() {
                    let n = p
                        .get(..4)
                        .map(|n| u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize)
                        .filter(|&n| p.len() - 4 >= n)
                        .ok_or("an entry runs past the end of its record")?;
                    self.push(Entry::parse_from_bytes(&p[4..4 + n]).map_err(parse_err)?)?;
                    p = &p[4 + n..];
                }
            }
            KIND_HARD_STATE => {
                self.hard_state = Some(HardState::parse_from_bytes(payload).map_err(parse_err)?)
            }
            KIND_CONF_STATE => {
                self.conf_state = Some(ConfState::parse_from_bytes(payload).map_err(parse_err)?)
            }
            KIND_BASE if at == 0 => {
                let (index, term) = payload
                    .split_at_checked(8)
                    .and_then(|(i, t)| Some((i.try_into().ok()?, t.try_into().ok()?)))
                    .ok_or("a base record of the wrong size")?;
                self.base = Some((u64::from_le_bytes(index), u64::from_le_bytes(term)));
            }
            KIND_BASE => return Err("a misplaced base record".into()),
            other => return Err(format!("unknown record kind {other}")),
        }
        Ok(())
    }

    /// Appends an entry, dropping those it overwrites (as the write that made it did).
    fn push(&mut self, e: Entry) -> Result<(), String> {
        if let Some(last) = self.entries.last().filter(|l| e.index > l.index + 1) {
            return Err(format!("entry {} follows entry {}", e.index, last.index));
        }
        truncate_from(&mut self.entries, e.index);
        self.entries.push(e);
        Ok(())
    }
}

fn zeros(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Reads the records of a log file up to the zeros written ahead. A bad record with nothing
/// valid after it is a write cut short by a crash (never acknowledged): it ends the log. One
/// followed by valid records is damage, and an error.
pub(crate) fn replay(bytes: &[u8], path: &Path) -> std::io::Result<Replayed> {
    let mut out = Replayed::default();
    let mut at = 0;
    while at < bytes.len() {
        let (kind, payload) = match check_record(bytes, at) {
            Ok(r) => r,
            Err(_) if zeros(&bytes[at..]) => break,
            Err(why) => match next_valid_record(bytes, at) {
                Some(next) => {
                    let why = format!("{why}, yet a valid record follows at byte {next}");
                    return Err(damaged(path, at, &why));
                }
                None => break,
            },
        };
        // Its checksum holds, so it is what was written: unreadable is damage, not a tear.
        out.read(at, kind, payload)
            .map_err(|why| damaged(path, at, &why))?;
        at += 9 + payload.len();
    }
    out.whole = at;
    Ok(out)
}

/// The state a snapshot and the log beside it describe, and whether the log is the one from
/// before the snapshot.
pub(crate) fn assemble(
    snapshot: Snapshot,
    log: Replayed,
    path: &Path,
) -> std::io::Result<(Persisted, bool)> {
    let meta = snapshot.get_metadata();
    let (index, term) = (meta.index, meta.term);
    let inconsistent = |why: String| invalid(format!("{}: {why}; {RESEED}", path.display()));
    // A log without a base record continues the snapshot beside it.
    let base = log.base.unwrap_or((index, term));
    if base.0 > index || (base.0 == index && base.1 != term) {
        return Err(inconsistent(format!(
            "the log continues a snapshot at index {} term {} but the snapshot file holds \
             index {index} term {term}",
            base.0, base.1
        )));
    }
    // A crash after the new snapshot was renamed into place and before the new log was:
    // the log is the one before the snapshot. Its configuration records precede the
    // snapshot; its entries continue it only if it holds the snapshot's last entry.
    let stale = base.0 < index;
    let mut entries = log.entries;
    let continues = !stale || entries.iter().any(|e| e.index == index && e.term == term);
    entries.retain(|e| continues && e.index > index);
    let conf_state = match (stale, log.conf_state) {
        (false, Some(cs)) => cs,
        _ => meta.get_conf_state().clone(),
    };
    let mut hard_state = log.hard_state.unwrap_or_default();
    hard_state.term = hard_state.term.max(term);
    hard_state.commit = hard_state.commit.max(index);
    let last = entries.last().map_or(index, |e| e.index);
    if entries.first().is_some_and(|e| e.index != index + 1) {
        return Err(inconsistent(format!(
            "the log starts at entry {} after a snapshot at {index}",
            entries[0].index
        )));
    }
    if hard_state.commit > last {
        return Err(inconsistent(format!(
            "entries up to {} were committed but the log ends at {last}",
            hard_state.commit
        )));
    }
    let state = Persisted {
        hard_state,
        conf_state,
        snapshot,
        entries,
    };
    Ok((state, stale))
}

/// Records `format` in a new directory; refuses one whose state has another format.
fn check_format(dir: &Path, format: u32) -> std::io::Result<()> {
    let path = dir.join("format");
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !dir.join("log").exists() && !dir.join("snapshot").exists() {
                let text = format!("latticefs-state {format}\n");
                return replace_file(dir, "format", &[text.as_bytes()], |_| Ok(()));
            }
            "latticefs-state 1 (from before formats were recorded)".to_string()
        }
        Err(e) => return Err(e),
    };
    let version = found.trim().strip_prefix("latticefs-state ");
    if version.and_then(|v| v.parse::<u32>().ok()) == Some(format) {
        return Ok(());
    }
    Err(invalid(format!(
        "{}: this Raft state is encoded as {:?}, and this build reads format {format} only: \
         run the build that wrote it, or re-seed this member from peers running this build ({RESEED})",
        dir.display(),
        found.trim()
    )))
}

impl DiskLog {
    /// Opens the Raft state in `dir` (created empty if missing) and reads it back. Damage
    /// (anything but a torn last record) is an error that says how to recover.
    pub fn open(dir: &Path, format: u32) -> std::io::Result<(DiskLog, Persisted)> {
        std::fs::create_dir_all(dir)?;
        check_format(dir, format)?;
        let snap_path = dir.join("snapshot");
        let snapshot = match std::fs::read(&snap_path) {
            Ok(bytes) => decode_snapshot(&bytes)
                .map_err(|e| invalid(format!("{}: {e}; {RESEED}", snap_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(e),
        };
        let log_path = dir.join("log");
        if !log_path.exists() {
            if snapshot.get_metadata().index > 0 {
                return Err(invalid(format!(
                    "{} is missing beside {}; {RESEED}",
                    log_path.display(),
                    snap_path.display()
                )));
            }
            replace_file(dir, "log", &[&base_record(0, 0)], |_| Ok(()))?;
        }
        // Left by a crash while replacing a file.
        for tmp in ["snapshot.tmp", "log.tmp"] {
            let _ = std::fs::remove_file(dir.join(tmp));
        }
        let bytes = std::fs::read(&log_path)?;
        let replayed = replay(&bytes, &log_path)?;
        let whole = replayed.whole;
        let (state, stale) = assemble(snapshot, replayed, &log_path)?;
        let (mut end, mut len) = (whole as u64, bytes.len() as u64);
        if stale {
            // Finish the interrupted install, so that appends continue the snapshot.
            warn!(path = %log_path.display(), "finishing a snapshot install cut short by a crash");
            let log = log_after(&state.snapshot, &state.hard_state, &state.entries)?;
            replace_file(dir, "log", &[&log], |_| Ok(()))?;
            (end, len) = (log.len() as u64, log.len() as u64);
        }
        let log = OpenOptions::new().write(true).open(&log_path)?;
        if !stale && !zeros(&bytes[whole..]) {
            warn!(path = %log_path.display(), at = whole, dropped = bytes.len() - whole, "cutting off a torn log record");
            log.set_len(end)?;
            log.sync_all()?;
            len = end;
        }
        Ok((
            DiskLog {
                dir: dir.to_path_buf(),
                log,
                end,
                len,
                #[cfg(test)]
                crash_after: None,
            },
            state,
        ))
    }

    /// Writes `bytes` after the last record, over zeros written ahead.
    fn append(&mut self, bytes: &[u8], sync: bool) -> std::io::Result<()> {
        let end = self.end + bytes.len() as u64;
        if end > self.len {
            let zeros = vec![0; ZEROS_AHEAD];
            let mut at = self.len;
            while at < end + ZEROS_AHEAD as u64 {
                self.log.write_all_at(&zeros, at)?;
                at += ZEROS_AHEAD as u64;
            }
            self.len = at;
        }
        self.log.write_all_at(bytes, self.end)?;
        self.end = end;
        match sync {
            true => self.log.sync_data(),
            false => Ok(()),
        }
    }

    /// Replaces the log with `records` and zeros after them.
    fn replace_log(&mut self, records: &[u8]) -> std::io::Result<()> {
        self.replace("log", &[records, &vec![0; ZEROS_AHEAD]])?;
        self.log = OpenOptions::new().write(true).open(self.dir.join("log"))?;
        self.end = records.len() as u64;
        self.len = self.end + ZEROS_AHEAD as u64;
        Ok(())
    }

    /// Replaces `dir/name`, stopping where a test simulates a crash.
    fn replace(&self, name: &'static str, pieces: &[&[u8]]) -> std::io::Result<()> {
        replace_file(&self.dir, name, pieces, |step| self.reached(name, step))
    }

    #[cfg(test)]
    fn reached(&self, name: &'static str, step: Step) -> std::io::Result<()> {
        match self.crash_after {
            Some(crash) if crash == (name, step) => Err(std::io::Error::other(format!(
                "simulated crash after {step:?} of {name}"
            ))),
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn reached(&self, _name: &'static str, _step: Step) -> std::io::Result<()> {
        Ok(())
    }
}

impl Durable for DiskLog {
    fn save(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> std::io::Result<()> {
        let mut bytes = entries_records(entries)?;
        if let Some(hs) = hs {
            let payload = hs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
            bytes.extend(record(KIND_HARD_STATE, &payload));
        }
        self.append(&bytes, sync)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> std::io::Result<()> {
        let payload = cs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
        self.append(&record(KIND_CONF_STATE, &payload), true)
    }

    /// The snapshot is replaced first, then the log; a crash in between leaves the old log
    /// beside the new snapshot, which its base record tells apart (see [`assemble`]).
    fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hs: &HardState,
        rest: &[Entry],
    ) -> std::io::Result<()> {
        let log = log_after(snapshot, hs, rest)?;
        let (head, tail) = snapshot_pieces(snapshot)?;
        self.replace("snapshot", &[&head, snapshot.get_data(), &tail])?;
        self.replace_log(&log)
    }

    fn load_snapshot(&self) -> std::io::Result<Snapshot> {
        decode_snapshot(&std::fs::read(self.dir.join("snapshot"))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &str) -> Entry {
        Entry {
            index,
            term,
            data: data.as_bytes().to_vec().into(),
            ..Default::default()
        }
    }

    const FORMAT: u32 = 7;

    #[test]
    fn state_of_another_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        open(dir.path()).append(&[entry(1, 1, "a")]).unwrap();
        assert!(DiskLog::open(dir.path(), FORMAT).is_ok());
        let err = DiskLog::open(dir.path(), FORMAT + 1)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("\"latticefs-state 7\""), "{err}");
        assert!(err.contains("reads format 8"), "{err}");
        // State from before formats were recorded is refused as well.
        std::fs::remove_file(dir.path().join("format")).unwrap();
        let err = DiskLog::open(dir.path(), FORMAT).err().unwrap().to_string();
        assert!(err.contains("latticefs-state 1"), "{err}");
    }

    fn open(dir: &Path) -> RaftLog {
        let (disk, state) = DiskLog::open(dir, FORMAT).unwrap();
        RaftLog::new(state, Box::new(disk))
    }

    #[test]
    fn survives_restart_overwrites_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])
            .unwrap();
        // A new leader overwrites the tail.
        log.append(&[entry(3, 2, "C"), entry(4, 2, "d")]).unwrap();
        let hs = HardState {
            term: 2,
            vote: 7,
            commit: 3,
            ..Default::default()
        };
        log.set_hard_state(hs.clone()).unwrap();
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        log.set_conf_state(cs.clone()).unwrap();
        drop(log);

        let mut log = open(dir.path());
        assert_eq!(log.initial_state().unwrap().hard_state, hs);
        assert_eq!(log.initial_state().unwrap().conf_state, cs);
        let got = log
            .entries(1, 5, None, GetEntriesContext::empty(false))
            .unwrap();
        let data: Vec<&[u8]> = got.iter().map(|e| e.get_data()).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C", b"d"]);
        assert_eq!(log.term(3).unwrap(), 2);

        log.compact(3, b"state at 3".to_vec()).unwrap();
        assert_eq!(log.first_index().unwrap(), 4);
        assert!(log
            .entries(2, 4, None, GetEntriesContext::empty(false))
            .is_err());
        log.append(&[entry(5, 2, "e")]).unwrap();
        drop(log);

        let mut log = open(dir.path());
        assert_eq!(log.take_snapshot_data(), &b"state at 3"[..]);
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (4, 5)
        );
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.conf_state(), &cs);
        assert_eq!(log.hard_state().vote, 7);
    }

    /// Opens `dir` as a member does: raft-rs must accept the state read back.
    fn start(dir: &Path) -> raft::RawNode<RaftLog> {
        let log = open(dir);
        let config = raft::Config {
            id: 1,
            applied: log.snapshot_index(),
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        raft::RawNode::new(&config, log, &logger).unwrap()
    }

    #[test]
    fn a_torn_last_record_is_cut_off_and_the_member_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = open(dir.path());
        log.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        let whole = records(&path);
        log.append(&[entry(3, 1, "c")]).unwrap();
        drop(log);
        let full = records(&path);
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let garbage = [0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        let ahead = [0; 4096];
        let torn = [
            ("header cut short", full[..whole.len() + 5].to_vec()),
            (
                "record running past the end",
                full[..full.len() - 3].to_vec(),
            ),
            ("bad checksum in the last record", flipped.clone()),
            ("garbage", [&whole[..], &garbage].concat()),
            (
                "header cut short, zeros ahead",
                [&full[..whole.len() + 5], &ahead].concat(),
            ),
            (
                "body cut short, zeros ahead",
                [&full[..full.len() - 3], &ahead].concat(),
            ),
            ("bad checksum, zeros ahead", [&flipped, &ahead[..]].concat()),
            (
                "garbage, zeros ahead",
                [&whole[..], &garbage, &ahead].concat(),
            ),
        ];
        for (what, bytes) in torn {
            std::fs::write(&path, &bytes).unwrap();
            let mut node = start(dir.path());
            assert_eq!(node.store().last_index().unwrap(), 2, "{what}");
            assert_eq!(std::fs::read(&path).unwrap(), whole, "{what}: cut");
            node.mut_store().append(&[entry(3, 2, "C")]).unwrap();
            drop(node);
            assert_eq!(
                open(dir.path()).term(3).unwrap(),
                2,
                "{what}: appends after the cut"
            );
        }
        // Zeros after the last record are the ones written ahead, not a tear: kept.
        for ahead in [1, 100, ZEROS_AHEAD] {
            let bytes = [&whole[..], &vec![0; ahead]].concat();
            std::fs::write(&path, &bytes).unwrap();
            let mut node = start(dir.path());
            assert_eq!(node.store().last_index().unwrap(), 2, "{ahead} zeros");
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "{ahead} zeros: kept");
            node.mut_store().append(&[entry(3, 2, "C")]).unwrap();
            drop(node);
            assert_eq!(open(dir.path()).term(3).unwrap(), 2, "{ahead} zeros");
        }
    }

    /// A log file's records, without the zeros written ahead of them.
    fn records(path: &Path) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        bytes.truncate(replay(&bytes, path).unwrap().whole);
        bytes
    }

    #[test]
    fn records_go_over_zeros_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = open(dir.path());
        let len = || std::fs::metadata(&path).unwrap().len() as usize;
        log.append(&[entry(1, 1, "a")]).unwrap();
        let first = len();
        assert!(first >= records(&path).len() + ZEROS_AHEAD, "{first}");
        let big = "x".repeat(ZEROS_AHEAD / 4);
        let mut last = 1;
        while len() == first {
            last += 1;
            log.append(&[entry(last, 1, &big)]).unwrap();
        }
        assert!(len() >= records(&path).len() + ZEROS_AHEAD, "{}", len());
        drop(log);
        let log = open(dir.path());
        assert_eq!(log.last_index().unwrap(), last);
        assert_eq!(log.term(last).unwrap(), 1);
        // A compaction writes a new log, with zeros ahead too.
        let mut log = log;
        log.compact(last - 1, b"state".to_vec()).unwrap();
        assert!(len() >= records(&path).len() + ZEROS_AHEAD, "{}", len());
        log.append(&[entry(last + 1, 2, "y")]).unwrap();
        drop(log);
        let log = open(dir.path());
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (last, last + 1)
        );
    }

    #[test]
    fn a_snapshot_is_held_on_disk_only_and_read_back_for_a_follower() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.set_conf_state(voters(&[1, 2])).unwrap();
        log.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        log.compact(2, b"state at 2".to_vec()).unwrap();
        assert!(log.state.snapshot.get_data().is_empty(), "held in memory");
        let sent = raft::Storage::snapshot(&log, 2, 2).unwrap();
        assert_eq!(sent.get_data(), b"state at 2");
        assert_eq!(sent.get_metadata(), log.snapshot_metadata());
        // One that is not the snapshot held is not sent.
        std::fs::write(
            dir.path().join("snapshot"),
            snapshot_file(&snapshot(1, 1, &[1, 2], "older").write_to_bytes().unwrap()),
        )
        .unwrap();
        assert!(raft::Storage::snapshot(&log, 2, 2).is_err());
    }

    #[test]
    fn a_snapshot_file_written_in_pieces_is_the_snapshot_encoded_whole() {
        let mut no_metadata = Snapshot::default();
        no_metadata.set_data(b"state".to_vec().into());
        for s in [
            snapshot(7, 3, &[1, 2, 3], "state at 7"),
            snapshot(7, 3, &[1], ""),
            snapshot(0, 0, &[], ""),
            no_metadata,
            Snapshot::default(),
        ] {
            let (head, tail) = snapshot_pieces(&s).unwrap();
            let file = [&head[..], s.get_data(), &tail].concat();
            assert_eq!(file, snapshot_file(&s.write_to_bytes().unwrap()), "{s:?}");
            assert_eq!(decode_snapshot(&file).unwrap(), s);
        }
    }

    #[test]
    fn damage_followed_by_valid_records_fails_open_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = open(dir.path());
        log.append(&[entry(1, 1, "a")]).unwrap();
        let second = records(&path).len();
        log.append(&[entry(2, 1, "b")]).unwrap();
        log.append(&[entry(3, 1, "c")]).unwrap();
        drop(log);
        let good = records(&path);
        let expect_damage = |bytes: &[u8], at: usize, what: &str| {
            for bytes in [bytes.to_vec(), [bytes, &[0; 4096]].concat()] {
                std::fs::write(&path, &bytes).unwrap();
                let err = DiskLog::open(dir.path(), FORMAT)
                    .err()
                    .expect(what)
                    .to_string();
                assert!(err.contains(&path.display().to_string()), "{what}: {err}");
                assert!(
                    err.contains(&format!("damaged at byte {at}:")),
                    "{what}: {err}"
                );
                assert!(err.contains("metaserver member remove"), "{what}: {err}");
                assert_eq!(
                    std::fs::read(&path).unwrap(),
                    bytes,
                    "{what}: left as it was"
                );
            }
        };
        for (what, byte) in [("body", second + 12), ("length", second)] {
            let mut bad = good.clone();
            bad[byte] ^= 0x10;
            expect_damage(&bad, second, what);
        }
        // Its checksum holds, so it is no torn write, even last.
        let unreadable = [&good[..], &record(KIND_ENTRIES, &[0xff; 8])].concat();
        expect_damage(&unreadable, good.len(), "unreadable last record");
    }

    /// Everything a member starts from.
    fn view(log: &RaftLog) -> (Snapshot, HardState, ConfState, Vec<Entry>) {
        let p = log.state.clone();
        (p.snapshot, p.hard_state, p.conf_state, p.entries)
    }

    fn snapshot(index: u64, term: u64, voters: &[u64], data: &str) -> Snapshot {
        let mut s = Snapshot::default();
        s.set_data(data.as_bytes().to_vec().into());
        let meta = s.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.mut_conf_state().voters = voters.to_vec();
        s
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn voters(ids: &[u64]) -> ConfState {
        ConfState {
            voters: ids.to_vec(),
            ..Default::default()
        }
    }

    type Op = fn(&mut RaftLog) -> raft::Result<()>;

    /// Histories that end in a snapshot being saved: (what, how the directory gets there,
    /// the operation).
    fn snapshot_histories() -> Vec<(&'static str, Op, Op)> {
        vec![
            (
                "compaction",
                |log| {
                    let first: Vec<Entry> = (1..=4).map(|i| entry(i, 1, "x")).collect();
                    log.append(&first)?;
                    log.set_conf_state(voters(&[1, 2, 3]))?;
                    log.set_hard_state(hard_state(2, 2, 3))?;
                    log.compact(2, b"state at 2".to_vec())?;
                    log.append(&[entry(5, 2, "y"), entry(6, 2, "z")])?;
                    log.set_conf_state(voters(&[1, 2, 3, 4]))?;
                    log.set_commit(6)
                },
                |log| log.compact(5, b"state at 5".to_vec()),
            ),
            (
                "a leader's snapshot past a diverging log",
                |log| {
                    log.append(&[entry(1, 1, "a"), entry(2, 1, "b"), entry(3, 1, "c")])?;
                    log.set_conf_state(voters(&[1, 2, 3]))?;
                    log.set_hard_state(hard_state(1, 1, 2))
                },
                |log| log.apply_snapshot(snapshot(10, 3, &[1, 2, 3, 4], "leader's")),
            ),
            (
                "a joining member's first snapshot",
                |log| log.set_hard_state(hard_state(3, 0, 0)),
                |log| log.apply_snapshot(snapshot(10, 3, &[1, 2, 4], "leader's")),
            ),
            (
                "the founding snapshot",
                |_| Ok(()),
                |log| log.apply_snapshot(snapshot(1, 1, &[1, 2, 3], "founding")),
            ),
        ]
    }

    #[test]
    fn a_crash_at_any_step_of_saving_a_snapshot_leaves_the_state_before_or_after() {
        let steps = [Step::Written, Step::Renamed, Step::DirSynced];
        for (what, prepare, op) in snapshot_histories() {
            let run = |crash: Option<(&'static str, Step)>| {
                let dir = tempfile::tempdir().unwrap();
                let mut log = open(dir.path());
                prepare(&mut log).unwrap();
                drop(log);
                let before = view(&open(dir.path()));
                let (mut disk, state) = DiskLog::open(dir.path(), FORMAT).unwrap();
                disk.crash_after = crash;
                let mut log = RaftLog::new(state, Box::new(disk));
                assert_eq!(op(&mut log).is_ok(), crash.is_none(), "{what} {crash:?}");
                drop(log);
                (dir, before)
            };
            let (done, _) = run(None);
            let after = view(&open(done.path()));
            for crash in ["snapshot", "log"]
                .into_iter()
                .flat_map(|file| steps.map(|step| (file, step)))
            {
                let (dir, before) = run(Some(crash));
                let mut node = start(dir.path());
                let got = view(node.store());
                assert!(
                    got == before || got == after,
                    "{what}, crash after {crash:?}: {got:#?}\nbefore {before:#?}\nafter {after:#?}"
                );
                // The member goes on from there: an append is read back after it.
                let next = node.store().last_index().unwrap() + 1;
                node.mut_store().append(&[entry(next, 9, "next")]).unwrap();
                drop(node);
                let log = open(dir.path());
                assert_eq!(log.term(next).unwrap(), 9, "{what}, crash after {crash:?}");
            }
        }
    }

    #[test]
    fn damaged_snapshot_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(&[entry(1, 1, "a")]).unwrap();
        log.compact(1, b"sm".to_vec()).unwrap();
        drop(log);
        let path = dir.path().join("snapshot");
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(DiskLog::open(dir.path(), FORMAT).is_err());
    }
}
