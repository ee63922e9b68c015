use super::*;
use lattice_common::policy::Policy;
use rand::{Rng, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::Path;

fn layout(len: u64) -> SliceLayout {
    SliceLayout::new(Policy::ReedSolomon { data: 4, parity: 2 }, len, 65536).unwrap()
}

fn put(store: &Store, shard: ShardId, layout: SliceLayout, data: &[u8]) -> ShardInfo {
    let (mut w, disk) = store.create(shard, layout).unwrap();
    for piece in data.chunks(10_000) {
        w.write(piece).unwrap();
    }
    store.commit(w, disk).unwrap()
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

fn shard_file(dir: &Path, shard: ShardId) -> PathBuf {
    Disk {
        root: dir.to_path_buf(),
        state: DiskState::Active,
    }
    .shard_path(shard)
}

#[test]
fn writes_reads_ranges_and_reindexes() {
    let dir = tempfile::tempdir().unwrap();
    let roots = vec![dir.path().join("a"), dir.path().join("b")];
    let store = Store::open(&roots, 0, Faults::default()).unwrap();
    let l = layout(1_000_003);
    let shard = ShardId::new(SliceId(7), 3);
    let data = random(l.shard_len() as usize, 1);
    put(&store, shard, l, &data);
    let r = store.open_reader(shard).unwrap();
    for (off, len) in [(0, 1), (65535, 2), (100, 200_000), (0, data.len() as u64)] {
        let got = store.read(&r, off, len).unwrap();
        assert_eq!(got, &data[off as usize..(off + len) as usize]);
    }
    assert!(matches!(
        store.read(&r, data.len() as u64, 1),
        Err(StoreError::Invalid(_))
    ));
    drop(store);

    let store = Store::open(&roots, 0, Faults::default()).unwrap();
    assert_eq!(store.stat(shard).unwrap().layout, l);
    let (page, more) = store.list(None, 10);
    assert_eq!((page.len(), more), (1, false));
    assert!(store.delete(shard).unwrap());
    assert!(!store.delete(shard).unwrap());
    assert!(matches!(
        store.open_reader(shard),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn flipped_byte_is_reported_as_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    let l = layout(4 * 200_000);
    let shard = ShardId::new(SliceId(9), 0);
    let data = random(l.shard_len() as usize, 2);
    put(&store, shard, l, &data);
    let path = shard_file(dir.path(), shard);
    let header = ShardHeader::new(shard, l);
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.write_all_at(&[data[70_000] ^ 0x40], header.data_offset() + 70_000)
        .unwrap();
    let r = store.open_reader(shard).unwrap();
    // Block 0 is intact, block 1 (64 KiB..128 KiB) is not.
    assert_eq!(store.read(&r, 0, 1000).unwrap(), &data[..1000]);
    assert!(matches!(
        store.read(&r, 65_000, 1000),
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(store.health.snapshot().checksum_errors, 1);

    // A damaged header makes the whole shard unreadable, never misread.
    f.write_all_at(b"X", 20).unwrap();
    assert!(matches!(
        store.open_reader(shard),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn unfinished_write_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    let l = layout(100_000);
    let shard = ShardId::new(SliceId(1), 1);
    let (mut w, disk) = store.create(shard, l).unwrap();
    w.write(&[1; 100]).unwrap();
    assert!(matches!(store.commit(w, disk), Err(StoreError::Invalid(_))));
    let (mut w, _) = store.create(shard, l).unwrap();
    assert!(w.write(&vec![0; l.shard_len() as usize + 1]).is_err());
    drop(w);
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert!(matches!(store.stat(shard), Err(StoreError::NotFound(_))));
}

#[test]
fn no_room_is_an_error_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], u64::MAX / 2, Faults::default()).unwrap();
    let err = store
        .create(ShardId::new(SliceId(1), 0), layout(1000))
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
}

#[test]
fn strangers_in_the_shard_directory_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("shards/00");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("notes.txt"), "hello").unwrap();
    std::fs::write(sub.join("0000000000000100.0"), "not a shard").unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    assert_eq!(store.list(None, 10).0.len(), 0);
}

#[test]
fn header_round_trips_and_rejects_damage() {
    let shard = ShardId::new(SliceId(0xdead_beef), 5);
    let h = ShardHeader::new(shard, layout(123_456));
    let bytes = h.encode();
    assert_eq!(ShardHeader::decode(&bytes).unwrap(), h);
    for i in 0..bytes.len() {
        let mut bad = bytes;
        bad[i] ^= 1;
        assert!(
            ShardHeader::decode(&bad).is_err(),
            "flip at {i} went unnoticed"
        );
    }
}

#[test]
fn disks_are_added_and_emptied_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let store = Store::open(std::slice::from_ref(&a), 0, Faults::default()).unwrap();
    let shards: Vec<(ShardId, Vec<u8>)> = (1..=5u64)
        .map(|i| {
            let id = ShardId::new(SliceId(i), 0);
            let data = random(100_000 + i as usize, i);
            put(&store, id, layout(data.len() as u64 * 4), &data[..]);
            (id, data)
        })
        .collect();
    assert!(store.remove_disk(&a).is_err(), "the last directory stays");
    assert!(store.add_disk(Path::new("relative")).is_err());
    assert_eq!(store.add_disk(&b).unwrap(), 0);
    assert!(store.add_disk(&b).is_err(), "added twice");
    let moved = store.remove_disk(&a).unwrap();
    assert_eq!(moved.shards, 5);
    for (id, data) in &shards {
        assert!(!shard_file(&a, *id).exists());
        assert!(shard_file(&b, *id).exists());
        let r = store.open_reader(*id).unwrap();
        assert_eq!(&store.read(&r, 0, data.len() as u64).unwrap(), data);
    }
    let status = store.disk_status();
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].shards, 5);
    // New shards go to the remaining directory; the removed one can come back, empty.
    put(
        &store,
        ShardId::new(SliceId(9), 0),
        layout(400),
        &[7u8; 100],
    );
    assert_eq!(store.add_disk(&a).unwrap(), 0);
    assert_eq!(store.disk_status().len(), 2);
}
