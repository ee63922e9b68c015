//! Entry points for the fuzz targets under `fuzz/` and for the replay of their corpora in
//! the tests: each takes untrusted bytes and must return, whatever they hold. A panic here
//! is a finding: a damaged shard file must be an error, never a crashed server.

use crate::store::shard_file::{seal_header, ShardHeader, ShardReader, HEADER_BYTES};
use std::path::PathBuf;

/// Longest read tried (the service refuses longer ones).
const MAX_READ: u64 = 1 << 20;

/// The file each input is written to (one per process and thread, overwritten each time).
fn scratch_file() -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let name: String = thread.chars().filter(char::is_ascii_digit).collect();
    std::env::temp_dir().join(format!("lattice-fuzz-shard-{}-{name}", std::process::id()))
}

/// A shard file as the store opens and reads it. The first byte picks what is made true
/// before reading (bit 0: the header checksum, bit 1: the block checksums; else nearly
/// every input stops at the first checksum); the next 16 bytes are a range to read; the
/// rest is the file.
pub fn shard_file(bytes: &[u8]) {
    let Some((&flags, rest)) = bytes.split_first() else {
        return;
    };
    let Some((range, file)) = rest.split_first_chunk::<16>() else {
        return;
    };
    let offset = u64::from_le_bytes(range[..8].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(range[8..].try_into().expect("8 bytes")) % MAX_READ;
    let mut file = file.to_vec();
    if flags & 1 != 0 && file.len() >= HEADER_BYTES as usize {
        seal_header(&mut file[..HEADER_BYTES as usize]);
    }
    if flags & 2 != 0 {
        if let Ok(header) = ShardHeader::decode(&file) {
            seal_blocks(&header, &mut file);
        }
    }
    let path = scratch_file();
    if std::fs::write(&path, &file).is_err() {
        return;
    }
    if let Ok(reader) = ShardReader::open(&path) {
        let _ = reader.read(offset, len);
        let _ = reader.read(offset % reader.header.shard_len().max(1), len);
    }
}

/// Writes the true checksum of every block the file holds into its table.
fn seal_blocks(header: &ShardHeader, file: &mut [u8]) {
    let block = header.block_size as usize;
    let data = header.data_offset() as usize;
    for b in 0..header.blocks() as usize {
        let start = data.saturating_add(b.saturating_mul(block));
        let end = start
            .saturating_add(block)
            .min(data + header.shard_len() as usize);
        let slot = HEADER_BYTES as usize + 4 * b;
        if end > file.len() || slot + 4 > data {
            return;
        }
        let crc = crc32c::crc32c(&file[start..end]);
        file[slot..slot + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_corpus_replays() {
        let count = lattice_common::fuzzing::replay_corpus("shard_file", super::shard_file);
        assert!(count > 0);
    }
}
