//! Grid parity: a product code over an n-dimensional grid of data shards.
//!
//! In `grid:4x4+1` the 16 data shards sit on a 4×4 grid, extended by M = 1 position along
//! every axis to 5×5. Every line along every axis of the extended grid (parity lines
//! included) is a Reed-Solomon codeword of its side plus M, so the grid's distance is
//! (M+1)^n: any (M+1)^n − 1 losses are recoverable (3 for `grid:4x4+1`, 7 for
//! `grid:3x3x3+1`), and many larger patterns too.
//!
//! Shards are numbered as for every policy, data first: 0..K are the data grid's positions
//! in row-major order (last axis fastest), K.. the other positions of the extended grid in
//! row-major order. [`GridCode::coordinates`] maps a shard to its place in the grid.
//!
//! Decoding peels: a line with no more losses than M is repaired from any `side` of its
//! survivors, which may unblock crossing lines; repeat, cheapest lines first. Below the
//! distance peeling always finishes (a pattern it cannot touch has at least M+1 losses on
//! every line through a loss, so at least (M+1)^n of them). When it gets stuck on a larger
//! pattern, a solve over all the lines' parity equations recovers whatever the surviving
//! shards determine, so decoding succeeds exactly when the pattern is decodable at all.
//! Like Reed-Solomon, every byte position is coded on its own: any byte range of lost
//! shards is rebuilt from the same range of the survivors.

use crate::erasure::{shared_rs, ErasureError};
use reed_solomon_erasure::galois_8::{self as gf, ReedSolomon};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Most axes of a grid.
pub const MAX_GRID_AXES: usize = 4;
/// Most positions along one axis of the data grid.
pub const MAX_GRID_SIDE: u8 = 16;
/// Most parity positions added along each axis.
pub const MAX_GRID_PARITY: u8 = 4;
/// Most shards (data and parity) of one grid slice: each needs its own server.
pub const MAX_GRID_SHARDS: usize = 128;

/// The shape of a grid policy: its sides and the parity added along every axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GridShape {
    axes: u8,
    sides: [u8; MAX_GRID_AXES],
    parity: u8,
}

impl GridShape {
    /// A grid of `sides` data positions with `parity` more along each axis: at least two
    /// axes, each side at least 2 (one axis is plain Reed-Solomon).
    pub fn new(sides: &[u8], parity: u8) -> Result<Self, String> {
        if !(2..=MAX_GRID_AXES).contains(&sides.len()) {
            return Err(format!("a grid has 2 to {MAX_GRID_AXES} axes"));
        }
        if let Some(s) = sides.iter().find(|s| !(2..=MAX_GRID_SIDE).contains(s)) {
            return Err(format!("side {s} is outside 2..={MAX_GRID_SIDE}"));
        }
        if !(1..=MAX_GRID_PARITY).contains(&parity) {
            return Err(format!(
                "grid parity must be between 1 and {MAX_GRID_PARITY}"
            ));
        }
        let mut shape = GridShape {
            axes: sides.len() as u8,
            sides: [0; MAX_GRID_AXES],
            parity,
        };
        shape.sides[..sides.len()].copy_from_slice(sides);
        let total = shape.total_shards();
        if total > MAX_GRID_SHARDS {
            return Err(format!(
                "{total} shards in all, more than {MAX_GRID_SHARDS}"
            ));
        }
        Ok(shape)
    }

    pub fn sides(&self) -> &[u8] {
        &self.sides[..self.axes as usize]
    }

    pub fn parity(&self) -> u8 {
        self.parity
    }

    /// Positions along `axis` of the extended grid.
    fn extent(&self, axis: usize) -> usize {
        (self.sides[axis] + self.parity) as usize
    }

    pub fn data_shards(&self) -> usize {
        self.sides().iter().map(|&s| s as usize).product()
    }

    pub fn total_shards(&self) -> usize {
        (0..self.axes as usize).map(|a| self.extent(a)).product()
    }

