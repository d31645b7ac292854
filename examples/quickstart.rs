//! Opens (or creates) the store `demo.db` in the current directory, writes to it, reopens it and
//! shows that everything acknowledged is still there.
//!
//! Run: `cargo run --release --example quickstart` (again, to see the state carried over).

use sturdykv::{Batch, Db};

fn main() -> Result<(), sturdykv::Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "demo.db".into());
    let db = Db::open(&path)?;
    let runs = match db.get("quickstart/runs")? {
        Some(v) => String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0) + 1,
        None => 1,
    };
    println!("opened {path}: {} keys, run #{runs}", db.len()?);

    // Each put is durable (fdatasync'd) when it returns.
    db.put("greeting", "hello")?;
    db.put("quickstart/runs", runs.to_string())?;

    // A batch is one atomic log record: after a crash, all of it or none of it.
    let mut batch = Batch::new();
    for i in 0..3 {
        batch.put(
            format!("quickstart/run-{runs}/item-{i}"),
            format!("value {i}"),
        );
    }
    db.write(batch)?;
    drop(db);

    // Reopening replays the log: everything acknowledged above is back.
    let db = Db::open(&path)?;
    let greeting = db.get("greeting")?.map(|v| v.to_vec()).unwrap_or_default();
    println!("greeting = {}", String::from_utf8_lossy(&greeting));
    println!("keys under quickstart/run-{runs}/:");
    for entry in db.prefix(format!("quickstart/run-{runs}/")) {
        let (key, value) = entry?;
        println!(
            "  {} = {}",
            String::from_utf8_lossy(&key),
            String::from_utf8_lossy(&value)
        );
    }
    let stats = db.stats()?;
    println!(
        "{} keys, log {} bytes, {} records replayed at open",
        stats.keys, stats.wal_bytes, stats.recovery.replayed_records
    );
    Ok(())
}
