//! The power-loss campaign on the simulated disk: a seeded random workload (puts, deletes,
//! batches, compactions, reopens) with the power cut at a random operation, and one crash image
//! per crash model checked against the model. Used by the crash tests and by
//! `kvctl crash-test --simulate`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::sim::{CrashModel, Rng, SimVfs};
use crate::{Batch, Db, Options};

pub(crate) type Model = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Write(Vec<(Vec<u8>, Option<Vec<u8>>)>),
    Compact,
    Reopen,
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

/// Runs `ops` on `vfs` until they end or the power goes.
pub(crate) fn run(vfs: &SimVfs, ops: &[Op]) -> Run {
    let mut out = Run {
        states: vec![Model::new()],
        acked: 0,
        in_flight: false,
    };
    let Ok(mut db) = open(vfs) else { return out };
    for op in ops {
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
            Op::Compact => {
                if db.compact().is_err() {
                    return out;
                }
            }
            Op::Reopen => {
                drop(db);
                match open(vfs) {
                    Ok(reopened) => db = reopened,
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
    let mut rng = Rng::new(seed);
    let ops = workload(&mut rng);
    // A dry run counts the operations, so that the cut can land anywhere among them.
    let dry = SimVfs::new();
    run(&dry, &ops);
    let total = dry.ops();
    let vfs = SimVfs::new();
    prepare(&vfs);
    vfs.freeze_after(rng.below(total + 1));
    let outcome = run(&vfs, &ops);
    let mut images = 0;
    for model in [CrashModel::Prefix, CrashModel::Subset, CrashModel::Torn] {
        let image = vfs.crash(rng.next_u64(), model);
        let context = || {
            format!(
                "SIM_SEED={seed} ({model:?}, {} acknowledged)",
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
        drop(db);
        let again =
            open(&image).map_err(|e| format!("{}: second reopen failed: {e}", context()))?;
        if dump(&again) != recovered {
            return Err(format!("{}: replay is not idempotent", context()));
        }
        images += 1;
    }
    Ok(images)
}
