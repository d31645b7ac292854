//! The public API, used only through `sturdykv::*`: reads and writes, ordering, limits, errors.

mod common;

use common::{collect, files, keys, open};
use sturdykv::{Batch, Db, Durability, Error, MAX_KEY_LEN, MAX_VALUE_LEN, Options};

#[test]
fn put_get_delete_contains_len() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    assert!(db.is_empty().expect("is_empty"));
    db.put("a", "1").expect("put");
    db.put(b"b".as_slice(), vec![2u8]).expect("put");
    assert_eq!(db.get("a").expect("get").as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get("b").expect("get").as_deref(), Some(&[2u8][..]));
    assert_eq!(db.get("c").expect("get"), None);
    assert!(db.contains_key("a").expect("contains"));
    assert_eq!(db.len().expect("len"), 2);

    db.put("a", "one").expect("overwrite");
    assert_eq!(db.get("a").expect("get").as_deref(), Some(&b"one"[..]));
    assert_eq!(db.len().expect("len"), 2);

    db.delete("a").expect("delete");
    db.delete("never-there")
        .expect("deleting an absent key is fine");
    assert!(!db.contains_key("a").expect("contains"));
    assert_eq!(db.len().expect("len"), 1);
}

#[test]
fn empty_keys_and_values_and_binary_bytes_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let binary: Vec<u8> = (0..=255).collect();
    db.put("", "empty key").expect("put");
    db.put("empty value", "").expect("put");
    db.put(&binary, &binary).expect("put");
    drop(db);
    let db = open(dir.path());
    assert_eq!(db.get("").expect("get").as_deref(), Some(&b"empty key"[..]));
    assert_eq!(
        db.get("empty value").expect("get").as_deref(),
        Some(&b""[..])
    );
    assert_eq!(
        db.get(&binary).expect("get").as_deref(),
        Some(binary.as_slice())
    );
}

#[test]
fn writes_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let db = open(dir.path());
        for i in 0..1000u32 {
            db.put(i.to_be_bytes(), format!("value {i}")).expect("put");
        }
        for i in (0..1000u32).step_by(3) {
            db.delete(i.to_be_bytes()).expect("delete");
        }
    }
    let db = open(dir.path());
    assert_eq!(db.len().expect("len"), 1000 - 334);
    for i in 0..1000u32 {
        let expected = (i % 3 != 0).then(|| format!("value {i}").into_bytes());
        assert_eq!(
            db.get(i.to_be_bytes()).expect("get").map(|v| v.to_vec()),
            expected
        );
    }
    let stats = db.stats().expect("stats");
    // 1,334 batches, and the empty record a clean close appends to vouch for them.
    assert_eq!(stats.recovery.replayed_records, 1335);
    assert_eq!(stats.recovery.truncated_bytes, 0);
    assert_eq!(stats.next_sequence, 1336);
}

#[test]
fn batches_apply_in_order_and_later_ops_win() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put("gone", "x").expect("put");
    let mut batch = Batch::new();
    batch
        .put("k", "first")
        .put("k", "second")
        .delete("gone")
        .put("new", "1")
        .delete("new");
    assert_eq!(batch.len(), 5);
    db.write(batch).expect("write");
    db.write(Batch::new()).expect("an empty batch is a no-op");
    assert_eq!(db.get("k").expect("get").as_deref(), Some(&b"second"[..]));
    assert_eq!(db.get("gone").expect("get"), None);
    assert_eq!(db.get("new").expect("get"), None);
    assert_eq!(db.len().expect("len"), 1);
    assert_eq!(
        db.stats().expect("stats").commits,
        2,
        "one record per batch"
    );
}

#[test]
fn range_and_prefix_are_ordered_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    for k in ["b", "a", "ab", "abc", "b\u{0}", "c", "ac"] {
        db.put(k, k.to_uppercase()).expect("put");
    }
    assert_eq!(
        keys(db.range::<&str, _>(..)),
        ["a", "ab", "abc", "ac", "b", "b\u{0}", "c"]
    );
    assert_eq!(keys(db.range("ab".."b")), ["ab", "abc", "ac"]);
    assert_eq!(keys(db.range("ab"..="b")), ["ab", "abc", "ac", "b"]);
    assert_eq!(keys(db.range("b"..)), ["b", "b\u{0}", "c"]);
    assert_eq!(
        keys(db.range("c".."a")),
        Vec::<String>::new(),
        "inverted range is empty"
    );
    assert_eq!(keys(db.range("b".."b")), Vec::<String>::new());
    assert_eq!(keys(db.range("ab".."b").rev()), ["ac", "abc", "ab"]);
    assert_eq!(keys(db.prefix("a")), ["a", "ab", "abc", "ac"]);
    assert_eq!(keys(db.prefix("a").rev()), ["ac", "abc", "ab", "a"]);
    assert_eq!(keys(db.prefix("")), keys(db.range::<&str, _>(..)));
    assert_eq!(
        collect(db.prefix("ab")),
        [
            (b"ab".to_vec(), b"AB".to_vec()),
            (b"abc".to_vec(), b"ABC".to_vec())
        ]
    );
}

