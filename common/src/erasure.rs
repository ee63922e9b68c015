//! Parity encoding and reconstruction for every policy.
//!
//! Works on equal-length pieces: whole shards when writing a slice, or the same byte range
//! of each shard when reading around a lost one (parity is computed per byte position).

use crate::grid::{GridCode, GridShape};
use crate::layout::{LayoutError, SliceLayout};
use crate::policy::Policy;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ErasureError {
    #[error("{have} of {total} shards present, {need} needed to reconstruct")]
    TooFewShards {
        have: usize,
        need: usize,
        total: usize,
    },
    #[error("expected {expected} shard pieces, got {got}")]
    ShardCount { expected: usize, got: usize },
    #[error("shard pieces differ in length")]
    UnequalLengths,
    #[error("{missing} of {total} shards missing in a pattern the survivors do not determine")]
    Unrecoverable { missing: usize, total: usize },
    #[error("no shard {index} in a slice of {total}")]
    NoSuchShard { index: usize, total: usize },
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("reed-solomon: {0:?}")]
    Codec(reed_solomon_erasure::Error),
}

/// What [`ErasureCode::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Consistent,
    /// This shard disagrees with what all the others say it must hold.
    Corrupt(usize),
    /// The shards disagree, and no single shard can be blamed (two are wrong, or the code
    /// only detects errors: `rs:K+1`, `mirror:2`).
    Ambiguous,
}

/// The erasure code of one policy. Cheap to clone; Reed-Solomon matrices (and their decode
/// matrix caches) and grid tables are shared per policy across the process.
#[derive(Clone)]
pub struct ErasureCode {
    policy: Policy,
    codec: Codec,
}

#[derive(Clone)]
enum Codec {
    Mirror,
    Rs(Arc<ReedSolomon>),
    Grid(Arc<GridCode>),
}

/// Codes built once per process and shared, by what they are built from.
type Shared<K, V> = OnceLock<Mutex<HashMap<K, Arc<V>>>>;

fn shared<K: std::hash::Hash + Eq, V>(
    cache: &'static Shared<K, V>,
    key: K,
    build: impl FnOnce() -> Result<V, ErasureError>,
) -> Result<Arc<V>, ErasureError> {
    let mut codes = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(code) = codes.get(&key) {
        return Ok(code.clone());
    }
    let code = Arc::new(build()?);
    codes.insert(key, code.clone());
    Ok(code)
}

fn shared_grid(shape: GridShape) -> Result<Arc<GridCode>, ErasureError> {
    static CODES: Shared<GridShape, GridCode> = OnceLock::new();
    shared(&CODES, shape, || GridCode::new(shape))
}

pub(crate) fn shared_rs(data: usize, parity: usize) -> Result<Arc<ReedSolomon>, ErasureError> {
    static CODES: Shared<(usize, usize), ReedSolomon> = OnceLock::new();
    shared(&CODES, (data, parity), || {
        ReedSolomon::new(data, parity).map_err(ErasureError::Codec)
    })
}

