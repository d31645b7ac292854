//! The power-loss campaign on the simulated disk: a seeded random workload (puts, deletes,
//! batches, compactions, reopens) with the power cut at a random operation, and one crash image
//! per crash model checked against the model. Used by the crash tests and by
//! `kvctl crash-test --simulate`.
//!
//! With several handles, each stands for a process: the workload's operations go to handles
//! chosen at random, and some writes become transactional increments, so that catching up on
//! each other's commits, compactions and torn tails is part of what a power cut can interrupt.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::testing::rng::Rng;
use crate::testing::sim::{CrashModel, SimVfs};
use crate::{Batch, Db, Options};

pub(crate) type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// The campaign's partition bound: the smallest there is.
const PARTITION_BYTES: u64 = 1 << 10;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    /// A transaction that adds one to the number under `counter`.
    Increment,
    /// Writes the memtable out as a run.
    Flush,
    /// Flushes, then merges the runs into the partitions.
    Compact,
    Reopen,
}

const COUNTER: &[u8] = b"counter";

/// The operations of `workload` spread over `handles` handles: which handle runs each, with some
/// writes turned into increments. With one handle, exactly `workload`.
pub(crate) fn spread(seed: u64, ops: Vec<Op>, handles: usize) -> Vec<(usize, Op)> {
    if handles == 1 {
        return ops.into_iter().map(|op| (0, op)).collect();
    }
    // A separate generator, so that single-handle seeds keep their workloads.
    let mut rng = Rng::new(seed ^ 0x0005_EED0_F4A4_D1E5);
    ops.into_iter()
        .map(|op| {
            let handle = rng.below(handles as u64) as usize;
            match op {
                Op::Write(_) if rng.below(4) == 0 => (handle, Op::Increment),
                op => (handle, op),
            }
        })
        .collect()
}

/// The model after an increment.
pub(crate) fn incremented(base: &Model) -> Model {
    let mut next = base.clone();
    let n: u64 = base
        .get(COUNTER)
        .map_or(0, |v| String::from_utf8_lossy(v).parse().unwrap_or(0));
    next.insert(COUNTER.to_vec(), (n + 1).to_string().into_bytes());
    next
}

