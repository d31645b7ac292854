//! Read snapshots through the public API: a snapshot (and every iterator, which reads from one)
//! sees the store as of one commit while writers in this process and others go on, flush and
//! compact; transactions scan their own writes over the committed state.
//!
//! The test binary re-executes itself for the multi-process tests: with `STURDYKV_SNAPSHOT_ROLE`
//! set, the `child` test below plays that role instead of testing.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

mod common;

use common::{Contents, collect, files};
use proptest::prelude::*;
use sturdykv::{Batch, Db, Options, Snapshot};

const ROLE_ENV: &str = "STURDYKV_SNAPSHOT_ROLE";

/// Options under which a process flushes and compacts in the background all the time.
fn small_options() -> Options {
    Options::new()
        .memtable_bytes(64 << 10)
        .partition_bytes(16 << 10)
        .max_runs(3)
}

fn spawn(role: &str, args: &[String]) -> Child {
    common::spawn_child(ROLE_ENV, role, args)
}

/// Reads the child's stdout until a line `@<word>` appears.
fn wait_for(child: &mut Child, word: &str) {
    use std::io::BufRead;
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = std::io::BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child output");
        assert!(n > 0, "the child ended before printing @{word}");
        if line.trim_end().ends_with(&format!("@{word}")) {
            return;
        }
    }
}

fn finish(child: Child) {
    let out = child.wait_with_output().expect("wait for child");
    assert!(out.status.success(), "child failed: {:?}", out.status);
}

/// The whole store as `snapshot` sees it, in key order, checked against its reverse scan and
/// its point reads.
fn contents(snapshot: &Snapshot) -> Contents {
    let forward: Contents = collect(snapshot.iter()).into_iter().collect();
    let mut backward = collect(snapshot.iter().rev());
    backward.reverse();
    assert_eq!(
        backward,
        forward.clone().into_iter().collect::<Vec<_>>(),
        "the reverse scan differs"
    );
    for (key, value) in forward.iter().step_by(7) {
        assert_eq!(snapshot.get(key).expect("get").as_deref(), Some(&value[..]));
    }
    forward
}