    /// The fewest shards whose loss can lose data: (M+1)^n.
    pub fn distance(&self) -> usize {
        (self.parity as usize + 1).pow(self.axes as u32)
    }

    /// How many lost shards are always recoverable.
    pub fn tolerance(&self) -> usize {
        self.distance() - 1
    }
}

impl fmt::Display for GridShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sides: Vec<String> = self.sides().iter().map(u8::to_string).collect();
        write!(f, "{}+{}", sides.join("x"), self.parity)
    }
}

impl FromStr for GridShape {
    type Err = String;

    /// `AxB[xC...]+M`, as in `grid:4x4+1` after the colon.
    fn from_str(text: &str) -> Result<Self, String> {
        let number = |s: &str| -> Result<u8, String> {
            if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err("counts must be decimal numbers".into());
            }
            s.parse::<u8>().map_err(|_| "count too large".into())
        };
        let (sides, parity) = text.split_once('+').ok_or("grid needs AxB+M")?;
        let sides = sides
            .split('x')
            .take(MAX_GRID_AXES + 1)
            .map(number)
            .collect::<Result<Vec<u8>, String>>()?;
        GridShape::new(&sides, number(parity)?)
    }
}

/// One line of the extended grid: its shards in order along `axis`; the first `side` are
/// the line's data, the last M its parity.
#[derive(Debug)]
struct Line {
    axis: usize,
    shards: Vec<usize>,
}

/// Rebuilds `rebuild` (the lost shards of `line`) from `read`: `side` other shards of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairStep {
    pub line: usize,
    pub read: Vec<usize>,
    pub rebuild: Vec<usize>,
}

/// How to get some lost shards back: steps in order, each from one line; `reads` are the
/// surviving shards to fetch (the same byte range of each), all steps together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepairPlan {
    pub steps: Vec<RepairStep>,
    pub reads: Vec<usize>,
}

/// The encoder and decoder of one grid shape. Build it once per shape and share it.
pub struct GridCode {
    shape: GridShape,
    /// Row-major coordinates in the extended grid of every shard.
    coords: Vec<[u8; MAX_GRID_AXES]>,
    lines: Vec<Line>,
    /// Lines through every shard, shortest first.
    lines_of: Vec<Vec<usize>>,
    /// Lines whose parity the encoder computes, in order: along axis a, the lines that lie
    /// in the data region of every later axis (their first `side` shards are then known).
    encode_order: Vec<usize>,
    /// Reed-Solomon code of the lines along each axis.
    rs: Vec<Arc<ReedSolomon>>,
    /// `coef[axis][j][i]`: parity j of a line along `axis` is Σ_i coef·(its data shard i).
    coef: Vec<Vec<Vec<u8>>>,
}

