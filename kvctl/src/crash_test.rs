//! `kvctl crash-test`: proves on the user's own disk that acknowledged writes survive.
//!
//! The default mode starts writer processes (this binary, `__crash-writer`), all on one store at
//! once, each committing batches of three keys, incrementing a shared counter in a transaction
//! every few batches and compacting now and then, and reporting each acknowledged commit. They are
//! killed with SIGKILL at a random moment, the store is reopened, and every acknowledged batch
//! must be there, whole, no batch may be half there, and the counter must hold every acknowledged
//! increment. `--simulate` runs the power-loss campaign on the simulated disk instead.

use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sturdykv::{Batch, Db};

use crate::{Failure, progress_bar};

/// Exit status when the test finds a lost or partial batch or a store that does not reopen.
pub const EXIT_VIOLATION: u8 = 8;

/// What the user asked for.
pub struct Plan {
    pub cycles: u64,
    pub duration: Option<Duration>,
    pub seed: u64,
    pub writers: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub simulate: bool,
}

/// Batches a writer commits between compactions.
const COMPACT_EVERY: u64 = 300;

/// Every this many batches, a writer also increments the cycle's counter in a transaction.
const INCREMENT_EVERY: u64 = 5;
/// Length of a key's batch stamp, `crash/<cycle>/<writer>/<i>/`.
const BATCH_STAMP: usize = 29;

fn key(cycle: u64, writer: u64, i: u64, part: u8, size: usize) -> Vec<u8> {
    let mut key = format!("crash/{cycle:08}/{writer:02}/{i:010}/{}", part as char).into_bytes();
    // Pad before the part letter would reorder keys; pad at the end with a fixed byte instead.
    key.resize(size.max(key.len()), b'.');
    key
}

fn counter_key(cycle: u64) -> String {
    format!("counter/{cycle:08}")
}

fn value(seed: u64, cycle: u64, writer: u64, i: u64, part: u8, size: usize) -> Vec<u8> {
    let stamp = format!("{seed}:{cycle}:{writer}:{i}:{};", part as char);
    stamp.bytes().cycle().take(size.max(1)).collect()
}

/// The writer child: commits until killed, printing `ack <i>` after each acknowledged batch and
/// `inc` after each acknowledged increment of the shared counter.
pub fn writer(
    db: &Db,
    cycle: u64,
    writer: u64,
    seed: u64,
    key_size: usize,
    value_size: usize,
) -> Result<u8, Failure> {
    let mut out = io::stdout().lock();
    for i in 0.. {
        let mut batch = Batch::new();
        for part in [b'a', b'b', b'c'] {
            batch.put(
                key(cycle, writer, i, part, key_size),
                value(seed, cycle, writer, i, part, value_size),
            );
        }
        db.write(batch)?;
        writeln!(out, "ack {i}")?;
        out.flush()?;
        if i % INCREMENT_EVERY == 0 {
            db.transaction(|tx| {
                let n = read_counter(tx.get(counter_key(cycle))?);
                tx.put(counter_key(cycle), (n + 1).to_string())
            })?;
            writeln!(out, "inc")?;
            out.flush()?;
        }
        if i % COMPACT_EVERY == COMPACT_EVERY - 1 {
            db.compact()?;
        }
    }
    Ok(0)
}

/// Runs the test and prints a summary.
pub fn run(
    dir: Option<&Path>,
    plan: &Plan,
    json: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    if plan.simulate {
        return simulate(plan, json, out);
    }
    let Some(dir) = dir else {
        return Err(Failure::Usage(
            "crash-test needs --db DIR: a new or empty directory on the disk to test".into(),
        ));
    };
    let fresh = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(Failure::Io(e)),
    };
    if !fresh {
        return Err(Failure::Usage(format!(
            "crash-test writes its own store: {} must be a new or empty directory",
            dir.display()
        )));
    }
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let bar = progress_bar("crash-test");
    bar.set_length(plan.cycles);
    let mut rng = plan.seed.max(1);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut cycles, mut acknowledged, mut increments) = (0u64, 0u64, 0u64);
    let mut violation = None;
    while cycles < plan.cycles && plan.duration.is_none_or(|d| started.elapsed() < d) {
        let cycle = cycles;
        let mut children = Vec::new();
        let mut readers = Vec::new();
        for writer in 0..plan.writers {
            let mut child = Command::new(&exe)
                .arg("--db")
                .arg(dir)
                .args([
                    "__crash-writer",
                    "--cycle",
                    &cycle.to_string(),
                    "--writer",
                    &writer.to_string(),
                    "--seed",
                    &plan.seed.to_string(),
                ])
                .args([
                    "--key-size",
                    &plan.key_size.to_string(),
                    "--value-size",
                    &plan.value_size.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| io::Error::other("no pipe to the writer"))?;
            readers.push(std::thread::spawn(move || {
                let mut acked = Writer::default();
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line == "inc" {
                        acked.increments += 1;
                    } else if let Some(i) = line.strip_prefix("ack ") {
                        acked.batches.extend(i.parse::<u64>().ok());
                    }
                }
                acked
            }));
            children.push(child);
        }
        std::thread::sleep(Duration::from_millis(10 + next() % 300));
        for child in &mut children {
            child.kill()?;
        }
        for child in &mut children {
            child.wait()?;
        }
        let mut acked = Vec::new();
        for reader in readers {
            let writer = reader
                .join()
                .map_err(|_| io::Error::other("reader thread failed"))?;
            acknowledged += writer.batches.len() as u64;
            increments += writer.increments;
            acked.push(writer);
        }
        cycles += 1;
        bar.set_position(cycles);
        if let Some(problem) = verify(dir, cycle, &acked, plan) {
            violation = Some(problem);
            break;
        }
    }
    bar.finish_and_clear();
    let lost = u64::from(violation.is_some());
    if json {
        writeln!(
            out,
            "{}",
            json!({
                "mode": "kill",
                "cycles": cycles,
                "writers": plan.writers,
                "acknowledged_batches": acknowledged,
                "acknowledged_increments": increments,
                "violations": lost,
                "violation": violation,
                "note": "process kills test process death only; the page cache survives them",
            })
        )?;
    } else {
        writeln!(
            out,
            "crash-test: {cycles} cycles killing {} writer processes (SIGKILL), {acknowledged} acknowledged batches and {increments} transactional increments checked: {}",
            plan.writers,
            violation
                .as_deref()
                .unwrap_or("none lost, none partial, the store reopened every time")
        )?;
        writeln!(
            out,
            "note: killing a process tests process death only, since the page cache survives it; \
             `--simulate` tests power loss on a simulated disk"
        )?;
    }
    Ok(if violation.is_some() {
        EXIT_VIOLATION
    } else {
        0
    })
}