/// The batches of the scripted writer: batch `i` sets `marker` to `i + 1` and writes or deletes
/// a few of 200 keys, so that a snapshot's `marker` names the model state it must equal.
fn scripted_batch(seed: u64, i: u32) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut x = seed ^ (u64::from(i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ops = vec![(b"marker".to_vec(), Some((i + 1).to_string().into_bytes()))];
    for _ in 0..1 + next() % 12 {
        let r = next();
        let key = format!("k{:03}", r % 200).into_bytes();
        let value = (!r.is_multiple_of(5)).then(|| format!("{i}:{r:x}").repeat(4).into_bytes());
        ops.push((key, value));
    }
    ops
}

/// The model after each number of scripted batches over `initial`.
fn scripted_states(initial: &Contents, seed: u64, batches: u32) -> Vec<Contents> {
    let mut states = vec![initial.clone()];
    let mut model = initial.clone();
    for i in 0..batches {
        for (key, value) in scripted_batch(seed, i) {
            match value {
                Some(value) => model.insert(key, value),
                None => model.remove(&key),
            };
        }
        states.push(model.clone());
    }
    states
}

fn write_scripted(db: &Db, seed: u64, i: u32) {
    let mut batch = Batch::new();
    for (key, value) in scripted_batch(seed, i) {
        match value {
            Some(value) => batch.put(key, value),
            None => batch.delete(key),
        };
    }
    db.write(batch).expect("write");
}

/// 20,000 accounts, one of them holding the token.
const ACCOUNTS: u32 = 20_000;

fn account(i: u32) -> String {
    format!("acct/{i:05}")
}

fn seed_accounts(db: &Db) {
    let mut batch = Batch::new();
    for i in 0..ACCOUNTS {
        batch.put(account(i), if i == 0 { "token" } else { "-" });
    }
    db.write(batch).expect("seed");
}

/// Moves the token between far-apart accounts, one atomic batch per move.
fn move_token(db: &Db, moves: u32) {
    let mut at = (0..ACCOUNTS)
        .find(|&i| db.get(account(i)).expect("get").as_deref() == Some(&b"token"[..]))
        .expect("the token is somewhere");
    for m in 0..moves {
        let to = (at + ACCOUNTS / 2 + m * 7919) % ACCOUNTS;
        let to = if to == at { (to + 1) % ACCOUNTS } else { to };
        let mut batch = Batch::new();
        batch.put(account(at), "-").put(account(to), "token");
        db.write(batch).expect("move");
        at = to;
    }
}

fn tokens(
    iter: impl Iterator<Item = sturdykv::Result<(sturdykv::Bytes, sturdykv::Bytes)>>,
) -> usize {
    iter.map(|e| e.expect("scan"))
        .filter(|(_, v)| &v[..] == b"token")
        .count()
}

/// The roles a child process can play.
#[test]
fn child() {
    let Ok(spec) = std::env::var(ROLE_ENV) else {
        return; // not a child: nothing to do
    };
    let args: Vec<&str> = spec.split_whitespace().collect();
    let num = |i: usize| -> u64 { args[i].parse().expect("number argument") };
    let dir = Path::new(args[1]);
    match args[0] {
        // `script DIR SEED N`: the scripted batches, flushing and compacting all the time.
        "script" => {
            let db = small_options().open(dir).expect("open");
            let (seed, n) = (num(2), num(3) as u32);
            for i in 0..n {
                write_scripted(&db, seed, i);
                if i % 97 == 96 {
                    db.compact().expect("compact");
                }
            }
        }
        // `mover DIR MOVES`
        "mover" => {
            let db = small_options().open(dir).expect("open");
            move_token(&db, num(2) as u32);
        }
        // `hold DIR`: takes a snapshot and an iterator half read, then waits to be killed.
        "hold" => {
            let db = small_options().open(dir).expect("open");
            let snapshot = db.snapshot().expect("snapshot");
            let mut iter = db.iter();
            iter.next().expect("an entry").expect("read");
            println!("@ready");
            loop {
                std::thread::sleep(Duration::from_millis(50));
                assert!(snapshot.first().expect("read").is_some());
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_snapshot_reads_one_state_while_writes_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    db.put("a", "1").expect("put");
    db.put("b", "1").expect("put");
    db.put("c", "1").expect("put");
    let snapshot = db.snapshot().expect("snapshot");
    let at = snapshot.sequence();
    db.put("a", "2").expect("put");
    db.delete("b").expect("delete");
    db.put("d", "2").expect("put");
    db.put("0", "2").expect("put");

    let read = |s: &Snapshot, k: &str| s.get(k).expect("get").map(|v| v.to_vec());
    assert_eq!(read(&snapshot, "a").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(&snapshot, "b").as_deref(), Some(&b"1"[..]));
    assert_eq!(read(&snapshot, "d"), None);
    assert!(!snapshot.contains_key("0").expect("contains"));
    fn keys(
        iter: impl Iterator<Item = sturdykv::Result<(sturdykv::Bytes, sturdykv::Bytes)>>,
    ) -> Vec<String> {
        common::keys(iter)
    }
    assert_eq!(keys(snapshot.iter()), ["a", "b", "c"]);
    assert_eq!(keys(snapshot.iter().rev()), ["c", "b", "a"]);
    assert_eq!(keys(snapshot.range("b"..)), ["b", "c"]);
    assert_eq!(keys(snapshot.prefix("a")), ["a"]);
    assert_eq!(
        snapshot.first().expect("first").map(|(k, _)| k.to_vec()),
        Some(b"a".to_vec())
    );
    assert_eq!(
        snapshot.last().expect("last").map(|(k, _)| k.to_vec()),
        Some(b"c".to_vec())
    );
    assert_eq!(snapshot.sequence(), at, "a snapshot does not move");
    assert_eq!(keys(db.iter()), ["0", "a", "c", "d"]);
    assert_eq!(
        db.last().expect("last").map(|(k, _)| k.to_vec()),
        Some(b"d".to_vec())
    );

    // A clone is the same snapshot; threads may read it together.
    let clone = snapshot.clone();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| assert_eq!(keys(clone.iter()), ["a", "b", "c"]));
        }
    });
    let later = db.snapshot().expect("snapshot");
    assert!(later.sequence() > at);
    assert_eq!(keys(later.iter()), ["0", "a", "c", "d"]);
}