impl GridCode {
    pub fn new(shape: GridShape) -> Result<Self, ErasureError> {
        let axes = shape.sides().len();
        let m = shape.parity as usize;
        let total = shape.total_shards();
        let extents: Vec<usize> = (0..axes).map(|a| shape.extent(a)).collect();
        let mut stride = vec![1usize; axes];
        for a in (0..axes - 1).rev() {
            stride[a] = stride[a + 1] * extents[a + 1];
        }
        let coords_at = |pos: usize| {
            let mut c = [0u8; MAX_GRID_AXES];
            for a in 0..axes {
                c[a] = ((pos / stride[a]) % extents[a]) as u8;
            }
            c
        };
        let is_data = |c: &[u8; MAX_GRID_AXES]| (0..axes).all(|a| c[a] < shape.sides[a]);
        // Data positions first, then parity, each in row-major order.
        let order: Vec<usize> = (0..total)
            .filter(|&p| is_data(&coords_at(p)))
            .chain((0..total).filter(|&p| !is_data(&coords_at(p))))
            .collect();
        let mut shard_at = vec![0usize; total];
        for (shard, &pos) in order.iter().enumerate() {
            shard_at[pos] = shard;
        }
        let coords: Vec<_> = order.iter().map(|&p| coords_at(p)).collect();

        let mut lines = Vec::new();
        let mut encode_order = Vec::new();
        for axis in 0..axes {
            for start in (0..total).filter(|&p| coords_at(p)[axis] == 0) {
                let c = coords_at(start);
                if (axis + 1..axes).all(|b| c[b] < shape.sides[b]) {
                    encode_order.push(lines.len());
                }
                let shards = (0..extents[axis])
                    .map(|t| shard_at[start + t * stride[axis]])
                    .collect();
                lines.push(Line { axis, shards });
            }
        }
        let mut lines_of = vec![Vec::new(); total];
        for (l, line) in lines.iter().enumerate() {
            for &s in &line.shards {
                lines_of[s].push(l);
            }
        }
        for through in &mut lines_of {
            through.sort_by_key(|&l| (extents[lines[l].axis], l));
        }

        let mut rs = Vec::with_capacity(axes);
        let mut coef = Vec::with_capacity(axes);
        for &side in shape.sides() {
            let code = shared_rs(side as usize, m)?;
            // Parity of the unit vectors: the coefficients of each parity shard.
            let mut by_parity = vec![vec![0u8; side as usize]; m];
            for i in 0..side as usize {
                let mut unit = vec![[0u8; 1]; side as usize];
                unit[i][0] = 1;
                let mut out = vec![[0u8; 1]; m];
                code.encode_sep(&unit, &mut out)
                    .map_err(ErasureError::Codec)?;
                for j in 0..m {
                    by_parity[j][i] = out[j][0];
                }
            }
            rs.push(code);
            coef.push(by_parity);
        }
        Ok(GridCode {
            shape,
            coords,
            lines,
            lines_of,
            encode_order,
            rs,
            coef,
        })
    }

    pub fn shape(&self) -> GridShape {
        self.shape
    }

    /// Where shard `shard` sits in the extended grid, one coordinate per axis.
    pub fn coordinates(&self, shard: usize) -> &[u8] {
        &self.coords[shard][..self.shape.sides().len()]
    }

    fn side(&self, line: &Line) -> usize {
        self.shape.sides[line.axis] as usize
    }

    /// Computes the parity shards (numbered K.., each the data shards' length) of the data
    /// shards.
    pub fn parity_into<T: AsRef<[u8]>>(
        &self,
        data: &[T],
        parity: &mut [Vec<u8>],
    ) -> Result<(), ErasureError> {
        let k = self.shape.data_shards();
        check_count(data.len(), k)?;
        check_count(parity.len(), self.shape.total_shards() - k)?;
        let len = data.first().map_or(0, |d| d.as_ref().len());
        let lens = data.iter().map(|d| d.as_ref().len());
        if lens.chain(parity.iter().map(Vec::len)).any(|l| l != len) {
            return Err(ErasureError::UnequalLengths);
        }
        if len == 0 {
            return Ok(());
        }
        for &l in &self.encode_order {
            let line = &self.lines[l];
            let side = self.side(line);
            // The outputs are parity shards that are not inputs of this line.
            let mut out: Vec<Vec<u8>> = line.shards[side..]
                .iter()
                .map(|&s| std::mem::take(&mut parity[s - k]))
                .collect();
            let done = {
                let input: Vec<&[u8]> = line.shards[..side]
                    .iter()
                    .map(|&s| match s.checked_sub(k) {
                        None => data[s].as_ref(),
                        Some(p) => parity[p].as_slice(),
                    })
                    .collect();
                self.rs[line.axis].encode_sep(&input, &mut out)
            };
            for (&s, o) in line.shards[side..].iter().zip(out) {
                parity[s - k] = o;
            }
            done.map_err(ErasureError::Codec)?;
        }
        Ok(())
    }

