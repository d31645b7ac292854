//! Model-based test: random sequences of put / delete / batch / flush / reopen / crash against a
//! `BTreeMap` of what was acknowledged.
//!
//! A "crash" drops the handle without flushing (`Durability::Buffered`), then simulates losing the
//! unsynced part of the log: the live log is cut (or zero-filled, as unsynced pages of a
//! preallocated file read back) at a random offset between the last durable point and its end.
//! The recovered store must equal the model after exactly the batches whose records lie wholly
//! before the cut: nothing durable lost, no batch half-applied.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

mod common;

use common::{dump, keys_descending};
use proptest::prelude::*;
use sturdykv::{Batch, Db, Durability, Options};

type Model = common::Contents;

#[derive(Clone, Debug)]
enum Op {
    Put(u8, Vec<u8>),
    Delete(u8),
    Batch(Vec<(u8, Option<Vec<u8>>)>),
    Flush,
    Compact,
    Reopen,
    /// Crash and keep this fraction (per mille) of the unsynced log bytes.
    Crash {
        keep_per_mille: u16,
        zero_fill: bool,
    },
}

fn key(k: u8) -> Vec<u8> {
    // A small key space so that overwrites and deletes of present keys are common.
    vec![b'k', k % 12]
}

fn op() -> impl Strategy<Value = Op> {
    let value = proptest::collection::vec(any::<u8>(), 0..24);
    prop_oneof![
        6 => (any::<u8>(), value.clone()).prop_map(|(k, v)| Op::Put(k, v)),
        2 => any::<u8>().prop_map(Op::Delete),
        3 => proptest::collection::vec((any::<u8>(), proptest::option::of(value)), 1..6).prop_map(Op::Batch),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
        2 => (0u16..=1000, any::<bool>()).prop_map(|(keep_per_mille, zero_fill)| Op::Crash { keep_per_mille, zero_fill }),
    ]
}

fn open(dir: &Path) -> Db {
    // Compaction only when the sequence says so, so that the crash model knows the live log.
    Options::new()
        .durability(Durability::Buffered)
        .background_compaction(false)
        .open(dir)
        .expect("open")
}

/// The live log: `wal-<generation>`.
fn live_wal(dir: &Path, db: &Db) -> std::path::PathBuf {
    dir.join(format!(
        "wal-{:016x}",
        db.stats().expect("stats").generation
    ))
}

fn apply(model: &mut Model, k: u8, v: Option<Vec<u8>>) {
    match v {
        Some(v) => model.insert(key(k), v),
        None => model.remove(&key(k)),
    };
}

fn assert_same(db: &Db, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(&dump(db), model);
    let backwards = keys_descending(db);
    let mut expected: Vec<Vec<u8>> = model.keys().cloned().collect();
    expected.reverse();
    prop_assert_eq!(backwards, expected);
    for k in 0..12u8 {
        let got = db.get(key(k)).expect("get").map(|v| v.to_vec());
        prop_assert_eq!(got.as_ref(), model.get(&key(k)));
    }
    prop_assert_eq!(db.len().expect("len"), model.len() as u64);
    Ok(())
}

/// Runs `ops`, checking the store against the model after every reopen and crash, and at the end.
fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = Some(open(dir.path()));
    let mut model = Model::new();
    // The model after each batch since the last durable point, with the log offset where that
    // batch's record ends. Entry 0 is the durable state.
    let mut since_durable: Vec<(u64, Model)> = vec![(
        db.as_ref().expect("open").stats().expect("stats").wal_bytes,
        Model::new(),
    )];

    for op in ops {
        let handle = db.as_ref().expect("open");
        match op {
            Op::Put(k, v) => {
                handle.put(key(k), &v).expect("put");
                apply(&mut model, k, Some(v));
            }
            Op::Delete(k) => {
                handle.delete(key(k)).expect("delete");
                apply(&mut model, k, None);
            }
            Op::Batch(ops) => {
                let mut batch = Batch::new();
                for (k, v) in &ops {
                    match v {
                        Some(v) => batch.put(key(*k), v),
                        None => batch.delete(key(*k)),
                    };
                }
                handle.write(batch).expect("write");
                for (k, v) in ops {
                    apply(&mut model, k, v);
                }
            }
            Op::Flush => {
                handle.flush().expect("flush");
                since_durable.clear();
            }
            Op::Compact => {
                // Everything so far ends up in a durable snapshot; the new log starts empty.
                handle.compact().expect("compact");
                assert_same(handle, &model)?;
                since_durable.clear();
            }
            Op::Reopen => {
                drop(db.take());
                let reopened = open(dir.path());
                assert_same(&reopened, &model)?;
                db = Some(reopened);
                since_durable.clear();
            }
            Op::Crash {
                keep_per_mille,
                zero_fill,
            } => {
                let end = handle.stats().expect("stats").wal_bytes;
                let wal = live_wal(dir.path(), handle);
                let durable = since_durable.first().map_or(end, |(offset, _)| *offset);
                let cut = durable + (end - durable) * u64::from(keep_per_mille) / 1000;
                drop(db.take());
                let file = OpenOptions::new().write(true).open(&wal).expect("open wal");
                if zero_fill {
                    // Everything from the cut to the end of the file: the record a clean close
                    // appends behind `end` (after a sync, so no real crash keeps it while losing
                    // what is before it) goes too.
                    let len = file.metadata().expect("metadata").len();
                    file.write_all_at(&vec![0u8; (len - cut) as usize], cut)
                        .expect("zero");
                } else {
                    file.set_len(cut).expect("truncate");
                }
                drop(file);
                // Truncation: exactly the batches whose records end at or before the cut survive.
                // Zero-filling can leave a record intact when its lost bytes were zeros anyway,
                // so there the store may also be at any later batch boundary.
                let survivors = since_durable.iter().rposition(|(offset, _)| *offset <= cut);
                let reopened = open(dir.path());
                let mut candidates: Vec<&Model> = match survivors {
                    Some(i) if zero_fill => since_durable[i..].iter().map(|(_, m)| m).collect(),
                    Some(i) => vec![&since_durable[i].1],
                    None => vec![&model],
                };
                let recovered = dump(&reopened);
                candidates.retain(|m| **m == recovered);
                prop_assert!(
                    !candidates.is_empty(),
                    "recovered {:?} is not the state after any batch boundary allowed by a cut at {}",
                    recovered,
                    cut
                );
                model = recovered;
                assert_same(&reopened, &model)?;
                db = Some(reopened);
                since_durable.clear();
            }
        }
        // Every write appended a record: remember where it ends and the state after it. After a
        // flush, reopen or crash, the state on disk is durable: a fresh base for the next crash.
        let offset = db.as_ref().expect("open").stats().expect("stats").wal_bytes;
        since_durable.push((offset, model.clone()));
    }
    assert_same(db.as_ref().expect("open"), &model)?;
    drop(db);
    assert_same(&open(dir.path()), &model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_across_crashes(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
