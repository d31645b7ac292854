//! `kvctl crash-test`: proves on the user's own disk that acknowledged writes survive.
//!
//! The default mode starts a writer process (this binary, `__crash-writer`) that commits
//! batches of three keys (compacting now and then) and reports each acknowledged one; it is
//! killed with SIGKILL at a random moment, the store is reopened, and every acknowledged batch
//! must be there, whole, and no batch may be half there. `--simulate` runs the power-loss
//! campaign on the simulated disk instead.

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
    pub key_size: usize,
    pub value_size: usize,
    pub simulate: bool,
}

/// Batches a writer commits between compactions.
const COMPACT_EVERY: u64 = 300;

fn key(cycle: u64, i: u64, part: u8, size: usize) -> Vec<u8> {
    let mut key = format!("crash/{cycle:08}/{i:010}/{}", part as char).into_bytes();
    // Pad before the part letter would reorder keys; pad at the end with a fixed byte instead.
    key.resize(size.max(key.len()), b'.');
    key
}

fn value(seed: u64, cycle: u64, i: u64, part: u8, size: usize) -> Vec<u8> {
    let stamp = format!("{seed}:{cycle}:{i}:{};", part as char);
    stamp.bytes().cycle().take(size.max(1)).collect()
}

/// The writer child: commits until killed, printing `ack <i>` after each acknowledged batch.
pub fn writer(
    db: &Db,
    cycle: u64,
    seed: u64,
    key_size: usize,
    value_size: usize,
) -> Result<u8, Failure> {
    let mut out = io::stdout().lock();
    for i in 0.. {
        let mut batch = Batch::new();
        for part in [b'a', b'b', b'c'] {
            batch.put(
                key(cycle, i, part, key_size),
                value(seed, cycle, i, part, value_size),
            );
        }
        db.write(batch)?;
        writeln!(out, "ack {i}")?;
        out.flush()?;
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
    let (mut cycles, mut acknowledged) = (0u64, 0u64);
    let mut violation = None;
    while cycles < plan.cycles && plan.duration.is_none_or(|d| started.elapsed() < d) {
        let cycle = cycles;
        let mut child = Command::new(&exe)
            .arg("--db")
            .arg(dir)
            .args([
                "__crash-writer",
                "--cycle",
                &cycle.to_string(),
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
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| line.strip_prefix("ack ")?.parse::<u64>().ok())
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(Duration::from_millis(10 + next() % 300));
        child.kill()?;
        child.wait()?;
        let acked = reader
            .join()
            .map_err(|_| io::Error::other("reader thread failed"))?;
        acknowledged += acked.len() as u64;
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
                "acknowledged_batches": acknowledged,
                "violations": lost,
                "violation": violation,
                "note": "process kills test process death only; the page cache survives them",
            })
        )?;
    } else {
        writeln!(
            out,
            "crash-test: {cycles} process kills (SIGKILL), {acknowledged} acknowledged batches checked: {}",
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

/// Reopens the store and checks cycle `cycle`: every acknowledged batch whole, no batch partial.
fn verify(dir: &Path, cycle: u64, acked: &[u64], plan: &Plan) -> Option<String> {
    let db = match Db::open(dir) {
        Ok(db) => db,
        Err(e) => return Some(format!("cycle {cycle}: the store did not reopen: {e}")),
    };
    for &i in acked {
        for part in [b'a', b'b', b'c'] {
            let expected = value(plan.seed, cycle, i, part, plan.value_size);
            match db.get(key(cycle, i, part, plan.key_size)) {
                Ok(Some(v)) if v.as_ref() == expected.as_slice() => {}
                Ok(_) => {
                    return Some(format!(
                        "cycle {cycle}: acknowledged batch {i} lost its part {}",
                        part as char
                    ));
                }
                Err(e) => return Some(format!("cycle {cycle}: reading batch {i}: {e}")),
            }
        }
    }
    let mut parts: std::collections::BTreeMap<Vec<u8>, u8> = std::collections::BTreeMap::new();
    for entry in db.prefix(format!("crash/{cycle:08}/")) {
        match entry {
            Ok((k, _)) => *parts.entry(k[..26].to_vec()).or_default() += 1,
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
