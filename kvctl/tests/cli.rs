//! `kvctl`, run as the real binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn kvctl(db: &Path, args: &[&str]) -> Output {
    kvctl_with_stdin(db, args, None)
}

fn kvctl_with_stdin(db: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("KVCTL_DB")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kvctl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(bytes) = stdin {
        input.write_all(bytes).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait")
}

fn status(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn put_then_get_prints_the_exact_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let out = kvctl(&db, &["put", "greeting", "hello"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let out = kvctl(&db, &["get", "greeting"]);
    assert_eq!(status(&out), 0);
    assert_eq!(
        out.stdout, b"hello",
        "no newline added when stdout is a pipe"
    );
}

#[test]
fn binary_values_go_through_stdin_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let value: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let out = kvctl_with_stdin(&db, &["put", "blob"], Some(&value));
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let out = kvctl_with_stdin(&db, &["put", "dash", "-"], Some(b"\x00\xff\n"));
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(kvctl(&db, &["get", "blob"]).stdout, value);
    assert_eq!(kvctl(&db, &["get", "dash"]).stdout, b"\x00\xff\n");
    // An empty stdin is an empty value, not an error.
    assert_eq!(
        status(&kvctl_with_stdin(&db, &["put", "empty"], Some(b""))),
        0
    );
    let out = kvctl(&db, &["get", "empty"]);
    assert_eq!((status(&out), out.stdout.len()), (0, 0));
}

#[test]
fn missing_keys_exit_1_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    kvctl(&db, &["put", "a", "1"]);
    let out = kvctl(&db, &["get", "nope"]);
    assert_eq!(status(&out), 1);
    assert!(out.stdout.is_empty());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let out = kvctl(&db, &["delete", "nope"]);
    assert_eq!(status(&out), 1);
    let out = kvctl(&db, &["delete", "a"]);
    assert_eq!(status(&out), 0);
    assert_eq!(status(&kvctl(&db, &["get", "a"])), 1);
}

#[test]
fn scan_lists_in_order_with_prefix_limit_and_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    for (k, v) in [("b", "2"), ("a", "1"), ("ab", "x\ty"), ("c", "3")] {
        assert_eq!(status(&kvctl(&db, &["put", k, v])), 0);
    }
    kvctl_with_stdin(&db, &["put", "bin"], Some(b"\x00\n\\"));
    let out = kvctl(&db, &["scan"]);
    assert_eq!(status(&out), 0);
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        "a\t1\nab\tx\\ty\nb\t2\nbin\t\\x00\\n\\\\\nc\t3\n"
    );
    let out = kvctl(&db, &["scan", "--prefix", "a"]);
    assert_eq!(out.stdout, b"a\t1\nab\tx\\ty\n");
    let out = kvctl(&db, &["scan", "--limit", "2"]);
    assert_eq!(out.stdout, b"a\t1\nab\tx\\ty\n");
}

#[test]
fn the_store_can_come_from_kvctl_db() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["put", "k", "v"])
        .env("KVCTL_DB", &db)
        .output()
        .expect("run");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(kvctl(&db, &["get", "k"]).stdout, b"v");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    assert_eq!(status(&kvctl(&db, &["frobnicate"])), 2);
    assert_eq!(status(&kvctl(&db, &["get"])), 2);
    assert_eq!(status(&kvctl(&db, &["scan", "--limit", "many"])), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["get", "k"])
        .env_remove("KVCTL_DB")
        .output()
        .expect("run");
    assert_eq!(status(&out), 2, "no --db and no KVCTL_DB");
    assert!(stderr(&out).contains("--db"), "{}", stderr(&out));
    let out = kvctl(&db, &["--help"]);
    assert_eq!(status(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status"));
}

#[test]
fn read_commands_do_not_create_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("typo");
    let out = kvctl(&db, &["get", "k"]);
    assert_eq!(status(&out), 5);
    assert!(
        stderr(&out).contains("not a sturdykv store"),
        "{}",
        stderr(&out)
    );
    assert!(!db.exists());
}

