//! Messages between processes. [`chunk`]: the chunkserver protocol. [`meta`]: the
//! metaserver protocol (filesystem operations, cluster membership, Raft traffic, admin).

pub mod chunk;
pub mod meta;

pub use chunk::*;