#[test]
fn prefix_of_ff_bytes_reaches_the_end_of_the_keyspace() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put([0xff], "1").expect("put");
    db.put([0xff, 0xff, 0x00], "2").expect("put");
    db.put([0xfe], "3").expect("put");
    let found = collect(db.prefix([0xff]));
    assert_eq!(found.len(), 2);
}

#[test]
fn iterators_meet_in_the_middle_over_many_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .durability(Durability::Buffered)
        .open(dir.path())
        .expect("open");
    let mut batch = Batch::new();
    for i in 0..5000u32 {
        batch.put(i.to_be_bytes(), i.to_le_bytes());
    }
    db.write(batch).expect("write");
    let mut iter = db.range::<&[u8], _>(..);
    let mut seen = Vec::new();
    // Alternate ends: every key exactly once, fronts ascending, backs descending.
    loop {
        let front = iter.next();
        let back = iter.next_back();
        if front.is_none() && back.is_none() {
            break;
        }
        seen.extend(front.map(|kv| kv.expect("front").0.to_vec()));
        seen.extend(back.map(|kv| kv.expect("back").0.to_vec()));
    }
    seen.sort();
    let expected: Vec<Vec<u8>> = (0..5000u32).map(|i| i.to_be_bytes().to_vec()).collect();
    assert_eq!(seen, expected);
}

#[test]
fn iteration_does_not_block_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    for i in 0..100u32 {
        db.put(i.to_be_bytes(), "v").expect("put");
    }
    let mut iter = db.range::<&[u8], _>(..);
    let first = iter.next().expect("one entry").expect("ok");
    // A write while the iterator is alive must not deadlock.
    db.put(1000u32.to_be_bytes(), "later")
        .expect("put while iterating");
    let rest = iter.count();
    assert_eq!(first.0.to_vec(), 0u32.to_be_bytes());
    assert!(rest >= 99, "saw {rest}");
}

#[test]
fn oversized_keys_values_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let before = db.stats().expect("stats").wal_bytes;

    let big_key = vec![b'k'; MAX_KEY_LEN + 1];
    let err = db.put(&big_key, "v").expect_err("key too large");
    assert!(
        matches!(err, Error::LimitExceeded { what: "key", len, max } if len == MAX_KEY_LEN as u64 + 1 && max == MAX_KEY_LEN as u64),
        "{err}"
    );
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert!(matches!(
        db.delete(&big_key),
        Err(Error::LimitExceeded { what: "key", .. })
    ));

    let mut batch = Batch::new();
    batch.put("fine", "v").put(&big_key, "v");
    assert!(matches!(db.write(batch), Err(Error::LimitExceeded { .. })));
    assert_eq!(
        db.get("fine").expect("get"),
        None,
        "the whole batch was refused"
    );

    let big_value = vec![0u8; MAX_VALUE_LEN + 1];
    assert!(matches!(
        db.put("k", &big_value),
        Err(Error::LimitExceeded { what: "value", .. })
    ));
    assert_eq!(db.stats().expect("stats").wal_bytes, before);

    db.put(vec![b'k'; MAX_KEY_LEN], "v")
        .expect("a key at the limit is fine");
}

#[test]
fn a_file_where_the_directory_should_be_is_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"hello").expect("write");
    let err = Db::open(&file).expect_err("a file is not a store");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(err.to_string().contains("is a file"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"hello", "untouched");
}

#[test]
fn a_directory_holding_something_else_is_refused_and_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("thesis.tex"), b"\\documentclass").expect("write");
    let err = Db::open(dir.path()).expect_err("not a store");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert_eq!(files(dir.path()), ["thesis.tex"], "nothing was created");
}

#[test]
fn a_log_that_is_not_ours_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wal-0000000000000000");
    std::fs::write(
        &path,
        b"#!/bin/sh\necho this is not a log, but it is long enough\n",
    )
    .expect("write");
    let err = Db::open(dir.path()).expect_err("not ours");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(
        !dir.path().join("LOCK").exists(),
        "validated before writing anything"
    );
}