#[test]
fn a_file_where_the_directory_should_be() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"data").expect("write");
    let out = kvctl(&file, &["put", "k", "v"]);
    assert_eq!(status(&out), 5);
    let err = stderr(&out);
    assert!(
        err.starts_with("kvctl: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"data");
}

#[test]
fn an_unreadable_directory_is_a_clear_io_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    assert_eq!(status(&kvctl(&db, &["put", "k", "v"])), 0);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // Root ignores permissions, so run as `nobody` when we are root.
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        c.arg(env!("CARGO_BIN_EXE_kvctl"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_kvctl"))
    };
    let out = cmd
        .arg("--db")
        .arg(&db)
        .args(["get", "k"])
        .env_remove("KVCTL_DB")
        .output()
        .expect("run kvctl (as root this needs setpriv from util-linux)");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
    assert_eq!(status(&out), 3, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ermission denied"),
        "{}",
        stderr(&out)
    );
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

#[test]
fn oversized_keys_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let key = "k".repeat(sturdykv::MAX_KEY_LEN + 1);
    let out = kvctl(&db, &["put", &key, "v"]);
    assert_eq!(status(&out), 3);
    assert!(stderr(&out).contains("over the limit"), "{}", stderr(&out));
}

#[test]
fn kvctl_works_on_a_store_an_application_holds_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let app = sturdykv::Db::open(&db).expect("open");
    app.put("from-app", "1").expect("put");
    let out = kvctl(&db, &["get", "from-app"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "1");
    assert_eq!(status(&kvctl(&db, &["put", "from-kvctl", "2"])), 0);
    assert_eq!(
        app.get("from-kvctl").expect("get").as_deref(),
        Some(&b"2"[..]),
        "the application sees kvctl's write at once"
    );
    assert_eq!(status(&kvctl(&db, &["compact"])), 0);
    app.put("after", "3")
        .expect("the application writes after kvctl compacted");
    let out = kvctl(&db, &["scan", "--keys-only"]);
    assert_eq!(stdout(&out), "after\nfrom-app\nfrom-kvctl\n");
    assert_eq!(status(&kvctl(&db, &["check"])), 0);
}

#[test]
fn an_exclusively_held_store_exits_6() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let handle = sturdykv::Options::new()
        .exclusive(true)
        .open(&db)
        .expect("open");
    let out = kvctl(&db, &["get", "k"]);
    assert_eq!(status(&out), 6, "{}", stderr(&out));
    assert!(stderr(&out).contains("LOCK"), "{}", stderr(&out));
    drop(handle);
}

#[test]
fn a_broken_pipe_exits_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let mut batch = sturdykv::Batch::new();
    for i in 0..50_000u32 {
        batch.put(format!("key{i:08}"), "some value to make the output long");
    }
    sturdykv::Db::open(&db)
        .expect("open")
        .write(batch)
        .expect("write");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .arg("--db")
        .arg(&db)
        .arg("scan")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Read one line, then hang up, like `kvctl scan | head -1`.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).expect("read");
    drop(stdout);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn compact_check_and_stat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    for i in 0..50 {
        assert_eq!(status(&kvctl(&db, &["put", &format!("k{i:02}"), "v"])), 0);
    }
    let out = kvctl(&db, &["compact"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("50 keys in 1 partitions"),
        "{}",
        stdout(&out)
    );
    let out = kvctl(&db, &["stat"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("generation        1"), "{text}");
    assert!(text.contains("runs              0 "), "{text}");
    assert!(text.contains("partitions        1 ("), "{text}");
    assert!(text.contains(" bytes, 50 keys)"), "{text}");
    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("part-0000000000000000: 50 entries"), "{text}");
    assert!(
        text.contains("ok  ") && text.contains("MANIFEST-"),
        "{text}"
    );
    assert_eq!(kvctl(&db, &["get", "k07"]).stdout, b"v");
}

#[test]
fn check_names_the_file_and_offset_of_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    for i in 0..500 {
        kvctl(&db, &["put", &format!("key{i:04}"), "some value"]);
    }
    assert_eq!(status(&kvctl(&db, &["compact"])), 0);
    let snap = db.join("part-0000000000000000");
    let mut bytes = std::fs::read(&snap).expect("read");
    bytes[3000] ^= 0xff;
    std::fs::write(&snap, bytes).expect("write");
    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 4, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("part-0000000000000000") && err.contains("offset"),
        "{err}"
    );
    assert!(
        stdout(&out).contains("DAMAGED") && stdout(&out).contains("a sorted-file block, keys from"),
        "{}",
        stdout(&out)
    );
}

