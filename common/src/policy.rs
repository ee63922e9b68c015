//! Redundancy policies: how a slice is cut into shards and how many losses it survives.
//!
//! A policy travels and is stored as its text form (`mirror:3`, `rs:4+2`, `grid:4x4+1`), so
//! every decode validates it and new shapes add new spellings without changing how the
//! existing ones are stored.

use crate::grid::GridShape;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Most copies a `mirror:N` policy may ask for.
pub const MAX_MIRROR_COPIES: u8 = 8;
/// Most data shards of one slice (`K` of `rs:K+M`).
pub const MAX_DATA_SHARDS: u8 = 32;
/// Most parity shards of one slice (`M` of `rs:K+M`).
pub const MAX_PARITY_SHARDS: u8 = 16;

/// The virtual extended attribute that reads and sets a file's or directory's policy. It
/// is not stored and not listed, so `cp -a`, `rsync -X` and `tar --xattrs` never copy it.
pub const POLICY_XATTR: &[u8] = b"lattice.policy";
/// The read-only virtual extended attribute showing where a file's slices are stored.
pub const LAYOUT_XATTR: &[u8] = b"lattice.layout";
/// The read-only virtual extended attribute listing a file's locks across the cluster,
/// one per line as `/proc/locks` would (which cannot show them: the kernel leaves locks on a
/// FUSE mount to the filesystem and records none itself).
pub const LOCKS_XATTR: &[u8] = b"lattice.locks";
/// Extended attribute names under this prefix belong to the filesystem; none is stored.
pub const VIRTUAL_XATTR_PREFIX: &[u8] = b"lattice.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Policy {
    /// N full copies of the data; any one of them serves a read.
    Mirror { copies: u8 },
    /// Reed-Solomon over GF(2^8): `data` data shards plus `parity` parity shards, each on a
    /// distinct server; any `parity` of them may be lost.
    ReedSolomon { data: u8, parity: u8 },
    /// Grid parity ([`crate::grid`]): the data shards on a grid, every line along every
    /// axis with its own Reed-Solomon parity; any (M+1)^n − 1 may be lost.
    Grid(GridShape),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid redundancy policy {text:?}: {reason} (expected e.g. mirror:3, rs:4+2 or grid:4x4+1)"
)]
pub struct PolicyError {
    pub text: String,
    pub reason: String,
}

impl Policy {
    /// Shards that hold the slice's bytes (a mirror has one, copied).
    pub fn data_shards(&self) -> usize {
        match *self {
            Policy::Mirror { .. } => 1,
            Policy::ReedSolomon { data, .. } => data as usize,
            Policy::Grid(g) => g.data_shards(),
        }
    }

    /// Shards that exist only for redundancy.
    pub fn parity_shards(&self) -> usize {
        match *self {
            Policy::Mirror { copies } => (copies as usize).saturating_sub(1),
            Policy::ReedSolomon { parity, .. } => parity as usize,
            Policy::Grid(g) => g.total_shards() - g.data_shards(),
        }
    }

    /// All shards of a slice, and so the number of distinct servers a placement needs.
    pub fn total_shards(&self) -> usize {
        self.data_shards() + self.parity_shards()
    }

    /// A sensible default for a cluster of `servers` chunkservers: Reed-Solomon 4+2 from six
    /// servers on, else as many mirrors as there are servers, up to three.
    pub fn suggested_for(servers: usize) -> Policy {
        match servers {
            n if n >= 6 => Policy::ReedSolomon { data: 4, parity: 2 },
            n => Policy::Mirror {
                copies: n.clamp(1, 3) as u8,
            },
        }
    }

    /// Shards in the longest codeword: a grid's longest line, the whole slice otherwise.
    /// Failure domains at least this many let every codeword hold one shard per domain.
    pub fn line_len(&self) -> usize {
        match self {
            Policy::Grid(g) => {
                let side = g.sides().iter().copied().max().unwrap_or(0);
                usize::from(side) + usize::from(g.parity())
            }
            _ => self.total_shards(),
        }
    }

    /// How many shards of a slice may be lost, whichever they are, with every byte still
    /// recoverable (a grid survives many larger patterns too).
    pub fn tolerance(&self) -> usize {
        match self {
            Policy::Grid(g) => g.tolerance(),
            _ => self.parity_shards(),
        }
    }

    /// The fewest shards a new slice may be stored with when servers are missing: enough
    /// that one more loss, any one, is still survivable (as Ceph's `min_size`; K+1 for
    /// Reed-Solomon); all of them for a policy without parity. The rest are rebuilt as soon
    /// as servers allow.
    pub fn min_shards(&self) -> usize {
        self.total_shards() - self.tolerance().saturating_sub(1)
    }