/// What one writer process acknowledged before it was killed.
#[derive(Default)]
struct Writer {
    batches: Vec<u64>,
    increments: u64,
}

fn read_counter(value: Option<sturdykv::Bytes>) -> u64 {
    value.map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0))
}

/// Reopens the store and checks cycle `cycle`: every acknowledged batch whole, no batch partial,
/// and the counter holding every acknowledged increment (plus at most one in flight per writer).
fn verify(dir: &Path, cycle: u64, acked: &[Writer], plan: &Plan) -> Option<String> {
    let db = match Db::open(dir) {
        Ok(db) => db,
        Err(e) => return Some(format!("cycle {cycle}: the store did not reopen: {e}")),
    };
    for (writer, acked) in (0u64..).zip(acked) {
        for &i in &acked.batches {
            for part in [b'a', b'b', b'c'] {
                let expected = value(plan.seed, cycle, writer, i, part, plan.value_size);
                match db.get(key(cycle, writer, i, part, plan.key_size)) {
                    Ok(Some(v)) if v.as_ref() == expected.as_slice() => {}
                    Ok(_) => {
                        return Some(format!(
                            "cycle {cycle}: writer {writer}'s acknowledged batch {i} lost its \
                             part {}",
                            part as char
                        ));
                    }
                    Err(e) => return Some(format!("cycle {cycle}: reading batch {i}: {e}")),
                }
            }
        }
    }
    let counter = match db.get(counter_key(cycle)) {
        Ok(v) => read_counter(v),
        Err(e) => return Some(format!("cycle {cycle}: reading the counter: {e}")),
    };
    let increments: u64 = acked.iter().map(|w| w.increments).sum();
    if counter < increments || counter > increments + plan.writers {
        return Some(format!(
            "cycle {cycle}: the counter is {counter} after {increments} acknowledged increments \
             by {} writers",
            plan.writers
        ));
    }
    let mut parts: std::collections::BTreeMap<Vec<u8>, u8> = std::collections::BTreeMap::new();
    for entry in db.prefix(format!("crash/{cycle:08}/")) {
        match entry {
            Ok((k, _)) => *parts.entry(k[..BATCH_STAMP].to_vec()).or_default() += 1,
            Err(e) => return Some(format!("cycle {cycle}: scanning: {e}")),
        }
    }
    parts.iter().find(|(_, n)| **n != 3).map(|(k, n)| {
        format!(
            "cycle {cycle}: batch {} is partly visible ({n} of 3 keys)",
            String::from_utf8_lossy(k)
        )
    })
}

fn simulate(plan: &Plan, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let started = Instant::now();
    let bar = progress_bar("simulating");
    bar.set_length(plan.cycles);
    let (mut seeds, mut images) = (0u64, 0u64);
    let mut violation = None;
    while seeds < plan.cycles && plan.duration.is_none_or(|d| started.elapsed() < d) {
        match sturdykv::harness::simulate(plan.seed + seeds) {
            Ok(n) => images += n,
            Err(problem) => {
                violation = Some(problem);
                break;
            }
        }
        seeds += 1;
        bar.set_position(seeds);
    }
    bar.finish_and_clear();
    if json {
        writeln!(
            out,
            "{}",
            json!({ "mode": "simulate", "workloads": seeds, "crash_images": images, "violations": u64::from(violation.is_some()), "violation": violation })
        )?;
    } else {
        writeln!(
            out,
            "crash-test --simulate: {seeds} workloads, power cut at a random operation, {images} crash images checked: {}",
            violation
                .as_deref()
                .unwrap_or("no lost acknowledged write, no partial batch, every image reopened")
        )?;
    }
    Ok(if violation.is_some() {
        EXIT_VIOLATION
    } else {
        0
    })
}