/// `check` lists every damaged record, not only the first.
#[test]
fn check_lists_every_damaged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    numbered_store_with_damage(&db, 30, &[10, 20]);
    let before = store_bytes(&db);
    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 4, "{}", stderr(&out));
    let listed = stdout(&out);
    assert_eq!(listed.matches("DAMAGED").count(), 2, "{listed}");
    assert!(
        listed.contains("key:10") && listed.contains("key:20"),
        "{listed}"
    );
    let out = kvctl(&db, &["--json", "check"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(
        report["damaged"].as_array().map(Vec::len),
        Some(2),
        "{report}"
    );
    assert_eq!(store_bytes(&db), before);
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn filled_store(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("store");
    for (k, v) in [
        ("a", "1"),
        ("b", "2"),
        ("c", "3"),
        ("d", "4"),
        ("user/1", "ada"),
        ("user/2", "bob"),
    ] {
        assert_eq!(status(&kvctl(&db, &["put", k, v])), 0);
    }
    db
}

#[test]
fn scan_bounds_order_and_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = filled_store(dir.path());
    assert_eq!(
        stdout(&kvctl(&db, &["scan", "--from", "b", "--to", "d"])),
        "b\t2\nc\t3\n"
    );
    assert_eq!(
        stdout(&kvctl(
            &db,
            &["scan", "--from", "b", "--to", "d", "--reverse"]
        )),
        "c\t3\nb\t2\n"
    );
    assert_eq!(
        stdout(&kvctl(&db, &["scan", "--prefix", "user/", "--keys-only"])),
        "user/1\nuser/2\n"
    );
    assert_eq!(
        stdout(&kvctl(
            &db,
            &["scan", "--prefix", "user/", "--reverse", "--limit", "1"]
        )),
        "user/2\tbob\n"
    );
    assert_eq!(stdout(&kvctl(&db, &["scan", "--count"])), "6\n");
    assert_eq!(
        stdout(&kvctl(
            &db,
            &["scan", "--prefix", "user/", "--from", "user/2", "--count"]
        )),
        "1\n"
    );
    assert_eq!(
        stdout(&kvctl(&db, &["scan", "--count", "--json"])),
        "{\"count\":6}\n"
    );
    assert_eq!(
        stdout(&kvctl(&db, &["scan", "--prefix", "user/", "--json"])),
        "{\"key\":\"user/1\",\"value\":\"ada\"}\n{\"key\":\"user/2\",\"value\":\"bob\"}\n"
    );
}

#[test]
fn json_output_is_lossless_for_binary_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    assert_eq!(status(&kvctl(&db, &["--hex", "put", "00ff", "c328"])), 0);
    let out = kvctl(&db, &["--hex", "--json", "get", "00ff"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let parsed: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(parsed["key_base64"], "AP8=");
    assert_eq!(parsed["value_base64"], "wyg=");
    let out = kvctl(&db, &["--json", "stat"]);
    let stat: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(stat["keys"], 1);
}

#[test]
fn hex_and_base64_input_and_their_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    assert_eq!(status(&kvctl(&db, &["--hex", "put", "6869", "00"])), 0);
    assert_eq!(kvctl(&db, &["get", "hi"]).stdout, b"\x00");
    assert_eq!(status(&kvctl(&db, &["--base64", "put", "aGk=", "AQI="])), 0);
    assert_eq!(kvctl(&db, &["get", "hi"]).stdout, b"\x01\x02");
    assert_eq!(kvctl(&db, &["--base64", "get", "aGk="]).stdout, b"\x01\x02");

    let out = kvctl(&db, &["--hex", "put", "zz", "00"]);
    assert_eq!(status(&out), 2, "bad hex is a usage error");
    assert!(stderr(&out).contains("not valid hex"), "{}", stderr(&out));
    let out = kvctl(&db, &["--base64", "put", "aGk=", "!!"]);
    assert_eq!(status(&out), 2);
    assert!(
        stderr(&out).contains("value is not valid base64"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        kvctl(&db, &["get", "hi"]).stdout,
        b"\x01\x02",
        "the store is unchanged"
    );
    assert_eq!(
        status(&kvctl(&db, &["--hex", "--base64", "get", "00"])),
        2,
        "the two conflict"
    );
}

#[test]
fn a_truncated_or_foreign_load_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = filled_store(dir.path());
    let dump = kvctl(&source, &["dump"]);
    assert_eq!(status(&dump), 0);
    let text = stdout(&dump);
    assert!(
        text.starts_with("sturdykv-dump 1\n") && text.ends_with("end 6\n"),
        "{text}"
    );

    let target = dir.path().join("target");
    let truncated = &text.as_bytes()[..text.len() - "end 6\n".len()];
    for input in [
        truncated,
        b"#!/bin/sh\necho hi\n".as_slice(),
        b"".as_slice(),
    ] {
        let out = kvctl_with_stdin(&target, &["load"], Some(input));
        assert_eq!(status(&out), 7, "{}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was written"),
            "{}",
            stderr(&out)
        );
        assert_eq!(stdout(&kvctl(&target, &["scan", "--count"])), "0\n");
    }
    let out = kvctl_with_stdin(&target, &["load"], Some(text.as_bytes()));
    assert_eq!(
        (status(&out), stdout(&out)),
        (0, "loaded 6 entries\n".to_string())
    );
    assert_eq!(
        stdout(&kvctl(&target, &["scan"])),
        stdout(&kvctl(&source, &["scan"]))
    );
}

