//! Linearizable across processes, checked on recorded histories: several real processes run
//! gets, puts, deletes, compare-and-swaps, multi-key batches, read-write transactions and scans on
//! a few keys of one store, reopening their handles, flushing and compacting as they go, while
//! some are SIGKILLed and replaced. Each records every call and return with a clock all processes
//! share (`CLOCK_MONOTONIC`), and `checker` decides whether one order of the operations explains
//! every result. A killed process's last operation may or may not have happened.
//!
//! And serializable: processes moving money between accounts in transactions, killed and
//! replaced, never change the total, and the final balances are exactly the starting ones plus
//! the transfers the store holds a record of.
//!
//! The test binary re-executes itself: with `STURDYKV_LIN_ROLE` set, the `child` test plays that
//! role. Longer runs by hand: `LIN_RUNS=20 LIN_OPS=2000 LIN_PROCESSES=6 cargo test --release
//! --test linearizability -- --nocapture`.

#[path = "../common/mod.rs"]
mod common;

mod checker;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use checker::{Call, Op, Out, Value};
use sturdykv::{Db, Durability, Options};

const ROLE_ENV: &str = "STURDYKV_LIN_ROLE";
/// Keys `k0`, `k1`, ... of the history.
const KEYS: usize = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

/// Nanoseconds on the clock every process on this machine shares.
fn now() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A small xorshift generator: each process's choices follow from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

fn decode(value: Option<sturdykv::Bytes>) -> Option<Value> {
    value.map(|v| {
        std::str::from_utf8(&v)
            .expect("utf-8")
            .parse()
            .expect("a value")
    })
}

