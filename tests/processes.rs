//! Several real processes on one store. The test binary re-executes itself: with
//! `STURDYKV_PROCESS_ROLE` set, the `child` test below plays that role instead of testing.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use sturdykv::{Batch, Db, Error};

mod common;

const ROLE_ENV: &str = "STURDYKV_PROCESS_ROLE";

fn spawn(role: &str, args: &[String]) -> Child {
    common::spawn_child(ROLE_ENV, role, args)
}

/// Waits for a child and returns what it printed after `@` on each line (the test harness prints
/// its own text too, and `test child ... ` may precede the first line).
fn finish(child: Child) -> Vec<String> {
    let out = child.wait_with_output().expect("wait for child");
    assert!(out.status.success(), "child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('@').map(|(_, rest)| rest.to_owned()))
        .collect()
}

fn value_of(writer: u32, i: u32) -> String {
    format!("value of writer {writer} write {i} ").repeat(1 + (i % 5) as usize)
}

fn parse_u64(v: Option<sturdykv::Bytes>) -> u64 {
    v.map_or(0, |v| {
        String::from_utf8_lossy(&v)
            .parse()
            .expect("counter is a number")
    })
}

/// The roles a child process can play.
#[test]
fn child() {
    let Ok(spec) = std::env::var(ROLE_ENV) else {
        return; // not a child: nothing to do
    };
    let mut args: Vec<&str> = spec.split_whitespace().collect();
    // `small-<role>`: the role with a tiny memtable and partitions, so that the process flushes
    // and compacts in the background all the time.
    let small = args[0].starts_with("small-");
    if small {
        args[0] = &args[0][6..];
    }
    let num = |i: usize| -> u32 { args[i].parse().expect("number argument") };
    let db = if small {
        small_options().open(args[1])
    } else {
        Db::open(args[1])
    }
    .expect("child opens the store");
    match args[0] {
        // `counter DIR M`: M transactional increments of one counter.
        "counter" => {
            for _ in 0..num(2) {
                db.transaction(|tx| {
                    let n = parse_u64(tx.get("counter")?);
                    tx.put("counter", (n + 1).to_string())
                })
                .expect("increment");
            }
        }
        // `writer DIR ID M COMPACT_EVERY`: M puts of its own keys, compacting now and then.
        "writer" => {
            let (id, m, every) = (num(2), num(3), num(4));
            for i in 0..m {
                db.put(format!("w{id}/{i:06}"), value_of(id, i))
                    .expect("put");
                println!("@ack {id} {i}");
                if every > 0 && i % every == every - 1 {
                    db.compact().expect("compact");
                }
            }
        }
        // `reader DIR WRITERS M`: until `done` appears, checks that every visible key has its
        // right value and that nothing once seen disappears; then that every write is there.
        "reader" => {
            let (writers, m) = (num(2), num(3));
            let mut seen = 0u64;
            let mut rounds = 0u64;
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                assert!(Instant::now() < deadline, "`done` never came");
                let done = db.get("done").expect("get").is_some();
                let mut count = 0u64;
                for entry in db.prefix("w") {
                    let (key, value) = entry.expect("scan");
                    let key = String::from_utf8_lossy(&key).into_owned();
                    let (w, i) = key[1..].split_once('/').expect("key shape");
                    let (w, i): (u32, u32) = (w.parse().expect("w"), i.parse().expect("i"));
                    assert_eq!(&value[..], value_of(w, i).as_bytes(), "{key}");
                    count += 1;
                }
                assert!(count >= seen, "a key disappeared: {count} < {seen}");
                seen = count;
                rounds += 1;
                if done {
                    assert_eq!(count, u64::from(writers * m), "every write is visible");
                    for w in 0..writers {
                        for i in 0..m {
                            let got = db.get(format!("w{w}/{i:06}")).expect("get");
                            assert_eq!(got.as_deref(), Some(value_of(w, i).as_bytes()));
                        }
                    }
                    println!("@ok {rounds}");
                    break;
                }
            }
        }
        // `victim DIR`: appends huge batches forever (to be killed in the middle of one).
        "victim" => {
            let big = vec![b'x'; 16 << 20];
            for i in 0u64.. {
                let mut batch = Batch::new();
                batch.put(format!("victim/{i}/a"), &big);
                batch.put(format!("victim/{i}/b"), "small");
                println!("@appending {i}");
                db.write(batch).expect("victim write");
                println!("@acked {i}");
            }
        }
        // `torn DIR`: does what a writer killed in the middle of an append leaves behind: holding
        // LOCK, writes the first bytes of a record at the end of the newest log (format: see
        // docs/FORMAT.md), then hangs there until it is killed.
        "torn" => {
            let dir = Path::new(args[1]);
            let lock = std::fs::File::open(dir.join("LOCK")).expect("open LOCK");
            lock.lock().expect("flock LOCK");
            let newest = std::fs::read_dir(dir)
                .expect("list")
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("wal-") && !n.ends_with(".tmp"))
                .max()
                .expect("a log");
            let path = dir.join(newest);
            let bytes = std::fs::read(&path).expect("read log");
            let mut end = 40;
            while end + 8 <= bytes.len() {
                let len = u32::from_le_bytes(bytes[end..end + 4].try_into().expect("4 bytes"));
                if len == 0 {
                    break;
                }
                end += 8 + len as usize;
            }
            let mut torn = 4096u32.to_le_bytes().to_vec();
            torn.extend([0xAB; 100]);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open log");
            std::os::unix::fs::FileExt::write_all_at(&file, &torn, end as u64).expect("write");
            println!("@torn {end}");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        // `survivor DIR ID`: small writes until `stop/ID` appears, then reports how many torn
        // tails it cut off.
        "survivor" => {
            let id = num(2);
            for i in 0.. {
                if db.get(format!("stop/{id}")).expect("get").is_some() {
                    break;
                }
                db.put(format!("survivor{id}/{i:06}"), value_of(id, i))
                    .expect("put");
                println!("@ack {id} {i}");
            }
            let stats = db.stats().expect("stats");
            println!("@repaired {}", stats.torn_tails_repaired);
        }
        // `watcher DIR WRITERS M`: watches `w`, says it is ready, then checks that the writers'
        // M puts each arrive exactly once, in order, with their values, and that sequence
        // numbers increase.
        "watcher" => {
            let (writers, m) = (num(2), num(3));
            let watcher = db.watch_prefix("w").expect("watch");
            println!("@ready");
            let mut next = vec![0u32; writers as usize];
            let mut last_sequence = None;
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut watcher = watcher;
            while next.iter().any(|&i| i < m) {
                let left = deadline.saturating_duration_since(Instant::now());
                let commit = watcher
                    .next_timeout(left)
                    .expect("watch (a gap would fail here)")
                    .expect("the writers' commits never came");
                assert!(last_sequence < Some(commit.sequence), "commit order");
                last_sequence = Some(commit.sequence);
                for change in commit.changes {
                    let sturdykv::Change::Put { key, value } = change else {
                        panic!("the writers only put");
                    };
                    let key = String::from_utf8_lossy(&key).into_owned();
                    let (w, i) = key[1..].split_once('/').expect("key shape");
                    let (w, i): (u32, u32) = (w.parse().expect("w"), i.parse().expect("i"));
                    assert_eq!(i, next[w as usize], "writer {w}'s puts in order, each once");
                    assert_eq!(&value[..], value_of(w, i).as_bytes(), "{key}");
                    next[w as usize] += 1;
                }
            }
            println!("@ok {}", last_sequence.expect("commits"));
        }
        other => panic!("unknown role {other}"),
    }
}