#[test]
fn completions_are_generated() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["completions", "bash"])
        .env_remove("KVCTL_DB")
        .output()
        .expect("run");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("_kvctl()"),
        "no --db needed for completions"
    );
}

#[test]
fn the_shell_runs_a_script_from_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    let script =
        b"# a comment\nput greeting \"hello world\"\nget greeting\nput a 1\nscan --keys-only\n\
                   get missing\nfrobnicate\nput novalue\nhelp\nexit\nput after exit\n";
    let out = kvctl_with_stdin(&db, &[], Some(script));
    let text = stdout(&out);
    assert!(text.starts_with("hello world\na\ngreeting\n"), "{text}");
    assert!(text.contains("Commands"), "help is printed: {text}");
    let err = stderr(&out);
    assert!(err.contains("key missing not found"), "{err}");
    assert!(err.contains("frobnicate"), "{err}");
    assert!(err.contains("needs a VALUE"), "{err}");
    assert_eq!(status(&out), 2, "a script's status is its last failure");
    assert_eq!(
        status(&kvctl(&db, &["get", "after"])),
        1,
        "nothing runs after exit"
    );
}

mod dump_load_round_trip {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

        /// `dump | load` into an empty store reproduces any binary content exactly.
        #[test]
        fn reproduces_binary_stores(entries in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 0..24),
            proptest::collection::vec(any::<u8>(), 0..64),
            0..40,
        )) {
            let dir = tempfile::tempdir().expect("tempdir");
            let source = dir.path().join("source");
            let db = sturdykv::Db::open(&source).expect("open");
            let mut batch = sturdykv::Batch::new();
            for (k, v) in &entries {
                batch.put(k, v);
            }
            db.write(batch).expect("write");
            drop(db);

            let dump = kvctl(&source, &["dump"]);
            prop_assert_eq!(status(&dump), 0);
            let target = dir.path().join("target");
            let load = kvctl_with_stdin(&target, &["load"], Some(&dump.stdout));
            prop_assert_eq!(status(&load), 0, "{}", stderr(&load));

            let db = sturdykv::Db::open(&target).expect("open");
            let loaded: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = db
                .range::<&[u8], _>(..)
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
                .collect::<Result<_, _>>()
                .expect("scan");
            prop_assert_eq!(loaded, entries);
        }
    }
}