/// An iterator reads from a snapshot taken when it is made: writes during the scan (here, in
/// the middle of it) are not seen, whichever end it reads from.
#[test]
fn an_iterator_is_point_in_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let mut batch = Batch::new();
    for i in 0..5000 {
        batch.put(format!("k{i:05}"), "old");
    }
    db.write(batch).expect("seed");
    let mut iter = db.iter();
    let mut seen = vec![iter.next().expect("first").expect("read")];
    db.put("k00000a", "new").expect("put");
    db.put("k04999", "new").expect("put");
    db.delete("k02500").expect("delete");
    db.flush_memtable().expect("flush");
    db.compact().expect("compact");
    seen.extend(iter.map(|e| e.expect("read")));
    assert_eq!(seen.len(), 5000);
    assert!(seen.iter().all(|(_, v)| &v[..] == b"old"));
}

/// A snapshot held across flushes and compactions in its own process reads what it read
/// before; the memory and disk it holds are reported, and freed once it is dropped.
#[test]
fn a_snapshot_survives_flushes_and_compactions_and_reports_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .background_compaction(false)
        .open(dir.path())
        .expect("open");
    let initial = {
        let mut batch = Batch::new();
        for i in 0..300u32 {
            batch.put(format!("k{:03}", i % 200), format!("initial {i}"));
        }
        db.write(batch).expect("seed");
        db.flush_memtable().expect("flush");
        common::dump(&db)
    };
    let states = scripted_states(&initial, 7, 300);
    let mut held: Vec<(usize, Snapshot)> = vec![(0, db.snapshot().expect("snapshot"))];
    for i in 0..300u32 {
        write_scripted(&db, 7, i);
        match i % 50 {
            10 => {
                db.flush_memtable().expect("flush");
            }
            20 => db.compact().expect("compact"),
            30 | 45 => held.push((i as usize + 1, db.snapshot().expect("snapshot"))),
            _ => {}
        }
        if i % 25 == 0 {
            for (state, snapshot) in &held {
                assert_eq!(contents(snapshot), states[*state], "after batch {i}");
            }
        }
    }
    let stats = db.stats().expect("stats").snapshots;
    assert_eq!(stats.open, held.len() as u64);
    assert_eq!(stats.oldest_sequence, Some(held[0].1.sequence()));
    assert!(stats.memory_bytes > 0, "{stats:?}");
    assert!(
        stats.disk_bytes > 0,
        "compacted-away files are held: {stats:?}"
    );
    for (state, snapshot) in &held {
        assert_eq!(contents(snapshot), states[*state]);
    }
    drop(held);
    let stats = db.stats().expect("stats").snapshots;
    assert_eq!(
        (stats.open, stats.memory_bytes, stats.disk_bytes),
        (0, 0, 0)
    );
    assert_eq!(common::dump(&db), states[300]);
}

/// What a long-held snapshot keeps stays bounded by the memtables in memory when it was taken,
/// however much is written meanwhile: later memtables know nothing of it.
#[test]
fn a_long_held_snapshot_keeps_a_bounded_amount_of_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = small_options().open(dir.path()).expect("open");
    db.put("hot", "before").expect("put");
    let snapshot = db.snapshot().expect("snapshot");
    let value = vec![b'x'; 200];
    let mut most = 0;
    // 16 MB of writes to 500 keys: 250 times the memtable's bound.
    for round in 0..80u32 {
        let mut batch = Batch::new();
        for i in 0..1000u32 {
            batch.put(format!("k{:03}", (i * 7 + round) % 500), &value);
        }
        batch.put("hot", round.to_string());
        db.write(batch).expect("write");
        let held = db.stats().expect("stats").snapshots;
        most = most.max(held.memory_bytes);
    }
    assert!(
        most < 1 << 20,
        "a snapshot over a 64 KiB memtable held {most} bytes of memory"
    );
    assert_eq!(
        snapshot.get("hot").expect("get").as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(common::keys(snapshot.iter()), ["hot"]);
}