fn show(value: Option<Value>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn parse_value(s: &str) -> Option<Value> {
    (s != "-").then(|| s.parse().expect("a value"))
}

fn worker_options(durability: &str) -> Options {
    Options::new()
        .memtable_bytes(64 << 10)
        .durability(match durability {
            "buffered" => Durability::Buffered,
            _ => Durability::Immediate,
        })
}

/// Performs `op`; its result.
fn perform(db: &Db, op: &Op) -> sturdykv::Result<Out> {
    Ok(match op {
        Op::Get(key) => Out::Value(decode(db.get(key_name(*key))?)),
        Op::Put(key, value) => {
            db.put(key_name(*key), value.to_string())?;
            Out::Done
        }
        Op::Delete(key) => {
            db.delete(key_name(*key))?;
            Out::Done
        }
        Op::Cas { key, expected, new } => {
            let (expected, new) = (expected.map(|v| v.to_string()), new.map(|v| v.to_string()));
            let swapped = db.compare_and_swap(
                key_name(*key),
                expected.as_deref().map(str::as_bytes),
                new.as_deref().map(str::as_bytes),
            )?;
            Out::Cas(swapped.map_err(|refused| decode(refused.current)))
        }
        Op::Batch(writes) => {
            let mut batch = sturdykv::Batch::new();
            for (key, value) in writes {
                match value {
                    Some(v) => batch.put(key_name(*key), v.to_string()),
                    None => batch.delete(key_name(*key)),
                };
            }
            db.write(batch)?;
            Out::Done
        }
        Op::ReadWrite { from, to, value } => {
            let read = db.transaction(|tx| {
                let read = tx.get(key_name(*from))?;
                tx.put(key_name(*to), value.to_string())?;
                Ok::<_, sturdykv::Error>(read)
            })?;
            Out::Value(decode(read))
        }
        Op::Scan => {
            let mut values = vec![None; KEYS];
            for entry in db.iter() {
                let (key, value) = entry?;
                let key = std::str::from_utf8(&key).expect("utf-8");
                let index: usize = key[1..].parse().expect("a key");
                values[index] = decode(Some(value));
            }
            Out::Scan(values)
        }
    })
}

fn format_op(op: &Op) -> String {
    match op {
        Op::Get(k) => format!("get {k}"),
        Op::Put(k, v) => format!("put {k} {v}"),
        Op::Delete(k) => format!("del {k}"),
        Op::Cas { key, expected, new } => format!("cas {key} {} {}", show(*expected), show(*new)),
        Op::Batch(writes) => {
            let parts: Vec<String> = writes
                .iter()
                .map(|(k, v)| format!("{k}={}", show(*v)))
                .collect();
            format!("batch {}", parts.join(","))
        }
        Op::ReadWrite { from, to, value } => format!("rw {from} {to} {value}"),
        Op::Scan => "scan".into(),
    }
}

fn parse_op(words: &[&str]) -> Op {
    let num = |i: usize| -> usize { words[i].parse().expect("a key") };
    match words[0] {
        "get" => Op::Get(num(1)),
        "put" => Op::Put(num(1), words[2].parse().expect("a value")),
        "del" => Op::Delete(num(1)),
        "cas" => Op::Cas {
            key: num(1),
            expected: parse_value(words[2]),
            new: parse_value(words[3]),
        },
        "batch" => Op::Batch(
            words[1]
                .split(',')
                .map(|w| {
                    let (k, v) = w.split_once('=').expect("k=v");
                    (k.parse().expect("a key"), parse_value(v))
                })
                .collect(),
        ),
        "rw" => Op::ReadWrite {
            from: num(1),
            to: num(2),
            value: words[3].parse().expect("a value"),
        },
        "scan" => Op::Scan,
        other => panic!("unknown operation {other}"),
    }
}

fn format_out(out: &Out) -> String {
    match out {
        Out::Done => "done".into(),
        Out::Value(v) => format!("value {}", show(*v)),
        Out::Cas(Ok(())) => "swapped".into(),
        Out::Cas(Err(current)) => format!("refused {}", show(*current)),
        Out::Scan(values) => {
            let parts: Vec<String> = values.iter().map(|v| show(*v)).collect();
            format!("scan {}", parts.join(","))
        }
    }
}

fn parse_out(words: &[&str]) -> Out {
    match words[0] {
        "done" => Out::Done,
        "value" => Out::Value(parse_value(words[1])),
        "swapped" => Out::Cas(Ok(())),
        "refused" => Out::Cas(Err(parse_value(words[1]))),
        "scan" => Out::Scan(words[1].split(',').map(parse_value).collect()),
        other => panic!("unknown result {other}"),
    }
}

/// `worker DIR INDEX OPS SEED HISTORY DURABILITY`: runs `OPS` random operations, appending
/// `C <time> <op>` before each and `R <time> <result>` (or `E <time> <error>`) after it to
/// `HISTORY`, one `write` per line, so that a kill leaves every line but perhaps a torn last one.
fn worker(args: &[&str]) {
    let dir = Path::new(args[0]);
    let index: u64 = args[1].parse().expect("index");
    let ops: u64 = args[2].parse().expect("ops");
    let mut rng = Rng(args[3].parse::<u64>().expect("seed") | 1);
    let mut history = File::options()
        .create(true)
        .append(true)
        .open(args[4])
        .expect("history file");
    let options = || worker_options(args[5]);
    let mut db = options().open(dir).expect("open");
    let mut seen: [Option<Value>; KEYS] = [None; KEYS];
    for n in 0..ops {
        if n % 25 == 24 {
            drop(db); // handles come and go
            db = options().open(dir).expect("reopen");
        }
        if n % 20 == 19 {
            if rng.below(2) == 0 {
                db.flush_memtable().expect("flush");
            } else {
                db.compact().expect("compact");
            }
        }
        // Unique in the history: the process's index above, a count below.
        let value = ((index + 1) << 32) + n + 1;
        let key = rng.below(KEYS as u64) as usize;
        let other = (key + 1 + rng.below(KEYS as u64 - 1) as usize) % KEYS;
        let op = match rng.below(20) {
            0..=5 => Op::Get(key),
            6..=9 => Op::Put(key, value),
            10 => Op::Delete(key),
            11..=13 => Op::Cas {
                key,
                expected: seen[key],
                new: if rng.below(5) == 0 { None } else { Some(value) },
            },
            14 | 15 => Op::Batch(vec![
                (key, Some(value)),
                (other, if rng.below(3) == 0 { None } else { Some(value) }),
            ]),
            16 | 17 => Op::ReadWrite {
                from: key,
                to: other,
                value,
            },
            _ => Op::Scan,
        };
        let line = format!("C {} {}\n", now(), format_op(&op));
        history.write_all(line.as_bytes()).expect("record");
        let line = match perform(&db, &op) {
            Ok(out) => {
                match &out {
                    Out::Value(v) if matches!(op, Op::Get(_)) => seen[key] = *v,
                    Out::Cas(Err(current)) => seen[key] = *current,
                    _ => {}
                }
                format!("R {} {}\n", now(), format_out(&out))
            }
            Err(e) => format!("E {} {}\n", now(), e.to_string().replace('\n', " ")),
        };
        history.write_all(line.as_bytes()).expect("record");
    }
}

/// Reads the history a worker left: its calls, in order.
fn read_history(path: &Path, process: usize) -> Vec<Call> {
    let text = std::fs::read_to_string(path).expect("history");
    let mut calls: Vec<Call> = Vec::new();
    // A kill may tear the last line: only whole lines count.
    let whole = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    for line in whole.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        let at: u64 = words[1].parse().expect("a time");
        match words[0] {
            "C" => calls.push(Call {
                process,
                op: parse_op(&words[2..]),
                called: at,
                returned: None,
            }),
            "R" => {
                let call = calls.last_mut().expect("a return follows a call");
                call.returned = Some((at, parse_out(&words[2..])));
            }
            "E" => {} // an error: the outcome is unknown
            other => panic!("{}: unknown line kind {other}", path.display()),
        }
    }
    calls
}

