//! LatticeFS shared library: what every process agrees on.
//!
//! - [`ids`], [`policy`], [`layout`]: what a slice and its shards are, and where bytes sit.
//! - [`erasure`], [`grid`]: parity encoding and reconstruction; grid parity's product code.
//! - [`fs`], [`chunk_map`]: the POSIX model, and a file's bytes as layered slices.
//! - [`codec`], [`wire`]: the bounded, versioned message encoding and the messages.
//! - [`pki`], [`transport`]: the cluster CA and QUIC with mutual TLS.
//! - [`logging`], [`metrics`]: how every process logs and exposes Prometheus metrics.
//! - [`shard_client`], [`slice_io`]: talking to chunkservers, one shard or a whole slice.
//! - [`meta_client`]: talking to the metaserver group.
//! - [`throttle`]: rate limits for background work.

pub mod chunk_map;
pub mod codec;
pub mod erasure;
pub mod fs;
pub mod fuzzing;
pub mod grant;
pub mod grid;
pub mod ids;
pub mod latency;
pub mod layout;
pub mod logging;
pub mod meta_client;
pub mod metrics;
pub mod mount_user;
pub mod pki;
pub mod policy;
pub mod shard_client;
pub mod slice_io;
pub mod throttle;
pub mod transport;
pub mod wire;
