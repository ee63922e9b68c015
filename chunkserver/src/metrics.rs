//! What a chunkserver exposes to Prometheus (`--metrics ADDR`).

use crate::service::Service;
use lattice_common::metrics::{Counter, Exposition, Field, Kind, Sample};
use lattice_common::wire::DiskStatus;
use std::sync::Arc;

/// Request counters, bumped by the handlers.
#[derive(Default)]
pub struct Stats {
    pub puts: Counter,
    pub put_bytes: Counter,
    pub gets: Counter,
    pub get_bytes: Counter,
    pub rebuilds: Counter,
    pub rebuild_bytes: Counter,
    pub errors: Counter,
}

pub async fn render(service: Arc<Service>) -> String {
    let status = service.status().await;
    let s = &service.stats;
    let mut e = Exposition::default();
    let per_disk = |f: &dyn Fn(&DiskStatus) -> u64| -> Vec<Sample<'_>> {
        status
            .disks
            .iter()
            .map(|d| (vec![("disk", d.path.clone())], f(d) as f64))
            .collect()
    };
    let disk_gauges: [Field<DiskStatus>; 4] = [
        (
            "lattice_chunkserver_disk_total_bytes",
            "Size of each data directory's filesystem.",
            Kind::Gauge,
            |d| d.total_bytes,
        ),
        (
            "lattice_chunkserver_disk_free_bytes",
            "Free bytes for shards on each data directory.",
            Kind::Gauge,
            |d| d.free_bytes,
        ),
        (
            "lattice_chunkserver_shard_bytes",
            "Bytes of shard files on each data directory.",
            Kind::Gauge,
            |d| d.shard_bytes,
        ),
        (
            "lattice_chunkserver_shards",
            "Shards on each data directory.",
            Kind::Gauge,
            |d| d.shards,
        ),
    ];
    for (name, help, kind, f) in disk_gauges {
        e.metric(name, help, kind, &per_disk(&f));
    }
    let (c, g) = (Kind::Counter, Kind::Gauge);
    let h = status.health;
    let sc = status.scrub;
    e.ones(&[
        (
            "lattice_chunkserver_io_errors_total",
            "Disk I/O errors since start.",
            c,
            h.io_errors as f64,
        ),
        (
            "lattice_chunkserver_checksum_errors_total",
            "Blocks that failed their checksum since start.",
            c,
            h.checksum_errors as f64,
        ),
        (
            "lattice_chunkserver_slow_ops_total",
            "Disk operations slower than expected since start.",
            c,
            h.slow_ops as f64,
        ),
        (
            "lattice_chunkserver_scrub_passes_total",
            "Scrub passes over every shard finished.",
            c,
            sc.passes as f64,
        ),
        (
            "lattice_chunkserver_scrub_bytes_checked",
            "Bytes verified in the current scrub pass.",
            g,
            sc.bytes_checked as f64,
        ),
        (
            "lattice_chunkserver_scrub_damaged_total",
            "Damaged shards found by scrub.",
            c,
            sc.damaged as f64,
        ),
        (
            "lattice_chunkserver_puts_total",
            "Shards stored.",
            c,
            s.puts.get(),
        ),
        (
            "lattice_chunkserver_put_bytes_total",
            "Shard bytes stored.",
            c,
            s.put_bytes.get(),
        ),
        (
            "lattice_chunkserver_gets_total",
            "Shard ranges read.",
            c,
            s.gets.get(),
        ),
        (
            "lattice_chunkserver_get_bytes_total",
            "Shard bytes read.",
            c,
            s.get_bytes.get(),
        ),
        (
            "lattice_chunkserver_rebuilds_total",
            "Shards rebuilt or copied here.",
            c,
            s.rebuilds.get(),
        ),
        (
            "lattice_chunkserver_rebuild_bytes_total",
            "Bytes of shards rebuilt or copied here.",
            c,
            s.rebuild_bytes.get(),
        ),
        (
            "lattice_chunkserver_request_errors_total",
            "Requests answered with an error.",
            c,
            s.errors.get(),
        ),
    ]);
    e.finish()
}