/// One run: `processes` workers of `ops` operations each, `kills` of them SIGKILLed at random
/// moments and replaced by a new process. Returns the history, with a final scan by a fresh
/// handle once all are gone.
fn run(dir: &Path, processes: u64, ops: u64, kills: u64, seed: u64) -> Vec<Call> {
    let store = dir.join("store");
    let mut rng = Rng(seed | 1);
    let mut next_index: u64 = 0;
    let mut spawn = |ops: u64| -> (Child, PathBuf) {
        let index = next_index;
        next_index += 1;
        let history = dir.join(format!("history-{index}"));
        let durability = if index.is_multiple_of(2) {
            "immediate"
        } else {
            "buffered"
        };
        let args = [
            store.display().to_string(),
            index.to_string(),
            ops.to_string(),
            (seed ^ ((index + 1) * 0x9E37_79B9)).to_string(),
            history.display().to_string(),
            durability.to_string(),
        ];
        (common::spawn_child(ROLE_ENV, "worker", &args), history)
    };
    let mut running: Vec<(Child, PathBuf)> = (0..processes).map(|_| spawn(ops)).collect();
    let mut histories: Vec<PathBuf> = running.iter().map(|(_, h)| h.clone()).collect();
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
        let victim = rng.below(running.len() as u64) as usize;
        let (mut child, _) = running.swap_remove(victim);
        child.kill().expect("kill");
        child.wait().expect("wait");
        let replacement = spawn(ops / 2);
        histories.push(replacement.1.clone());
        running.push(replacement);
    }
    for (mut child, history) in running {
        let status = child.wait().expect("wait");
        assert!(status.success(), "{}: {status}", history.display());
    }
    let mut calls: Vec<Call> = Vec::new();
    for (process, path) in histories.iter().enumerate() {
        if path.exists() {
            calls.extend(read_history(path, process));
        }
    }
    // Every acknowledged write survived the kills: a fresh handle's scan, after everything.
    let db = Db::open(&store).expect("open");
    let called = now();
    let out = perform(&db, &Op::Scan).expect("scan");
    calls.push(Call {
        process: histories.len(),
        op: Op::Scan,
        called,
        returned: Some((now(), out)),
    });
    calls
}

