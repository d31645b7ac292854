//! Power-loss, fault-injection and corruption campaigns on the simulated disk (`sim.rs`), run
//! by `cargo test`. The seeded random campaign itself lives in `campaign.rs`; a failure prints
//! `SIM_SEED=<seed>` to reproduce it alone.

use std::collections::BTreeMap;

use crate::io::Vfs;
use crate::testing::campaign::{
    Model, Op, Run, batch_over, check_seed, check_seed_on, dump, increment, incremented, open, run,
    run_on, spread,
};
use crate::testing::sim::{CrashModel, Fault, Kept, SimVfs};
use crate::{Batch, Options};

/// Checks one crash image against a run; `what` names it in a failure.
fn check_image(image: &SimVfs, outcome: &Run, what: &str) -> Result<(), String> {
    let allowed = &outcome.states[outcome.acked..=outcome.acked + usize::from(outcome.in_flight)];
    // First read-only: it sees an acknowledged state too, and changes not a byte.
    let before = image.contents();
    let opened = Options::new()
        .vfs(std::sync::Arc::new(image.clone()))
        .background_compaction(false)
        .read_only(true)
        .open(std::path::Path::new("/store"));
    match opened {
        Ok(reader) => {
            if !allowed.contains(&dump(&reader)) {
                return Err(format!(
                    "{what}: a read-only open saw an unacknowledged state"
                ));
            }
        }
        // The power went while the store was being created, before its lock file was durable:
        // only a writable open can finish that.
        Err(crate::Error::NotAStore { .. }) => {}
        Err(crate::Error::Io { path, .. })
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("LOCK")) => {}
        Err(e) => return Err(format!("{what}: the store did not open read-only: {e}")),
    }
    if image.contents() != before {
        return Err(format!("{what}: a read-only open changed the store"));
    }
    let db = open(image).map_err(|e| format!("{what}: the store did not reopen: {e}"))?;
    let recovered = dump(&db);
    if !allowed.contains(&recovered) {
        return Err(format!(
            "{what}: recovered state is not the state after the acknowledged batches"
        ));
    }
    Ok(())
}

/// Small workloads whose every crash point and every subset of unsynced operations is tried:
/// plain writes, and writes around a full compaction and a reopen.
fn canonical_workloads() -> Vec<Vec<Op>> {
    let put =
        |k: &str, v: &str| Op::Write(vec![(k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))]);
    let del = |k: &str| Op::Write(vec![(k.as_bytes().to_vec(), None)]);
    let batch = Op::Write(vec![
        (b"b".to_vec(), Some(b"2".to_vec())),
        (b"c".to_vec(), Some(b"3".to_vec())),
        (b"a".to_vec(), None),
    ]);
    vec![
        vec![put("a", "1"), batch.clone(), del("b")],
        vec![
            put("a", "1"),
            put("b", "2"),
            Op::Compact,
            put("c", "3"),
            del("a"),
        ],
        vec![
            put("a", "1"),
            Op::Compact,
            batch,
            Op::Reopen,
            Op::Compact,
            put("d", "4"),
        ],
        vec![
            put("a", "1"),
            put("b", "2"),
            Op::Compact,
            del("a"),
            put("c", "3"),
            Op::Flush,
            put("b", "4"),
            Op::Compact,
        ],
    ]
}

#[test]
fn every_crash_point_and_every_subset_of_unsynced_operations() {
    let (mut points, mut images) = (0u64, 0u64);
    for (w, ops) in canonical_workloads().iter().enumerate() {
        let dry = SimVfs::new();
        run(&dry, ops);
        for cut in 0..=dry.ops() {
            let vfs = SimVfs::new();
            vfs.freeze_after(cut);
            let outcome = run(&vfs, ops);
            points += 1;
            let pending = vfs.pending();
            // All subsets when few operations are pending, else the first 4,096 of them.
            let masks = if pending <= 12 { 1u64 << pending } else { 4096 };
            for mask in 0..masks {
                let what =
                    format!("workload {w}, power cut at operation {cut}, kept-mask {mask:#b}");
                check_image(&vfs.crash_keeping(mask), &outcome, &what)
                    .unwrap_or_else(|e| panic!("{e}"));
                images += 1;
            }
        }
    }
    eprintln!("{points} crash points, {images} images");
    assert!(points > 50, "only {points} crash points");
}

