use super::*;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// The shapes the property tests cover: every erasure pattern below their distance.
const SHAPES: [&str; 4] = ["2x2+1", "3x3+1", "4x4+1", "2x2x2+1"];

fn code(text: &str) -> GridCode {
    GridCode::new(text.parse().unwrap()).unwrap()
}

fn random_shards(rng: &mut impl Rng, count: usize, len: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| (0..len).map(|_| rng.gen()).collect())
        .collect()
}

/// Data and parity shards of random data.
fn encoded(code: &GridCode, rng: &mut impl Rng, len: usize) -> Vec<Vec<u8>> {
    let shape = code.shape();
    let data = random_shards(rng, shape.data_shards(), len);
    let mut parity = vec![vec![0u8; len]; shape.total_shards() - shape.data_shards()];
    code.parity_into(&data, &mut parity).unwrap();
    data.into_iter().chain(parity).collect()
}

/// `count` distinct shards of `total`, at random.
fn random_pattern(rng: &mut impl Rng, total: usize, count: usize) -> Vec<bool> {
    let mut order: Vec<usize> = (0..total).collect();
    for i in (1..total).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut lost = vec![false; total];
    order[..count].iter().for_each(|&s| lost[s] = true);
    lost
}

/// Each shard's byte as a function of the data bytes: its column of the generator matrix.
fn generator_columns(code: &GridCode) -> Vec<Vec<u8>> {
    let shape = code.shape();
    let k = shape.data_shards();
    let by_data: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let data: Vec<[u8; 1]> = (0..k).map(|j| [(i == j) as u8]).collect();
            let mut parity = vec![vec![0u8; 1]; shape.total_shards() - k];
            code.parity_into(&data, &mut parity).unwrap();
            data.iter()
                .map(|d| d[0])
                .chain(parity.iter().map(|p| p[0]))
                .collect()
        })
        .collect();
    (0..shape.total_shards())
        .map(|s| by_data.iter().map(|c| c[s]).collect())
        .collect()
}

/// Rank over GF(2^8) of these shards' generator columns.
fn rank(columns: &[Vec<u8>], shards: impl Iterator<Item = usize>) -> usize {
    let mut rows: Vec<Vec<u8>> = shards.map(|s| columns[s].clone()).collect();
    let width = columns[0].len();
    eliminate(&mut rows, width).len()
}

/// Brute force: the survivors determine every shard iff the generator matrix restricted
/// to them has full rank K.
fn decodable_by_rank(code: &GridCode, lost: &[bool]) -> bool {
    let columns = generator_columns(code);
    let survivors = (0..lost.len()).filter(|&s| !lost[s]);
    rank(&columns, survivors) == code.shape().data_shards()
}

/// Brute force: the survivors determine shard `w` iff its column adds nothing to their span.
fn determined_by_rank(code: &GridCode, lost: &[bool], w: usize) -> bool {
    let columns = generator_columns(code);
    let survivors = || (0..lost.len()).filter(|&s| !lost[s]);
    rank(&columns, survivors()) == rank(&columns, survivors().chain([w]))
}

#[test]
fn parses_prints_and_counts() {
    for (text, data, total, tolerance) in [
        ("2x2+1", 4, 9, 3),
        ("4x4+1", 16, 25, 3),
        ("4x4+2", 16, 36, 8),
        ("3x3x3+1", 27, 64, 7),
        ("2x3+1", 6, 12, 3),
    ] {
        let shape: GridShape = text.parse().unwrap();
        assert_eq!(shape.to_string(), text);
        assert_eq!(
            (shape.data_shards(), shape.total_shards(), shape.tolerance()),
            (data, total, tolerance),
            "{text}"
        );
    }
    for text in [
        "",
        "4",
        "4+1",
        "4x4",
        "4x4+",
        "x4+1",
        "4xx4+1",
        "4x4+0",
        "4x4+5",
        "1x4+1",
        "17x2+1",
        "2x2x2x2x2+1",
        "8x8x8+1",
        "4x4+1+1",
        "4x-4+1",
        "4x4+01x",
        "0004x4+1",
    ] {
        assert!(text.parse::<GridShape>().is_err(), "{text:?} accepted");
    }
}