/// The roles a child process can play.
#[test]
fn child() {
    let Ok(spec) = std::env::var(ROLE_ENV) else {
        return; // not a child: nothing to do
    };
    let args: Vec<&str> = spec.split_whitespace().collect();
    match args[0] {
        "worker" => worker(&args[1..]),
        "banker" => banker(&args[1..]),
        other => panic!("unknown role {other}"),
    }
}

/// Some histories of several processes are checked, and one with a stale read planted in it is
/// refused (the checker has teeth on real histories, not only on made-up ones).
#[test]
fn histories_of_several_processes_with_kills_are_linearizable() {
    let runs = env_or("LIN_RUNS", 6);
    let processes = env_or("LIN_PROCESSES", 4);
    let ops = env_or("LIN_OPS", 150);
    let kills = env_or("LIN_KILLS", 2);
    let mut checked = 0;
    for r in 0..runs {
        let dir = tempfile::tempdir().expect("tempdir");
        let seed = env_or("LIN_SEED", 0x5eed) + r;
        let calls = run(dir.path(), processes, ops, kills, seed);
        let started = std::time::Instant::now();
        if let Err(violation) = checker::check(KEYS, &calls) {
            let kept = dir.keep();
            panic!(
                "run {r} (seed {seed}) is not linearizable: {violation}; histories kept in {}",
                kept.display()
            );
        }
        let unknown = calls.iter().filter(|c| c.returned.is_none()).count();
        eprintln!(
            "run {r}: {} operations ({unknown} of unknown outcome, {:.0} % overlapping another \
             process's) by {processes} processes + {kills} replacements: linearizable (checked \
             in {:?})",
            calls.len(),
            checker::overlapping(&calls) * 100.0,
            started.elapsed()
        );
        checked += calls.len();
        if r == 0 {
            let planted = plant_stale_read(&calls).expect("a place to plant a stale read");
            assert!(
                checker::check(KEYS, &planted).is_err(),
                "a planted stale read went unreported"
            );
        }
    }
    assert!(checked > 0);
}

/// The history with one read made stale: a get of key `k` that began after a put `P` of `k`
/// returned now returns the value of a put `Q` of `k` that returned before `P` began. No order
/// explains it (values are unique, and `P` falls between `Q` and the get in every order).
fn plant_stale_read(calls: &[Call]) -> Option<Vec<Call>> {
    let done = |c: &Call| c.returned.as_ref().map(|(at, _)| *at);
    for (g, get) in calls.iter().enumerate() {
        let Op::Get(key) = get.op else { continue };
        if get.returned.is_none() {
            continue;
        }
        for p in calls {
            let Op::Put(pk, _) = p.op else { continue };
            if pk != key || done(p).is_none_or(|at| at >= get.called) {
                continue;
            }
            for q in calls {
                let Op::Put(qk, old) = q.op else { continue };
                if qk == key && done(q).is_some_and(|at| at < p.called) {
                    let mut planted = calls.to_vec();
                    let at = done(get).expect("returned");
                    planted[g].returned = Some((at, Out::Value(Some(old))));
                    return Some(planted);
                }
            }
        }
    }
    None
}

/// Accounts `acct0` … and their starting balance.
const ACCOUNTS: u64 = 6;
const START: u64 = 1000;

fn balance(value: Option<sturdykv::Bytes>) -> u64 {
    std::str::from_utf8(&value.expect("an account"))
        .expect("utf-8")
        .parse()
        .expect("a balance")
}

