//! Helpers shared by the integration tests (each test file declares `mod common;`).
// Every test file is its own crate and uses only some of these.
#![allow(
    dead_code,
    reason = "each test crate uses a different subset of the helpers"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use sturdykv::{Bytes, Db, Options};

/// The store's contents, as a map.
pub type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// Opens (creating) the store in `dir` with the default options.
pub fn open(dir: &Path) -> Db {
    Db::open(dir).expect("open")
}

/// Opens the store in `dir` without background compaction: it compacts only when told to, so a
/// test knows which files exist.
pub fn open_manual(dir: &Path) -> Db {
    Options::new()
        .background_compaction(false)
        .open(dir)
        .expect("open")
}

/// Every entry of `iter`, copied out.
pub fn collect(
    iter: impl Iterator<Item = sturdykv::Result<(Bytes, Bytes)>>,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    iter.map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .expect("iterate")
}

/// The keys of `iter`, as text.
pub fn keys(iter: impl Iterator<Item = sturdykv::Result<(Bytes, Bytes)>>) -> Vec<String> {
    collect(iter)
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).expect("utf-8 key"))
        .collect()
}

/// The whole store, in key order.
pub fn dump(db: &Db) -> Contents {
    collect(db.range::<&[u8], _>(..)).into_iter().collect()
}

/// The whole store's keys, in descending order.
pub fn keys_descending(db: &Db) -> Vec<Vec<u8>> {
    db.range::<&[u8], _>(..)
        .rev()
        .map(|kv| kv.expect("scan").0.to_vec())
        .collect()
}

/// The names in `dir`, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Re-executes this test binary to run only its `child` test, which plays `role` (with `args`)
/// when it finds them in the environment variable `role_env`; its stdout is piped back.
pub fn spawn_child(role_env: &str, role: &str, args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(role_env, format!("{role} {}", args.join(" ")))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child process")
}