/// What a run on a faulty disk acknowledged: every state the store may be in. A batch whose
/// fate is unknown (its handle was poisoned while writing it: a failed sync, or a partial write
/// it could not undo) doubles them, until a read settles it.
struct FaultRun {
    candidates: Vec<Model>,
    acks: usize,
}

impl FaultRun {
    /// Every candidate advanced by one operation.
    fn advance(&mut self, op: impl Fn(&Model) -> Model) {
        self.candidates = self.candidates.iter().map(op).collect();
    }

    /// The state a handle read must be a candidate; it becomes the only one.
    fn settle(&mut self, state: Model, what: &str) {
        assert!(
            self.candidates.contains(&state),
            "{what}: a read found a state that is not the {} acknowledged batches \
             (with or without those whose fate is unknown)",
            self.acks
        );
        self.candidates = vec![state];
    }
}

/// Runs `ops` on `handles` handles (processes) like applications would on a disk that fails:
/// an error does not stop them, but a handle that says it is poisoned is reopened at its next
/// `Reopen`. Panics if a handle acknowledges anything after one of its syncs failed (it must
/// refuse until reopened), or if a read after an acknowledged write does not see it.
fn run_with_faults(vfs: &SimVfs, ops: &[(usize, Op)], handles: usize, what: &str) -> FaultRun {
    let mut out = FaultRun {
        candidates: vec![Model::new()],
        acks: 0,
    };
    let mut dbs = Vec::new();
    for _ in 0..handles {
        match open(vfs) {
            Ok(db) => dbs.push(db),
            Err(_) => return out,
        }
    }
    let mut poisoned = vec![false; handles];
    for (handle, op) in ops {
        let (db, poisoned) = (&dbs[*handle], &mut poisoned[*handle]);
        match op {
            Op::Write(_) | Op::Increment => {
                let result = match op {
                    Op::Write(writes) => db.write(batch_over(writes, &Model::new()).0),
                    _ => increment(db),
                };
                let apply = |base: &Model| match op {
                    Op::Write(writes) => batch_over(writes, base).1,
                    _ => incremented(base),
                };
                match result {
                    Ok(()) => {
                        assert!(
                            !*poisoned,
                            "{what}: a write was acknowledged after a failed sync"
                        );
                        out.advance(apply);
                        out.acks += 1;
                        // The writer reads its own write at once.
                        out.settle(dump(db), what);
                    }
                    // A poisoned handle refuses before writing anything.
                    Err(_) if *poisoned => {}
                    Err(_) => {
                        // A clean failure leaves nothing behind; one that poisoned the handle
                        // leaves the batch's fate unknown.
                        if matches!(db.flush(), Err(crate::Error::Poisoned { .. })) {
                            let mut with = out.candidates.clone();
                            out.advance(apply);
                            with.append(&mut out.candidates);
                            with.dedup();
                            out.candidates = with;
                            *poisoned = true;
                        }
                    }
                }
            }
            Op::Compact => {
                if db.compact().is_err() && matches!(db.flush(), Err(crate::Error::Poisoned { .. }))
                {
                    *poisoned = true;
                }
            }
            Op::Flush => {
                if db.flush_memtable().is_err()
                    && matches!(db.flush(), Err(crate::Error::Poisoned { .. }))
                {
                    *poisoned = true;
                }
            }
            Op::Reopen => {
                drop(dbs.remove(*handle));
                match open(vfs) {
                    Ok(reopened) => {
                        // Reopening settles every batch whose fate was unknown; later
                        // acknowledgements build on what it found.
                        out.settle(dump(&reopened), what);
                        dbs.insert(*handle, reopened);
                        *poisoned = false;
                    }
                    Err(_) => return out,
                }
            }
        }
    }
    out
}

/// Injects each fault at each mutating operation of `ops` (once, and from there on), runs it,
/// then checks that the store reopens with the acknowledged batches, both once the disk works
/// again and after a power cut. Returns the number of cases.
fn fault_at_every_operation(ops: &[(usize, Op)], handles: usize, name: &str) -> u64 {
    let dry = SimVfs::new();
    run_on(&dry, ops, handles);
    let mut cases = 0;
    for at in 0..dry.ops() {
        for fault in [
            Fault::Eio,
            Fault::NoSpace,
            Fault::LostSync,
            Fault::ShortWrite(Kept::FirstByte),
            Fault::ShortWrite(Kept::AllButLast),
        ] {
            for persistent in [false, true] {
                let what =
                    format!("{name}, {fault:?} at operation {at} (persistent: {persistent})");
                let vfs = SimVfs::new();
                vfs.inject(at, fault, persistent);
                let outcome = run_with_faults(&vfs, ops, handles, &what);
                vfs.clear_faults();
                for (image, how) in [
                    (vfs.clone(), "reopen"),
                    (vfs.crash(at, CrashModel::Subset), "power cut"),
                ] {
                    let db = open(&image)
                        .unwrap_or_else(|e| panic!("{what}, {how}: did not reopen: {e}"));
                    let state = dump(&db);
                    assert!(
                        outcome.candidates.contains(&state),
                        "{what}, {how}: state {state:?} is not the {} acknowledged batches",
                        outcome.acks
                    );
                }
                cases += 1;
            }
        }
    }
    cases
}