/// `writers` writer processes making `m` puts each; writer 0 compacts every 100 writes.
/// A memtable flushed every few dozen writes, partitions of a few blocks.
fn small_options() -> sturdykv::Options {
    sturdykv::Options::new()
        .memtable_bytes(64 << 10)
        .partition_bytes(16 << 10)
        .max_runs(3)
}

/// Several processes flush and compact by themselves, all the time, while readers in other
/// processes check every value; one writer is killed (SIGKILL) mid-run, three times over,
/// likely in a flush or a compaction. Every write any of them acknowledged is there at the end,
/// and the store verifies.
#[test]
fn processes_flushing_and_compacting_by_themselves_and_one_killed_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    drop(small_options().open(&store).expect("create"));
    let m = 1500u32;
    let mut acked: Vec<(u32, u32)> = Vec::new();
    for round in 0..3u32 {
        // Writers 10*round+1 and +2 run to the end; writer 10*round is killed.
        let id = |k: u32| 10 * round + k;
        let args = |w: u32| [store.clone(), w.to_string(), m.to_string(), "0".into()];
        let mut victim = spawn("small-writer", &args(id(0)));
        let survivors: Vec<Child> = (1..3)
            .map(|k| spawn("small-writer", &args(id(k))))
            .collect();
        let mut lines = lines_of(&mut victim);
        for _ in 0..(300 + 300 * round) {
            let line = lines.next().expect("the victim acknowledges writes");
            let (_, i) = line
                .strip_prefix("ack ")
                .and_then(|l| l.split_once(' '))
                .expect("an ack line");
            acked.push((id(0), i.parse().expect("i")));
        }
        victim.kill().expect("SIGKILL");
        // Acknowledgements printed before the kill landed count too.
        for line in lines {
            if let Some((_, i)) = line.strip_prefix("ack ").and_then(|l| l.split_once(' ')) {
                acked.push((id(0), i.parse().expect("i")));
            }
        }
        let _ = victim.wait();
        for (k, c) in survivors.into_iter().enumerate() {
            let lines = finish(c);
            assert_eq!(
                lines.iter().filter(|l| l.starts_with("ack")).count(),
                m as usize
            );
            acked.extend((0..m).map(|i| (id(k as u32 + 1), i)));
        }
    }
    let db = small_options().open(&store).expect("reopen");
    for (w, i) in &acked {
        assert_eq!(
            db.get(format!("w{w}/{i:06}")).expect("get").as_deref(),
            Some(value_of(*w, *i).as_bytes()),
            "writer {w} write {i} was acknowledged"
        );
    }
    db.verify(|_, _| {}).expect("verify");
    let stats = db.stats().expect("stats");
    assert!(stats.partitions.len() > 1, "{stats:?}");
    // A killed writer's last put may have landed unacknowledged; the live count is exact.
    let scanned = db.prefix("w").count() as u64;
    assert_eq!(db.len().expect("len"), scanned);
    assert!(
        (acked.len() as u64..=acked.len() as u64 + 3).contains(&scanned),
        "{scanned} keys, {} acknowledged",
        acked.len()
    );
}

