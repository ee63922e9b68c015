//! The Raft log: entries, hard state, configuration and the latest state machine snapshot.
//!
//! [`RaftLog`] is what raft-rs reads (it implements `raft::Storage` from memory); every
//! change also goes to a [`Durable`] backend before it counts. [`DiskLog`] is the real one:
//!
//! ```text
//! <dir>/log       records [len u32][crc32c u32][kind u8][payload], appended and fsynced
//! <dir>/snapshot  [magic][crc32c u32][len u64][index][term][conf state][state machine]
//! ```
//! A torn record at the end of `log` (a crash mid-write, never acknowledged) is cut off at
//! start. Compaction writes a new snapshot, then a new `log` holding only what follows it,
//! each by write-fsync-rename-fsync, so a crash at any point leaves a consistent pair.

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tracing::warn;

const SNAPSHOT_MAGIC: &[u8; 8] = b"LATSNAP1";
const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
/// Largest single log record (a batch of entries); larger appends are split.
const MAX_RECORD: usize = 64 << 20;

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
    fn append(&mut self, entries: &[Entry]) -> std::io::Result<()>;
    fn set_hard_state(&mut self, hs: &HardState) -> std::io::Result<()>;
    fn set_conf_state(&mut self, cs: &ConfState) -> std::io::Result<()>;
    /// Replaces the snapshot and keeps only `rest` (entries after it) in the log.
    fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hs: &HardState,
        rest: &[Entry],
    ) -> std::io::Result<()>;
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

    pub fn snapshot_data(&self) -> &[u8] {
        self.state.snapshot.get_data()
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

    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first) = entries.first() else {
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
        self.durable.append(entries).map_err(store_err)?;
        let keep = (first.index - self.first()) as usize;
        self.state.entries.truncate(keep);
        self.state.entries.extend_from_slice(entries);
        Ok(())
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        self.durable.set_hard_state(&hs).map_err(store_err)?;
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
        self.state.snapshot = snapshot;
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
        self.state.snapshot = snapshot;
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
            Ok(self.state.snapshot.clone())
        } else {
            self.snapshot_wanted.store(true, Ordering::Relaxed);
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ))
        }
    }
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
    fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(first) = entries.first() else {
            return Ok(());
        };
        truncate_from(&mut p.entries, first.index);
        p.entries.extend_from_slice(entries);
        Ok(())
    }
    fn set_hard_state(&mut self, hs: &HardState) -> std::io::Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).hard_state = hs.clone();
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
}

/// Raft state in files under one directory, fsynced before every acknowledgement.
pub struct DiskLog {
    dir: PathBuf,
    log: File,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `data` to `path` atomically and durably.
fn replace_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 9);
    out.extend_from_slice(&((payload.len() + 1) as u32).to_le_bytes());
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    out
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

