//! Process death: a child process writes batches from two threads and reports each acknowledged
//! one on stdout; the parent `SIGKILL`s it at a random moment, reopens the store, and checks every
//! acknowledged batch is complete and no batch is half there. (This tests process death only: the
//! page cache survives it. Power loss is the job of the simulated disk.)

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use sturdykv::{Batch, Db};

const CHILD_ENV: &str = "STURDYKV_KILL_TEST_CHILD";
const THREADS: u32 = 2;

fn value(cycle: u32, thread: u32, i: u64, part: &str) -> Vec<u8> {
    format!("{cycle}/{thread}/{i}/{part}/")
        .repeat(1 + (i % 7) as usize)
        .into_bytes()
}

fn key(cycle: u32, thread: u32, i: u64, part: &str) -> String {
    format!("c{cycle:05}/t{thread}/{i:08}/{part}")
}

/// The child: write batches until killed, printing `ack <thread> <i>` after each returns `Ok`.
fn child(dir: &str, cycle: u32) {
    let db = Db::open(dir).expect("child open");
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let mut batch = Batch::new();
                    for part in ["a", "b", "c"] {
                        batch.put(key(cycle, t, i, part), value(cycle, t, i, part));
                    }
                    db.write(batch).expect("child write");
                    println!("ack {t} {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
}

#[test]
fn sigkill_mid_write_loses_no_acknowledged_batch() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, cycle) = spec.rsplit_once(':').expect("dir:cycle");
        child(dir, cycle.parse().expect("cycle"));
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");
    let mut total_acked = 0usize;
    // KILL_CYCLES=1000 for a long run; the default keeps `cargo test` quick.
    let cycles: u32 = std::env::var("KILL_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(10);
    for cycle in 0..cycles {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "sigkill_mid_write_loses_no_acknowledged_batch",
                "--nocapture",
            ])
            .env(CHILD_ENV, format!("{}:{cycle}", store.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|line| {
                    let mut parts = line.strip_prefix("ack ")?.split(' ');
                    let t: u32 = parts.next()?.parse().ok()?;
                    let i: u64 = parts.next()?.parse().ok()?;
                    Some((t, i))
                })
                .collect::<Vec<_>>()
        });
        // Kill at a different moment each cycle: some during start-up, most mid-write.
        std::thread::sleep(Duration::from_millis(
            20 + u64::from(cycle.wrapping_mul(37) % 200),
        ));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        let acked = reader.join().expect("reader");
        total_acked += acked.len();

        let db = Db::open(&store).expect("the store always reopens after a kill");
        for &(t, i) in &acked {
            for part in ["a", "b", "c"] {
                let got = db.get(key(cycle, t, i, part)).expect("get");
                assert_eq!(
                    got.as_deref(),
                    Some(value(cycle, t, i, part).as_slice()),
                    "cycle {cycle}: acknowledged batch {t}/{i} lost its {part}"
                );
            }
        }
        // Atomicity: every batch in the store, acknowledged or not, is whole.
        for t in 0..THREADS {
            let prefix = format!("c{cycle:05}/t{t}/");
            let parts: Vec<_> = db.prefix(&prefix).map(|kv| kv.expect("scan").0).collect();
            assert_eq!(
                parts.len() % 3,
                0,
                "cycle {cycle}: a partial batch is visible"
            );
            for chunk in parts.chunks(3) {
                let ids: Vec<_> = chunk.iter().map(|k| &k[..k.len() - 1]).collect();
                assert!(
                    ids.iter().all(|id| *id == ids[0]),
                    "cycle {cycle}: {chunk:?}"
                );
            }
        }
    }
    eprintln!("{total_acked} acknowledged batches checked over {cycles} kills");
    assert!(total_acked > 0, "the children never got to write anything");
}