/// Snapshots taken in this process while another process writes, flushes and compacts (all the
/// time) each equal the model state their `marker` names, however long they are held; and
/// their sequence numbers order as the states do.
#[test]
fn snapshots_match_the_model_while_another_process_writes_flushes_and_compacts() {
    const SEED: u64 = 0x5EED;
    const BATCHES: u32 = 1500;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = small_options().open(dir.path()).expect("open");
    db.put("marker", "0").expect("put");
    let initial = common::dump(&db);
    let states = scripted_states(&initial, SEED, BATCHES);
    let child = spawn(
        "script",
        &[
            dir.path().display().to_string(),
            SEED.to_string(),
            BATCHES.to_string(),
        ],
    );
    let marker = |s: &Snapshot| -> usize {
        let m = s.get("marker").expect("get").expect("marker");
        String::from_utf8_lossy(&m).parse().expect("number")
    };
    let mut held: Vec<(usize, Snapshot)> = Vec::new();
    let mut checks = 0;
    let mut held_across_replacement = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "the writer never finished");
        let snapshot = db.snapshot().expect("snapshot");
        let m = marker(&snapshot);
        if let Some((last, previous)) = held.last() {
            assert!(m >= *last && snapshot.sequence() >= previous.sequence());
        }
        held.push((m, snapshot));
        if held.len() > 6 {
            held.remove(checks % 5);
        }
        for (state, snapshot) in &held {
            assert_eq!(contents(snapshot), states[*state], "as of marker {state}");
            checks += 1;
        }
        held_across_replacement |= db.stats().expect("stats").snapshots.disk_bytes > 0;
        if m == BATCHES as usize {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    finish(child);
    for (state, snapshot) in &held {
        assert_eq!(contents(snapshot), states[*state]);
    }
    assert!(
        held_across_replacement,
        "some snapshot was held while the other process replaced its files"
    );
    assert!(checks > 20, "only {checks} checks");
}

/// The measurement behind read snapshots: a scan while another process (or thread) moves a
/// token between far-apart keys in atomic batches sees exactly one token, every time.
#[test]
fn a_scan_sees_one_token_while_another_process_moves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = small_options().open(dir.path()).expect("open");
    seed_accounts(&db);
    let child = spawn("mover", &[dir.path().display().to_string(), "3000".into()]);
    let mut scans = 0;
    let mut child = Some(child);
    while let Some(running) = child.as_mut() {
        let done = running.try_wait().expect("poll child").is_some();
        assert_eq!(tokens(db.iter()), 1, "scan {scans}");
        assert_eq!(tokens(db.prefix("acct/").rev()), 1, "scan {scans}");
        scans += 2;
        if done {
            finish(child.take().expect("child"));
        }
    }
    std::thread::scope(|s| {
        let mover = s.spawn(|| move_token(&db, 2000));
        while !mover.is_finished() {
            assert_eq!(tokens(db.iter()), 1);
            scans += 1;
        }
    });
    assert!(scans > 4, "{scans} scans");
}

/// A process killed while it holds a snapshot and an iterator leaves nothing behind: the
/// others flush, compact and clean up as if it had never been there (and while it lived, it
/// blocked none of that either).
#[test]
fn a_snapshot_in_a_killed_process_blocks_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .background_compaction(false)
        .open(dir.path())
        .expect("open");
    seed_accounts(&db);
    db.compact().expect("compact");
    let mut child = spawn("hold", &[dir.path().display().to_string()]);
    wait_for(&mut child, "ready");
    move_token(&db, 500);
    db.compact()
        .expect("compact while the other process holds a snapshot");
    child.kill().expect("kill");
    child.wait().expect("reap");
    move_token(&db, 500);
    db.compact().expect("compact after the kill");
    // Only what the manifest names is left (and the locks).
    let stats = db.stats().expect("stats");
    let mut expected: Vec<String> = stats
        .runs
        .iter()
        .chain(&stats.partitions)
        .map(|f| {
            f.path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    expected.push(format!("MANIFEST-{:016x}", stats.manifest));
    expected.push(format!("wal-{:016x}", stats.generation));
    let left: Vec<String> = files(dir.path())
        .into_iter()
        .filter(|n| !n.starts_with("LOCK"))
        .collect();
    expected.sort();
    assert_eq!(left, expected);
    drop(db);
    let db = Db::open(dir.path()).expect("reopen");
    assert_eq!(tokens(db.iter()), 1);
}

#[test]
fn transactions_scan_their_own_writes_over_the_committed_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    for (k, v) in [("cart/1", "apple"), ("cart/2", "pear"), ("cart/3", "fig")] {
        db.put(k, v).expect("put");
    }
    db.put("other", "x").expect("put");
    // Move every item of the cart to an order, renumbered: a read-modify-write over a range.
    let moved = db
        .transaction(|tx| {
            tx.put("cart/0", "plum")?;
            tx.delete("cart/2")?;
            let items: Vec<_> = tx.prefix("cart/").collect::<Result<_, _>>()?;
            let names: Vec<&[u8]> = items.iter().map(|(_, v)| &v[..]).collect();
            assert_eq!(names, [&b"plum"[..], b"apple", b"fig"]);
            let backwards: Vec<_> = tx
                .range("cart/1"..="other")
                .rev()
                .map(|e| e.map(|(k, _)| k.to_vec()))
                .collect::<Result<_, _>>()?;
            assert_eq!(backwards, [&b"other"[..], b"cart/3", b"cart/1"]);
            assert_eq!(tx.iter().count(), 4);
            for (n, (key, value)) in items.iter().enumerate() {
                tx.delete(key)?;
                tx.put(format!("order/{n}"), value)?;
            }
            assert_eq!(tx.prefix("cart/").count(), 0);
            Ok::<_, sturdykv::Error>(items.len())
        })
        .expect("transaction");
    assert_eq!(moved, 3);
    assert_eq!(
        common::keys(db.iter()),
        ["order/0", "order/1", "order/2", "other"]
    );
    // An empty range in a transaction is empty, not a panic.
    db.transaction(|tx| {
        assert_eq!(tx.range("b".."a").count(), 0);
        Ok::<_, sturdykv::Error>(())
    })
    .expect("transaction");
}