#[test]
fn crash_test_kills_writers_and_checks_every_acknowledged_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crashtest");
    let out = kvctl(
        &db,
        &["crash-test", "--cycles", "5", "--writers", "3", "--json"],
    );
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(report["cycles"], 5);
    assert_eq!(report["writers"], 3);
    assert_eq!(report["violations"], 0);
    assert!(
        report["acknowledged_increments"].as_u64().expect("count") > 0,
        "{report}"
    );
    assert!(
        report["acknowledged_batches"].as_u64().expect("count") > 0,
        "{report}"
    );
    assert!(
        report["note"]
            .as_str()
            .expect("note")
            .contains("process death")
    );
    // The store it leaves behind is a valid store.
    assert_eq!(status(&kvctl(&db, &["check"])), 0);
}

#[test]
fn crash_test_simulates_power_loss_without_a_directory() {
    let out = Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(["crash-test", "--simulate", "--cycles", "10"])
        .env_remove("KVCTL_DB")
        .output()
        .expect("run");
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("10 workloads") && stdout(&out).contains("40 crash images"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn crash_test_refuses_a_directory_that_holds_something() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("precious.txt"), b"keep me").expect("write");
    let out = kvctl(dir.path(), &["crash-test", "--cycles", "1"]);
    assert_eq!(status(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("new or empty directory"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert_eq!(names.len(), 1, "nothing was written");
}

#[test]
fn watch_prints_changes_under_the_prefix_as_they_are_committed() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    assert_eq!(status(&kvctl(&db, &["put", "user/0", "old"])), 0);
    for json in [false, true] {
        let mut args = vec!["--db", db.to_str().expect("utf-8 path")];
        if json {
            args.push("--json");
        }
        args.extend(["watch", "user/", "--count", "2"]);
        let mut watcher = Command::new(env!("CARGO_BIN_EXE_kvctl"))
            .args(&args)
            .env_remove("KVCTL_DB")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kvctl watch");
        // It says on stderr when it is watching; changes after that are its to print.
        let mut ready = String::new();
        BufReader::new(watcher.stderr.take().expect("stderr"))
            .read_line(&mut ready)
            .expect("read stderr");
        assert!(ready.starts_with("kvctl: watching user/"), "{ready}");
        assert_eq!(status(&kvctl(&db, &["put", "other", "x"])), 0);
        assert_eq!(status(&kvctl(&db, &["put", "user/1", "a\tb"])), 0);
        assert_eq!(status(&kvctl(&db, &["delete", "user/0"])), 0);
        let out = watcher.wait_with_output().expect("wait");
        assert!(out.status.success());
        let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        if json {
            let first: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
            assert_eq!(first["op"], "put");
            assert_eq!(first["key"], "user/1");
            assert_eq!(first["value"], "a\tb");
            let second: serde_json::Value = serde_json::from_str(&lines[1]).expect("json");
            assert_eq!(second["op"], "delete");
            assert!(second["sequence"].as_u64() > first["sequence"].as_u64());
        } else {
            let fields: Vec<&str> = lines[0].split('\t').collect();
            assert_eq!(&fields[1..], ["put", "user/1", "a\\tb"]);
            let fields: Vec<&str> = lines[1].split('\t').collect();
            assert_eq!(&fields[1..], ["delete", "user/0"]);
        }
        // Put the deleted key back for the second round.
        assert_eq!(status(&kvctl(&db, &["put", "user/0", "old"])), 0);
    }
}

#[test]
fn backup_copies_a_store_an_application_holds_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = filled_store(dir.path());
    let app = sturdykv::Db::open(&db).expect("the application opens the store");
    app.put("written by the app", "1").expect("put");
    let copy = dir.path().join("copy");
    let out = kvctl(&db, &["--json", "backup", copy.to_str().expect("utf-8")]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert!(report["bytes"].as_u64() > Some(0), "{report}");
    let source = stdout(&kvctl(&db, &["scan"]));
    assert!(source.contains("written by the app"));
    assert_eq!(stdout(&kvctl(&copy, &["scan"])), source);
    assert_eq!(status(&kvctl(&copy, &["check"])), 0);
    // A second backup to the same place is refused and changes nothing.
    let out = kvctl(&db, &["backup", copy.to_str().expect("utf-8")]);
    assert_eq!(status(&out), 3);
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    assert_eq!(stdout(&kvctl(&copy, &["scan"])), source);
}

/// A store of `n` acknowledged puts `key:<i>` = `value-number-<i>` (i = 1..=n), each by its
/// own `kvctl put`, with one bit flipped inside the value of each record in `damaged`.
fn numbered_store_with_damage(db: &Path, n: usize, damaged: &[usize]) {
    for i in 1..=n {
        let out = kvctl(
            db,
            &["put", &format!("key:{i}"), &format!("value-number-{i}")],
        );
        assert_eq!(status(&out), 0, "{}", stderr(&out));
    }
    let wal = db.join("wal-0000000000000000");
    let mut log = std::fs::read(&wal).expect("read");
    for i in damaged {
        let value = format!("value-number-{i}");
        let at = log
            .windows(value.len())
            .position(|w| w == value.as_bytes())
            .expect("the record is in the log");
        log[at + 3] ^= 0x01;
    }
    std::fs::write(&wal, &log).expect("damage");
}

/// Every file of the store and its bytes.
fn store_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| {
            let e = e.expect("entry");
            let bytes = std::fs::read(e.path()).expect("read");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// One bit flipped in the middle of a store's log, under 25 acknowledged writes: every command
/// that reads says the store is corrupt (exit 4), naming the log and the damaged record's offset,
/// and none of them changes a byte of the store.
#[test]
fn damage_to_acknowledged_writes_is_reported_and_nothing_is_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    numbered_store_with_damage(&db, 50, &[25]);
    let before = store_bytes(&db);

    for args in [
        &["get", "key:40"][..],
        &["check"],
        &["scan", "--count"],
        &["stat"],
    ] {
        let out = kvctl(&db, args);
        assert_eq!(status(&out), 4, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("wal-0000000000000000") && err.contains("offset"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("kvctl check"), "{args:?}: {err}");
        assert_eq!(store_bytes(&db), before, "{args:?} changed the store");
    }
    let out = kvctl(&db, &["--json", "check"]);
    assert_eq!(status(&out), 4, "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(report["ok"], false, "{report}");
    assert!(
        report["damage"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("wal-0000000000000000")),
        "{report}"
    );
    assert_eq!(store_bytes(&db), before);

    // The salvage: every intact record kept, the damaged one named, and a store that opens.
    let out = kvctl(&db, &["repair"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("lost record") && said.contains("key:25"),
        "{said}"
    );
    assert!(said.contains("quarantine-"), "{said}");
    assert_eq!(stdout(&kvctl(&db, &["scan", "--count"])).trim(), "49");
    assert_eq!(kvctl(&db, &["get", "key:40"]).stdout, b"value-number-40");
    assert_eq!(status(&kvctl(&db, &["get", "key:25"])), 1);
    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert_eq!(
        status(&kvctl(&db, &["put", "key:51", "after the repair"])),
        0
    );
    assert_eq!(stdout(&kvctl(&db, &["scan", "--count"])).trim(), "50");
}

/// A torn tail (a crash in the middle of the last append) is not damage: `check` says so and
/// exits 0, and reading commands change nothing; the next write cuts it off.
#[test]
fn check_tells_a_torn_tail_from_damage_and_leaves_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store");
    for i in 0..5 {
        assert_eq!(status(&kvctl(&db, &["put", &format!("k{i}"), "v"])), 0);
    }
    let out = kvctl(&db, &["--json", "stat"]);
    let stat: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    let end = stat["wal_bytes"].as_u64().expect("wal_bytes");
    // Tear the last record (the empty one the last close appended) as a crash would.
    let wal = db.join("wal-0000000000000000");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .expect("open");
    file.set_len(end - 3).expect("tear");
    drop(file);
    let before = store_bytes(&db);

    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(stdout(&out).contains("torn tail"), "{}", stdout(&out));
    let out = kvctl(&db, &["--json", "check"]);
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("json");
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["torn_tail_offset"].is_u64(), "{report}");
    assert_eq!(kvctl(&db, &["get", "k4"]).stdout, b"v");
    assert_eq!(
        store_bytes(&db),
        before,
        "reading commands changed the store"
    );

    assert_eq!(status(&kvctl(&db, &["put", "k5", "v"])), 0);
    let out = kvctl(&db, &["check"]);
    assert_eq!(status(&out), 0, "{}", stderr(&out));
    assert!(!stdout(&out).contains("torn tail"), "{}", stdout(&out));
}
