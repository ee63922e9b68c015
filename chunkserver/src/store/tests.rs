use super::*;
use lattice_common::policy::Policy;
use rand::{Rng, SeedableRng};
use shard_file::BLOCK_SIZE;
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
        id: 0,
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
    // Only the block holding byte 70,000 is damaged: its neighbours read fine.
    let block = BLOCK_SIZE as u64;
    let damaged = 70_000 / block * block;
    assert_eq!(store.read(&r, 0, 1000).unwrap(), &data[..1000]);
    let before = (damaged - 100) as usize;
    assert_eq!(
        store.read(&r, before as u64, 100).unwrap(),
        &data[before..before + 100]
    );
    let after = (damaged + block) as usize;
    assert_eq!(
        store.read(&r, after as u64, 100).unwrap(),
        &data[after..after + 100]
    );
    assert!(matches!(
        store.read(&r, 70_001, 10),
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
fn a_checksum_table_entry_damaged_fails_its_block() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    let l = layout(4 * 100_000);
    let shard = ShardId::new(SliceId(10), 1);
    let data = random(l.shard_len() as usize, 5);
    put(&store, shard, l, &data);
    let r = store.reader(shard).unwrap();
    let f = std::fs::File::options()
        .write(true)
        .open(shard_file(dir.path(), shard))
        .unwrap();
    // The checksum of block 3 follows the 128-byte header, 4 bytes per block.
    f.write_all_at(&[0xff; 4], 128 + 4 * 3).unwrap();
    let block = BLOCK_SIZE as u64;
    assert_eq!(store.read(&r, 0, block).unwrap(), &data[..block as usize]);
    assert!(matches!(
        store.read(&r, 3 * block + 5, 1),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn kept_readers_never_outlive_their_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let store = Store::open(&[a.clone(), b.clone()], 0, Faults::default()).unwrap();
    let shard = ShardId::new(SliceId(3), 0);
    let l = layout(4 * 50_000);
    let first = random(l.shard_len() as usize, 1);
    put(&store, shard, l, &first);
    let r1 = store.reader(shard).unwrap();
    assert!(Arc::ptr_eq(&r1, &store.reader(shard).unwrap()), "kept open");

    // Replaced (as a rebuild does): the next reader sees the new file, not the kept one.
    let second = random(l.shard_len() as usize, 2);
    put(&store, shard, l, &second);
    let r2 = store.reader(shard).unwrap();
    assert!(!Arc::ptr_eq(&r1, &r2));
    assert_eq!(store.read(&r2, 0, 100).unwrap(), &second[..100]);

    // Moved to another directory: the kept file is closed and the copy opened.
    let on = store.stat(shard).unwrap().disk as usize;
    store.remove_disk([&a, &b][on]).unwrap();
    let r3 = store.reader(shard).unwrap();
    assert!(!Arc::ptr_eq(&r2, &r3));
    assert_eq!(store.read(&r3, 100, 100).unwrap(), &second[100..200]);

    // Deleted: gone at once, however it was kept.
    assert!(store.delete(shard).unwrap());
    assert!(matches!(store.reader(shard), Err(StoreError::NotFound(_))));
    assert_eq!(store.open.len(), 0);
}

#[test]
fn at_most_max_open_files_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    let count = open_shards::MAX_OPEN as u64 + 10;
    for i in 0..count {
        let shard = ShardId::new(SliceId(100 + i), 0);
        put(&store, shard, layout(400), &[i as u8; 100]);
        assert_eq!(
            store.read(&store.reader(shard).unwrap(), 0, 1).unwrap()[0],
            i as u8
        );
    }
    assert_eq!(store.open.len(), open_shards::MAX_OPEN);
    // The most recent stay; the coldest were closed.
    let newest = ShardId::new(SliceId(100 + count - 1), 0);
    let serial = store.entry(newest).unwrap().serial;
    assert!(store.open.get(newest, serial).is_some());
    let oldest = ShardId::new(SliceId(100), 0);
    let serial = store.entry(oldest).unwrap().serial;
    assert!(store.open.get(oldest, serial).is_none());
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

/// Every entry under `dir` with its kind, contents and modification time: equal snapshots
/// mean nothing was created, changed or removed (even temporarily) in it.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let contents = if meta.is_dir() {
            let mut names: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            todo.extend(names.iter().cloned());
            names
                .iter()
                .flat_map(|n| n.as_os_str().as_encoded_bytes().to_vec())
                .collect()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.push((p, contents, meta.modified().unwrap()));
    }
    out.sort();
    out
}

/// A directory someone else owns: files of theirs, and some that look like a store's.
fn foreign(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("tmp")).unwrap();
    std::fs::create_dir_all(home.join("shards/01")).unwrap();
    std::fs::write(home.join("notes.txt"), "keep me").unwrap();
    std::fs::write(home.join("tmp/0000000000000001.0.42.7"), "not ours").unwrap();
    std::fs::write(home.join("shards/01/0000000000000001.0"), "not ours").unwrap();
    home
}

#[test]
fn a_foreign_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let home = foreign(dir.path());
    let before = snapshot(&home);
    let fresh = dir.path().join("fresh");
    let err = Store::open(&[fresh.clone(), home.clone()], 0, Faults::default())
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("not a LatticeFS data directory"),
        "{err}"
    );
    assert_eq!(snapshot(&home), before);
    assert!(
        !fresh.exists(),
        "created a directory though the open failed"
    );

    // Nor is it taken as a disk added at run time.
    let ours = dir.path().join("ours");
    let store = Store::open(std::slice::from_ref(&ours), 0, Faults::default()).unwrap();
    let err = store.add_disk(&home).err().unwrap();
    assert!(
        err.to_string().contains("not a LatticeFS data directory"),
        "{err}"
    );
    assert_eq!(snapshot(&home), before);
    assert!(store.remove_disk(&home).is_err());
    assert_eq!(snapshot(&home), before);
    assert_eq!(store.disk_status().len(), 1);
}