#[cfg(feature = "serde")]
#[test]
fn typed_views_read_snapshots_and_work_inside_transactions() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq, Clone)]
    struct Item {
        name: String,
        qty: u32,
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let items = db.typed::<u32, Item>("items/");
    for (id, name) in [(1, "bolt"), (2, "nut"), (10, "gear")] {
        items
            .put(
                &id,
                &Item {
                    name: name.into(),
                    qty: id,
                },
            )
            .expect("put");
    }
    let before = db.snapshot().expect("snapshot");
    // Renumber every item inside one transaction, through the typed view.
    db.transaction(|tx| {
        let mut view = tx.typed::<u32, Item>("items/");
        let all: Vec<(u32, Item)> = view.iter().collect::<Result<_, _>>()?;
        for (id, item) in all {
            view.delete(&id)?;
            view.put(&(id + 100), &item)?;
        }
        assert_eq!(view.get(&101)?.map(|i| i.name), Some("bolt".into()));
        assert!(!view.contains_key(&1)?);
        let ids: Vec<u32> = view
            .range(100..)
            .map(|e| e.map(|(id, _)| id))
            .collect::<Result<_, _>>()?;
        assert_eq!(ids, [101, 102, 110]);
        Ok::<_, sturdykv::Error>(())
    })
    .expect("transaction");
    let ids = |it: Box<dyn DoubleEndedIterator<Item = sturdykv::Result<(u32, Item)>>>| -> Vec<u32> {
        it.map(|e| e.expect("read").0).collect()
    };
    let old = before.typed::<u32, Item>("items/");
    assert_eq!(ids(Box::new(old.iter())), [1, 2, 10]);
    assert_eq!(old.get(&10).expect("get").map(|i| i.qty), Some(10));
    assert_eq!(ids(Box::new(items.at(&before).range(2..).rev())), [10, 2]);
    assert_eq!(ids(Box::new(items.iter())), [101, 102, 110]);
}

/// Scans inside transactions are serializable across processes: transactions in two processes
/// each move an item between two lists only if a scan finds it; no item is ever lost or doubled.
#[test]
fn transaction_scans_are_serializable_across_handles() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = small_options().open(dir.path()).expect("open");
    let b = small_options().open(dir.path()).expect("open");
    for i in 0..20 {
        a.put(format!("left/{i:02}"), i.to_string()).expect("put");
    }
    std::thread::scope(|s| {
        for (db, from, to) in [(&a, "left/", "right/"), (&b, "right/", "left/")] {
            s.spawn(move || {
                for _ in 0..200 {
                    db.transaction(|tx| {
                        if let Some(entry) = tx.prefix(from).next() {
                            let (key, value) = entry?;
                            tx.delete(&key)?;
                            tx.put(
                                format!("{to}{}", &String::from_utf8_lossy(&key)[from.len()..]),
                                value,
                            )?;
                        }
                        let total = tx.prefix("left/").count() + tx.prefix("right/").count();
                        assert_eq!(total, 20, "inside a transaction");
                        Ok::<_, sturdykv::Error>(())
                    })
                    .expect("transaction");
                }
            });
        }
    });
    let all: BTreeMap<String, String> = collect(a.iter())
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k).expect("utf-8"),
                String::from_utf8(v).expect("utf-8"),
            )
        })
        .collect();
    assert_eq!(all.len(), 20);
    let mut values: Vec<u32> = all.values().map(|v| v.parse().expect("number")).collect();
    values.sort();
    assert_eq!(values, (0..20).collect::<Vec<_>>());
}

