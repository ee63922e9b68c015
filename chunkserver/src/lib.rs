//! The chunkserver's parts: the `chunkserver` binary (`main.rs`) puts them together, and the
//! fuzz targets (`fuzz/`) reach its decoders through [`fuzzing`].

pub mod disk;
pub mod drain;
pub mod fuzzing;
pub mod grants;
pub mod membership;
pub mod metrics;
mod rebuild;
pub mod scrub;
pub mod service;
pub mod store;
