//! The Markdown table, the targets, and the SVG chart of the ratios.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::Figures;
use crate::engines::{ENGINES, durability_note};

/// One row of the table.
struct Row {
    key: &'static str,
    label: &'static str,
    higher_is_better: bool,
    /// The baseline measured in the same run, if there is one.
    baseline: Option<(&'static str, &'static str)>,
    /// Whether sled's figure counts (it never calls fsync).
    sled_comparable: bool,
    /// For a row of sturdykv's alone: the row whose peer figures it is compared with.
    peer_key: Option<&'static str>,
}

const ROWS: &[Row] = &[
    Row {
        key: "durable_put_1t_per_s",
        label: "durable put, 1 thread (puts/s)",
        higher_is_better: true,
        baseline: Some(("raw_overwrite_fdatasync_per_s", "raw overwrite + fdatasync")),
        sled_comparable: false,
        peer_key: None,
    },
    Row {
        key: "exclusive_durable_put_1t_per_s",
        label: "durable put, 1 thread, sturdykv `exclusive(true)`: one process (puts/s; peers: the row above)",
        higher_is_better: true,
        baseline: Some(("raw_overwrite_fdatasync_per_s", "raw overwrite + fdatasync")),
        sled_comparable: false,
        peer_key: Some("durable_put_1t_per_s"),
    },
    Row {
        key: "durable_put_4t_per_s",
        label: "durable put, 4 threads (puts/s)",
        higher_is_better: true,
        baseline: None,
        sled_comparable: false,
        peer_key: None,
    },
    Row {
        key: "bulk_load_keys_per_s",
        label: "bulk load, durable batches of 1,000 (keys/s)",
        higher_is_better: true,
        baseline: Some(("raw_log_bulk_keys_per_s", "raw log, fdatasync per batch")),
        sled_comparable: false,
        peer_key: None,
    },
    Row {
        key: "random_get_1t_per_s",
        label: "random get, 1 thread (gets/s)",
        higher_is_better: true,
        baseline: Some(("btreemap_get_per_s", "in-memory BTreeMap")),
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "random_get_2t_per_s",
        label: "random get, 2 threads (gets/s)",
        higher_is_better: true,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "scan_keys_per_s",
        label: "full ordered scan (keys/s)",
        higher_is_better: true,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "close_after_load_s",
        label: "close after the load (drop of the handle, s)",
        higher_is_better: false,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "reopen_s",
        label: "reopen after the load + first get (s)",
        higher_is_better: false,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "reopen_settled_s",
        label: "reopen after compaction + first get (s)",
        higher_is_better: false,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "disk_bytes_after_load",
        label: "bytes on disk after the load",
        higher_is_better: false,
        baseline: Some(("raw_data_bytes", "raw data")),
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "disk_bytes_settled",
        label: "bytes on disk after compaction",
        higher_is_better: false,
        baseline: Some(("raw_data_bytes", "raw data")),
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "peak_rss_load_bytes",
        label: "peak RSS during the load (bytes)",
        higher_is_better: false,
        baseline: Some(("raw_data_bytes", "raw data")),
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "syncs_per_put",
        label: "fsync + fdatasync calls per durable put",
        higher_is_better: false,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
    Row {
        key: "sync_file_range_per_put",
        label: "sync_file_range calls per durable put",
        higher_is_better: false,
        baseline: None,
        sled_comparable: true,
        peer_key: None,
    },
];

fn engines_in(results: &BTreeMap<String, Figures>) -> Vec<&'static str> {
    ENGINES
        .iter()
        .copied()
        .filter(|e| results.contains_key(*e))
        .collect()
}

fn figure(results: &BTreeMap<String, Figures>, engine: &str, key: &str) -> Option<f64> {
    let f = results.get(engine)?;
    match key {
        "syncs_per_put" => Some(f.get("fsync_per_put")? + f.get("fdatasync_per_put")?),
        _ => f.get(key).copied(),
    }
}