impl ErasureCode {
    pub fn new(policy: Policy) -> Result<Self, ErasureError> {
        let codec = match policy {
            Policy::Mirror { .. } => Codec::Mirror,
            Policy::ReedSolomon { data, parity } => {
                Codec::Rs(shared_rs(data as usize, parity as usize)?)
            }
            Policy::Grid(shape) => Codec::Grid(shared_grid(shape)?),
        };
        Ok(ErasureCode { policy, codec })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Computes the parity shards of equal-length data shards.
    pub fn parity<T: AsRef<[u8]>>(&self, data: &[T]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let len = data.first().map_or(0, |d| d.as_ref().len());
        // One zeroed allocation each: `vec![v; n]` would copy v's zeros n - 1 times.
        let mut parity: Vec<Vec<u8>> = (0..self.policy.parity_shards())
            .map(|_| vec![0u8; len])
            .collect();
        self.parity_into(data, &mut parity)?;
        Ok(parity)
    }

    /// Computes parity into caller-provided buffers of the data shards' length.
    pub fn parity_into<T: AsRef<[u8]>>(
        &self,
        data: &[T],
        parity: &mut [Vec<u8>],
    ) -> Result<(), ErasureError> {
        self.check_count(data.len(), self.policy.data_shards())?;
        self.check_count(parity.len(), self.policy.parity_shards())?;
        let len = data[0].as_ref().len();
        if data
            .iter()
            .map(|d| d.as_ref().len())
            .chain(parity.iter().map(|p| p.len()))
            .any(|l| l != len)
        {
            return Err(ErasureError::UnequalLengths);
        }
        match &self.codec {
            Codec::Mirror => parity
                .iter_mut()
                .for_each(|p| p.copy_from_slice(data[0].as_ref())),
            Codec::Rs(rs) => rs.encode_sep(data, parity).map_err(ErasureError::Codec)?,
            Codec::Grid(g) => g.parity_into(data, parity)?,
        }
        Ok(())
    }

    /// Cuts a whole slice into all its shards (data then parity), each `layout.shard_len()`.
    pub fn encode_slice(
        &self,
        layout: &SliceLayout,
        data: &[u8],
    ) -> Result<Vec<Vec<u8>>, ErasureError> {
        let mut shards = layout.split(data)?;
        let parity = self.parity(&shards)?;
        shards.extend(parity);
        Ok(shards)
    }

    /// Fills in every `None` entry from the present ones. `pieces` has one entry per shard
    /// index; all present entries must be the same byte range of their shards.
    pub fn reconstruct(&self, pieces: &mut [Option<Vec<u8>>]) -> Result<(), ErasureError> {
        let all: Vec<usize> = (0..pieces.len()).filter(|&i| pieces[i].is_none()).collect();
        self.reconstruct_wanted(pieces, &all)
    }

    /// Fills in the `wanted` entries (and whatever else comes with them) from the present
    /// ones, all the same byte range of their shards.
    pub fn reconstruct_wanted(
        &self,
        pieces: &mut [Option<Vec<u8>>],
        wanted: &[usize],
    ) -> Result<(), ErasureError> {
        let total = self.policy.total_shards();
        self.check_count(pieces.len(), total)?;
        if let Some(&index) = wanted.iter().find(|&&w| w >= total) {
            return Err(ErasureError::NoSuchShard { index, total });
        }
        if wanted.iter().all(|&w| pieces[w].is_some()) {
            return Ok(());
        }
        if let Codec::Grid(g) = &self.codec {
            return g.reconstruct_wanted(pieces, wanted);
        }
        let have = pieces.iter().filter(|p| p.is_some()).count();
        let need = self.policy.data_shards();
        if have < need {
            return Err(ErasureError::TooFewShards { have, need, total });
        }
        let mut lens = pieces.iter().flatten().map(|p| p.len());
        let len = lens.next().unwrap_or(0);
        if lens.any(|l| l != len) {
            return Err(ErasureError::UnequalLengths);
        }
        if len == 0 {
            pieces.iter_mut().for_each(|p| *p = Some(Vec::new()));
            return Ok(());
        }
        match &self.codec {
            Codec::Rs(rs) => rs.reconstruct(pieces).map_err(ErasureError::Codec),
            _ => {
                let copy = pieces.iter().flatten().next().cloned().unwrap_or_default();
                pieces
                    .iter_mut()
                    .filter(|p| p.is_none())
                    .for_each(|p| *p = Some(copy.clone()));
                Ok(())
            }
        }
    }

    /// Which shards to read, beyond those `in_hand` (held, or on their way), to get the
    /// `wanted` ones: taken from `usable` (readable, best first), as few as the code allows
    /// (a grid reads a wanted shard that is usable as it is). `None` if `usable` is not
    /// enough.
    pub fn reads_for(
        &self,
        wanted: &[usize],
        in_hand: &[bool],
        usable: &[usize],
    ) -> Option<Vec<usize>> {
        let total = self.policy.total_shards();
        if in_hand.len() != total || wanted.iter().chain(usable).any(|&i| i >= total) {
            return None;
        }
        let mut usable: Vec<usize> = usable.iter().copied().filter(|&i| !in_hand[i]).collect();
        let mut seen = vec![false; total];
        usable.retain(|&i| !std::mem::replace(&mut seen[i], true));
        let Codec::Grid(g) = &self.codec else {
            let missing = wanted.iter().any(|&w| !in_hand[w]);
            let have = in_hand.iter().filter(|&&h| h).count();
            let more = if missing {
                self.policy.data_shards().saturating_sub(have)
            } else {
                0
            };
            return (more <= usable.len()).then(|| usable[..more].to_vec());
        };
        let mut direct: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|w| usable.contains(w))
            .collect();
        let mut lost: Vec<bool> = in_hand.iter().map(|&h| !h).collect();
        usable.iter().for_each(|&i| lost[i] = false);
        let rest: Vec<usize> = wanted.iter().copied().filter(|&w| lost[w]).collect();
        if rest.is_empty() {
            return Some(direct);
        }
        let reads = match g.repair_plan(&lost, &rest, in_hand) {
            Ok(plan) => plan.reads,
            // Peeling cannot get there; every readable shard at once may.
            Err(_) if g.determines(&lost, &rest) => usable.clone(),
            Err(_) => return None,
        };
        direct.extend(reads.into_iter().filter(|&i| !in_hand[i]));
        direct.sort_unstable();
        direct.dedup();
        Some(direct)
    }

