//! What a metaserver exposes to Prometheus (`--metrics ADDR`): its Raft progress, and on the
//! leader the cluster as `status` shows it.

use lattice_common::metrics::{Exposition, Field, Kind, Sample};
use lattice_common::wire::meta::{
    ChunkserverState, ChunkserverStatusRow, ClusterStatus, JobStatus,
};

/// This member's own view.
pub struct Member {
    pub leader: bool,
    pub term: u64,
    pub applied: u64,
    pub snapshot: u64,
    pub reads_answered_here: u64,
}

pub fn render(me: &Member, cluster: Option<&ClusterStatus>) -> String {
    let (g, c) = (Kind::Gauge, Kind::Counter);
    let mut e = Exposition::default();
    e.one(
        "lattice_meta_is_leader",
        "1 on the Raft leader.",
        g,
        me.leader as u8 as f64,
    );
    e.one("lattice_meta_term", "Current Raft term.", g, me.term as f64);
    e.one(
        "lattice_meta_applied_index",
        "Last log index applied to the state machine.",
        g,
        me.applied as f64,
    );
    e.one(
        "lattice_meta_snapshot_index",
        "Log index of the latest snapshot.",
        g,
        me.snapshot as f64,
    );
    e.one(
        "lattice_meta_reads_answered_here_total",
        "Queries answered by the thread that received them, under the leader's lease.",
        c,
        me.reads_answered_here as f64,
    );
    let Some(s) = cluster else {
        return e.finish();
    };
    e.one(
        "lattice_meta_inodes",
        "Inodes in the namespace.",
        g,
        s.inodes as f64,
    );
    e.one(
        "lattice_meta_slices",
        "Slices referenced by files.",
        g,
        s.slices as f64,
    );
    let r = &s.redundancy;
    let health: Vec<Sample<'_>> = [
        ("healthy", r.healthy),
        ("degraded_1", r.degraded_1),
        ("degraded_2_plus", r.degraded_2_plus),
        ("lost", r.lost),
    ]
    .iter()
    .map(|(k, v)| (vec![("redundancy", k.to_string())], *v as f64))
    .collect();
    e.metric(
        "lattice_meta_slices_by_redundancy",
        "Slices by how many shards are readable.",
        g,
        &health,
    );
    let states = [
        ChunkserverState::Up,
        ChunkserverState::Suspect,
        ChunkserverState::Down,
        ChunkserverState::Draining,
        ChunkserverState::Drained,
    ];
    let by_state: Vec<Sample<'_>> = states
        .iter()
        .map(|st| {
            let n = s.chunkservers.iter().filter(|c| c.state == *st).count();
            (vec![("state", format!("{st:?}").to_lowercase())], n as f64)
        })
        .collect();
    e.metric(
        "lattice_meta_chunkservers",
        "Chunkservers by state.",
        g,
        &by_state,
    );
    let per_server = |f: &dyn Fn(&ChunkserverStatusRow) -> u64| -> Vec<Sample<'_>> {
        s.chunkservers
            .iter()
            .map(|cs| {
                (
                    vec![
                        ("chunkserver", cs.id.to_string()),
                        ("name", cs.name.clone()),
                    ],
                    f(cs) as f64,
                )
            })
            .collect()
    };
    let server_gauges: [Field<ChunkserverStatusRow>; 5] = [
        (
            "lattice_meta_chunkserver_placed_shards",
            "Shards the metadata places on each chunkserver.",
            g,
            |cs| cs.placed_shards,
        ),
        (
            "lattice_meta_chunkserver_used_bytes",
            "Shard bytes each chunkserver reports.",
            g,
            |cs| cs.used_bytes,
        ),
        (
            "lattice_meta_chunkserver_free_bytes",
            "Free bytes each chunkserver reports.",
            g,
            |cs| cs.free_bytes,
        ),
        (
            "lattice_meta_chunkserver_io_errors",
            "I/O errors each chunkserver reports.",
            g,
            |cs| cs.health.io_errors,
        ),
        (
            "lattice_meta_chunkserver_checksum_errors",
            "Checksum errors each chunkserver reports.",
            g,
            |cs| cs.health.checksum_errors,
        ),
    ];
    for (name, help, kind, f) in server_gauges {
        e.metric(name, help, kind, &per_server(&f));
    }
    let per_job = |f: &dyn Fn(&JobStatus) -> u64| -> Vec<Sample<'_>> {
        s.jobs
            .iter()
            .map(|j| {
                let server = j.server.map_or(String::new(), |id| id.to_string());
                (
                    vec![
                        ("kind", format!("{:?}", j.kind).to_lowercase()),
                        ("chunkserver", server),
                    ],
                    f(j) as f64,
                )
            })
            .collect()
    };
    let job_metrics: [Field<JobStatus>; 5] = [
        (
            "lattice_meta_job_done_shards_total",
            "Shards repaired, moved or collected by this leader.",
            c,
            |j| j.done_shards,
        ),
        (
            "lattice_meta_job_done_bytes_total",
            "Bytes repaired, moved or collected by this leader.",
            c,
            |j| j.done_bytes,
        ),
        (
            "lattice_meta_job_remaining_shards",
            "Shards still to repair or move.",
            g,
            |j| j.remaining_shards,
        ),
        ("lattice_meta_job_running", "Shard jobs running.", g, |j| {
            j.running
        }),
        (
            "lattice_meta_job_failed_total",
            "Shard jobs that failed (and will be retried).",
            c,
            |j| j.failed,
        ),
    ];
    for (name, help, kind, f) in job_metrics {
        e.metric(name, help, kind, &per_job(&f));
    }
    e.one(
        "lattice_meta_warnings",
        "Warnings status shows (e.g. too few failure domains).",
        g,
        s.warnings.len() as f64,
    );
    e.finish()
}
