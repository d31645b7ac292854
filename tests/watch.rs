//! Watching a prefix, through the public API: what a watcher receives, in which order, across
//! compactions, and what it says when it falls too far behind. (Watching other processes is in
//! `processes.rs`.)

use std::time::Duration;

mod common;

use common::open_manual;
use sturdykv::{Batch, Change, Commit, Error};

fn put(key: &str, value: &str) -> Change {
    Change::Put {
        key: key.as_bytes().into(),
        value: value.as_bytes().into(),
    }
}

fn delete(key: &str) -> Change {
    Change::Delete {
        key: key.as_bytes().into(),
    }
}

/// Everything already committed, without waiting.
fn drain(watcher: &mut sturdykv::Watcher) -> Vec<Commit> {
    std::iter::from_fn(|| watcher.try_next().expect("watch")).collect()
}

fn changes(commits: &[Commit]) -> Vec<Change> {
    commits.iter().flat_map(|c| c.changes.clone()).collect()
}

#[test]
fn a_watcher_sees_the_commits_under_its_prefix_in_order_with_batches_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    db.put("user/0", "before the watch").expect("put");
    let mut watcher = db.watch_prefix("user/").expect("watch");
    assert_eq!(watcher.try_next().expect("try_next"), None);

    db.put("user/1", "ada").expect("put");
    db.put("other", "not watched").expect("put");
    let mut batch = Batch::new();
    batch.put("user/2", "grace");
    batch.put("elsewhere", "not watched");
    batch.delete("user/0");
    db.write(batch).expect("write");
    // Another handle of the same store counts as another writer.
    let other = open_manual(dir.path());
    other.delete("user/1").expect("delete");
    db.transaction(|tx| tx.put("user/3", "barbara"))
        .expect("transaction");

    let commits = drain(&mut watcher);
    assert_eq!(commits.len(), 4, "{commits:?}");
    assert_eq!(commits[0].changes, vec![put("user/1", "ada")]);
    // The batch arrives as one commit, without its changes outside the prefix.
    assert_eq!(
        commits[1].changes,
        vec![put("user/2", "grace"), delete("user/0")]
    );
    assert_eq!(commits[2].changes, vec![delete("user/1")]);
    assert_eq!(commits[3].changes, vec![put("user/3", "barbara")]);
    assert!(
        commits.windows(2).all(|w| w[0].sequence < w[1].sequence),
        "sequence numbers increase"
    );
    assert_eq!(watcher.try_next().expect("try_next"), None);

    // An empty prefix watches everything.
    let mut everything = db.watch_prefix("").expect("watch");
    db.put("zzz", "1").expect("put");
    assert_eq!(changes(&drain(&mut everything)), vec![put("zzz", "1")]);
}

#[test]
fn waiting_for_a_commit_returns_it_when_another_thread_makes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    let mut watcher = db.watch_prefix("k").expect("watch");
    assert_eq!(
        watcher
            .next_timeout(Duration::from_millis(20))
            .expect("next_timeout"),
        None,
        "nothing was committed"
    );
    let writer = {
        let db = db.clone();
        std::thread::spawn(move || {
            for i in 0..20 {
                std::thread::sleep(Duration::from_millis(2));
                db.put(format!("k{i:02}"), "v").expect("put");
            }
        })
    };
    let mut got = Vec::new();
    for commit in watcher.by_ref().take(20) {
        got.extend(commit.expect("watch").changes);
    }
    writer.join().expect("writer");
    let expected: Vec<Change> = (0..20).map(|i| put(&format!("k{i:02}"), "v")).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_watcher_one_compaction_behind_keeps_reading_the_old_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    let mut watcher = db.watch_prefix("").expect("watch");
    for i in 0..5 {
        db.put(format!("a{i}"), "before").expect("put");
    }
    db.compact().expect("compact");
    for i in 0..5 {
        db.put(format!("b{i}"), "after").expect("put");
    }
    let got = changes(&drain(&mut watcher));
    let expected: Vec<Change> = (0..5)
        .map(|i| put(&format!("a{i}"), "before"))
        .chain((0..5).map(|i| put(&format!("b{i}"), "after")))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn a_watcher_two_compactions_behind_reports_the_gap_then_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_manual(dir.path());
    let mut watcher = db.watch_prefix("").expect("watch");
    let first = db.stats().expect("stats").next_sequence;
    db.put("read", "1").expect("put");
    db.compact().expect("compact");
    db.put("missed", "2").expect("put");
    db.compact().expect("compact");
    let resumed = db.stats().expect("stats").next_sequence;
    db.put("after", "3").expect("put");

    // What the still-open old log holds comes first; then the gap, exactly once.
    let commit = watcher.try_next().expect("first commit").expect("a commit");
    assert_eq!(
        (commit.sequence, commit.changes),
        (first, vec![put("read", "1")])
    );
    match watcher.try_next() {
        Err(Error::WatchGap {
            missed_from,
            resumed_at,
        }) => assert_eq!((missed_from, resumed_at), (first + 1, resumed)),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(changes(&drain(&mut watcher)), vec![put("after", "3")]);
}
