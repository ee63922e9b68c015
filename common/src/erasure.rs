//! Parity encoding and reconstruction for every policy.
//!
//! Works on equal-length pieces: whole shards when writing a slice, or the same byte range
//! of each shard when reading around a lost one (parity is computed per byte position).

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

/// The erasure code of one policy. Cheap to clone; Reed-Solomon matrices (and their decode
/// matrix caches) are shared per policy across the process.
#[derive(Clone)]
pub struct ErasureCode {
    policy: Policy,
    rs: Option<Arc<ReedSolomon>>,
}

type CodeCache = Mutex<HashMap<(usize, usize), Arc<ReedSolomon>>>;

pub(crate) fn shared_rs(data: usize, parity: usize) -> Result<Arc<ReedSolomon>, ErasureError> {
    static CODES: OnceLock<CodeCache> = OnceLock::new();
    let mut codes = CODES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(rs) = codes.get(&(data, parity)) {
        return Ok(rs.clone());
    }
    let rs = Arc::new(ReedSolomon::new(data, parity).map_err(ErasureError::Codec)?);
    codes.insert((data, parity), rs.clone());
    Ok(rs)
}

impl ErasureCode {
    pub fn new(policy: Policy) -> Result<Self, ErasureError> {
        let rs = match policy {
            Policy::Mirror { .. } => None,
            Policy::ReedSolomon { data, parity } => {
                Some(shared_rs(data as usize, parity as usize)?)
            }
        };
        Ok(ErasureCode { policy, rs })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Computes the parity shards of equal-length data shards.
    pub fn parity<T: AsRef<[u8]>>(&self, data: &[T]) -> Result<Vec<Vec<u8>>, ErasureError> {
        let len = data.first().map_or(0, |d| d.as_ref().len());
        let mut parity = vec![vec![0u8; len]; self.policy.parity_shards()];
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
        match &self.rs {
            None => parity
                .iter_mut()
                .for_each(|p| p.copy_from_slice(data[0].as_ref())),
            Some(rs) => rs.encode_sep(data, parity).map_err(ErasureError::Codec)?,
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
        let total = self.policy.total_shards();
        self.check_count(pieces.len(), total)?;
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
        match &self.rs {
            None => {
                let copy = pieces.iter().flatten().next().cloned().unwrap_or_default();
                pieces
                    .iter_mut()
                    .filter(|p| p.is_none())
                    .for_each(|p| *p = Some(copy.clone()));
                Ok(())
            }
            Some(rs) => rs.reconstruct(pieces).map_err(ErasureError::Codec),
        }
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
        ]
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
