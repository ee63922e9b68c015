//! The cost of one slice commit's hidden-slice check on a fragmented chunk: a 64 MiB slice
//! under N - 1 scattered 4 KiB writes, plus one new 4 KiB write. `full` resolves the whole
//! chunk (`drop_hidden`), `by-added` checks only what the new slice overlaps
//! (`drop_hidden_by`, what a commit uses).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use lattice_common::chunk_map::{drop_hidden, drop_hidden_by, SliceRef, CHUNK_SIZE};
use lattice_common::ids::{ChunkserverId, SliceId};
use lattice_common::layout::SliceLayout;
use rand::{Rng, SeedableRng};

const WRITE: u64 = 4096;

fn slice(id: u64, at: u64, len: u64) -> SliceRef {
    SliceRef {
        slice: SliceId(id),
        layout: SliceLayout::new("rs:4+2".parse().unwrap(), len, 65536).unwrap(),
        placement: (1..=6).map(|i| Some(ChunkserverId(i))).collect(),
        chunk_offset: at,
        skip: 0,
        len,
    }
}

/// A 4 KiB write at a random aligned offset of the chunk.
fn random_write(id: u64, rng: &mut impl Rng) -> SliceRef {
    slice(id, rng.gen_range(0..CHUNK_SIZE / WRITE) * WRITE, WRITE)
}

/// A chunk as random 4 KiB writes leave it: nothing in it hidden.
fn fragmented(n: u64, rng: &mut impl Rng) -> Vec<SliceRef> {
    let mut slices = vec![slice(0, 0, CHUNK_SIZE)];
    for id in 1..n {
        let new = slices.len();
        slices.push(random_write(id, rng));
        drop_hidden_by(&mut slices, new);
    }
    slices
}

fn commit_check(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk_map/commit");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for n in [1_000u64, 10_000] {
        let mut slices = fragmented(n, &mut rng);
        slices.push(random_write(n, &mut rng));
        let new = slices.len() - 1;
        group.bench_function(format!("{n}-slices/full"), |b| {
            b.iter_batched(
                || slices.clone(),
                |mut s| drop_hidden(black_box(&mut s)),
                BatchSize::LargeInput,
            )
        });
        group.bench_function(format!("{n}-slices/by-added"), |b| {
            b.iter_batched(
                || slices.clone(),
                |mut s| drop_hidden_by(black_box(&mut s), new),
                BatchSize::LargeInput,
            )
        });
    }
}

criterion_group!(benches, commit_check);
criterion_main!(benches);
