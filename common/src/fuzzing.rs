//! Entry points for the fuzz targets under `fuzz/` and for the replay of their corpora in
//! the tests: each takes untrusted bytes and must return, whatever they hold. A panic here
//! is a finding.

use crate::codec;
use crate::wire::meta::{MetaRequest, MetaResponse, RaftBatch};
use crate::wire::{ChunkRequest, ChunkResponse};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Bytes off the network as every message type: as a whole frame, and as a body behind a
/// true header (else nearly every input stops at the length or version). Whatever decodes
/// must encode, and decode again to what encodes the same.
pub fn wire(bytes: &[u8]) {
    fn each<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
        let _ = codec::decode::<T>(bytes);
        let mut payload = codec::PROTOCOL_VERSION.to_le_bytes().to_vec();
        payload.extend_from_slice(bytes);
        let Ok(msg) = codec::decode_payload::<T>(&payload) else {
            return;
        };
        let once = codec::encode(&msg).expect("a decoded message encodes");
        let again: T = codec::decode(&once).expect("an encoded message decodes");
        assert_eq!(codec::encode(&again).expect("encodes"), once, "not stable");
    }
    each::<MetaRequest>(bytes);
    each::<MetaResponse>(bytes);
    each::<RaftBatch>(bytes);
    each::<ChunkRequest>(bytes);
    each::<ChunkResponse>(bytes);
}

/// A peer's certificate as a server reads who it is.
pub fn certificate(der: &[u8]) {
    let _ = crate::pki::peer_name(der);
}

/// Runs every input kept in the corpus of fuzz target `target` (`fuzz/corpus/TARGET`)
/// through `entry`, as the tests do on every run: what the fuzzer once found stays fixed.
/// Returns how many there were.
pub fn replay_corpus(target: &str, entry: fn(&[u8])) -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for file in files {
        let path = file.expect("a corpus entry").path();
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        entry(&bytes);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_corpora_replay() {
        assert!(super::replay_corpus("wire", super::wire) > 0);
        assert!(super::replay_corpus("certificate", super::certificate) > 0);
    }
}
