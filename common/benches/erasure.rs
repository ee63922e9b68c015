//! Encode and decode throughput of Reed-Solomon at 1 MiB shards, next to a plain memcpy of
//! the same bytes as the reference. Throughput is counted in data bytes (K MiB per op).

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lattice_common::erasure::ErasureCode;
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

criterion_group!(benches, erasure);
criterion_main!(benches);