    /// Fills in the `wanted` entries, and what rebuilding them brings along, from the present
    /// ones (all the same byte range of their shards); an error if one of them stays unknown.
    pub fn reconstruct_wanted(
        &self,
        pieces: &mut [Option<Vec<u8>>],
        wanted: &[usize],
    ) -> Result<(), ErasureError> {
        let total = self.shape.total_shards();
        check_count(pieces.len(), total)?;
        if let Some(&index) = wanted.iter().find(|&&w| w >= total) {
            return Err(ErasureError::NoSuchShard { index, total });
        }
        let mut lens = pieces.iter().flatten().map(Vec::len);
        let len = lens.next().ok_or(ErasureError::Unrecoverable {
            missing: total,
            total,
        })?;
        if lens.any(|l| l != len) {
            return Err(ErasureError::UnequalLengths);
        }
        if len == 0 {
            pieces.iter_mut().for_each(|p| *p = Some(Vec::new()));
            return Ok(());
        }
        let lost: Vec<bool> = pieces.iter().map(Option::is_none).collect();
        let (steps, _) = self.peel(&lost, wanted, &vec![false; total]);
        self.run(&steps, pieces)?;
        if wanted.iter().any(|&w| pieces[w].is_none()) {
            self.solve(pieces, len);
        }
        match wanted.iter().filter(|&&w| pieces[w].is_none()).count() {
            0 => Ok(()),
            missing => Err(ErasureError::Unrecoverable { missing, total }),
        }
    }

    /// Whether the shards not marked `lost` determine every shard.
    pub fn decodable(&self, lost: &[bool]) -> bool {
        let all: Vec<usize> = (0..lost.len()).filter(|&s| lost[s]).collect();
        self.determines(lost, &all)
    }

    /// Whether the shards not marked `lost` determine the `wanted` ones (others may stay
    /// unknown).
    pub fn determines(&self, lost: &[bool], wanted: &[usize]) -> bool {
        let total = self.shape.total_shards();
        if lost.len() != total || wanted.iter().any(|&w| w >= total) {
            return false;
        }
        let (_, missing) = self.peel(lost, wanted, &vec![false; total]);
        if wanted.iter().all(|&w| !missing[w]) {
            return true;
        }
        let determined = self.equations(&missing).determined;
        wanted
            .iter()
            .all(|&w| !missing[w] || determined.iter().any(|(s, _)| *s == w))
    }

    /// Runs repair steps (from [`GridCode::repair_plan`]) on `pieces`, which hold at least
    /// the steps' reads, all the same byte range of their shards.
    pub fn run(
        &self,
        steps: &[RepairStep],
        pieces: &mut [Option<Vec<u8>>],
    ) -> Result<(), ErasureError> {
        check_count(pieces.len(), self.shape.total_shards())?;
        for step in steps {
            let line = self.lines.get(step.line).ok_or(ErasureError::NoSuchShard {
                index: step.line,
                total: self.lines.len(),
            })?;
            let mut on_line: Vec<Option<Vec<u8>>> =
                line.shards.iter().map(|&s| pieces[s].take()).collect();
            let done = self.rs[line.axis].reconstruct(&mut on_line);
            for (&s, p) in line.shards.iter().zip(on_line) {
                pieces[s] = p;
            }
            done.map_err(ErasureError::Codec)?;
        }
        Ok(())
    }