fn spawn_writers(store: &str, writers: u32, m: u32) -> Vec<Child> {
    (0..writers)
        .map(|w| {
            let every = if w == 0 { 100 } else { 0 };
            let args = [
                store.to_owned(),
                w.to_string(),
                m.to_string(),
                every.to_string(),
            ];
            spawn("writer", &args)
        })
        .collect()
}

#[test]
fn processes_incrementing_one_counter_in_transactions_lose_no_increment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    Db::open(&store).expect("create");
    let (n, m) = (4, 100);
    let children: Vec<Child> = (0..n)
        .map(|_| spawn("counter", &[store.clone(), m.to_string()]))
        .collect();
    for c in children {
        finish(c);
    }
    let db = Db::open(&store).expect("open");
    assert_eq!(parse_u64(db.get("counter").expect("get")), n * m);
}

#[test]
fn writers_and_readers_in_separate_processes_see_every_acknowledged_write_across_compactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    let db = Db::open(&store).expect("create");
    let (writers, m) = (3u32, 300u32);
    let readers: Vec<Child> = (0..2)
        .map(|_| {
            spawn(
                "reader",
                &[store.clone(), writers.to_string(), m.to_string()],
            )
        })
        .collect();
    // Writer 0 compacts every 100 writes, so readers see generations change under them.
    let children = spawn_writers(&store, writers, m);
    let mut acked = 0;
    for c in children {
        acked += finish(c).iter().filter(|l| l.starts_with("ack")).count();
    }
    assert_eq!(acked, (writers * m) as usize);
    // This process saw every write too, without reopening.
    assert_eq!(db.len().expect("len"), u64::from(writers * m));
    assert!(db.stats().expect("stats").generation >= 3);
    db.put("done", "").expect("put");
    for r in readers {
        let lines = finish(r);
        assert!(lines.iter().any(|l| l.starts_with("ok")), "{lines:?}");
    }
}

