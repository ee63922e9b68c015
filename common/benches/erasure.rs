//! Encode and decode throughput of Reed-Solomon and grid parity at 1 MiB shards, next to a
//! plain memcpy of the same bytes as the reference. Throughput is counted in data bytes (K
//! MiB per op), except for rebuilds of one lost shard, counted in the shard's bytes.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lattice_common::erasure::ErasureCode;
use lattice_common::grid::GridCode;
use lattice_common::policy::Policy;
use rand::{RngCore, SeedableRng};

const SHARD: usize = 1 << 20;

fn erasure(c: &mut Criterion) {
    let mut group = c.benchmark_group("erasure");
    group.sample_size(20);
    for text in ["rs:4+2", "rs:8+3"] {
        let policy: Policy = text.parse().unwrap();
        let (k, m) = (policy.data_shards(), policy.parity_shards());
        let code = ErasureCode::new(policy).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let data: Vec<Vec<u8>> = (0..k)
            .map(|_| {
                let mut s = vec![0u8; SHARD];
                rng.fill_bytes(&mut s);
                s
            })
            .collect();
        let parity = code.parity(&data).unwrap();
        let all: Vec<Vec<u8>> = data.iter().chain(&parity).cloned().collect();
        group.throughput(Throughput::Bytes((k * SHARD) as u64));

        let mut out = vec![vec![0u8; SHARD]; m];
        group.bench_function(format!("{text}/encode"), |b| {
            b.iter(|| code.parity_into(black_box(&data), &mut out).unwrap())
        });
        group.bench_function(format!("{text}/decode-{m}-data-shards-lost"), |b| {
            b.iter_batched(
                || {
                    let mut pieces: Vec<Option<Vec<u8>>> = all.iter().cloned().map(Some).collect();
                    pieces.iter_mut().take(m).for_each(|p| *p = None);
                    pieces
                },
                |mut pieces| code.reconstruct(&mut pieces).unwrap(),
                BatchSize::LargeInput,
            )
        });
        let flat: Vec<u8> = data.concat();
        let mut dst = vec![0u8; flat.len()];
        group.bench_function(format!("{text}/memcpy"), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&flat)))
        });
    }
    group.finish();
}

fn random_shards(count: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    (0..count)
        .map(|_| {
            let mut s = vec![0u8; SHARD];
            rng.fill_bytes(&mut s);
            s
        })
        .collect()
}

/// `grid:4x4+1` next to `rs:16+3` (the same 16 data shards, 3 losses survivable by both):
/// encode, decode of three lost data shards, and the rebuild of one lost shard, which the
/// grid does from its row (4 shards read) and Reed-Solomon from 16. Prints the bytes read.
fn grid_against_rs(c: &mut Criterion) {
    let mut group = c.benchmark_group("grid");
    group.sample_size(20);
    let grid = GridCode::new("4x4+1".parse().unwrap()).unwrap();
    let rs = ErasureCode::new("rs:16+3".parse().unwrap()).unwrap();
    let data = random_shards(16);
    let mut grid_parity = vec![vec![0u8; SHARD]; 9];
    grid.parity_into(&data, &mut grid_parity).unwrap();
    let grid_all: Vec<Vec<u8>> = data.iter().chain(&grid_parity).cloned().collect();
    let rs_all: Vec<Vec<u8>> = data
        .iter()
        .cloned()
        .chain(rs.parity(&data).unwrap())
        .collect();
    group.throughput(Throughput::Bytes((16 * SHARD) as u64));

    group.bench_function("grid:4x4+1/encode", |b| {
        b.iter(|| {
            grid.parity_into(black_box(&data), &mut grid_parity)
                .unwrap()
        })
    });
    let mut rs_parity = vec![vec![0u8; SHARD]; 3];
    group.bench_function("rs:16+3/encode", |b| {
        b.iter(|| rs.parity_into(black_box(&data), &mut rs_parity).unwrap())
    });
    let without = |all: &[Vec<u8>], lost: &[usize]| -> Vec<Option<Vec<u8>>> {
        all.iter()
            .enumerate()
            .map(|(i, s)| (!lost.contains(&i)).then(|| s.clone()))
            .collect()
    };
    // Shards 0, 5 and 10 sit on distinct rows and columns of the grid.
    group.bench_function("grid:4x4+1/decode-3-data-shards-lost", |b| {
        b.iter_batched(
            || without(&grid_all, &[0, 5, 10]),
            |mut pieces| grid.reconstruct_wanted(&mut pieces, &[0, 5, 10]).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("rs:16+3/decode-3-data-shards-lost", |b| {
        b.iter_batched(
            || without(&rs_all, &[0, 5, 10]),
            |mut pieces| rs.reconstruct(&mut pieces).unwrap(),
            BatchSize::LargeInput,
        )
    });
    let flat: Vec<u8> = data.concat();
    let mut dst = vec![0u8; flat.len()];
    group.bench_function("memcpy-16-shards", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&flat)))
    });

    let mut lost = vec![false; 25];
    lost[5] = true;
    let plan = grid.repair_plan(&lost, &[5], &[false; 25]).unwrap();
    eprintln!(
        "bytes read to rebuild one lost {SHARD}-byte shard: grid:4x4+1 {} (shards {:?}), \
         rs:16+3 {}",
        plan.reads.len() * SHARD,
        plan.reads,
        rs.policy().data_shards() * SHARD
    );
    group.throughput(Throughput::Bytes(SHARD as u64));
    group.bench_function("grid:4x4+1/rebuild-one-shard", |b| {
        b.iter_batched(
            || {
                let mut pieces: Vec<Option<Vec<u8>>> = vec![None; 25];
                plan.reads
                    .iter()
                    .for_each(|&i| pieces[i] = Some(grid_all[i].clone()));
                pieces
            },
            |mut pieces| grid.run(&plan.steps, &mut pieces).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.bench_function("rs:16+3/rebuild-one-shard", |b| {
        b.iter_batched(
            // Every other shard at hand; the decoder uses 16 of them.
            || without(&rs_all, &[5]),
            |mut pieces| rs.reconstruct(&mut pieces).unwrap(),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, erasure, grid_against_rs);
criterion_main!(benches);