#[test]
fn a_fault_at_every_operation_never_loses_or_invents_a_batch() {
    let mut cases = 0u64;
    for (w, ops) in canonical_workloads().into_iter().enumerate() {
        let ops: Vec<(usize, Op)> = ops.into_iter().map(|op| (0, op)).collect();
        cases += fault_at_every_operation(&ops, 1, &format!("workload {w}"));
    }
    eprintln!("{cases} fault-injection cases");
    assert!(cases > 1000, "only {cases} cases");
}

/// The same with two handles sharing the store, as two processes would: one handle's failure
/// (a failed sync is reported to the other's descriptor too, as Linux does) must not make the
/// other lose or invent anything, and the other must carry on where it can.
#[test]
fn a_fault_at_every_operation_with_two_processes_never_loses_or_invents_a_batch() {
    let mut cases = 0u64;
    for (w, ops) in canonical_workloads().into_iter().enumerate() {
        let ops = spread(w as u64, ops, 2);
        cases += fault_at_every_operation(&ops, 2, &format!("workload {w} on two handles"));
    }
    eprintln!("{cases} fault-injection cases");
    assert!(cases > 1000, "only {cases} cases");
}

/// Bit flips and zeroed sectors anywhere in a store's files: the open fails with a corruption
/// error, or every read returns a value that was really written for its key (never a wrong
/// value) and the store holds exactly the acknowledged state, or a read says it is corrupt. A
/// smaller state without an error is allowed only in the one window no record can vouch for:
/// damage that reaches the last record of the live log (the one a clean close appends), and then
/// only if recovery reports the cut.
#[test]
fn corruption_anywhere_never_yields_a_wrong_value() {
    let vfs = SimVfs::new();
    let mut written: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    {
        let db = open(&vfs).expect("open");
        for round in 0..6u32 {
            let mut batch = Batch::new();
            for k in 0..40u32 {
                let key = format!("key{k:02}").into_bytes();
                let value = format!("round {round} value of key {k} ")
                    .repeat(1 + (k % 3) as usize)
                    .into_bytes();
                batch.put(&key, &value);
                written.entry(key).or_default().push(value);
            }
            db.write(batch).expect("write");
            if round == 3 {
                db.compact().expect("compact");
            }
        }
    }
    let clean = vfs.crash_keeping(u64::MAX);
    let (final_state, live_log, live_end) = {
        let db = open(&clean).expect("clean image opens");
        let stats = db.stats().expect("stats");
        let live_log = format!("/store/{}", crate::layout::wal_name(stats.generation));
        (
            dump(&db),
            std::path::PathBuf::from(live_log),
            stats.wal_bytes,
        )
    };
    // The empty record the clean close appended: prefix 8, sequence, horizon and op count 20.
    let unvouched = live_end - 28..live_end;
    let files: Vec<(std::path::PathBuf, usize)> = clean
        .files()
        .into_iter()
        .filter(|(p, _)| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                ["wal-", "part-", "run-", "MANIFEST-"]
                    .iter()
                    .any(|k| n.starts_with(k))
            })
        })
        .collect();
    for kind in ["part-", "MANIFEST-"] {
        assert!(
            files
                .iter()
                .any(|(p, _)| p.to_string_lossy().contains(kind)),
            "{kind}"
        );
    }

    let mut cases = 0;
    for (path, len) in &files {
        // About 60 places per file, always including both ends.
        let step = (len / 60).max(1);
        let offsets: Vec<usize> = (0..*len).step_by(step).chain([len - 1]).collect();
        for &offset in &offsets {
            for zero_sector in [false, true] {
                let image = clean.crash_keeping(0);
                let damaged = if zero_sector {
                    offset / 512 * 512..(offset / 512 * 512 + 512).min(*len)
                } else {
                    offset..offset + 1
                };
                let in_window = *path == live_log
                    && damaged.start < unvouched.end as usize
                    && damaged.end > unvouched.start as usize;
                image.damage(path, |bytes| {
                    if zero_sector {
                        let start = offset / 512 * 512;
                        let end = (start + 512).min(bytes.len());
                        bytes[start..end].fill(0);
                    } else {
                        bytes[offset] ^= 1 << (offset % 8);
                    }
                });
                let what = format!(
                    "{} damaged at {offset} (zeroed sector: {zero_sector})",
                    path.display()
                );
                cases += 1;
                // A read-only open, and reads through it, never change a byte, damaged or not.
                let before = image.contents();
                if let Ok(reader) = Options::new()
                    .vfs(std::sync::Arc::new(image.clone()))
                    .background_compaction(false)
                    .read_only(true)
                    .open(std::path::Path::new("/store"))
                {
                    for key in written.keys() {
                        let _ = reader.get(key);
                    }
                    let _ = reader.range::<&[u8], _>(..).count();
                    let _ = reader.verify(|_, _| {});
                }
                assert!(
                    image.contents() == before,
                    "{what}: a read-only open changed the store"
                );
                let db = match open(&image) {
                    Ok(db) => db,
                    Err(
                        crate::Error::Corruption { .. }
                        | crate::Error::NotAStore { .. }
                        | crate::Error::UnsupportedVersion { .. },
                    ) => continue,
                    Err(other) => panic!("{what}: unexpected error {other}"),
                };
                let mut saw_error = false;
                let mut state = Model::new();
                for key in written.keys() {
                    match db.get(key) {
                        Ok(Some(v)) => {
                            assert!(
                                written[key].contains(&v.to_vec()),
                                "{what}: a wrong value for {key:?}"
                            );
                            state.insert(key.clone(), v.to_vec());
                        }
                        Ok(None) => {}
                        Err(crate::Error::Corruption { .. }) => saw_error = true,
                        Err(other) => panic!("{what}: unexpected error {other}"),
                    }
                }
                for entry in db.range::<&[u8], _>(..) {
                    match entry {
                        Ok((k, v)) => assert!(
                            written
                                .get(k.as_ref())
                                .is_some_and(|vs| vs.contains(&v.to_vec())),
                            "{what}: a scan returned a wrong value"
                        ),
                        Err(crate::Error::Corruption { .. }) => saw_error = true,
                        Err(other) => panic!("{what}: unexpected error {other}"),
                    }
                }
                if state != final_state && !saw_error {
                    let report = db.stats().expect("stats").recovery;
                    assert!(
                        in_window,
                        "{what}: acknowledged writes were lost without an error ({report:?})"
                    );
                    assert!(
                        report.truncated_bytes > 0 || !report.quarantine_files.is_empty(),
                        "{what}: data changed and nothing said so"
                    );
                }
                if saw_error {
                    assert!(
                        db.verify(|_, _| {}).is_err(),
                        "{what}: check missed the damage"
                    );
                }
            }
        }
    }
    eprintln!("{cases} corruption cases");
    assert!(cases > 200);
}

