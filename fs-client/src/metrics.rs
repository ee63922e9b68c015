//! What a mount exposes to Prometheus (`-o metrics=ADDR`).

use lattice_common::latency::ReadStats;
use lattice_common::metrics::{Counter, Exposition, Kind};

#[derive(Default)]
pub struct Stats {
    pub reads: Counter,
    pub read_bytes: Counter,
    pub writes: Counter,
    pub write_bytes: Counter,
    pub slices_committed: Counter,
    pub write_errors: Counter,
    pub acl_reads_answered: Counter,
    pub statahead_hits: Counter,
    pub known_dir_hits: Counter,
    pub times_with_writes: Counter,
    pub dir_attrs_kept_hits: Counter,
    pub statahead_fetches: Counter,
    pub unlinks_answered: Counter,
    pub unlink_batches: Counter,
    pub unlinks_refused: Counter,
}

impl Stats {
    /// The mount's counters, and those of its shard reads (`io`).
    pub fn render(&self, io: &ReadStats) -> String {
        let c = Kind::Counter;
        let mut e = Exposition::default();
        e.ones(&[
            (
                "lattice_client_reads_total",
                "Read requests from the kernel.",
                c,
                self.reads.get(),
            ),
            (
                "lattice_client_read_bytes_total",
                "Bytes returned to readers.",
                c,
                self.read_bytes.get(),
            ),
            (
                "lattice_client_writes_total",
                "Write requests from the kernel.",
                c,
                self.writes.get(),
            ),
            (
                "lattice_client_write_bytes_total",
                "Bytes written by applications.",
                c,
                self.write_bytes.get(),
            ),
            (
                "lattice_client_slices_committed_total",
                "Slices written and committed.",
                c,
                self.slices_committed.get(),
            ),
            (
                "lattice_client_write_errors_total",
                "Slices that failed to be written or committed.",
                c,
                self.write_errors.get(),
            ),
            (
                "lattice_client_acl_reads_answered_total",
                "ACL and capability reads answered from cached attributes (none set) without a metaserver.",
                c,
                self.acl_reads_answered.get(),
            ),
            (
                "lattice_client_statahead_hits_total",
                "Lookups answered from directory entries fetched ahead.",
                c,
                self.statahead_hits.get(),
            ),
            (
                "lattice_client_known_dir_hits_total",
                "Lookups of directories answered from what this mount learnt of them within the attribute timeout.",
                c,
                self.known_dir_hits.get(),
            ),
            (
                "lattice_client_times_with_writes_total",
                "Times set (cp -a, tar x, rsync -a) in the same commit as the bytes written before them.",
                c,
                self.times_with_writes.get(),
            ),
            (
                "lattice_client_dir_attrs_kept_hits_total",
                "Directory attributes answered from this mount's own latest change in the directory.",
                c,
                self.dir_attrs_kept_hits.get(),
            ),
            (
                "lattice_client_statahead_fetches_total",
                "Windows of directory entries fetched ahead of lookups.",
                c,
                self.statahead_fetches.get(),
            ),
            (
                "lattice_client_unlinks_answered_total",
                "Unlinks answered at once and sent to the metaservers in batches.",
                c,
                self.unlinks_answered.get(),
            ),
            (
                "lattice_client_unlink_batches_total",
                "Batches of unlinks answered at once that the metaservers applied.",
                c,
                self.unlink_batches.get(),
            ),
            (
                "lattice_client_unlinks_refused_total",
                "Unlinks answered at once that the metaservers then refused (reported by a directory fsync).",
                c,
                self.unlinks_refused.get(),
            ),
            (
                "lattice_client_hedged_reads_total",
                "Shard reads given up on as slower than their peers, read around from parity.",
                c,
                io.hedged.get(),
            ),
            (
                "lattice_client_avoided_reads_total",
                "Shard reads planned around a failing, slow, suspect or draining server.",
                c,
                io.avoided.get(),
            ),
            (
                "lattice_client_probe_reads_total",
                "Background reads that measured a server known to be slow.",
                c,
                io.probes.get(),
            ),
        ]);
        e.finish()
    }
}
