//! The metaserver's parts: the `metaserver` binary (`main.rs`) puts them together, and the
//! fuzz targets (`fuzz/`) reach its decoders through [`fuzzing`].

mod cluster_map;
pub mod core;
mod deep_scrub;
mod fileinfo;
pub mod fuzzing;
mod gc;
pub mod grants;
pub mod jobs;
pub mod lease_reads;
mod locks;
mod metrics;
mod namespace;
pub mod peers;
mod placement;
mod planner;
pub mod raft_log;
pub mod raft_tracing;
mod reencode;
pub mod replica;
pub mod service;
#[cfg(test)]
mod sim;
pub mod state_machine;