    /// Reads that help while the `late` ones (launched, slow) are still awaited, when
    /// [`ErasureCode::reads_for`] finds no way around them: spare shards up to K for
    /// Reed-Solomon; for a grid, a plan that counts on the late ones arriving.
    pub fn spare_reads(
        &self,
        wanted: &[usize],
        in_hand: &[bool],
        late: &[bool],
        usable: &[usize],
    ) -> Vec<usize> {
        let total = self.policy.total_shards();
        if late.len() != total || in_hand.len() != total {
            return Vec::new();
        }
        let hand: Vec<bool> = (0..total).map(|i| in_hand[i] || late[i]).collect();
        let usable: Vec<usize> = usable
            .iter()
            .copied()
            .filter(|&i| i < total && !hand[i])
            .collect();
        match &self.codec {
            Codec::Grid(_) => self.reads_for(wanted, &hand, &usable).unwrap_or_default(),
            _ => {
                let have = in_hand.iter().filter(|&&h| h).count();
                let more = self.policy.data_shards().saturating_sub(have);
                usable.into_iter().take(more).collect()
            }
        }
    }

    /// Whether the shards not marked `lost` determine every shard of the slice.
    pub fn decodable(&self, lost: &[bool]) -> bool {
        match &self.codec {
            Codec::Grid(g) => g.decodable(lost),
            _ => {
                let have = lost.iter().filter(|&&l| !l).count();
                lost.len() == self.policy.total_shards() && have >= self.policy.data_shards()
            }
        }
    }

    /// Whether the same byte range of every shard (`pieces`, by shard index) still forms
    /// codewords; if not, the one shard whose rebuild from the others makes them whole again
    /// (the lines that agree outvote it). A shard whose checksums hold can still disagree
    /// with its parity (written wrong, or replaced), which only this finds.
    pub fn check(&self, pieces: &[Vec<u8>]) -> Result<Consistency, ErasureError> {
        let total = self.policy.total_shards();
        self.check_count(pieces.len(), total)?;
        if self.consistent(pieces)? {
            return Ok(Consistency::Consistent);
        }
        let mut culprits = Vec::new();
        for j in 0..total {
            let mut rebuilt: Vec<Option<Vec<u8>>> = pieces.iter().cloned().map(Some).collect();
            rebuilt[j] = None;
            if self.reconstruct_wanted(&mut rebuilt, &[j]).is_err() {
                continue;
            }
            let rebuilt: Vec<Vec<u8>> =
                rebuilt.into_iter().map(Option::unwrap_or_default).collect();
            if self.consistent(&rebuilt)? {
                culprits.push(j);
                if culprits.len() > 1 {
                    break;
                }
            }
        }
        Ok(match culprits[..] {
            [j] => Consistency::Corrupt(j),
            _ => Consistency::Ambiguous,
        })
    }

    fn consistent(&self, pieces: &[Vec<u8>]) -> Result<bool, ErasureError> {
        let k = self.policy.data_shards();
        Ok(self.parity(&pieces[..k])? == pieces[k..])
    }

    /// Whether shards `a` and `b` lie in one codeword: one line of a grid; the whole slice
    /// for the other codes. Placement keeps such shards in distinct failure domains first.
    pub fn same_line(&self, a: usize, b: usize) -> bool {
        match &self.codec {
            Codec::Grid(g) => {
                let (x, y) = (g.coordinates(a), g.coordinates(b));
                x.iter().zip(y).filter(|(p, q)| p != q).count() == 1
            }
            _ => a != b,
        }
    }

    /// How many more shards, whichever they are, may be lost with the slice still
    /// decodable (`None`: it is not decodable now). Exact for mirrors and Reed-Solomon; for
    /// a grid, the losses within its tolerance, and beyond it 1 if no single further loss
    /// would be fatal, else 0 (a lower bound: what orders repairs, most endangered first).
    pub fn margin(&self, lost: &[bool]) -> Option<usize> {
        if !self.decodable(lost) {
            return None;
        }
        let missing = lost.iter().filter(|&&l| l).count();
        let within = self.policy.tolerance().saturating_sub(missing);
        if within > 0 || !matches!(self.codec, Codec::Grid(_)) {
            return Some(within);
        }
        let mut more = lost.to_vec();
        let survives_any_one = (0..lost.len()).filter(|&i| !lost[i]).all(|i| {
            more[i] = true;
            let ok = self.decodable(&more);
            more[i] = false;
            ok
        });
        Some(usize::from(survives_any_one))
    }