#[test]
fn a_watcher_process_receives_two_writer_processes_commits_in_order_across_compactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    let db = Db::open(&store).expect("create");
    let generation = db.stats().expect("stats").generation;
    let (writers, m) = (2u32, 200u32);
    let mut watcher = spawn(
        "watcher",
        &[store.clone(), writers.to_string(), m.to_string()],
    );
    let mut lines = lines_of(&mut watcher);
    assert_eq!(lines.next().as_deref(), Some("ready"));
    let children = spawn_writers(&store, writers, m);
    for c in children {
        finish(c);
    }
    assert!(db.stats().expect("stats").generation >= generation + 2);
    let rest: Vec<String> = lines.collect();
    let status = watcher.wait().expect("wait for the watcher");
    assert!(status.success(), "watcher failed: {rest:?}");
    assert!(rest.iter().any(|l| l.starts_with("ok")), "{rest:?}");
}

/// Reads a child's `@` lines as they come.
fn lines_of(child: &mut Child) -> impl Iterator<Item = String> + use<> {
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .lines()
        .map_while(std::result::Result::ok)
        .filter_map(|l| l.split_once('@').map(|(_, rest)| rest.to_owned()))
}

fn start_survivors(store: &str, first_id: u32) -> Vec<Child> {
    (first_id..first_id + 2)
        .map(|id| spawn("survivor", &[store.to_owned(), id.to_string()]))
        .collect()
}

/// Stops the survivors; returns how many writes they acknowledged and torn tails they repaired.
fn stop_survivors(db: &Db, survivors: Vec<Child>, first_id: u32) -> (usize, u64) {
    for id in first_id..first_id + 2 {
        db.put(format!("stop/{id}"), "").expect("put");
    }
    let (mut acked, mut repaired) = (0, 0);
    for s in survivors {
        for line in finish(s) {
            if line.starts_with("ack") {
                acked += 1;
            } else if let Some(n) = line.strip_prefix("repaired ") {
                repaired += n.parse::<u64>().expect("count");
            }
        }
    }
    (acked, repaired)
}