    /// How to rebuild the `wanted` shards (those not marked in `lost` need nothing) by
    /// peeling, reading as few surviving shards as it can: each step uses the shortest line
    /// that can be repaired, preferring lines through a wanted shard, and reads shards
    /// `in_hand` or read for an earlier step before others. An error when peeling cannot
    /// reach them all; decoding may still succeed then, from every survivor at once (see
    /// [`GridCode::decodable`]).
    pub fn repair_plan(
        &self,
        lost: &[bool],
        wanted: &[usize],
        in_hand: &[bool],
    ) -> Result<RepairPlan, ErasureError> {
        let total = self.shape.total_shards();
        check_count(lost.len(), total)?;
        check_count(in_hand.len(), total)?;
        if let Some(&index) = wanted.iter().find(|&&w| w >= total) {
            return Err(ErasureError::NoSuchShard { index, total });
        }
        let wanted: Vec<usize> = wanted.iter().copied().filter(|&w| lost[w]).collect();
        let (steps, missing) = self.peel(lost, &wanted, in_hand);
        if wanted.iter().any(|&w| missing[w]) {
            return Err(ErasureError::Unrecoverable {
                missing: lost.iter().filter(|&&l| l).count(),
                total,
            });
        }
        let mut reads: Vec<usize> = steps.iter().flat_map(|s| s.read.clone()).collect();
        reads.retain(|&s| !lost[s]);
        reads.sort_unstable();
        reads.dedup();
        Ok(RepairPlan { steps, reads })
    }

    /// Peels the `lost` pattern until the `wanted` shards are back or nothing more can be
    /// repaired; returns the steps that the wanted shards need (in order) and what stays
    /// missing. Each step repairs one line with at most M losses, reading `in_hand` shards
    /// first.
    fn peel(
        &self,
        lost: &[bool],
        wanted: &[usize],
        in_hand: &[bool],
    ) -> (Vec<RepairStep>, Vec<bool>) {
        let m = self.shape.parity as usize;
        let mut missing = lost.to_vec();
        let mut read_before = in_hand.to_vec();
        let mut steps: Vec<RepairStep> = Vec::new();
        let repairable = |missing: &[bool], l: usize| {
            let n = self.lines[l].shards.iter().filter(|&&s| missing[s]).count();
            (1..=m).contains(&n)
        };
        // New reads a line needs (shards in hand are free), then its length.
        let cost = |missing: &[bool], read_before: &[bool], l: usize| {
            let line = &self.lines[l];
            let held = line
                .shards
                .iter()
                .filter(|&&s| !missing[s] && (read_before[s] || lost[s]))
                .count();
            (self.side(line).saturating_sub(held), line.shards.len(), l)
        };
        while wanted.iter().any(|&w| missing[w]) {
            let through_wanted = wanted
                .iter()
                .filter(|&&w| missing[w])
                .flat_map(|&w| self.lines_of[w].iter().copied())
                .filter(|&l| repairable(&missing, l))
                .min_by_key(|&l| cost(&missing, &read_before, l));
            let next = through_wanted.or_else(|| {
                (0..self.lines.len())
                    .filter(|&l| repairable(&missing, l))
                    .min_by_key(|&l| cost(&missing, &read_before, l))
            });
            let Some(l) = next else { break };
            let line = &self.lines[l];
            let mut survivors: Vec<usize> = line
                .shards
                .iter()
                .copied()
                .filter(|&s| !missing[s])
                .collect();
            // Shards in hand (rebuilt, or read for an earlier step) cost nothing more.
            survivors.sort_by_key(|&s| !(read_before[s] || lost[s]));
            survivors.truncate(self.side(line));
            let rebuild: Vec<usize> = line
                .shards
                .iter()
                .copied()
                .filter(|&s| missing[s])
                .collect();
            for &s in &survivors {
                read_before[s] = true;
            }
            for &s in &rebuild {
                missing[s] = false;
            }
            steps.push(RepairStep {
                line: l,
                read: survivors,
                rebuild,
            });
        }
        // Keep only the steps the wanted shards depend on, walking back from them.
        let mut needed: Vec<bool> = vec![false; missing.len()];
        wanted.iter().for_each(|&w| needed[w] = true);
        let mut kept = Vec::new();
        for step in steps.into_iter().rev() {
            if step.rebuild.iter().any(|&s| needed[s]) {
                step.read
                    .iter()
                    .filter(|&&s| lost[s])
                    .for_each(|&s| needed[s] = true);
                kept.push(step);
            }
        }
        kept.reverse();
        (kept, missing)
    }