#[test]
fn shards_are_numbered_data_first_in_row_major_order() {
    let c = code("2x2+1");
    let coords: Vec<&[u8]> = (0..9).map(|s| c.coordinates(s)).collect();
    assert_eq!(
        coords,
        [
            &[0, 0][..],
            &[0, 1],
            &[1, 0],
            &[1, 1],
            &[0, 2],
            &[1, 2],
            &[2, 0],
            &[2, 1],
            &[2, 2]
        ]
    );
}

/// Every line along every axis, parity lines included, is a codeword of its line code.
#[test]
fn every_line_is_a_codeword() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for text in SHAPES.iter().chain(&["3x3x3+1", "4x4+2", "2x3x2+2"]) {
        let c = code(text);
        let shards = encoded(&c, &mut rng, 33);
        for line in &c.lines {
            let side = c.side(line);
            let input: Vec<&[u8]> = line.shards[..side]
                .iter()
                .map(|&s| &shards[s][..])
                .collect();
            let mut want = vec![vec![0u8; 33]; line.shards.len() - side];
            c.rs[line.axis].encode_sep(&input, &mut want).unwrap();
            for (j, &s) in line.shards[side..].iter().enumerate() {
                assert_eq!(shards[s], want[j], "{text}: line {line:?}");
            }
        }
    }
}

/// Calls `f` with every set of 1..=`max` shards of `total` that extends `pattern` with
/// shards from `from` on.
fn each_pattern(
    total: usize,
    max: usize,
    from: usize,
    pattern: &mut Vec<usize>,
    f: &mut impl FnMut(&[usize]),
) {
    for s in from..total {
        pattern.push(s);
        f(pattern);
        if pattern.len() < max {
            each_pattern(total, max, s + 1, pattern, f);
        }
        pattern.pop();
    }
}

/// Every pattern of fewer losses than the distance, each one checked: peeling repairs all
/// of it. (The byte-level property test below decodes random such patterns.)
#[test]
fn peeling_repairs_every_pattern_below_the_distance() {
    for text in SHAPES {
        let c = code(text);
        let total = c.shape().total_shards();
        let mut checked = 0u64;
        each_pattern(
            total,
            c.shape().tolerance(),
            0,
            &mut Vec::new(),
            &mut |pattern| {
                let mut lost = vec![false; total];
                pattern.iter().for_each(|&s| lost[s] = true);
                let (_, missing) = c.peel(&lost, pattern, &vec![false; total]);
                assert!(!missing.contains(&true), "{text}: {pattern:?} not repaired");
                checked += 1;
            },
        );
        let expect: u64 = (1..=c.shape().tolerance() as u64)
            .map(|r| (0..r).fold(1u64, |acc, i| acc * (total as u64 - i) / (i + 1)))
            .sum();
        assert_eq!(checked, expect, "{text}");
        eprintln!(
            "grid:{text}: all {checked} patterns of 1..={} losses peeled",
            c.shape().tolerance()
        );
    }
}