fn shown(key: &str, v: f64) -> String {
    if key.contains("bytes") {
        format!("{:.1} MB", v / 1e6)
    } else if key.ends_with("_s") && !key.ends_with("per_s") {
        if v < 0.01 {
            format!("{:.2} ms", v * 1e3)
        } else {
            format!("{v:.3} s")
        }
    } else if key.contains("per_put") {
        format!("{:.2}", v.max(0.0))
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// sturdykv's advantage over `other`: above 1 means sturdykv is better.
fn advantage(row: &Row, ours: f64, other: f64) -> f64 {
    if row.higher_is_better {
        ours / other
    } else {
        other / ours
    }
}

/// The best peer's figure for a row (sled left out where it is not comparable).
fn best_peer(
    results: &BTreeMap<String, Figures>,
    row: &Row,
    among: &[&str],
) -> Option<(&'static str, f64)> {
    engines_in(results)
        .into_iter()
        .filter(|e| *e != "sturdykv" && (row.sled_comparable || *e != "sled"))
        .filter(|e| among.is_empty() || among.contains(e))
        .filter_map(|e| Some((e, figure(results, e, row.peer_key.unwrap_or(row.key))?)))
        .reduce(|a, b| {
            let better = if row.higher_is_better {
                b.1 > a.1
            } else {
                b.1 < a.1
            };
            if better { b } else { a }
        })
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}

pub fn markdown(
    results: &BTreeMap<String, Figures>,
    keys: u64,
    seconds: u64,
    machine: &str,
) -> String {
    let mut out = String::new();
    let engines = engines_in(results);
    let raw = raw_data_bytes(keys);
    let _ = writeln!(
        out,
        "{keys} keys of 16 bytes with 100-byte values; timed runs of {seconds} s; one process per \
         store and step; {machine}.\n"
    );
    let _ = write!(out, "| workload |");
    for e in &engines {
        let _ = write!(out, " {e} |");
    }
    let _ = writeln!(out, " baseline (same run) | sturdykv ÷ best peer |");
    let _ = writeln!(out, "|---|{}---|---|", "---:|".repeat(engines.len()));
    for row in ROWS {
        let _ = write!(out, "| {} |", row.label);
        for e in &engines {
            let cell = figure(results, e, row.key).map_or("–".into(), |v| shown(row.key, v));
            let flag = if *e == "sled" && !row.sled_comparable {
                " ⚠"
            } else {
                ""
            };
            let _ = write!(out, " {cell}{flag} |");
        }
        let baseline = match row.baseline {
            Some(("raw_data_bytes", label)) => format!("{label} {}", shown("bytes", raw)),
            Some((key, label)) => figure(results, "baseline", key)
                .map_or("–".into(), |v| format!("{label} {}", shown(row.key, v))),
            None => String::new(),
        };
        let ratio = match (
            figure(results, "sturdykv", row.key),
            best_peer(results, row, &[]),
        ) {
            _ if row.key.contains("per_put") => String::new(),
            (Some(ours), Some((peer, theirs))) if ours > 0.0 && theirs > 0.0 => {
                let a = advantage(row, ours, theirs);
                if a < 0.1 {
                    format!("{a:.4}× ({peer})")
                } else {
                    format!("{a:.2}× ({peer})")
                }
            }
            _ => String::new(),
        };
        let _ = writeln!(out, " {baseline} | {ratio} |");
    }
    let _ = writeln!(
        out,
        "\n⚠ sled 0.34 makes no `fsync`/`fdatasync` call (see the last rows): its durable-write \
         figures are not durable in the sense of the others and are left out of every comparison.\n\
         Ratios above 1 favour sturdykv (for times and sizes, the peer's figure over ours).\n"
    );
    let _ = writeln!(out, "How each store was made durable:\n");
    for e in &engines {
        let _ = writeln!(out, "- **{e}**: {}", durability_note(e));
    }
    let _ = writeln!(out, "\n### Targets\n");
    for line in targets(results, keys) {
        let _ = writeln!(out, "- {line}");
    }
    out
}

fn raw_data_bytes(keys: u64) -> f64 {
    keys as f64 * 116.0
}

/// The issue's targets, each checked against this run.
fn targets(results: &BTreeMap<String, Figures>, keys: u64) -> Vec<String> {
    let ours = |key: &str| figure(results, "sturdykv", key);
    let base = |key: &str| figure(results, "baseline", key);
    let row = |key: &str| ROWS.iter().find(|r| r.key == key).expect("row");
    let mark = |ok: bool| if ok { "✔" } else { "✘" };
    let mut out = Vec::new();
    let mut versus = |label: &str, key: &str, factor: f64, among: &[&str], what: &str| {
        let row = row(key);
        if let (Some(o), Some((peer, p))) = (ours(key), best_peer(results, row, among)) {
            let a = advantage(row, o, p);
            out.push(format!(
                "{label}: {:.2}× {what} ({peer}: {} vs {}) — target ≥ {factor}× {}",
                a,
                shown(key, p),
                shown(key, o),
                mark(a >= factor)
            ));
        }
    };
    versus(
        "durable put, 1 thread",
        "durable_put_1t_per_s",
        1.0,
        &[],
        "the best durable peer",
    );
    versus(
        "durable put, 1 thread, sturdykv kept to one process (`exclusive(true)`)",
        "exclusive_durable_put_1t_per_s",
        1.0,
        &[],
        "the best durable peer",
    );
    versus(
        "durable put, 4 threads",
        "durable_put_4t_per_s",
        2.0,
        &[],
        "the best durable peer",
    );
    versus(
        "bulk load",
        "bulk_load_keys_per_s",
        1.5,
        &[],
        "the best durable peer",
    );
    versus(
        "random get, 1 thread",
        "random_get_1t_per_s",
        1.0,
        &[],
        "the best peer",
    );
    versus("full scan", "scan_keys_per_s", 1.0, &[], "the best peer");
    versus(
        "reopen after the load",
        "reopen_s",
        10.0,
        &["fjall", "rocksdb"],
        "faster than the best log-structured peer",
    );
    versus(
        "reopen after compaction",
        "reopen_settled_s",
        0.2,
        &["lmdb", "redb"],
        "the best B-tree's speed",
    );
    if let (Some(o), Some(raw)) = (
        ours("durable_put_1t_per_s"),
        base("raw_overwrite_fdatasync_per_s"),
    ) {
        out.push(format!(
            "durable put vs raw overwrite + fdatasync: {:.2}× — target ≥ 0.9× {}",
            o / raw,
            mark(o / raw >= 0.9)
        ));
    }
    if let Some(bytes) = ours("disk_bytes_settled") {
        let r = bytes / raw_data_bytes(keys);
        out.push(format!(
            "bytes on disk after compaction: {r:.3}× the raw data — target ≤ 1.2× {}",
            mark(r <= 1.2)
        ));
    }
    out
}

/// Every figure, one `store figure value` line each.
pub fn raw(results: &BTreeMap<String, Figures>) -> String {
    let mut out = String::new();
    for (engine, figures) in results {
        for (k, v) in figures {
            let _ = writeln!(out, "{engine} {k} {v}");
        }
    }
    out
}

/// A bar chart of sturdykv's advantage over each peer per workload, on a log scale (1 = even).
pub fn svg(results: &BTreeMap<String, Figures>) -> String {
    let peers: Vec<&str> = engines_in(results)
        .into_iter()
        .filter(|e| *e != "sturdykv")
        .collect();
    let rows: Vec<&Row> = ROWS
        .iter()
        .filter(|r| !r.key.contains("per_put") && figure(results, "sturdykv", r.key).is_some())
        .collect();
    let colors = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2",
    ];
    let (label_w, plot_w, bar_h) = (300.0, 560.0, 9.0);
    let group_h = bar_h * peers.len() as f64 + 14.0;
    let height = 60.0 + group_h * rows.len() as f64 + 20.0 * peers.len() as f64;
    let width = label_w + plot_w + 40.0;
    // log2 scale from 1/16 to 16.
    let x = |ratio: f64| label_w + (ratio.log2().clamp(-4.0, 4.0) + 4.0) / 8.0 * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="18" font-size="14">sturdykv ÷ peer, per workload (log scale, clamped at 1/16 and 16×; right of 1× favours sturdykv)</text>"#
    );
    for tick in [-4i32, -3, -2, -1, 0, 1, 2, 3, 4] {
        let r = 2f64.powi(tick);
        let tx = x(r);
        let label = if tick >= 0 {
            format!("{}×", 1 << tick)
        } else {
            format!("1/{}", 1 << -tick)
        };
        let stroke = if tick == 0 { "#000" } else { "#ddd" };
        let _ = writeln!(
            s,
            r#"<line x1="{tx}" y1="30" x2="{tx}" y2="{}" stroke="{stroke}"/><text x="{tx}" y="42" text-anchor="middle">{label}</text>"#,
            48.0 + group_h * rows.len() as f64
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let top = 50.0 + group_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            top + group_h / 2.0,
            row.label.replace('&', "&amp;")
        );
        let ours = figure(results, "sturdykv", row.key).expect("filtered");
        for (j, peer) in peers.iter().enumerate() {
            let Some(theirs) = figure(results, peer, row.peer_key.unwrap_or(row.key)) else {
                continue;
            };
            if ours <= 0.0 || theirs <= 0.0 {
                continue;
            }
            let a = advantage(row, ours, theirs);
            let (x0, x1) = (x(1.0).min(x(a)), x(1.0).max(x(a)));
            let y = top + bar_h * j as f64;
            let opacity = if *peer == "sled" && !row.sled_comparable {
                "0.3"
            } else {
                "1"
            };
            let _ = writeln!(
                s,
                r#"<rect x="{x0}" y="{y}" width="{}" height="{}" fill="{}" fill-opacity="{opacity}"><title>{peer}: {a:.2}×</title></rect>"#,
                (x1 - x0).max(1.0),
                bar_h - 1.0,
                colors[j % colors.len()]
            );
        }
    }
    let legend_top = 60.0 + group_h * rows.len() as f64;
    for (j, peer) in peers.iter().enumerate() {
        let y = legend_top + 18.0 * j as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{label_w}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{peer}{}</text>"#,
            colors[j % colors.len()],
            label_w + 18.0,
            y + 10.0,
            if *peer == "sled" {
                " (faded where its writes are not durable)"
            } else {
                ""
            }
        );
    }
    s.push_str("</svg>\n");
    s
}
