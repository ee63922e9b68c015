//! Helpers shared by the integration tests: a local cluster in a temporary directory whose
//! processes are stopped (by pid) when the test ends, pass or fail.

use anyhow::Result;
use lattice_common::pki::Role;
use lattice_common::shard_client::ShardClient;
use lattice_common::slice_io::SliceIo;
use lattice_common::transport::{Identity, Node};
use lattice_harness::{default_bin_dir, LocalCluster};
use rand::{RngCore, SeedableRng};
use std::path::Path;
use std::time::Duration;

pub struct TestCluster {
    pub cluster: LocalCluster,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    pub fn new() -> Result<TestCluster> {
        let dir = tempfile::Builder::new().prefix("lattice-test-").tempdir()?;
        let cluster = LocalCluster::open(dir.path(), default_bin_dir()?)?;
        Ok(TestCluster { cluster, _dir: dir })
    }

    pub fn state(&self) -> &Path {
        &self.cluster.state
    }

    /// A QUIC client node holding a certificate of `role` from this cluster's CA.
    pub fn node(&self, role: Role, name: &str) -> Result<std::sync::Arc<Node>> {
        let dir = self.cluster.certs(role, name)?;
        Ok(Node::client(&Identity::load(&dir)?)?)
    }

    pub fn slice_io(&self, role: Role, name: &str, timeout: Duration) -> Result<SliceIo> {
        Ok(SliceIo::new(ShardClient::new(
            self.node(role, name)?,
            timeout,
        )))
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Err(e) = self.cluster.stop_all() {
            eprintln!("stopping the test cluster: {e:#}");
        }
    }
}

/// Reproducible random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}