/// Above the distance: decoding succeeds exactly when the survivors determine every shard
/// (brute force over the generator matrix), and then gives the original bytes; whatever
/// peeling alone repairs is decodable.
#[test]
fn decoding_agrees_with_brute_force_on_larger_patterns() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (text, patterns) in SHAPES
        .iter()
        .map(|t| (*t, 300))
        .chain([("3x3x3+1", 300), ("4x4+2", 3000)])
    {
        let c = code(text);
        let shape = c.shape();
        let total = shape.total_shards();
        let (mut peeled, mut solved, mut lost_for_good, mut partly) = (0, 0, 0, 0);
        for _ in 0..patterns {
            let count = rng.gen_range(shape.distance()..=total - shape.data_shards());
            let lost = random_pattern(&mut rng, total, count);
            let shards = encoded(&c, &mut rng, 5);
            let mut pieces: Vec<Option<Vec<u8>>> = shards
                .iter()
                .zip(&lost)
                .map(|(s, &l)| (!l).then(|| s.clone()))
                .collect();
            let all: Vec<usize> = (0..total).filter(|&s| lost[s]).collect();
            let by_peeling = !c.peel(&lost, &all, &vec![false; total]).1.contains(&true);
            let decodable = decodable_by_rank(&c, &lost);
            assert_eq!(c.decodable(&lost), decodable, "{text}: {lost:?}");
            let w = (0..total)
                .filter(|&s| lost[s])
                .nth(rng.gen_range(0..count))
                .unwrap();
            let one = determined_by_rank(&c, &lost, w);
            assert_eq!(
                c.determines(&lost, &[w]),
                one,
                "{text}: shard {w} of {lost:?}"
            );
            if one && !decodable {
                partly += 1;
            }
            assert!(
                !by_peeling || decodable,
                "{text}: peeled an undecodable {lost:?}"
            );
            match c.reconstruct_wanted(&mut pieces, &all) {
                Ok(()) => {
                    assert!(decodable, "{text}: decoded an undecodable {lost:?}");
                    for (s, p) in shards.iter().zip(&pieces) {
                        assert_eq!(Some(s), p.as_ref(), "{text}: {lost:?}");
                    }
                }
                Err(e) => {
                    assert!(!decodable, "{text}: {lost:?} is decodable, got {e}");
                    assert!(matches!(e, ErasureError::Unrecoverable { .. }));
                }
            }
            match (by_peeling, decodable) {
                (true, _) => peeled += 1,
                (false, true) => solved += 1,
                (false, false) => lost_for_good += 1,
            }
        }
        if text == "4x4+2" {
            // Its stopping sets include decodable ones: the solve is exercised here.
            assert!(solved > 0, "no pattern of {text} needed the solve");
        }
        eprintln!(
            "grid:{text}, {patterns} patterns of {}..={} losses: {peeled} peeled, {solved} \
             needed the solve, {lost_for_good} undecodable (in {partly} of them a chosen lost \
             shard still determined)",
            shape.distance(),
            total - shape.data_shards()
        );
    }
}

/// Rebuilding one lost shard reads one shortest line: `side` shards, not K.
#[test]
fn one_lost_shard_is_rebuilt_from_its_shortest_line() {
    for (text, reads) in [("4x4+1", 4), ("2x3+1", 2), ("3x3x3+1", 3), ("4x4+2", 4)] {
        let c = code(text);
        let total = c.shape().total_shards();
        for s in 0..total {
            let mut lost = vec![false; total];
            lost[s] = true;
            let plan = c.repair_plan(&lost, &[s], &vec![false; total]).unwrap();
            assert_eq!(plan.steps.len(), 1, "{text}: shard {s}");
            assert_eq!(plan.reads.len(), reads, "{text}: shard {s}");
        }
    }
}

/// Shards already in hand are used before others: a lost shard whose column is in hand is
/// rebuilt from it, not from its row.
#[test]
fn a_repair_plan_uses_what_is_in_hand() {
    let c = code("4x4+1");
    let mut lost = vec![false; 25];
    lost[0] = true;
    let column: Vec<usize> = (1..25).filter(|&s| c.coordinates(s)[1] == 0).collect();
    assert_eq!(column.len(), 4);
    let mut in_hand = vec![false; 25];
    column.iter().for_each(|&s| in_hand[s] = true);
    let plan = c.repair_plan(&lost, &[0], &in_hand).unwrap();
    assert_eq!(plan.reads, column);
}

