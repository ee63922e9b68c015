//! The on-disk format of one shard.
//!
//! ```text
//! [header: 128 bytes][crc32c of each block: 4 bytes each][zero pad to 4 KiB][shard bytes]
//! ```
//! The header describes itself (slice id, shard index, policy, stripe unit, lengths, block
//! size) so an offline tool can recognise and re-adopt a shard without any metadata, and
//! carries its own checksum. Every block of shard bytes has a crc32c in the table; readers
//! verify every block they touch. A shard is written to a temporary file, fsynced, and
//! renamed into place, so a crash never leaves a half-written shard under its real name.

use super::StoreError;
use bytes::Bytes;
use lattice_common::ids::{ShardId, SliceId};
use lattice_common::layout::SliceLayout;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"LATSHRD1";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_BYTES: u64 = 128;
/// Bytes per checksum block: a read fetches and verifies whole blocks, so a 4 KiB random
/// read costs 4 KiB of disk and checksum. (Shards stored with other block sizes stay
/// readable: the header says which.)
pub const BLOCK_SIZE: u32 = 4 << 10;
const DATA_ALIGN: u64 = 4096;
const POLICY_FIELD: usize = 64;

/// What a shard file says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardHeader {
    pub shard: ShardId,
    pub layout: SliceLayout,
    pub block_size: u32,
}

impl ShardHeader {
    pub fn new(shard: ShardId, layout: SliceLayout) -> Self {
        ShardHeader {
            shard,
            layout,
            block_size: BLOCK_SIZE,
        }
    }

    pub fn shard_len(&self) -> u64 {
        self.layout.shard_len()
    }

    pub fn blocks(&self) -> u64 {
        self.shard_len().div_ceil(self.block_size as u64)
    }

    pub fn data_offset(&self) -> u64 {
        (HEADER_BYTES + 4 * self.blocks()).next_multiple_of(DATA_ALIGN)
    }

    /// Size of the whole file.
    pub fn file_bytes(&self) -> u64 {
        self.data_offset() + self.shard_len()
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES as usize] {
        let mut h = [0u8; HEADER_BYTES as usize];
        let policy = self.layout.policy.to_string();
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&self.shard.index.0.to_le_bytes());
        h[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.shard.slice.0.to_le_bytes());
        h[24..32].copy_from_slice(&self.layout.data_len.to_le_bytes());
        h[32..40].copy_from_slice(&self.shard_len().to_le_bytes());
        h[40..44].copy_from_slice(&self.layout.stripe_unit.to_le_bytes());
        h[44] = policy.len() as u8;
        h[45..45 + policy.len()].copy_from_slice(policy.as_bytes());
        seal_header(&mut h);
        h
    }

    pub fn decode(h: &[u8]) -> Result<Self, String> {
        if h.len() < HEADER_BYTES as usize || &h[0..8] != MAGIC {
            return Err("not a LatticeFS shard (bad magic)".into());
        }
        let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(124) != crc32c::crc32c(&h[..124]) {
            return Err("header checksum mismatch".into());
        }
        if u16_at(8) != FORMAT_VERSION {
            return Err(format!("unknown shard format version {}", u16_at(8)));
        }
        let policy_len = (h[44] as usize).min(POLICY_FIELD);
        let policy = std::str::from_utf8(&h[45..45 + policy_len])
            .map_err(|_| "policy is not text".to_string())?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let layout = SliceLayout::new(policy, u64_at(24), u32_at(40)).map_err(|e| e.to_string())?;
        let block_size = u32_at(12);
        if block_size == 0 || block_size % 4096 != 0 {
            return Err(format!("bad block size {block_size}"));
        }
        let header = ShardHeader {
            shard: ShardId::new(SliceId(u64_at(16)), u16_at(10)),
            layout,
            block_size,
        };
        if header.shard_len() != u64_at(32) {
            return Err("shard length disagrees with its layout".into());
        }
        if header.shard.index.0 as usize >= policy.total_shards() {
            return Err("shard index outside its policy".into());
        }
        Ok(header)
    }
}

/// Puts the magic and the checksum into an encoded header (`HEADER_BYTES` long).
pub fn seal_header(h: &mut [u8]) {
    h[0..8].copy_from_slice(MAGIC);
    let crc = crc32c::crc32c(&h[..124]);
    h[124..128].copy_from_slice(&crc.to_le_bytes());
}

/// Maps an I/O error to a store error, recognising a full disk.
pub fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => StoreError::NoSpace(path.display().to_string()),
        _ => StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Streams one shard into a temporary file; [`ShardWriter::finish`] makes it durable and
/// visible. Dropped unfinished, it removes the temporary file.
pub struct ShardWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    header: ShardHeader,
    crcs: Vec<u32>,
    block_crc: u32,
    block_fill: u64,
    written: u64,
    done: bool,
}