    /// Every line's parity equations over GF(2^8) with at least one `missing` shard, solved
    /// for the missing ones by Gaussian elimination.
    fn equations(&self, missing: &[bool]) -> Equations {
        let total = missing.len();
        let unknown: Vec<usize> = (0..total).filter(|&s| missing[s]).collect();
        let mut column = vec![usize::MAX; total];
        for (u, &s) in unknown.iter().enumerate() {
            column[s] = u;
        }
        // Row: coefficients of the unknowns, then of every shard (zero for unknowns):
        // Σ unknown coefficients·x = Σ known coefficients·x (addition is its own inverse).
        let width = unknown.len() + total;
        let mut rows: Vec<Vec<u8>> = Vec::new();
        for line in &self.lines {
            if line.shards.iter().all(|&s| column[s] == usize::MAX) {
                continue;
            }
            let side = self.side(line);
            for (j, coef) in self.coef[line.axis].iter().enumerate() {
                let mut row = vec![0u8; width];
                let terms = line.shards[..side]
                    .iter()
                    .zip(coef.iter().copied())
                    .chain([(&line.shards[side + j], 1u8)]);
                for (&s, c) in terms {
                    match column[s] {
                        usize::MAX => row[unknown.len() + s] = c,
                        u => row[u] = c,
                    }
                }
                rows.push(row);
            }
        }
        let pivots = eliminate(&mut rows, unknown.len());
        // A pivot row with no free unknown left in it gives its unknown outright.
        let determined = pivots
            .iter()
            .enumerate()
            .filter(|&(r, &u)| (0..unknown.len()).all(|v| v == u || rows[r][v] == 0))
            .map(|(r, &u)| (unknown[u], rows[r][unknown.len()..].to_vec()))
            .collect();
        Equations { determined }
    }

    /// Recovers what peeling could not: each missing shard the survivors determine, as a
    /// sum of survivors times coefficients.
    fn solve(&self, pieces: &mut [Option<Vec<u8>>], len: usize) {
        let missing: Vec<bool> = pieces.iter().map(Option::is_none).collect();
        for (shard, coefs) in self.equations(&missing).determined {
            let mut out = vec![0u8; len];
            for (s, &c) in coefs.iter().enumerate() {
                if c != 0 {
                    let known = pieces[s].as_deref().unwrap_or_default();
                    gf::mul_slice_xor(c, known, &mut out);
                }
            }
            pieces[shard] = Some(out);
        }
    }
}

/// What the survivors determine: per missing shard, its coefficient for every shard.
struct Equations {
    determined: Vec<(usize, Vec<u8>)>,
}

/// Reduces `rows` to reduced row echelon form over GF(2^8) in their first `columns`
/// entries (the rest ride along); returns, per pivot row in order, its pivot column. Every
/// pivot is 1.
fn eliminate(rows: &mut [Vec<u8>], columns: usize) -> Vec<usize> {
    let mut pivots = Vec::new();
    for col in 0..columns {
        let r = pivots.len();
        let Some(p) = (r..rows.len()).find(|&i| rows[i][col] != 0) else {
            continue;
        };
        rows.swap(r, p);
        let inv = gf::div(1, rows[r][col]);
        let pivot_row: Vec<u8> = rows[r].iter().map(|&x| gf::mul(x, inv)).collect();
        rows[r].copy_from_slice(&pivot_row);
        for (i, row) in rows.iter_mut().enumerate() {
            let f = row[col];
            if i != r && f != 0 {
                for (x, &y) in row.iter_mut().zip(&pivot_row) {
                    *x ^= gf::mul(f, y);
                }
            }
        }
        pivots.push(col);
    }
    pivots
}

fn check_count(got: usize, expected: usize) -> Result<(), ErasureError> {
    if got == expected {
        Ok(())
    } else {
        Err(ErasureError::ShardCount { expected, got })
    }
}

#[cfg(test)]
mod tests;