#[test]
fn repair_plan_rejects_what_it_cannot_do() {
    let c = code("2x2+1");
    let lost = vec![true, true, false, false, true, true, false, false, false];
    assert_eq!(
        c.repair_plan(&lost[..8], &[0], &[false; 9]),
        Err(ErasureError::ShardCount {
            expected: 9,
            got: 8
        })
    );
    assert_eq!(
        c.repair_plan(&lost, &[9], &[false; 9]),
        Err(ErasureError::NoSuchShard { index: 9, total: 9 })
    );
    // The data square (0,0),(0,1),(1,0),(1,1) is the support of a codeword (the lines'
    // parity equations have a non-zero solution on it): those four are lost for good.
    let square = vec![true, true, true, true, false, false, false, false, false];
    assert!(matches!(
        c.repair_plan(&square, &[0], &[false; 9]),
        Err(ErasureError::Unrecoverable { .. })
    ));
    assert_eq!(c.repair_plan(&lost, &[2], &[false; 9]).unwrap().steps, []);
}

fn shape_strategy() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("2x2+1"),
        Just("3x3+1"),
        Just("4x4+1"),
        Just("2x2x2+1"),
        Just("4x4+2"),
        Just("3x3x3+1"),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Below the distance, any lost shards come back exactly, over any byte range of the
    /// shards (the same range taken from every survivor).
    #[test]
    fn any_pattern_below_the_distance_decodes_any_range(
        text in shape_strategy(),
        len in 1usize..2000,
        range in (0.0f64..1.0, 0.0f64..1.0),
        seed: u64,
    ) {
        let c = code(text);
        let total = c.shape().total_shards();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shards = encoded(&c, &mut rng, len);
        let a = (range.0 * len as f64) as usize;
        let b = a + ((range.1 * (len - a) as f64) as usize).clamp(1, len - a);
        let count = rng.gen_range(0..=c.shape().tolerance());
        let lost = random_pattern(&mut rng, total, count);
        let mut pieces: Vec<Option<Vec<u8>>> = shards
            .iter()
            .zip(&lost)
            .map(|(s, &l)| (!l).then(|| s[a..b].to_vec()))
            .collect();
        let all: Vec<usize> = (0..total).filter(|&s| lost[s]).collect();
        c.reconstruct_wanted(&mut pieces, &all).unwrap();
        for (s, p) in shards.iter().zip(&pieces) {
            prop_assert_eq!(Some(&s[a..b]), p.as_deref());
        }
    }

    /// A repair plan's reads are enough: running its steps with only those shards in hand
    /// gives back exactly the wanted ones.
    #[test]
    fn a_repair_plan_needs_only_its_reads(text in shape_strategy(), seed: u64) {
        let c = code(text);
        let total = c.shape().total_shards();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let shards = encoded(&c, &mut rng, 16);
        let count = rng.gen_range(1..=c.shape().tolerance());
        let lost = random_pattern(&mut rng, total, count);
        let lost_list: Vec<usize> = (0..total).filter(|&s| lost[s]).collect();
        let wanted: Vec<usize> = lost_list
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.5))
            .chain(lost_list.first().copied())
            .collect();
        let plan = c.repair_plan(&lost, &wanted, &vec![false; total]).unwrap();
        let mut hand: Vec<Option<Vec<u8>>> = vec![None; total];
        for &s in &plan.reads {
            prop_assert!(!lost[s]);
            hand[s] = Some(shards[s].clone());
        }
        for step in &plan.steps {
            prop_assert_eq!(step.read.len(), c.side(&c.lines[step.line]));
        }
        c.run(&plan.steps, &mut hand).unwrap();
        for &w in &wanted {
            prop_assert_eq!(hand[w].as_ref(), Some(&shards[w]));
        }
    }

    #[test]
    fn parsing_never_panics(s in "\\PC{0,24}") {
        let _ = s.parse::<GridShape>();
    }
}