/// `banker DIR INDEX TRANSFERS SEED DURABILITY`: moves money between two accounts in a
/// transaction that also records the transfer under `xfer/<index>/<n>`; every few transfers,
/// checks from a snapshot that the total is unchanged.
fn banker(args: &[&str]) {
    let dir = Path::new(args[0]);
    let index: u64 = args[1].parse().expect("index");
    let transfers: u64 = args[2].parse().expect("transfers");
    let mut rng = Rng(args[3].parse::<u64>().expect("seed") | 1);
    let options = || worker_options(args[4]);
    let mut db = options().open(dir).expect("open");
    for n in 0..transfers {
        if n % 30 == 29 {
            drop(db);
            db = options().open(dir).expect("reopen");
        }
        let from = rng.below(ACCOUNTS);
        let to = (from + 1 + rng.below(ACCOUNTS - 1)) % ACCOUNTS;
        let amount = 1 + rng.below(50);
        db.transaction(|tx| {
            let have = balance(tx.get(format!("acct{from}"))?);
            if have < amount {
                return Ok(());
            }
            let theirs = balance(tx.get(format!("acct{to}"))?);
            tx.put(format!("acct{from}"), (have - amount).to_string())?;
            tx.put(format!("acct{to}"), (theirs + amount).to_string())?;
            tx.put(format!("xfer/{index}/{n}"), format!("{from} {to} {amount}"))?;
            Ok::<_, sturdykv::Error>(())
        })
        .expect("transfer");
        if n % 5 == 0 {
            let snapshot = db.snapshot().expect("snapshot");
            let total: u64 = (0..ACCOUNTS)
                .map(|a| balance(snapshot.get(format!("acct{a}")).expect("get")))
                .sum();
            assert_eq!(
                total,
                ACCOUNTS * START,
                "banker {index} saw the total change"
            );
        }
        if n % 40 == 39 {
            db.compact().expect("compact");
        }
    }
}

/// Transfers in transactions from several processes, some killed mid-run: the total never
/// changes (checked by every banker as it goes and here at the end), and the final balances are
/// exactly the starting ones plus the recorded transfers: none applied twice or in half.
#[test]
fn transfers_between_accounts_from_several_processes_stay_serializable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    {
        let db = Db::open(&store).expect("open");
        let mut batch = sturdykv::Batch::new();
        for a in 0..ACCOUNTS {
            batch.put(format!("acct{a}"), START.to_string());
        }
        db.write(batch).expect("accounts");
    }
    let processes = env_or("LIN_PROCESSES", 4);
    let transfers = env_or("LIN_OPS", 150);
    let mut rng = Rng(0xba7c);
    let mut next_index = 0;
    let mut spawn = |transfers: u64| -> Child {
        let index: u64 = next_index;
        next_index += 1;
        let durability = if index.is_multiple_of(2) {
            "immediate"
        } else {
            "buffered"
        };
        let args = [
            store.display().to_string(),
            index.to_string(),
            transfers.to_string(),
            (0x1234 + index).to_string(),
            durability.to_string(),
        ];
        common::spawn_child(ROLE_ENV, "banker", &args)
    };
    let mut running: Vec<Child> = (0..processes).map(|_| spawn(transfers)).collect();
    for _ in 0..env_or("LIN_KILLS", 2) {
        std::thread::sleep(Duration::from_millis(30 + rng.below(150)));
        let victim = rng.below(running.len() as u64) as usize;
        let mut child = running.swap_remove(victim);
        child.kill().expect("kill");
        child.wait().expect("wait");
        running.push(spawn(transfers / 2));
    }
    for mut child in running {
        assert!(child.wait().expect("wait").success(), "a banker failed");
    }
    let db = Db::open(&store).expect("open");
    let mut expected: BTreeMap<u64, i64> = (0..ACCOUNTS).map(|a| (a, START as i64)).collect();
    let mut recorded = 0;
    for entry in db.prefix("xfer/") {
        let (_, value) = entry.expect("scan");
        let words: Vec<u64> = std::str::from_utf8(&value)
            .expect("utf-8")
            .split(' ')
            .map(|w| w.parse().expect("a number"))
            .collect();
        *expected.get_mut(&words[0]).expect("account") -= words[2] as i64;
        *expected.get_mut(&words[1]).expect("account") += words[2] as i64;
        recorded += 1;
    }
    for (account, balance_expected) in &expected {
        let found = balance(db.get(format!("acct{account}")).expect("get"));
        assert_eq!(
            found as i64, *balance_expected,
            "account {account} after {recorded} recorded transfers"
        );
    }
    assert!(recorded > 0, "no transfer was recorded");
    eprintln!("{recorded} transfers, balances exact");
}