pub(crate) fn workload(rng: &mut Rng) -> Vec<Op> {
    let key = |rng: &mut Rng| format!("key{:02}", rng.below(24)).into_bytes();
    let value = |rng: &mut Rng| {
        let len = rng.below(300) as usize;
        (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>()
    };
    (0..10 + rng.below(40))
        .map(|_| match rng.below(20) {
            0 => Op::Compact,
            1 => Op::Reopen,
            9 => Op::Flush,
            2..=5 => {
                let n = 1 + rng.below(5);
                Op::Write(
                    (0..n)
                        .map(|_| {
                            let k = key(rng);
                            let v = (rng.below(4) != 0).then(|| value(rng));
                            (k, v)
                        })
                        .collect(),
                )
            }
            6..=8 => Op::Write(vec![(key(rng), None)]),
            _ => Op::Write(vec![(key(rng), Some(value(rng)))]),
        })
        .collect()
}

/// The batch for `writes`, and the model after applying it to `base`.
pub(crate) fn batch_over(writes: &[(Vec<u8>, Option<Vec<u8>>)], base: &Model) -> (Batch, Model) {
    let mut batch = Batch::new();
    let mut next = base.clone();
    for (k, v) in writes {
        match v {
            Some(v) => {
                batch.put(k, v);
                next.insert(k.clone(), v.clone());
            }
            None => {
                batch.delete(k);
                next.remove(k);
            }
        }
    }
    (batch, next)
}

pub(crate) fn open(vfs: &SimVfs) -> crate::Result<Db> {
    Options::new()
        .vfs(Arc::new(vfs.clone()))
        .background_compaction(false)
        // A few blocks per partition, so that a compaction writes several and installs a
        // manifest after each: every step of a partial compaction is a crash point.
        .partition_bytes(PARTITION_BYTES)
        .open(Path::new("/store"))
}

pub(crate) fn dump(db: &Db) -> Model {
    db.range::<&[u8], _>(..)
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .expect("scan a recovered store")
}

/// What a run left: the model after each issued batch (`states[i]` after `i` batches), how many
/// were acknowledged, and whether one more was in flight when the power went.
pub(crate) struct Run {
    pub(crate) states: Vec<Model>,
    pub(crate) acked: usize,
    pub(crate) in_flight: bool,
}

/// Adds one to the counter in a transaction.
pub(crate) fn increment(db: &Db) -> crate::Result<()> {
    db.transaction(|tx| {
        let n: u64 = tx
            .get(COUNTER)?
            .map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
        tx.put(COUNTER, (n + 1).to_string())
    })
}

/// Runs `ops` on `vfs` until they end or the power goes.
#[cfg(test)]
pub(crate) fn run(vfs: &SimVfs, ops: &[Op]) -> Run {
    let ops: Vec<(usize, Op)> = ops.iter().cloned().map(|op| (0, op)).collect();
    run_on(vfs, &ops, 1)
}

/// Runs `ops` on `handles` handles of the store on `vfs` until they end or the power goes.
pub(crate) fn run_on(vfs: &SimVfs, ops: &[(usize, Op)], handles: usize) -> Run {
    let mut out = Run {
        states: vec![Model::new()],
        acked: 0,
        in_flight: false,
    };
    let mut dbs = Vec::new();
    for _ in 0..handles {
        match open(vfs) {
            Ok(db) => dbs.push(db),
            Err(_) => return out,
        }
    }
    for (handle, op) in ops {
        let db = &dbs[*handle];
        match op {
            Op::Write(writes) => {
                let (batch, next) = batch_over(writes, &out.states[out.acked]);
                out.states.push(next);
                if db.write(batch).is_err() {
                    out.in_flight = true;
                    return out;
                }
                out.acked += 1;
            }
            Op::Increment => {
                out.states.push(incremented(&out.states[out.acked]));
                if increment(db).is_err() {
                    out.in_flight = true;
                    return out;
                }
                out.acked += 1;
            }
            Op::Compact => {
                if db.compact().is_err() {
                    return out;
                }
            }
            Op::Flush => {
                if db.flush_memtable().is_err() {
                    return out;
                }
            }
            Op::Reopen => {
                // Close first, as a restarted process would.
                drop(dbs.remove(*handle));
                match open(vfs) {
                    Ok(db) => dbs.insert(*handle, db),
                    Err(_) => return out,
                }
            }
        }
    }
    out
}

/// Runs seed `seed` with the power cut at a random point, then checks one image per crash model.
/// Returns the number of images checked, or a description of the first violation.
pub(crate) fn check_seed(seed: u64, prepare: impl Fn(&SimVfs)) -> Result<u64, String> {
    check_seed_on(seed, 1, prepare)
}

/// [`check_seed`] with the workload spread over `handles` handles (processes).
pub(crate) fn check_seed_on(
    seed: u64,
    handles: usize,
    prepare: impl Fn(&SimVfs),
) -> Result<u64, String> {
    let mut rng = Rng::new(seed);
    let ops = spread(seed, workload(&mut rng), handles);
    // A dry run counts the operations, so that the cut can land anywhere among them.
    let dry = SimVfs::new();
    run_on(&dry, &ops, handles);
    let total = dry.ops();
    let vfs = SimVfs::new();
    prepare(&vfs);
    vfs.freeze_after(rng.below(total + 1));
    let outcome = run_on(&vfs, &ops, handles);
    let mut images = 0;
    for model in CrashModel::ALL {
        let image = vfs.crash(rng.next_u64(), model);
        let context = || {
            format!(
                "SIM_SEED={seed} ({handles} handles, {model:?}, {} acknowledged)",
                outcome.acked
            )
        };
        let db =
            open(&image).map_err(|e| format!("{}: the store did not reopen: {e}", context()))?;
        let recovered = dump(&db);
        let allowed =
            &outcome.states[outcome.acked..=outcome.acked + usize::from(outcome.in_flight)];
        if !allowed.contains(&recovered) {
            let lost: Vec<String> = outcome.states[outcome.acked]
                .iter()
                .filter(|(k, v)| recovered.get(*k) != Some(v))
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            return Err(format!(
                "{}: recovered state is not the state after the acknowledged batches \
                 (acknowledged keys lost or wrong: {lost:?})",
                context()
            ));
        }
        let counted = db
            .len()
            .map_err(|e| format!("{}: len failed: {e}", context()))?;
        if counted != recovered.len() as u64 {
            return Err(format!(
                "{}: len says {counted} keys, the store holds {}",
                context(),
                recovered.len()
            ));
        }
        drop(db);
        let again =
            open(&image).map_err(|e| format!("{}: second reopen failed: {e}", context()))?;
        if dump(&again) != recovered || again.len().ok() != Some(counted) {
            return Err(format!("{}: replay is not idempotent", context()));
        }
        images += 1;
    }
    Ok(images)
}