fn encode_snapshot(s: &Snapshot) -> std::io::Result<Vec<u8>> {
    let body = s.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn decode_snapshot(bytes: &[u8]) -> std::io::Result<Snapshot> {
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

impl DiskLog {
    /// Opens the Raft state in `dir` (created empty if missing) and reads it back.
    pub fn open(dir: &Path) -> std::io::Result<(DiskLog, Persisted)> {
        std::fs::create_dir_all(dir)?;
        let mut state = Persisted::default();
        let snap_path = dir.join("snapshot");
        if snap_path.exists() {
            state.snapshot = decode_snapshot(&std::fs::read(&snap_path)?)?;
            let meta = state.snapshot.get_metadata();
            state.conf_state = meta.get_conf_state().clone();
            state.hard_state.commit = meta.index;
            state.hard_state.term = meta.term;
        }
        let log_path = dir.join("log");
        let mut bytes = Vec::new();
        if log_path.exists() {
            File::open(&log_path)?.read_to_end(&mut bytes)?;
        }
        let good = replay(&bytes, &mut state)?;
        if good < bytes.len() {
            warn!(path = %log_path.display(), at = good, dropped = bytes.len() - good, "cutting off a torn log record");
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        log.set_len(good as u64)?;
        log.sync_all()?;
        sync_dir(dir)?;
        Ok((
            DiskLog {
                dir: dir.to_path_buf(),
                log,
            },
            state,
        ))
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.log.write_all(bytes)?;
        self.log.sync_data()
    }
}

/// Applies the log records in `bytes` to `state`; returns how many bytes were whole.
fn replay(bytes: &[u8], state: &mut Persisted) -> std::io::Result<usize> {
    let mut pos = 0;
    while bytes.len() - pos >= 9 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_RECORD + 1 || bytes.len() - pos - 8 < len {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        let (kind, payload) = (body[0], &body[1..]);
        match kind {
            KIND_ENTRIES => {
                let mut p = payload;
                while p.len() >= 4 {
                    let n = u32::from_le_bytes(p[..4].try_into().expect("4 bytes")) as usize;
                    let e = Entry::parse_from_bytes(&p[4..4 + n.min(p.len() - 4)])
                        .map_err(|e| invalid(e.to_string()))?;
                    p = &p[(4 + n).min(p.len())..];
                    if e.index <= state.snapshot.get_metadata().index {
                        continue;
                    }
                    truncate_from(&mut state.entries, e.index);
                    state.entries.push(e);
                }
            }
            KIND_HARD_STATE => {
                state.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|e| invalid(e.to_string()))?
            }
            KIND_CONF_STATE => {
                state.conf_state =
                    ConfState::parse_from_bytes(payload).map_err(|e| invalid(e.to_string()))?
            }
            other => return Err(invalid(format!("unknown log record kind {other}"))),
        }
        pos += 8 + len;
    }
    Ok(pos)
}

impl Durable for DiskLog {
    fn append(&mut self, entries: &[Entry]) -> std::io::Result<()> {
        let bytes = entries_records(entries)?;
        self.write(&bytes)
    }

    fn set_hard_state(&mut self, hs: &HardState) -> std::io::Result<()> {
        let payload = hs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
        self.write(&record(KIND_HARD_STATE, &payload))
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> std::io::Result<()> {
        let payload = cs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
        self.write(&record(KIND_CONF_STATE, &payload))
    }

    fn save_snapshot(
        &mut self,
        snapshot: &Snapshot,
        hs: &HardState,
        rest: &[Entry],
    ) -> std::io::Result<()> {
        replace_file(&self.dir.join("snapshot"), &encode_snapshot(snapshot)?)?;
        let cs = snapshot
            .get_metadata()
            .get_conf_state()
            .write_to_bytes()
            .map_err(|e| invalid(e.to_string()))?;
        let hs = hs.write_to_bytes().map_err(|e| invalid(e.to_string()))?;
        let mut log = record(KIND_CONF_STATE, &cs);
        log.extend(record(KIND_HARD_STATE, &hs));
        log.extend(entries_records(rest)?);
        let log_path = self.dir.join("log");
        replace_file(&log_path, &log)?;
        self.log = OpenOptions::new().append(true).open(&log_path)?;
        Ok(())
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

    fn open(dir: &Path) -> RaftLog {
        let (disk, state) = DiskLog::open(dir).unwrap();
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

        let log = open(dir.path());
        assert_eq!(log.snapshot_data(), b"state at 3");
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (4, 5)
        );
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(log.conf_state(), &cs);
        assert_eq!(log.hard_state().vote, 7);
    }

    #[test]
    fn torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        log.append(&[entry(1, 1, "a"), entry(2, 1, "b")]).unwrap();
        log.append(&[entry(3, 1, "c")]).unwrap();
        drop(log);
        let path = dir.path().join("log");
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let log = open(dir.path());
        assert_eq!(log.last_index().unwrap(), 2);
        // Garbage in place of the tail is cut too.
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9])
            .unwrap();
        drop(f);
        let log = open(dir.path());
        assert_eq!(log.last_index().unwrap(), 2);
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
        assert!(DiskLog::open(dir.path()).is_err());
    }
}