#[test]
fn a_new_or_empty_directory_gets_a_marker_and_opens_again() {
    let dir = tempfile::tempdir().unwrap();
    let (empty, missing) = (dir.path().join("empty"), dir.path().join("new/deep"));
    // A freshly made filesystem is empty but for lost+found.
    std::fs::create_dir_all(empty.join("lost+found")).unwrap();
    let roots = vec![empty.clone(), missing.clone()];
    let store = Store::open(&roots, 0, Faults::default()).unwrap();
    let shard = ShardId::new(SliceId(3), 1);
    put(&store, shard, layout(4000), &[5; 1000]);
    drop(store);
    let ids: Vec<u64> = roots
        .iter()
        .map(|r| match layout::inspect(r).unwrap() {
            layout::Found::Marked(id) => id,
            other => panic!("{}: {other:?}", r.display()),
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    let text = std::fs::read_to_string(empty.join(layout::MARKER)).unwrap();
    assert!(text.starts_with("LatticeFS chunkserver data directory\nformat 1\n"));

    // Marked, it opens with whatever it holds; the marker stays as it was.
    std::fs::write(empty.join("README"), "an operator's note").unwrap();
    let store = Store::open(&roots, 0, Faults::default()).unwrap();
    assert_eq!(store.stat(shard).unwrap().layout, layout(4000));
    assert_eq!(
        std::fs::read_to_string(empty.join(layout::MARKER)).unwrap(),
        text
    );
    assert!(empty.join("README").exists());
    drop(store);

    // A marker this code does not understand is refused, not rewritten.
    std::fs::write(
        empty.join(layout::MARKER),
        text.replace("format 1", "format 2"),
    )
    .unwrap();
    let err = Store::open(&roots, 0, Faults::default()).err().unwrap();
    assert!(err.to_string().contains("format 2"), "{err}");
}

#[test]
fn a_directory_from_before_markers_is_marked_and_keeps_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("old");
    let store = Store::open(std::slice::from_ref(&root), 0, Faults::default()).unwrap();
    let shard = ShardId::new(SliceId(0x1234), 2);
    put(&store, shard, layout(4000), &[9; 1000]);
    drop(store);
    std::fs::remove_file(root.join(layout::MARKER)).unwrap();
    assert_eq!(layout::inspect(&root).unwrap(), layout::Found::Unmarked);
    let store = Store::open(std::slice::from_ref(&root), 0, Faults::default()).unwrap();
    assert!(store.stat(shard).is_ok());
    assert!(matches!(
        layout::inspect(&root).unwrap(),
        layout::Found::Marked(_)
    ));
}

#[test]
fn one_directory_by_two_paths_is_one_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d");
    let alias = dir.path().join("alias");
    let store = Store::open(std::slice::from_ref(&root), 0, Faults::default()).unwrap();
    std::os::unix::fs::symlink(&root, &alias).unwrap();
    // A write in progress on the live disk: adding its alias must not clean it away.
    let (w, _) = store
        .create(ShardId::new(SliceId(1), 0), layout(4000))
        .unwrap();
    let err = store.add_disk(&alias).err().unwrap();
    assert!(
        err.to_string().contains("already a data directory"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 1);
    drop(w);
    drop(store);
    let err = Store::open(&[root, alias], 0, Faults::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("same data directory"), "{err}");
}

#[test]
fn only_unfinished_writes_are_cleaned_from_tmp() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("d");
    drop(Store::open(std::slice::from_ref(&root), 0, Faults::default()).unwrap());
    let tmp = root.join("tmp");
    std::fs::write(tmp.join("0000000000000001.0.42.7"), "unfinished").unwrap();
    std::fs::write(tmp.join("keep.txt"), "someone's").unwrap();
    std::fs::create_dir(tmp.join("0000000000000002.0.42.8")).unwrap();
    drop(Store::open(std::slice::from_ref(&root), 0, Faults::default()).unwrap());
    let mut left: Vec<String> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["0000000000000002.0.42.8", "keep.txt"]);
}

/// What this can show: a new shard bucket is created through the helper that fsyncs the
/// directory holding it, before the shard is renamed into it. What it cannot show: that the
/// fsync reaches the platter (that needs a power cut).
#[test]
fn a_new_bucket_directory_is_made_durable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&[dir.path().to_path_buf()], 0, Faults::default()).unwrap();
    let synced = || shard_file::SYNCED_DIRS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let shard = ShardId::new(SliceId(0xab), 0);
    let bucket = shard_file(dir.path(), shard)
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(!bucket.exists());
    synced();
    put(&store, shard, layout(4000), &[1; 1000]);
    assert_eq!(synced(), [dir.path().join("shards"), bucket.clone()]);
    // An existing bucket needs no new fsync of its parent.
    put(
        &store,
        ShardId::new(SliceId(0xab), 1),
        layout(4000),
        &[2; 1000],
    );
    assert_eq!(synced(), [bucket]);

    // Missing parents are each made durable in theirs.
    let deep = dir.path().join("x/y/z");
    layout::create_dir_synced(&deep).unwrap();
    assert!(deep.is_dir());
    assert_eq!(
        synced(),
        [
            dir.path().to_path_buf(),
            dir.path().join("x"),
            dir.path().join("x/y")
        ]
    );
}