    fn check_count(&self, got: usize, expected: usize) -> Result<(), ErasureError> {
        if got == expected {
            Ok(())
        } else {
            Err(ErasureError::ShardCount { expected, got })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..len).map(|_| rng.gen()).collect()
    }

    fn policy_strategy() -> impl Strategy<Value = Policy> {
        prop_oneof![
            (1u8..=4).prop_map(|copies| Policy::Mirror { copies }),
            (1u8..=10, 1u8..=4).prop_map(|(data, parity)| Policy::ReedSolomon { data, parity }),
            prop::sample::select(vec![
                "grid:2x2+1",
                "grid:4x4+1",
                "grid:2x3+2",
                "grid:2x2x2+1"
            ])
            .prop_map(|text| text.parse().unwrap()),
        ]
    }

    /// The fewest reads that rebuild one lost shard: K for Reed-Solomon, one line of a grid.
    #[test]
    fn one_lost_shard_needs_k_reads_or_one_grid_line() {
        for (text, reads) in [
            ("rs:4+2", 4),
            ("rs:16+3", 16),
            ("mirror:3", 1),
            ("grid:4x4+1", 4),
        ] {
            let code = ErasureCode::new(text.parse().unwrap()).unwrap();
            let total = code.policy().total_shards();
            let usable: Vec<usize> = (1..total).collect();
            let got = code.reads_for(&[0], &vec![false; total], &usable).unwrap();
            assert_eq!(got.len(), reads, "{text}: {got:?}");
        }
    }