fn seeds() -> std::ops::Range<u64> {
    match std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        Some(seed) => seed..seed + 1,
        None => {
            0..std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(600)
        }
    }
}

/// Two handles stand for two processes sharing the store: each catches up on the other's
/// commits, compactions and transactions, and the power can go at any step of that.
#[test]
fn power_loss_with_two_processes_loses_nothing_acknowledged() {
    let mut images = 0;
    for seed in seeds() {
        match check_seed_on(seed, 2, |_| {}) {
            Ok(n) => images += n,
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{images} crash images checked (two handles)");
    assert!(images > 0);
}

#[test]
fn power_loss_at_any_operation_loses_nothing_acknowledged() {
    let mut images = 0;
    for seed in seeds() {
        match check_seed(seed, |_| {}) {
            Ok(n) => images += n,
            Err(violation) => panic!("{violation}"),
        }
    }
    eprintln!("{images} crash images checked");
    assert!(images > 0);
}

#[test]
fn the_campaign_catches_a_disk_that_skips_fsync() {
    let caught = (0..200)
        .filter(|&seed| check_seed(seed, |vfs| vfs.lie_about_fsync()).is_err())
        .count();
    assert!(caught > 0, "a disk that ignores fdatasync went unnoticed");
}

#[test]
fn the_campaign_catches_a_disk_that_skips_directory_syncs() {
    let caught = (0..200)
        .filter(|&seed| check_seed(seed, |vfs| vfs.lie_about_dir_sync()).is_err())
        .count();
    assert!(
        caught > 0,
        "a disk that ignores directory syncs went unnoticed"
    );
}

/// An unreadable sector (EIO) at any read of opening and reading a store with history: the
/// operation that hit it fails with an I/O error — never a wrong value, a "corruption" verdict or
/// a repair that cuts data — and once the disk reads again the store holds everything.
#[test]
fn a_read_error_anywhere_is_an_error_never_a_wrong_value_or_a_lost_write() {
    let vfs = SimVfs::new();
    {
        let db = open(&vfs).expect("open");
        for round in 0..5u32 {
            let mut batch = Batch::new();
            for k in 0..30u32 {
                batch.put(
                    format!("key{k:02}"),
                    format!("round {round} key {k} ").repeat(1 + (k % 4) as usize),
                );
            }
            if round > 0 {
                batch.delete(format!("key{:02}", round * 5));
            }
            db.write(batch).expect("write");
            if round == 2 {
                db.compact().expect("compact");
            }
        }
    }
    let clean = vfs.crash_keeping(u64::MAX);
    let expected = dump(&open(&clean).expect("clean image opens"));
    let keys: Vec<Vec<u8>> = (0..30u32)
        .map(|k| format!("key{k:02}").into_bytes())
        .collect();

    // Reads one image every way a user would; returns whether any read failed.
    let exercise = |db: &crate::Db, what: &str| -> bool {
        let mut failed = false;
        for key in &keys {
            match db.get(key) {
                Ok(v) => assert_eq!(
                    v.map(|v| v.to_vec()).as_ref(),
                    expected.get(key),
                    "{what}: a wrong value for {key:?}"
                ),
                Err(crate::Error::Io { .. }) => failed = true,
                Err(other) => panic!("{what}: a read error became {other}"),
            }
        }
        for entry in db.range::<&[u8], _>(..) {
            match entry {
                Ok((k, v)) => assert_eq!(
                    expected.get(k.as_ref()),
                    Some(&v.to_vec()),
                    "{what}: a scan returned a wrong entry"
                ),
                Err(crate::Error::Io { .. }) => failed = true,
                Err(other) => panic!("{what}: a read error became {other}"),
            }
        }
        failed
    };
    let probe = clean.crash_keeping(0);
    exercise(&open(&probe).expect("open"), "probe");
    let total = probe.reads();
    // The manifest, the log segments' headers and records (sorted files are read through their
    // maps, which cannot fail this way).
    assert!(total >= 5, "{total} reads");

    let mut cases = 0;
    for at in 0..total {
        for persistent in [false, true] {
            let what = format!("EIO at read {at} (persistent: {persistent})");
            let image = clean.crash_keeping(0);
            image.inject_read_error(at, persistent);
            match open(&image) {
                Ok(db) => {
                    exercise(&db, &what);
                }
                Err(crate::Error::Io { .. }) => {}
                Err(other) => panic!("{what}: opening failed with {other}"),
            }
            image.clear_faults();
            let db = open(&image).unwrap_or_else(|e| panic!("{what}: no reopen: {e}"));
            assert_eq!(dump(&db), expected, "{what}: data was lost");
            let report = db.stats().expect("stats").recovery;
            assert_eq!(
                report.truncated_bytes, 0,
                "{what}: a read error cut the log"
            );
            cases += 1;
        }
    }
    eprintln!("{cases} read-error cases over {total} reads");
}

/// A store on `vfs` with history: a snapshot, deletes and overwrites after it. Returns the
/// handle and its contents.
fn store_with_history(vfs: &SimVfs) -> (crate::Db, Model) {
    let db = open(vfs).expect("open");
    for i in 0..20 {
        db.put(format!("k{i:02}"), format!("first {i}"))
            .expect("put");
    }
    db.compact().expect("compact");
    for i in (0..20).step_by(3) {
        db.delete(format!("k{i:02}")).expect("delete");
    }
    db.put("k01", "second").expect("put");
    let model = dump(&db);
    (db, model)
}

fn open_at(vfs: &SimVfs, path: &str) -> crate::Result<crate::Db> {
    crate::Options::new()
        .vfs(std::sync::Arc::new(vfs.clone()))
        .background_compaction(false)
        .open(std::path::Path::new(path))
}

/// The backup's destination on `image` is absent, or a store holding exactly `model`; it must
/// be there if `finished`. The source holds `model` either way.
fn check_backup_image(image: &SimVfs, model: &Model, finished: bool, what: &str) {
    let source = open(image).unwrap_or_else(|e| panic!("{what}: the source did not reopen: {e}"));
    assert_eq!(&dump(&source), model, "{what}: the source changed");
    match image.entry_kind(std::path::Path::new("/backup")) {
        Ok(None) => assert!(!finished, "{what}: a finished backup is gone"),
        Ok(Some(_)) => {
            let copy = open_at(image, "/backup")
                .unwrap_or_else(|e| panic!("{what}: the backup did not open: {e}"));
            assert_eq!(&dump(&copy), model, "{what}: the backup is not the source");
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

#[test]
fn a_power_cut_or_a_fault_at_any_step_of_a_backup_leaves_no_half_copy() {
    let dry = SimVfs::new();
    let (db, _) = store_with_history(&dry);
    let before = dry.ops();
    db.backup_to("/backup").expect("backup");
    let steps = dry.ops() - before;
    let mut images = 0;
    for cut in 0..=steps {
        let vfs = SimVfs::new();
        let (db, model) = store_with_history(&vfs);
        vfs.freeze_after(vfs.ops() + cut);
        let finished = db.backup_to("/backup").is_ok();
        assert_eq!(
            finished,
            cut == steps,
            "power cut after {cut} of {steps} steps"
        );
        for (m, crash_model) in CrashModel::ALL.into_iter().enumerate() {
            let image = vfs.crash(cut * 4 + m as u64, crash_model);
            let what = format!("power cut after {cut} of {steps} backup steps, {crash_model:?}");
            check_backup_image(&image, &model, finished, &what);
            images += 1;
        }
    }
    let mut faults = 0;
    for at in 0..steps {
        for fault in [
            Fault::Eio,
            Fault::NoSpace,
            Fault::ShortWrite(Kept::AllButLast),
        ] {
            let vfs = SimVfs::new();
            let (db, model) = store_with_history(&vfs);
            vfs.inject(vfs.ops() + at, fault, false);
            let result = db.backup_to("/backup");
            vfs.clear_faults();
            let what = format!("{fault:?} at backup step {at}");
            // Only the last step (syncing the parent directory) can fail after the copy is in
            // place; any earlier failure leaves nothing at the destination.
            if result.is_err() && at + 1 < steps {
                assert_eq!(
                    vfs.entry_kind(std::path::Path::new("/backup")).ok(),
                    Some(None),
                    "{what}"
                );
            }
            check_backup_image(&vfs, &model, result.is_ok(), &what);
            check_backup_image(&vfs.crash(at, CrashModel::Subset), &model, false, &what);
            faults += 1;
        }
    }
    eprintln!("{steps} backup steps: {images} power-cut images, {faults} fault cases");
    assert!(steps > 8, "only {steps} steps");
}

/// A process that dies in the middle of cutting a new log (after its rename, before the
/// directory `fsync` that makes the rename durable) leaves a log whose name a power cut can take
/// away. Another process that follows the log into it must make that name durable before it
/// appends there: here a persistent EIO stops one handle at every step of a compaction, as a
/// kill would, the other handle writes on, and a power cut that keeps nothing unsynced must keep
/// every write it acknowledged.
#[test]
fn a_writer_that_follows_a_dead_writers_new_log_makes_its_name_durable() {
    let history = |vfs: &SimVfs| {
        let dying = open(vfs).expect("open");
        let survivor = open(vfs).expect("open a second handle");
        for i in 0..10 {
            dying.put(format!("k{i:02}"), "before").expect("put");
        }
        (dying, survivor)
    };
    let dry = SimVfs::new();
    let (dying, _survivor) = history(&dry);
    let before = dry.ops();
    dying.compact().expect("compact");
    let steps = dry.ops() - before;
    for at in 0..steps {
        let vfs = SimVfs::new();
        let (dying, survivor) = history(&vfs);
        vfs.inject(vfs.ops() + at, Fault::Eio, true);
        let _ = dying.compact();
        vfs.clear_faults();
        let what = format!("the compacting handle stopped at step {at} of {steps}");
        survivor
            .put("after", "acknowledged")
            .unwrap_or_else(|e| panic!("{what}: the other handle could not write: {e}"));
        let mut expected = dump(&survivor);
        expected.insert(b"after".to_vec(), b"acknowledged".to_vec());
        let image = vfs.crash_keeping(0);
        let db = open(&image).unwrap_or_else(|e| panic!("{what}: no reopen: {e}"));
        assert_eq!(
            dump(&db),
            expected,
            "{what}, then a power cut: data was lost"
        );
    }
}

/// One handle dies (a persistent EIO from a random step on, as a kill would stop it) in the
/// middle of whatever it was doing — a put, a batch, a transaction, a compaction — while the
/// other, or a handle opened only then, writes and compacts on (sometimes after a third one died
/// in the middle of opening the store); then the power is cut. Every
/// write acknowledged by any handle is there after the cut, under every crash model, and nothing
/// else is but the dead handle's last, unacknowledged one. Each key is written once with its own
/// value, so that "there" is exact.
#[test]
fn a_handle_killed_mid_operation_then_a_power_cut_loses_nothing_acknowledged() {
    let mut images = 0;
    for seed in seeds() {
        let mut rng = crate::testing::rng::Rng::new(seed);
        let vfs = SimVfs::new();
        let handles = [open(&vfs).expect("open"), open(&vfs).expect("open")];
        let mut acked = Model::new();
        let mut next = 0u32;
        let mut op = |db: &crate::Db, rng: &mut crate::testing::rng::Rng, acked: &mut Model| {
            let kind = rng.below(6);
            let mut keys = Vec::new();
            let result = match kind {
                0 => db.compact(),
                1 => {
                    let mut batch = Batch::new();
                    for _ in 0..3 {
                        next += 1;
                        keys.push(next);
                        batch.put(format!("k{next:04}"), format!("v{next}"));
                    }
                    db.write(batch)
                }
                2 => {
                    next += 1;
                    keys.push(next);
                    let n = next;
                    db.transaction(|tx| tx.put(format!("k{n:04}"), format!("v{n}")))
                }
                _ => {
                    next += 1;
                    keys.push(next);
                    db.put(format!("k{next:04}"), format!("v{next}"))
                }
            };
            if result.is_ok() {
                for n in &keys {
                    acked.insert(
                        format!("k{n:04}").into_bytes(),
                        format!("v{n}").into_bytes(),
                    );
                }
            }
            (result.is_ok(), keys)
        };
        // Both handles work for a while; then the first dies at a random step of its next few
        // operations, and a survivor works on.
        for _ in 0..rng.below(12) {
            let who = rng.below(2) as usize;
            op(&handles[who], &mut rng, &mut acked);
        }
        // A kill can land inside a write, leaving part of it in the file.
        let death = [
            Fault::Eio,
            Fault::ShortWrite(Kept::FirstByte),
            Fault::ShortWrite(Kept::AllButLast),
        ][rng.below(3) as usize];
        vfs.inject(vfs.ops() + rng.below(40), death, true);
        let mut in_flight = Vec::new();
        for _ in 0..4 {
            let (ok, keys) = op(&handles[0], &mut rng, &mut acked);
            if !ok {
                in_flight = keys;
                break;
            }
        }
        vfs.clear_faults();
        // Sometimes a third process opens the store and dies in the middle of its recovery
        // (repairing the dead one's torn tail, clearing its leftovers).
        if rng.below(3) == 0 {
            vfs.inject(vfs.ops() + rng.below(12), Fault::Eio, true);
            let _ = open(&vfs);
            vfs.clear_faults();
        }
        // The survivor is the other handle, or a process that opens the store only now and
        // must recover whatever the dead ones left half done.
        let fresh;
        let survivor = if rng.below(2) == 0 {
            &handles[1]
        } else {
            fresh = open(&vfs).unwrap_or_else(|e| panic!("SIM_SEED={seed}: no open: {e}"));
            &fresh
        };
        for _ in 0..1 + rng.below(8) {
            let (ok, _) = op(survivor, &mut rng, &mut acked);
            assert!(ok, "SIM_SEED={seed}: the surviving handle failed");
        }
        let unknown: Vec<Vec<u8>> = in_flight
            .iter()
            .map(|n| format!("k{n:04}").into_bytes())
            .collect();
        let mut crashes: Vec<(String, SimVfs)> = CrashModel::ALL
            .into_iter()
            .map(|m| (format!("{m:?}"), vfs.crash(seed, m)))
            .collect();
        crashes.push(("nothing unsynced kept".into(), vfs.crash_keeping(0)));
        for (model, image) in crashes {
            let what = format!("SIM_SEED={seed}, {model}");
            let db = open(&image).unwrap_or_else(|e| panic!("{what}: no reopen: {e}"));
            let mut recovered = dump(&db);
            for (k, v) in &acked {
                assert_eq!(recovered.remove(k).as_ref(), Some(v), "{what}: lost {k:?}");
            }
            for k in recovered.keys() {
                assert!(unknown.contains(k), "{what}: {k:?} was never acknowledged");
            }
            images += 1;
        }
    }
    eprintln!("{images} crash images after a handle was killed mid-operation");
}

/// A failed directory sync before appending to another process's new log poisons the handle, as
/// a failed `fdatasync` does: a retry might report success with the name still not durable.
#[test]
fn a_failed_directory_sync_before_following_into_a_new_log_poisons_the_handle() {
    let setup = |vfs: &SimVfs| {
        let compacting = open(vfs).expect("open");
        let follower = open(vfs).expect("open a second handle");
        compacting.put("a", "1").expect("put");
        compacting.compact().expect("compact");
        follower
    };
    let dry = SimVfs::new();
    let follower = setup(&dry);
    let before = dry.ops();
    follower.put("b", "2").expect("put");
    let steps = dry.ops() - before;
    let mut hit = 0;
    for at in 0..steps {
        let vfs = SimVfs::new();
        let follower = setup(&vfs);
        vfs.inject(vfs.ops() + at, Fault::Eio, false);
        let Err(e) = follower.put("b", "2") else {
            continue;
        };
        if !e.to_string().contains("sync the directory of") {
            continue;
        }
        hit += 1;
        assert!(
            matches!(follower.put("c", "3"), Err(crate::Error::Poisoned { .. })),
            "step {at}: the handle went on after a failed directory sync"
        );
    }
    assert_eq!(
        hit, 1,
        "the follower's directory sync is one of its {steps} steps"
    );
}

/// A power cut at every mutating operation of a repair: the store either still refuses to open
/// (and a repair run then salvages it), or opens with exactly the salvaged state. Never a store
/// that opens with less, or one that neither opens nor repairs.
#[test]
fn a_power_cut_at_any_step_of_a_repair_leaves_the_damage_or_the_salvage() {
    let vfs = SimVfs::new();
    let mut expected = Model::new();
    {
        let db = open(&vfs).expect("open");
        for i in 0..10 {
            let (key, value) = (format!("k{i:02}"), format!("value {i}"));
            db.put(&key, &value).expect("put");
            if i != 4 {
                expected.insert(key.into_bytes(), value.into_bytes());
            }
        }
    }
    let log = std::path::Path::new("/store/wal-0000000000000000");
    vfs.damage(log, |bytes| {
        let at = bytes
            .windows(7)
            .position(|w| w == b"value 4")
            .expect("the record is in the log");
        bytes[at + 2] ^= 0x01;
    });
    let damaged = vfs.crash_keeping(u64::MAX);
    assert!(matches!(
        open(&damaged),
        Err(crate::Error::Corruption { .. })
    ));
    let repair = |image: &SimVfs| {
        Options::new()
            .vfs(std::sync::Arc::new(image.clone()))
            .repair(std::path::Path::new("/store"))
    };
    let dry = damaged.crash_keeping(u64::MAX);
    let before = dry.ops();
    repair(&dry).expect("repair");
    let steps = dry.ops() - before;
    // Sequence numbers go on after the damaged history, never back over it.
    let next_sequence = open(&dry)
        .expect("open")
        .stats()
        .expect("stats")
        .next_sequence;
    assert!(next_sequence > 10, "{next_sequence}");
    let check = |db: &crate::Db, what: &str| {
        assert_eq!(dump(db), expected, "{what}");
        assert_eq!(
            db.stats().expect("stats").next_sequence,
            next_sequence,
            "{what}: sequence numbers"
        );
    };
    assert!(steps > 5, "{steps} operations");

    for step in 0..=steps {
        let image = damaged.crash_keeping(u64::MAX);
        image.freeze_after(image.ops() + step);
        let _ = repair(&image);
        for (kept, after) in [
            ("synced", image.crash_keeping(0)),
            ("all", image.crash_keeping(u64::MAX)),
        ] {
            let what = format!("power cut at repair step {step}, {kept} writes kept");
            match open(&after) {
                Ok(db) => check(&db, &what),
                Err(crate::Error::Corruption { .. }) => {
                    repair(&after).unwrap_or_else(|e| panic!("{what}: repair again: {e}"));
                    let db = open(&after).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                    check(&db, &format!("{what}: after a second repair"));
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
}