#[test]
fn a_missing_directory_is_created_unless_told_not_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("a/b/store");
    let err = Options::new()
        .create_if_missing(false)
        .open(&missing)
        .expect_err("missing");
    assert!(matches!(err, Error::NotAStore { .. }), "{err}");
    assert!(!missing.exists());
    let db = Db::open(&missing).expect("created");
    db.put("k", "v").expect("put");
    assert!(missing.is_dir());
}

#[test]
fn an_exclusive_handle_keeps_every_other_opener_out_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exclusive = || Options::new().exclusive(true).open(dir.path());
    let db = exclusive().expect("open");
    for err in [
        Db::open(dir.path()).expect_err("locked"),
        exclusive().expect_err("locked"),
        Options::new()
            .read_only(true)
            .open(dir.path())
            .expect_err("locked"),
    ] {
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(err.to_string().contains("LOCK"), "{err}");
    }
    db.put("k", "v").expect("the exclusive handle writes");
    drop(db);

    let shared = Db::open(dir.path()).expect("the lock dies with the handle");
    let err = exclusive().expect_err("a shared handle is open");
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(shared);
    exclusive().expect("open once alone");
}

#[test]
fn two_handles_share_a_store_and_see_each_others_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(dir.path());
    let b = open(dir.path());
    a.put("from-a", "1").expect("put");
    assert_eq!(b.get("from-a").expect("get").as_deref(), Some(&b"1"[..]));
    b.delete("from-a").expect("delete");
    b.put("from-b", "2").expect("put");
    assert_eq!(a.get("from-a").expect("get"), None);
    assert_eq!(a.len().expect("len"), 1);
    let keys: Vec<_> = a
        .range::<&[u8], _>(..)
        .map(|e| e.expect("entry").0.to_vec())
        .collect();
    assert_eq!(keys, [b"from-b".to_vec()]);

    // A compaction by one is picked up by the other, which keeps answering across it.
    for i in 0..100u32 {
        a.put(format!("k{i:03}"), format!("v{i}")).expect("put");
    }
    b.compact().expect("compact");
    a.put("after", "x")
        .expect("put after the other's compaction");
    assert_eq!(a.stats().expect("stats").generation, 1);
    assert_eq!(a.stats().expect("stats").partition_entries(), 101);
    assert_eq!(b.get("after").expect("get").as_deref(), Some(&b"x"[..]));
    assert_eq!(a.get("k042").expect("get").as_deref(), Some(&b"v42"[..]));
    assert_eq!(a.len().expect("len"), 102);
    assert_eq!(b.len().expect("len"), 102);
}

#[test]
fn a_read_only_handle_reads_and_follows_but_never_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = Options::new()
        .read_only(true)
        .open(dir.path().join("missing"))
        .expect_err("a read-only open does not create");
    assert!(matches!(missing, Error::NotAStore { .. }), "{missing}");
    assert!(!dir.path().join("missing").exists());

    let writer = open(dir.path());
    writer.put("a", "1").expect("put");
    let reader = Options::new()
        .read_only(true)
        .open(dir.path())
        .expect("open read-only");
    assert_eq!(reader.get("a").expect("get").as_deref(), Some(&b"1"[..]));
    for err in [
        reader.put("b", "2").expect_err("read-only"),
        reader.delete("a").expect_err("read-only"),
        reader.compact().expect_err("read-only"),
        reader
            .transaction(|tx| tx.put("c", "3"))
            .expect_err("read-only"),
    ] {
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    }
    writer.put("b", "2").expect("put");
    writer.compact().expect("compact");
    writer.put("c", "3").expect("put");
    assert_eq!(reader.len().expect("len"), 3);
    assert_eq!(reader.get("c").expect("get").as_deref(), Some(&b"3"[..]));
}