#[test]
fn a_writer_killed_holding_the_lock_mid_append_blocks_nobody_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    let db = Db::open(&store).expect("create");
    let mut survivor_acked = 0;
    let mut repaired = 0;

    // Killed holding LOCK, a torn record behind it: the others wait, then cut it off.
    for round in 0..3u32 {
        let survivors = start_survivors(&store, round * 2);
        std::thread::sleep(Duration::from_millis(100));
        let mut victim = spawn("torn", std::slice::from_ref(&store));
        let torn_at = lines_of(&mut victim)
            .next()
            .expect("the victim tore a record");
        std::thread::sleep(Duration::from_millis(200));
        victim.kill().expect("SIGKILL");
        victim.wait().expect("reap");
        db.put(format!("parent/{round}"), "after the kill")
            .expect("the lock is free again");
        let (acked, fixed) = stop_survivors(&db, survivors, round * 2);
        survivor_acked += acked;
        repaired += fixed;
        eprintln!("round {round}: {torn_at}, survivors acknowledged {acked}");
    }
    repaired += db.stats().expect("stats").torn_tails_repaired;
    assert_eq!(repaired, 3, "each torn tail is cut off exactly once");

    // Killed at random instants of real commits of big batches.
    let mut victim_acked = Vec::new();
    for cycle in 0..4u32 {
        let survivors = start_survivors(&store, 100 + cycle * 2);
        let mut victim = spawn("victim", std::slice::from_ref(&store));
        let mut lines = lines_of(&mut victim);
        // Let it commit one batch, timing it, then kill it somewhere inside the next one.
        let mut started = Instant::now();
        let mut took = Duration::ZERO;
        for line in lines.by_ref() {
            if let Some(i) = line.strip_prefix("acked ") {
                victim_acked.push(format!("victim/{i}/b"));
                took = started.elapsed();
            } else if line.starts_with("appending") {
                if !took.is_zero() {
                    break;
                }
                started = Instant::now();
            }
        }
        std::thread::sleep(took.mul_f64(f64::from(cycle * 3 + 1) / 12.0));
        victim.kill().expect("SIGKILL");
        victim.wait().expect("reap");
        for line in lines {
            if let Some(i) = line.strip_prefix("acked ") {
                victim_acked.push(format!("victim/{i}/b"));
            }
        }
        db.put(format!("parent/kill{cycle}"), "after the kill")
            .expect("the lock is free again");
        survivor_acked += stop_survivors(&db, survivors, 100 + cycle * 2).0;
    }

    drop(db);
    let db = Db::open(&store).expect("reopen");
    for key in &victim_acked {
        assert!(db.get(key).expect("get").is_some(), "lost {key}");
    }
    // Batches are atomic: a victim batch is there whole or not at all.
    let mut halves = std::collections::BTreeMap::new();
    for entry in db.prefix("victim/") {
        let (key, _) = entry.expect("scan");
        let key = String::from_utf8_lossy(&key).into_owned();
        let (batch, _) = key.rsplit_once('/').expect("shape");
        *halves.entry(batch.to_owned()).or_insert(0) += 1;
    }
    assert!(halves.values().all(|&n| n == 2), "{halves:?}");
    assert_eq!(
        db.prefix("survivor").count(),
        survivor_acked,
        "every survivor write is there"
    );
    assert_eq!(db.prefix("parent/").count(), 7);
    db.verify(|_, _| {}).expect("the log is clean");
}

#[test]
fn the_lock_survives_other_descriptors_and_is_not_inherited_by_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(dir.path()).expect("open");
    let lock_path = dir.path().join("LOCK");
    db.transaction(|_tx| {
        // Another descriptor of LOCK, opened and closed in this process, leaves our lock alone
        // (POSIX fcntl locks would be dropped here; flock locks are not).
        drop(std::fs::File::open(&lock_path).expect("open LOCK"));
        let other = std::fs::File::open(&lock_path).expect("open LOCK");
        assert!(
            matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "LOCK is still held"
        );
        // A child started now inherits no descriptor of the store.
        let out = Command::new("ls")
            .args(["-l", "/proc/self/fd/"])
            .output()
            .expect("run ls");
        let fds = String::from_utf8_lossy(&out.stdout);
        assert!(
            !fds.contains(&*dir.path().to_string_lossy()),
            "a child inherited a store descriptor:\n{fds}"
        );
        Ok::<_, Error>(())
    })
    .expect("transaction");
    // Released once the transaction is over.
    let other = std::fs::File::open(&lock_path).expect("open LOCK");
    other.try_lock().expect("free again");
    drop(other);
    db.put("k", "v").expect("put");
}

#[test]
fn a_process_waiting_for_the_lock_proceeds_once_it_is_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    let db = Db::open(&store).expect("open");
    db.transaction(|_tx| {
        let child = spawn("counter", &[store.clone(), "1".into()]);
        std::thread::sleep(Duration::from_millis(300));
        Ok::<_, Error>(child)
    })
    .map(finish)
    .expect("transaction");
    assert_eq!(parse_u64(db.get("counter").expect("get")), 1);
}

#[test]
fn an_exclusive_open_is_refused_while_another_process_has_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().to_string_lossy().into_owned();
    Db::open(&store).expect("create");
    let mut reader = spawn("reader", &[store.clone(), "0".into(), "0".into()]);
    // Give it time to open, then try to take the store for ourselves.
    std::thread::sleep(Duration::from_millis(500));
    let err = sturdykv::Options::new()
        .exclusive(true)
        .open(Path::new(&store))
        .expect_err("another process has it open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    Db::open(&store)
        .expect("open")
        .put("done", "")
        .expect("put");
    reader.wait().expect("reader exits");
}