    #[test]
    fn too_many_losses_is_an_error() {
        let code = ErasureCode::new("rs:4+2".parse().unwrap()).unwrap();
        let mut pieces = vec![
            Some(vec![1u8; 8]),
            None,
            None,
            None,
            Some(vec![0; 8]),
            Some(vec![0; 8]),
        ];
        assert_eq!(
            code.reconstruct(&mut pieces),
            Err(ErasureError::TooFewShards {
                have: 3,
                need: 4,
                total: 6
            })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any <= M erased shards of random data reconstruct exactly, over any byte range of the
        /// shards (the same range taken from every survivor).
        #[test]
        fn any_tolerated_loss_reconstructs_any_range(
            policy in policy_strategy(),
            len in 1u64..300_000,
            unit_pow in 12u32..17,
            seed: u64,
            erase_seed: u64,
            range in (0.0f64..1.0, 0.0f64..1.0),
        ) {
            let layout = SliceLayout::new(policy, len, 1 << unit_pow).unwrap();
            let code = ErasureCode::new(policy).unwrap();
            let data = random_bytes(seed, len as usize);
            let shards = code.encode_slice(&layout, &data).unwrap();
            prop_assert_eq!(shards.len(), policy.total_shards());

            let shard_len = layout.shard_len() as usize;
            let a = (range.0 * shard_len as f64) as usize;
            let b = a + ((range.1 * (shard_len - a) as f64) as usize).max(1).min(shard_len - a);
            let mut rng = rand::rngs::StdRng::seed_from_u64(erase_seed);
            let erase_count = rng.gen_range(0..=policy.tolerance());
            let mut erased: Vec<usize> = (0..policy.total_shards()).collect();
            for i in (1..erased.len()).rev() { erased.swap(i, rng.gen_range(0..=i)); }
            erased.truncate(erase_count);

            let mut pieces: Vec<Option<Vec<u8>>> = shards.iter()
                .enumerate()
                .map(|(i, s)| (!erased.contains(&i)).then(|| s[a..b].to_vec()))
                .collect();
            code.reconstruct(&mut pieces).unwrap();
            for (i, s) in shards.iter().enumerate() {
                prop_assert_eq!(pieces[i].as_deref(), Some(&s[a..b]), "shard {}", i);
            }
        }

        /// One shard changed anywhere is found and blamed when the code can correct an
        /// error (distance 3 or more); a code that only detects it says so.
        #[test]
        fn check_blames_the_one_changed_shard(policy in policy_strategy(), len in 1u64..5_000, seed: u64) {
            prop_assume!(policy.total_shards() > 1, "one copy has nothing to check against");
            let layout = SliceLayout::new(policy, len, 4096).unwrap();
            let code = ErasureCode::new(policy).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let mut shards = code.encode_slice(&layout, &data).unwrap();
            prop_assert_eq!(code.check(&shards).unwrap(), Consistency::Consistent);
            let bad = rng.gen_range(0..shards.len());
            let at = rng.gen_range(0..shards[bad].len());
            shards[bad][at] ^= rng.gen_range(1..=255u8);
            let found = code.check(&shards).unwrap();
            let corrects = policy.tolerance() >= 2 || matches!(policy, Policy::Grid(_));
            if corrects {
                prop_assert_eq!(found, Consistency::Corrupt(bad));
            } else {
                prop_assert_eq!(found, Consistency::Ambiguous);
            }
        }

        /// `margin` is what it claims: that many further losses, any of them, leave the
        /// slice decodable (exact for Reed-Solomon: one more is fatal).
        #[test]
        fn margin_is_a_safe_count_of_further_losses(policy in policy_strategy(), seed: u64) {
            let code = ErasureCode::new(policy).unwrap();
            let total = policy.total_shards();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut lost = vec![false; total];
            for _ in 0..rng.gen_range(0..=total) {
                lost[rng.gen_range(0..total)] = true;
            }
            let margin = code.margin(&lost);
            prop_assert_eq!(margin.is_some(), code.decodable(&lost));
            let Some(m) = margin else { return Ok(()) };
            for _ in 0..20 {
                let mut more = lost.clone();
                let mut alive: Vec<usize> = (0..total).filter(|&i| !lost[i]).collect();
                for _ in 0..m.min(alive.len()) {
                    more[alive.swap_remove(rng.gen_range(0..alive.len()))] = true;
                }
                prop_assert!(code.decodable(&more), "{policy}: {m} more losses {more:?} were fatal");
            }
            if !matches!(policy, Policy::Grid(_)) {
                let alive = lost.iter().filter(|&&l| !l).count();
                prop_assert_eq!(m, alive - policy.data_shards());
            }
        }

        /// The reads `reads_for` picks are enough: with only those in hand, the wanted shards
        /// come back exactly; and it finds reads whenever the loss is within the tolerance.
        #[test]
        fn reads_for_picks_enough(policy in policy_strategy(), len in 1u64..20_000, seed: u64) {
            let layout = SliceLayout::new(policy, len, 4096).unwrap();
            let code = ErasureCode::new(policy).unwrap();
            let shards = code.encode_slice(&layout, &random_bytes(seed, len as usize)).unwrap();
            let total = policy.total_shards();
            prop_assume!(total > 1);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut order: Vec<usize> = (0..total).collect();
            for i in (1..total).rev() { order.swap(i, rng.gen_range(0..=i)); }
            let lost_count = rng.gen_range(1..=policy.tolerance().max(1)).min(total - 1);
            let (lost, usable) = order.split_at(lost_count);
            let wanted: Vec<usize> = lost.iter().copied().filter(|_| rng.gen_bool(0.6)).chain([lost[0]]).collect();
            let reads = code.reads_for(&wanted, &vec![false; total], usable);
            let reads = reads.expect("a loss within the tolerance has reads");
            prop_assert!(reads.iter().all(|r| usable.contains(r)));
            let mut pieces: Vec<Option<Vec<u8>>> = vec![None; total];
            reads.iter().for_each(|&r| pieces[r] = Some(shards[r].clone()));
            code.reconstruct_wanted(&mut pieces, &wanted).unwrap();
            for &w in &wanted {
                prop_assert_eq!(pieces[w].as_ref(), Some(&shards[w]));
            }
        }

        /// The data shards put back together are the original bytes.
        #[test]
        fn split_then_pieces_restores_data(policy in policy_strategy(), len in 1u64..100_000, seed: u64) {
            let layout = SliceLayout::new(policy, len, 4096).unwrap();
            let data = random_bytes(seed, len as usize);
            let shards: Vec<Option<Vec<u8>>> = layout.split(&data).unwrap().into_iter().map(Some).collect();
            let start = len / 3;
            let ranges = layout.shard_ranges(start, len - start).unwrap();
            let bufs: Vec<Option<Vec<u8>>> = ranges.iter().zip(&shards)
                .map(|(r, s)| r.as_ref().map(|r| s.as_ref().unwrap()[r.start as usize..r.end as usize].to_vec()))
                .collect();
            prop_assert_eq!(layout.assemble(start, len - start, &ranges, &bufs).unwrap(), &data[start as usize..]);
        }
    }
}