#[test]
fn transactions_read_their_own_writes_and_commit_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.put("balance/alice", "10").expect("put");
    let moved = db
        .transaction(|tx| {
            tx.put("balance/alice", "7")?;
            tx.put("balance/bob", "3")?;
            assert_eq!(tx.get("balance/alice")?.as_deref(), Some(&b"7"[..]));
            tx.delete("balance/bob")?;
            assert_eq!(tx.get("balance/bob")?, None);
            tx.put("balance/bob", "3")?;
            Ok::<_, Error>(3)
        })
        .expect("transaction");
    assert_eq!(moved, 3);
    assert_eq!(
        db.get("balance/bob").expect("get").as_deref(),
        Some(&b"3"[..])
    );

    // An error inside writes nothing.
    #[derive(Debug)]
    enum Mine {
        Refused,
        Store(#[allow(dead_code, reason = "shown by Debug")] Error),
    }
    impl From<Error> for Mine {
        fn from(e: Error) -> Self {
            Mine::Store(e)
        }
    }
    let result: Result<(), Mine> = db.transaction(|tx| {
        tx.put("balance/alice", "0")?;
        Err(Mine::Refused)
    });
    assert!(matches!(result, Err(Mine::Refused)), "{result:?}");
    assert_eq!(
        db.get("balance/alice").expect("get").as_deref(),
        Some(&b"7"[..])
    );

    // So does a panic, and the store keeps working.
    let db2 = db.clone();
    let panicked = std::thread::spawn(move || {
        db2.transaction(|tx| -> Result<(), Error> {
            tx.put("balance/alice", "-1")?;
            panic!("the closure panics");
        })
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(
        db.get("balance/alice").expect("get").as_deref(),
        Some(&b"7"[..])
    );
    db.put("after", "ok").expect("writes go on");

    // An oversized key inside is refused with nothing written.
    let err = db
        .transaction(|tx| {
            tx.put("fine", "1")?;
            tx.put(vec![0u8; sturdykv::MAX_KEY_LEN + 1], "v")
        })
        .expect_err("too long");
    assert!(matches!(err, Error::LimitExceeded { .. }), "{err}");
    assert_eq!(db.get("fine").expect("get"), None);
    drop(db);
    let db = open(dir.path());
    assert_eq!(
        db.get("balance/alice").expect("get").as_deref(),
        Some(&b"7"[..])
    );
    assert_eq!(
        db.get("balance/bob").expect("get").as_deref(),
        Some(&b"3"[..])
    );
}

#[test]
fn compare_and_swap_writes_only_over_the_expected_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    db.compare_and_swap("k", None, Some(b"1"))
        .expect("cas")
        .expect("absent as expected");
    let conflict = db
        .compare_and_swap("k", None, Some(b"2"))
        .expect("cas")
        .expect_err("present");
    assert_eq!(conflict.current.as_deref(), Some(&b"1"[..]));
    db.compare_and_swap("k", Some(b"1"), None)
        .expect("cas")
        .expect("matches");
    assert_eq!(db.get("k").expect("get"), None);
}

#[test]
fn concurrent_transactions_in_two_handles_never_lose_an_increment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handles = [open(dir.path()), open(dir.path())];
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let db = handles[t % 2].clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    db.transaction(|tx| {
                        let n: u64 = tx
                            .get("counter")?
                            .map_or(0, |v| String::from_utf8_lossy(&v).parse().unwrap_or(0));
                        tx.put("counter", (n + 1).to_string())
                    })
                    .expect("transaction");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for db in &handles {
        assert_eq!(
            db.get("counter").expect("get").as_deref(),
            Some(&b"200"[..])
        );
    }
}

#[test]
fn buffered_writes_are_visible_and_flush_makes_them_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .durability(Durability::Buffered)
        .open(dir.path())
        .expect("open");
    for i in 0..100u32 {
        db.put(i.to_be_bytes(), "v").expect("put");
    }
    assert_eq!(
        db.stats().expect("stats").syncs,
        0,
        "buffered writes do not sync"
    );
    db.flush().expect("flush");
    assert_eq!(db.stats().expect("stats").syncs, 1);
    drop(db);
    assert_eq!(open(dir.path()).len().expect("len"), 100);
}

