//! What the fuzz targets run (through `sturdykv::fuzzing`), kept here so that they can use the
//! crate's internals: the simulated disk and the snapshot reader.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use crate::format::{
    Frame, LOG_FORMAT_V1, LOG_FORMAT_V2, LOG_FORMAT_VERSION, OpRef, decode_frame, encode_record,
};
use crate::io::{OpenMode, Vfs};
use crate::sorted::SortedFile;
use crate::testing::campaign::dump;
use crate::testing::sim::{CrashModel, SimVfs};
use crate::{Batch, Db, Options};

/// Walks `data` as recovery does, in each log format, and checks that each decoded record
/// re-encodes byte for byte. Used by the fuzz target and by property tests of the log format.
pub fn check_decode_roundtrip(data: &[u8]) {
    for version in [LOG_FORMAT_V1, LOG_FORMAT_V2, LOG_FORMAT_VERSION] {
        let mut rest = data;
        while let Frame::Record(record) = decode_frame(rest, version) {
            let len = usize::try_from(record.len).unwrap_or(usize::MAX);
            let ops: Vec<OpRef<'_>> = record.ops().collect();
            assert_eq!(ops.len(), record.op_count as usize);
            let ops_len = ops.iter().map(OpRef::encoded_len).sum();
            let mut again = Vec::new();
            encode_record(
                &mut again,
                version,
                record.seq,
                record.durable_below,
                ops.into_iter(),
                ops_len,
            );
            assert_eq!(
                again,
                rest[..len],
                "a decoded record must re-encode to the same bytes"
            );
            rest = &rest[len..];
        }
    }
}

/// Reads arbitrary bytes as a snapshot; any outcome but a panic is fine.
pub fn snapshot(data: &[u8]) {
    let vfs = SimVfs::new();
    let path = Path::new("/snap-0000000000000001");
    let Ok(file) = vfs.open(path, OpenMode::CreateNew) else {
        return;
    };
    if file.write_all_at(data, 0).is_err() {
        return;
    }
    drop(file);
    let Ok(snapshot) = SortedFile::open(&vfs, path) else {
        return;
    };
    let snapshot = Arc::new(snapshot);
    let _ = snapshot.verify(|_| {});
    let probes: [&[u8]; 4] = [b"", b"a", &data[..data.len().min(8)], b"\xff\xff"];
    for key in probes {
        let _ = snapshot.get(key);
        let _ = snapshot.knows(key);
    }
    for forward in [true, false] {
        if let Ok(mut cursor) = snapshot.cursor(Bound::Unbounded, Bound::Unbounded, forward) {
            for _ in 0..10_000 {
                match cursor.next_entry() {
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        }
    }
    let mut stream = snapshot.stream();
    for _ in 0..10_000 {
        match stream.next_entry() {
            Ok(Some(_)) => {}
            _ => break,
        }
    }
}

/// Runs operations decoded from `data` against a model; panics on any divergence.
pub fn operations(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    let vfs = SimVfs::new();
    let dir = Path::new("/store");
    let open = |vfs: &SimVfs| {
        Options::new()
            .vfs(Arc::new(vfs.clone()))
            .background_compaction(false)
            .open(dir)
            .expect("the simulated store opens")
    };
    let mut vfs = vfs;
    let mut db: Db = open(&vfs);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    while let Some(op) = next() {
        let key = vec![b'k', next().unwrap_or(0) % 16];
        match op % 8 {
            0..=2 => {
                let value = vec![next().unwrap_or(0); usize::from(next().unwrap_or(0))];
                db.put(&key, &value).expect("put");
                model.insert(key, value);
            }
            3 => {
                db.delete(&key).expect("delete");
                model.remove(&key);
            }
            4 => {
                let mut batch = Batch::new();
                for _ in 0..next().unwrap_or(0) % 5 {
                    let k = vec![b'k', next().unwrap_or(0) % 16];
                    if next().unwrap_or(0) % 2 == 0 {
                        batch.delete(&k);
                        model.remove(&k);
                    } else {
                        batch.put(&k, [op]);
                        model.insert(k, vec![op]);
                    }
                }
                db.write(batch).expect("write");
            }
            5 => db.compact().expect("compact"),
            6 => {
                drop(db);
                db = open(&vfs);
            }
            _ => {
                // A power cut: every write was acknowledged with Immediate durability, so all
                // of them must survive whatever the cut keeps of the rest.
                let model_kind = CrashModel::ALL[usize::from(next().unwrap_or(0)) % 4];
                let image = vfs.crash(u64::from(next().unwrap_or(0)), model_kind);
                drop(db);
                vfs = image;
                db = open(&vfs);
            }
        }
        assert_eq!(dump(&db), model, "the store diverged from the model");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays the seed corpus of each fuzz target (`fuzz/corpus/<target>/`), the same inputs
    /// `cargo fuzz` starts from, so that CI runs them as ordinary tests.
    #[test]
    fn the_fuzz_corpora_replay_cleanly() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut inputs = 0;
        for (target, run) in [
            ("log_records", check_decode_roundtrip as fn(&[u8])),
            ("snapshot", snapshot),
            ("operations", operations),
        ] {
            let dir = root.join(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                run(&std::fs::read(&path).expect("read corpus file"));
                inputs += 1;
            }
        }
        assert!(inputs >= 3, "the corpora are missing");
    }

    #[test]
    fn a_real_snapshot_survives_the_snapshot_target() {
        let vfs = SimVfs::new();
        let db = Options::new()
            .vfs(Arc::new(vfs.clone()))
            .open("/store")
            .expect("open");
        for i in 0..300u32 {
            db.put(i.to_be_bytes(), vec![i as u8; 20]).expect("put");
        }
        db.compact().expect("compact");
        let (path, _) = vfs
            .files()
            .into_iter()
            .find(|(p, _)| p.to_string_lossy().contains("part-"))
            .expect("a partition");
        let file = vfs.open(&path, OpenMode::Read).expect("open");
        let mut bytes = vec![0u8; file.size().expect("size") as usize];
        file.read_exact_at(&mut bytes, 0).expect("read");
        snapshot(&bytes);
        for cut in [bytes.len() / 3, bytes.len() - 10] {
            snapshot(&bytes[..cut]);
        }
    }
}