#[derive(Clone, Debug)]
enum Op {
    Put(u8, u8),
    Delete(u8),
    Batch(Vec<(u8, Option<u8>)>),
    /// Through a second handle on the store (as another process would).
    OtherPut(u8, u8),
    Flush,
    Compact,
    OtherFlush,
    OtherCompact,
    Take,
    Drop(usize),
    Check(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => any::<u8>().prop_map(Op::Delete),
        3 => proptest::collection::vec((any::<u8>(), proptest::option::of(any::<u8>())), 1..6)
            .prop_map(Op::Batch),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(k, v)| Op::OtherPut(k, v)),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::OtherFlush),
        1 => Just(Op::OtherCompact),
        3 => Just(Op::Take),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => any::<usize>().prop_map(Op::Check),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{:02}", k % 24).into_bytes()
}

fn value(v: u8) -> Vec<u8> {
    vec![v; 1 + v as usize % 40]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Readers hold snapshots while two handles write, flush and compact: every read through a
    /// snapshot equals the model's state at the snapshot's sequence number.
    #[test]
    fn snapshots_equal_the_model_at_their_sequence_number(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || Options::new().background_compaction(false).open(dir.path()).expect("open");
        let (db, other) = (open(), open());
        let mut model = Contents::new();
        // The model after every commit, by the sequence number after it.
        let mut states: BTreeMap<u64, Contents> = BTreeMap::new();
        states.insert(db.snapshot().expect("snapshot").sequence(), model.clone());
        let mut held: Vec<Snapshot> = Vec::new();
        for op in ops {
            let mut wrote = true;
            match op.clone() {
                Op::Put(k, v) => db.put(key(k), value(v)).expect("put"),
                Op::Delete(k) => db.delete(key(k)).expect("delete"),
                Op::OtherPut(k, v) => other.put(key(k), value(v)).expect("put"),
                Op::Batch(ops) => {
                    let mut batch = Batch::new();
                    for (k, v) in &ops {
                        match v {
                            Some(v) => batch.put(key(*k), value(*v)),
                            None => batch.delete(key(*k)),
                        };
                    }
                    db.write(batch).expect("write");
                }
                Op::Flush => { db.flush_memtable().expect("flush"); wrote = false; }
                Op::Compact => { db.compact().expect("compact"); wrote = false; }
                Op::OtherFlush => { other.flush_memtable().expect("flush"); wrote = false; }
                Op::OtherCompact => { other.compact().expect("compact"); wrote = false; }
                Op::Take => { held.push(db.snapshot().expect("snapshot")); wrote = false; }
                Op::Drop(i) => {
                    if !held.is_empty() { held.remove(i % held.len()); }
                    wrote = false;
                }
                Op::Check(i) => {
                    if !held.is_empty() {
                        let snapshot = &held[i % held.len()];
                        let expected = &states[&snapshot.sequence()];
                        prop_assert_eq!(&contents(snapshot), expected);
                        for k in 0..24u8 {
                            let got = snapshot.get(key(k)).expect("get").map(|v| v.to_vec());
                            prop_assert_eq!(got.as_ref(), expected.get(&key(k)));
                        }
                    }
                    wrote = false;
                }
            }
            if wrote {
                match op {
                    Op::Put(k, v) | Op::OtherPut(k, v) => { model.insert(key(k), value(v)); }
                    Op::Delete(k) => { model.remove(&key(k)); }
                    Op::Batch(ops) => for (k, v) in ops {
                        match v {
                            Some(v) => model.insert(key(k), value(v)),
                            None => model.remove(&key(k)),
                        };
                    },
                    _ => {}
                }
            }
            // Flushes and compactions change no state (whether or not they commit a record).
            let at = db.snapshot().expect("snapshot").sequence();
            states.insert(at, model.clone());
        }
        for snapshot in &held {
            prop_assert_eq!(&contents(snapshot), &states[&snapshot.sequence()]);
        }
    }
}