#[test]
fn db_is_clone_send_sync_and_shared_across_threads() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Db>();

    let dir = tempfile::tempdir().expect("tempdir");
    let db = open(dir.path());
    let handles: Vec<_> = (0..4u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                for i in 0..25u32 {
                    db.put([t.to_be_bytes(), i.to_be_bytes()].concat(), "v")
                        .expect("put");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(db.len().expect("len"), 100);
}

/// Reader threads on other cores never see half of a batch, nor the store go back to an older
/// version, while a writer commits batches (buffered, so that commits come fast) and compacts:
/// each batch sets three keys to the same version, applied to the view under its write lock as
/// a whole, and each reader's scan sees one state.
#[test]
fn readers_on_many_threads_see_whole_batches_only() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .durability(Durability::Buffered)
        .open(dir.path())
        .expect("open");
    let names = ["a", "b", "c"];
    let version = |db: &Db, key: &str| -> u64 {
        db.get(key).expect("get").map_or(0, |v| {
            u64::from_be_bytes(v.as_ref().try_into().expect("an 8-byte version"))
        })
    };
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let (mut last, mut reads) = (0, 0u64);
                    while !done.load(Ordering::Relaxed) {
                        // One scan reads one state of the store: the three keys are equal.
                        let seen: Vec<u64> = collect(db.range::<&str, _>(..))
                            .into_iter()
                            .map(|(_, v)| u64::from_be_bytes(v.try_into().expect("8 bytes")))
                            .collect();
                        let a = seen.first().copied().unwrap_or(0);
                        assert!(
                            seen.is_empty() || seen == [a; 3],
                            "half a batch seen: {seen:?}"
                        );
                        assert!(a >= last, "the keys went back from version {last} to {a}");
                        last = a;
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        for v in 1..=3_000u64 {
            let mut batch = Batch::new();
            for name in names {
                batch.put(name, v.to_be_bytes());
            }
            db.write(batch).expect("write");
            if v % 1_000 == 0 {
                db.compact().expect("compact");
            }
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().expect("reader") > 0, "a reader never read");
        }
    });
    for name in names {
        assert_eq!(version(&db, name), 3_000);
    }
}

/// Writer threads that wait for each other's commits and syncs by spinning (the default) and by
/// sleeping at once (`spin_wait(ZERO)`) both end with every acknowledged write in place, after a
/// reopen too, and puts and transactions mixed; a spin of `Duration::MAX` neither overflows nor
/// hangs.
#[test]
fn writers_that_spin_or_sleep_while_waiting_lose_nothing() {
    // `Duration::MAX` too: a deadline that far off must not overflow. And a spin shorter than
    // a would-be leader's wait for more commits, which must then end with the spin.
    for spin in [
        std::time::Duration::ZERO,
        std::time::Duration::from_micros(5),
        sturdykv::DEFAULT_SPIN_WAIT,
        std::time::Duration::MAX,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Options::new()
            .spin_wait(spin)
            .open(dir.path())
            .expect("open");
        let threads: Vec<_> = (0..6u32)
            .map(|t| {
                let db = db.clone();
                std::thread::spawn(move || {
                    for i in 0..40u32 {
                        if t < 4 {
                            db.put([t.to_be_bytes(), i.to_be_bytes()].concat(), "v")
                                .expect("put");
                        } else {
                            db.transaction(|tx| {
                                let n = tx.get("counter")?.map_or(0, |v| v.len());
                                tx.put("counter", vec![b'+'; n + 1])
                            })
                            .expect("transaction");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        drop(db);
        let db = open(dir.path());
        assert_eq!(db.len().expect("len"), 161, "spin {spin:?}");
        assert_eq!(
            db.get("counter").expect("get").map(|v| v.len()),
            Some(80),
            "spin {spin:?}"
        );
    }
}

#[test]
fn errors_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Options::new()
        .exclusive(true)
        .open(dir.path())
        .expect("open");
    let err = Db::open(dir.path()).expect_err("locked");
    let text = err.to_string();
    assert!(
        !text.contains("Locked {"),
        "Display must not be Debug: {text}"
    );
    drop(db);
}

/// A writer that finds fewer commits queued than the last syncs covered waits a moment for the
/// rest (DECISIONS 45). When the threads that made those groups are gone, the wait must end by
/// itself, whatever `spin_wait` is: nobody else is left to wake it.
#[test]
fn a_writer_expecting_a_bigger_group_than_comes_does_not_stall() {
    for spin in [
        std::time::Duration::ZERO,
        std::time::Duration::from_micros(5),
        sturdykv::DEFAULT_SPIN_WAIT,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Options::new()
            .spin_wait(spin)
            .open(dir.path())
            .expect("open");
        // Eight writers, whose last puts start together: the last syncs cover several each.
        let together = std::sync::Barrier::new(8);
        std::thread::scope(|s| {
            for t in 0..8u32 {
                let (db, together) = (&db, &together);
                s.spawn(move || {
                    for i in 0..40u32 {
                        if i >= 38 {
                            together.wait();
                        }
                        db.put(format!("big-{t}-{i}"), "v").expect("put");
                    }
                });
            }
        });
        // Then one writer alone, which always finds fewer queued than expected.
        let (done, finished) = std::sync::mpsc::channel();
        let alone = db.clone();
        std::thread::spawn(move || {
            for i in 0..20u32 {
                alone.put(format!("small-{i}"), "v").expect("put");
            }
            done.send(()).expect("send");
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("a lone writer stalled with spin_wait {spin:?}"));
        assert_eq!(db.len().expect("len"), 8 * 40 + 20);
    }
}