    /// Parses the value of [`POLICY_XATTR`] as `setfattr` and programs send it: the text,
    /// perhaps with a trailing newline or NUL.
    pub fn from_xattr(value: &[u8]) -> Result<Policy, PolicyError> {
        let text = String::from_utf8_lossy(value);
        text.trim_end_matches(['\0', '\n']).trim().parse()
    }

    fn validate(self) -> Result<Self, String> {
        match self {
            Policy::Mirror { copies } if copies == 0 || copies > MAX_MIRROR_COPIES => {
                Err(format!("copies must be between 1 and {MAX_MIRROR_COPIES}"))
            }
            Policy::ReedSolomon { data, .. } if data == 0 || data > MAX_DATA_SHARDS => Err(
                format!("data shards must be between 1 and {MAX_DATA_SHARDS}"),
            ),
            Policy::ReedSolomon { parity, .. } if parity == 0 || parity > MAX_PARITY_SHARDS => Err(
                format!("parity shards must be between 1 and {MAX_PARITY_SHARDS}"),
            ),
            ok => Ok(ok),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Mirror { copies } => write!(f, "mirror:{copies}"),
            Policy::ReedSolomon { data, parity } => write!(f, "rs:{data}+{parity}"),
            Policy::Grid(g) => write!(f, "grid:{g}"),
        }
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| PolicyError {
            text: text.chars().take(64).collect(),
            reason: reason.to_string(),
        };
        let number = |s: &str| -> Result<u8, PolicyError> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err("counts must be decimal numbers"));
            }
            s.parse::<u8>().map_err(|_| err("count too large"))
        };
        let (kind, shape) = text.split_once(':').ok_or_else(|| err("missing ':'"))?;
        let policy = match kind {
            "mirror" => Policy::Mirror {
                copies: number(shape)?,
            },
            "rs" => {
                let (data, parity) = shape.split_once('+').ok_or_else(|| err("rs needs K+M"))?;
                Policy::ReedSolomon {
                    data: number(data)?,
                    parity: number(parity)?,
                }
            }
            "grid" => Policy::Grid(shape.parse().map_err(|reason: String| err(&reason))?),
            _ => return Err(err("unknown kind")),
        };
        policy.validate().map_err(|reason| err(&reason))
    }
}

impl From<Policy> for String {
    fn from(p: Policy) -> String {
        p.to_string()
    }
}

impl TryFrom<String> for Policy {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        for text in [
            "mirror:1",
            "mirror:3",
            "rs:4+2",
            "rs:8+3",
            "rs:32+16",
            "grid:4x4+1",
            "grid:3x3x3+1",
        ] {
            let p: Policy = text.parse().unwrap();
            assert_eq!(p.to_string(), text);
        }
        let p: Policy = "rs:4+2".parse().unwrap();
        assert_eq!(
            (p.data_shards(), p.parity_shards(), p.total_shards()),
            (4, 2, 6)
        );
        let m: Policy = "mirror:3".parse().unwrap();
        assert_eq!(
            (m.data_shards(), m.tolerance(), m.total_shards()),
            (1, 2, 3)
        );
        let g: Policy = "grid:4x4+1".parse().unwrap();
        assert_eq!(
            (g.data_shards(), g.parity_shards(), g.tolerance()),
            (16, 9, 3)
        );
    }

    #[test]
    fn min_shards_leave_one_more_loss_survivable() {
        for (text, min) in [
            ("mirror:1", 1),
            ("mirror:3", 2),
            ("rs:4+2", 5),
            ("rs:8+3", 9),
            ("grid:4x4+1", 23),
            ("grid:3x3x3+1", 58),
        ] {
            assert_eq!(text.parse::<Policy>().unwrap().min_shards(), min, "{text}");
        }
    }

    #[test]
    fn rejects_bad_text() {
        for text in [
            "",
            "rs",
            "rs:",
            "rs:4",
            "rs:4+",
            "rs:+2",
            "rs:0+2",
            "rs:4+0",
            "rs:33+1",
            "rs:4+17",
            "rs:-1+2",
            "rs:4+2+1",
            "mirror:0",
            "mirror:9",
            "mirror:x",
            "raid:5",
            "rs:999+2",
            "mirror:+3",
            "grid:4x4",
            "grid:4+1",
            "grid:9x9x9+1",
        ] {
            assert!(
                text.parse::<Policy>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn text_round_trips(data in 1u8..=MAX_DATA_SHARDS, parity in 1u8..=MAX_PARITY_SHARDS) {
            let p = Policy::ReedSolomon { data, parity };
            prop_assert_eq!(p.to_string().parse::<Policy>().unwrap(), p);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<Policy>();
        }
    }
}