impl ShardWriter {
    pub fn create(header: ShardHeader, tmp: PathBuf, dest: PathBuf) -> Result<Self, StoreError> {
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| io_error(&tmp, e))?;
        let writer = ShardWriter {
            file,
            tmp,
            dest,
            header,
            crcs: Vec::with_capacity(header.blocks() as usize),
            block_crc: 0,
            block_fill: 0,
            written: 0,
            done: false,
        };
        // Reserve the space now so a full disk fails the put before any data moves.
        match nix::fcntl::posix_fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&writer.file),
            0,
            header.file_bytes() as i64,
        ) {
            Ok(()) | Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(io_error(&writer.tmp, e.into())),
        }
        Ok(writer)
    }

    pub fn write(&mut self, mut data: &[u8]) -> Result<(), StoreError> {
        let len = self.header.shard_len();
        if self.written + data.len() as u64 > len {
            return Err(StoreError::Invalid(format!(
                "shard {} body exceeds its {len} bytes",
                self.header.shard
            )));
        }
        self.file
            .write_all_at(data, self.header.data_offset() + self.written)
            .map_err(|e| io_error(&self.tmp, e))?;
        self.written += data.len() as u64;
        let block = self.header.block_size as u64;
        while !data.is_empty() {
            let take = ((block - self.block_fill) as usize).min(data.len());
            self.block_crc = crc32c::crc32c_append(self.block_crc, &data[..take]);
            self.block_fill += take as u64;
            data = &data[take..];
            if self.block_fill == block {
                self.crcs.push(self.block_crc);
                (self.block_crc, self.block_fill) = (0, 0);
            }
        }
        Ok(())
    }

    /// Writes header and checksums, fsyncs, and renames into place (then fsyncs the directory).
    pub fn finish(mut self) -> Result<ShardHeader, StoreError> {
        let len = self.header.shard_len();
        if self.written != len {
            return Err(StoreError::Invalid(format!(
                "shard {} body is {} bytes, expected {len}",
                self.header.shard, self.written
            )));
        }
        if self.block_fill > 0 {
            self.crcs.push(self.block_crc);
        }
        let mut meta = self.header.encode().to_vec();
        meta.extend(self.crcs.iter().flat_map(|c| c.to_le_bytes()));
        let io = |e| io_error(&self.tmp, e);
        self.file.write_all_at(&meta, 0).map_err(io)?;
        self.file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io)?;
        self.done = true;
        sync_parent(&self.dest)?;
        Ok(self.header)
    }
}

impl Drop for ShardWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Fsyncs the directory holding `path`, making its entry (a rename, a new directory) durable.
pub fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    #[cfg(test)]
    SYNCED_DIRS.with(|s| s.borrow_mut().push(dir.to_path_buf()));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

#[cfg(test)]
thread_local! {
    /// The directories this thread fsynced: a test can see a new directory made durable.
    pub static SYNCED_DIRS: std::cell::RefCell<Vec<PathBuf>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// An open shard file whose header has been read and checked. The checksums of the
/// blocks a read touches are read with it, so opening costs the same for any shard size.
pub struct ShardReader {
    file: File,
    pub path: PathBuf,
    pub header: ShardHeader,
}

impl ShardReader {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(|e| io_error(path, e))?;
        let corrupt = |why: String| StoreError::Corrupt(format!("{}: {why}", path.display()));
        let mut h = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut h, 0)
            .map_err(|e| corrupt(format!("short header: {e}")))?;
        let header = ShardHeader::decode(&h).map_err(&corrupt)?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        if file_len < header.file_bytes() {
            return Err(corrupt(format!("truncated to {file_len} bytes")));
        }
        Ok(ShardReader {
            file,
            path: path.to_path_buf(),
            header,
        })
    }

    /// Reads shard bytes `offset..offset+len`, verifying every block they touch.
    pub fn read(&self, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        let shard_len = self.header.shard_len();
        if offset.checked_add(len).is_none_or(|end| end > shard_len) {
            return Err(StoreError::Invalid(format!(
                "range {offset}+{len} outside shard of {shard_len} bytes"
            )));
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let block = self.header.block_size as u64;
        let first = offset / block;
        let last = (offset + len - 1) / block;
        let start = first * block;
        let end = ((last + 1) * block).min(shard_len);
        let mut crcs = vec![0u8; 4 * (last - first + 1) as usize];
        self.file
            .read_exact_at(&mut crcs, HEADER_BYTES + 4 * first)
            .map_err(|e| io_error(&self.path, e))?;
        let mut buf = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut buf, self.header.data_offset() + start)
            .map_err(|e| io_error(&self.path, e))?;
        for (i, (data, crc)) in buf
            .chunks(block as usize)
            .zip(crcs.chunks_exact(4))
            .enumerate()
        {
            let b = first + i as u64;
            if crc32c::crc32c(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
                return Err(StoreError::Corrupt(format!(
                    "{}: block {b} fails its checksum",
                    self.path.display()
                )));
            }
        }
        let skip = (offset - start) as usize;
        Ok(Bytes::from(buf).slice(skip..skip + len as usize))
    }
}
