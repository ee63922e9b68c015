//! What a mount exposes to Prometheus (`-o metrics=ADDR`).

use lattice_common::metrics::{Counter, Exposition, Kind};

#[derive(Default)]
pub struct Stats {
    pub reads: Counter,
    pub read_bytes: Counter,
    pub writes: Counter,
    pub write_bytes: Counter,
    pub slices_committed: Counter,
    pub write_errors: Counter,
}

impl Stats {
    pub fn render(&self) -> String {
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
        ]);
        e.finish()
    }
}
