//! `kvctl`: inspect, script and repair a sturdykv store from the shell. A thin client of the
//! public API: one function per subcommand, no engine logic here.

mod codec;
mod crash_test;
mod dump;
mod shell;

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::ops::Bound;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value, json};
use sturdykv::{Bytes, Db, Error, Options};

use codec::{Input, escape, json_bytes};

/// Exit statuses, documented in `--help`.
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 3;
const EXIT_CORRUPT: u8 = 4;
const EXIT_NOT_A_STORE: u8 = 5;
const EXIT_LOCKED: u8 = 6;
const EXIT_BAD_INPUT: u8 = 7;

const AFTER_HELP: &str = "\
With no command on a terminal, kvctl starts an interactive shell (with no command and stdin not
a terminal, it runs the commands read from stdin, one per line).

Exit status: 0 success, 1 key not found, 2 usage error (also a KEY that is not valid hex or
base64), 3 I/O or other failure, 4 corruption detected, 5 not a sturdykv store (or a newer
format), 6 store locked by another process, 7 invalid input data (`load`), 8 crash-test found
a lost or partial batch.

Examples:
  kvctl --db demo.db put greeting hello
  kvctl --db demo.db get greeting
  head -c 1000 /dev/urandom | kvctl --db demo.db put blob
  KVCTL_DB=demo.db kvctl scan --prefix user/ --limit 10 --json
  kvctl --db demo.db dump > backup.txt && kvctl --db copy.db load < backup.txt";

/// Inspect, script and repair a sturdykv store.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The store directory (or set KVCTL_DB).
    #[arg(long, env = "KVCTL_DB", value_name = "DIR", global = true)]
    db: Option<PathBuf>,
    /// Print data as JSON, one object per line. Keys and values that are not UTF-8 appear as
    /// `key_base64` / `value_base64`.
    #[arg(long, global = true)]
    json: bool,
    /// KEY, VALUE, --prefix, --from and --to arguments are hexadecimal.
    #[arg(long, global = true, conflicts_with = "base64")]
    hex: bool,
    /// KEY, VALUE, --prefix, --from and --to arguments are base64.
    #[arg(long, global = true)]
    base64: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set KEY to VALUE (read VALUE from stdin, byte for byte, if it is absent or `-`; not in the
    /// shell).
    #[command(
        after_help = "Examples:\n  kvctl --db demo.db put greeting hello\n  kvctl --db demo.db put photo < photo.jpg\n  kvctl --db demo.db --hex put 00ff 0a0b"
    )]
    Put {
        /// The key.
        key: OsString,
        /// The value; absent or `-` reads stdin.
        value: Option<OsString>,
    },
    /// Print the value of KEY: its exact bytes when stdout is not a terminal, escaped otherwise.
    #[command(
        after_help = "Exit status 1 if the key is absent.\n\nExamples:\n  kvctl --db demo.db get greeting\n  kvctl --db demo.db get photo > photo.jpg\n  kvctl --db demo.db --json get greeting"
    )]
    Get {
        /// The key.
        key: OsString,
    },
    /// Remove KEY.
    #[command(
        after_help = "Exit status 1 if the key was absent.\n\nExample:\n  kvctl --db demo.db delete greeting"
    )]
    Delete {
        /// The key.
        key: OsString,
    },
    /// List entries in key order, one `KEY<TAB>VALUE` line each, with non-printable bytes, tab,
    /// newline and backslash escaped (`\t`, `\n`, `\\`, `\xNN`).
    #[command(
        after_help = "Examples:\n  kvctl --db demo.db scan --prefix user/ --limit 10\n  kvctl --db demo.db scan --from a --to m --reverse --keys-only\n  kvctl --db demo.db scan --prefix user/ --count"
    )]
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<OsString>,
        /// Only keys at or after this one.
        #[arg(long)]
        from: Option<OsString>,
        /// Only keys before this one.
        #[arg(long)]
        to: Option<OsString>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Descending key order.
        #[arg(long)]
        reverse: bool,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        /// Print only how many entries match.
        #[arg(long)]
        count: bool,
    },
    /// Print figures about the store.
    #[command(after_help = "Example:\n  kvctl --db demo.db stat --json")]
    Stat,
    /// Flush the memtable and merge the runs into the partitions now (a progress bar on a terminal).
    #[command(after_help = "Example:\n  kvctl --db demo.db compact")]
    Compact,
    /// Read back and verify every byte of the sorted files, the manifest and the log, writing nothing. Exit status
    /// 4 on damage to acknowledged data, naming the file and the byte offset; a torn tail (writes
    /// a crash interrupted before they were acknowledged) is normal and exits 0.
    #[command(after_help = "Example:\n  kvctl --db demo.db check")]
    Check,
    /// Salvage a store whose log has damaged acknowledged records (it no longer opens): keep
    /// every intact record, skip the damaged ones and name them (sequence numbers, and the keys
    /// that still parse in their bytes), keep each damaged log whole in a quarantine file, and
    /// leave a store that opens. Restoring a backup is better when there is one. No other
    /// process may have the store open.
    #[command(after_help = "Example:\n  kvctl --db demo.db repair")]
    Repair,
    /// Write every entry to stdout in the dump format: a `sturdykv-dump 1` line, one
    /// `<base64 key><TAB><base64 value>` line per entry in key order, and `end <count>`.
    #[command(after_help = "Example:\n  kvctl --db demo.db dump > backup.txt")]
    Dump,
    /// Read a dump from stdin and put every entry. The whole input is checked first: a dump that
    /// is truncated or malformed writes nothing (exit status 7). If writing fails part way (e.g.
    /// a full disk), running the same load again completes it.
    #[command(after_help = "Example:\n  kvctl --db copy.db load < backup.txt")]
    Load,
    /// Copy the store, as of one commit, into DIR (which must not exist, or be empty) while
    /// applications keep writing. The copy appears only once complete; open it to restore.
    #[command(
        after_help = "Examples:\n  kvctl --db demo.db backup /backups/demo-2026-11-23\n  kvctl --db copy.db check"
    )]
    Backup {
        /// Where the copy goes.
        dir: PathBuf,
    },
    /// Print every change under PREFIX as it is committed, by any process, until interrupted:
    /// one `SEQUENCE<TAB>put<TAB>KEY<TAB>VALUE` or `SEQUENCE<TAB>delete<TAB>KEY` line per change,
    /// escaped as `scan` does; the changes of one batch share its sequence number. If kvctl falls
    /// behind by more than one compaction it says which commits it missed, on stderr (with
    /// --json, as a `{"gap": ..}` line), and goes on.
    #[command(
        after_help = "Examples:\n  kvctl --db demo.db watch user/\n  kvctl --db demo.db --json watch '' --count 10"
    )]
    Watch {
        /// Only keys starting with this prefix (all keys if empty).
        prefix: OsString,
        /// Exit after this many commits.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  kvctl completions bash > /etc/bash_completion.d/kvctl")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Start the interactive shell (the default on a terminal).
    Shell,
    /// Prove that acknowledged writes survive: kill a writer process (SIGKILL) at random moments
    /// and check every acknowledged batch after each kill, in a new or empty directory given by
    /// --db. Process kills test process death, not power loss: `--simulate` runs the power-loss
    /// campaign on a simulated disk instead (no directory needed). Exit status 8 if anything
    /// acknowledged was lost, a batch was partly visible, or the store did not reopen.
    #[command(
        after_help = "Examples:\n  kvctl --db /mnt/disk/crashtest crash-test --cycles 200\n  kvctl crash-test --simulate --cycles 10000 --json"
    )]
    CrashTest {
        /// How many kills (or, with --simulate, simulated workloads).
        #[arg(long, default_value_t = 100)]
        cycles: u64,
        /// Stop after this many seconds even if cycles remain.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// Seed for the kill timings and the simulated workloads.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Writer processes running at once, each committing batches and transactions.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
        writers: u64,
        /// Bytes per key written by the writers (at least the key's 30-byte stamp).
        #[arg(long, default_value_t = 16)]
        key_size: usize,
        /// Bytes per value written by the writer.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Cut the power on a simulated disk instead of killing processes.
        #[arg(long)]
        simulate: bool,
    },
    /// The writer process that crash-test kills (internal).
    #[command(name = "__crash-writer", hide = true)]
    CrashWriter {
        #[arg(long)]
        cycle: u64,
        #[arg(long)]
        writer: u64,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        key_size: usize,
        #[arg(long)]
        value_size: usize,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    ExitCode::from(report(run(cli)))
}

/// Prints a failure on one line and turns the outcome into an exit status.
fn report(outcome: Result<u8, Failure>) -> u8 {
    match outcome {
        Ok(code) => code,
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(failure) => {
            eprintln!("kvctl: {failure}");
            failure.exit_code()
        }
    }
}

/// What can stop a command.
pub enum Failure {
    /// The store said no.
    Store(Error),
    /// Our own stdin or stdout failed.
    Io(io::Error),
    /// An argument could not be used (bad hex, no store given, ...).
    Usage(String),
    /// Input data (a dump) is invalid.
    Input(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Store(Error::Corruption { .. }) => EXIT_CORRUPT,
            Failure::Store(Error::NotAStore { .. } | Error::UnsupportedVersion { .. }) => {
                EXIT_NOT_A_STORE
            }
            Failure::Store(Error::Locked { .. }) => EXIT_LOCKED,
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Input(_) => EXIT_BAD_INPUT,
            Failure::Store(_) | Failure::Io(_) => EXIT_FAILURE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Store(e) => write!(f, "{e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Usage(why) | Failure::Input(why) => f.write_str(why),
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Store(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// What every command needs.
pub struct Ctx {
    db: Db,
    json: bool,
    input: Input,
    /// Inside the shell: values are always printed escaped, one per line.
    shell: bool,
}

impl Ctx {
    fn arg(&self, what: &str, arg: &OsString) -> Result<Vec<u8>, Failure> {
        self.input.decode(what, arg).map_err(Failure::Usage)
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    if let Some(Command::Completions { shell }) = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "kvctl", &mut io::stdout());
        return Ok(0);
    }
    if let Some(Command::CrashTest {
        cycles,
        duration,
        seed,
        writers,
        key_size,
        value_size,
        simulate,
    }) = cli.command
    {
        let plan = crash_test::Plan {
            cycles,
            duration: duration.map(std::time::Duration::from_secs),
            seed,
            writers,
            key_size,
            value_size,
            simulate,
        };
        return crash_test::run(cli.db.as_deref(), &plan, cli.json, &mut io::stdout().lock());
    }
    let Some(path) = cli.db else {
        return Err(Failure::Usage(
            "no store given: pass --db DIR or set KVCTL_DB".into(),
        ));
    };
    if let Some(Command::Repair) = cli.command {
        return repair(&path, cli.json, &mut io::stdout().lock());
    }
    // Only writes may create a store: reading a mistyped path must not leave a directory behind.
    let creates = matches!(
        cli.command,
        None | Some(
            Command::Put { .. } | Command::Load | Command::Shell | Command::CrashWriter { .. }
        )
    );
    // Commands that only read open the store read-only: they never change a byte of it, damaged
    // or not (a torn tail stays for the next writer to cut).
    let read_only = matches!(
        cli.command,
        Some(
            Command::Get { .. }
                | Command::Scan { .. }
                | Command::Stat
                | Command::Check
                | Command::Dump
                | Command::Watch { .. }
                | Command::Backup { .. }
        )
    );
    let opened = Options::new()
        .create_if_missing(creates)
        .read_only(read_only)
        .open(&path);
    let db = match (opened, &cli.command) {
        (Ok(db), _) => db,
        // `check` reports a store that does not open as it reports one that fails its checks.
        (Err(e), Some(Command::Check)) => {
            return check_failed(&path, cli.json, e, &mut io::stdout().lock());
        }
        (Err(e), _) => return Err(e.into()),
    };
    let input = match (cli.hex, cli.base64) {
        (true, _) => Input::Hex,
        (_, true) => Input::Base64,
        _ => Input::Raw,
    };
    let ctx = Ctx {
        db,
        json: cli.json,
        input,
        shell: false,
    };
    match cli.command {
        None | Some(Command::Shell) => shell::run(&ctx),
        Some(command) => {
            let loading = matches!(command, Command::Load);
            let code = execute(&ctx, command, &mut io::stdout().lock());
            if loading {
                close_visibly(ctx);
            }
            code
        }
    }
}

/// Closes the store with a spinner on a terminal: closing a handle that wrote much of the log
/// compacts it (DECISIONS 41), which after a large `load` takes about a second per 150 MB on
/// the development VM, and a silent pause at exit looks like a hang.
fn close_visibly(ctx: Ctx) {
    let spinner = if io::stderr().is_terminal() {
        let spinner = ProgressBar::new_spinner();
        spinner.set_message("closing the store (a large load is compacted first)");
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        spinner
    } else {
        ProgressBar::hidden()
    };
    drop(ctx);
    spinner.finish_and_clear();
}

/// Runs one command, printing to `out` (stdout, or the shell's).
fn execute(ctx: &Ctx, command: Command, out: &mut dyn Write) -> Result<u8, Failure> {
    match command {
        Command::Put { key, value } => put(ctx, &key, value),
        Command::Get { key } => get(ctx, &key, out),
        Command::Delete { key } => delete(ctx, &key),
        Command::Scan {
            prefix,
            from,
            to,
            limit,
            reverse,
            keys_only,
            count,
        } => {
            let filter = ScanFilter {
                prefix: prefix.map(|p| ctx.arg("prefix", &p)).transpose()?,
                from: from.map(|k| ctx.arg("--from key", &k)).transpose()?,
                to: to.map(|k| ctx.arg("--to key", &k)).transpose()?,
            };
            scan(ctx, &filter, limit, reverse, keys_only, count, out)
        }
        Command::Stat => stat(ctx, out),
        Command::Compact => compact(ctx, out),
        Command::Backup { dir } => backup(ctx, &dir, out),
        Command::Check => check(ctx, out),
        Command::Dump => dump::dump(&ctx.db, out).map(|_| 0),
        Command::Load => load(ctx, out),
        Command::Watch { .. } if ctx.shell => Err(Failure::Usage(
            "watch runs until interrupted: run it outside the shell".into(),
        )),
        Command::Watch { prefix, count } => watch(ctx, &ctx.arg("prefix", &prefix)?, count, out),
        Command::CrashWriter {
            cycle,
            writer,
            seed,
            key_size,
            value_size,
        } => crash_test::writer(&ctx.db, cycle, writer, seed, key_size, value_size),
        Command::Repair => Err(Failure::Usage(
            "repair needs the store to itself: run it outside the shell, with no other process \
             holding the store"
                .into(),
        )),
        Command::Completions { .. } | Command::Shell | Command::CrashTest { .. } => {
            Err(Failure::Usage("not available inside the shell".into()))
        }
    }
}

fn put(ctx: &Ctx, key: &OsString, value: Option<OsString>) -> Result<u8, Failure> {
    let key = ctx.arg("key", key)?;
    let value = match value {
        Some(v) if v != "-" => ctx.arg("value", &v)?,
        _ if ctx.shell => {
            return Err(Failure::Usage(
                "in the shell, put needs a VALUE argument".into(),
            ));
        }
        _ => {
            let mut buf = Vec::new();
            io::stdin().lock().read_to_end(&mut buf)?;
            buf
        }
    };
    ctx.db.put(key, value)?;
    Ok(0)
}

fn get(ctx: &Ctx, key: &OsString, out: &mut dyn Write) -> Result<u8, Failure> {
    let key = ctx.arg("key", key)?;
    let Some(value) = ctx.db.get(&key)? else {
        eprintln!("kvctl: key {} not found", escape(&key));
        return Ok(EXIT_NOT_FOUND);
    };
    if ctx.json {
        print_json(out, entry_json(&key, Some(&value)))?;
    } else if ctx.shell || io::stdout().is_terminal() {
        writeln!(out, "{}", escape(&value))?;
    } else {
        out.write_all(&value)?;
    }
    out.flush()?;
    Ok(0)
}

fn delete(ctx: &Ctx, key: &OsString) -> Result<u8, Failure> {
    let key = ctx.arg("key", key)?;
    if !ctx.db.contains_key(&key)? {
        eprintln!("kvctl: key {} not found", escape(&key));
        return Ok(EXIT_NOT_FOUND);
    }
    ctx.db.delete(&key)?;
    Ok(0)
}

/// Which keys a scan covers.
struct ScanFilter {
    prefix: Option<Vec<u8>>,
    from: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
}

impl ScanFilter {
    fn admits(&self, key: &[u8]) -> bool {
        self.from.as_deref().is_none_or(|from| key >= from)
            && self.to.as_deref().is_none_or(|to| key < to)
    }
}

fn scan(
    ctx: &Ctx,
    filter: &ScanFilter,
    limit: Option<usize>,
    reverse: bool,
    keys_only: bool,
    count_only: bool,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let bound = |k: &Option<Vec<u8>>, make: fn(Vec<u8>) -> Bound<Vec<u8>>| {
        k.clone().map_or(Bound::Unbounded, make)
    };
    let entries = match &filter.prefix {
        Some(p) => ctx.db.prefix(p),
        None => ctx.db.range::<Vec<u8>, _>((
            bound(&filter.from, Bound::Included),
            bound(&filter.to, Bound::Excluded),
        )),
    };
    let entries: Box<dyn Iterator<Item = sturdykv::Result<(Bytes, Bytes)>>> = if reverse {
        Box::new(entries.rev())
    } else {
        Box::new(entries)
    };
    let mut out = io::BufWriter::new(out);
    let mut count = 0u64;
    for entry in entries {
        let (key, value) = entry?;
        if !filter.admits(&key) {
            continue;
        }
        if limit.is_some_and(|l| count as usize >= l) {
            break;
        }
        count += 1;
        if count_only {
            continue;
        }
        match (ctx.json, keys_only) {
            (true, _) => print_json(&mut out, entry_json(&key, (!keys_only).then_some(&value)))?,
            (false, true) => writeln!(out, "{}", escape(&key))?,
            (false, false) => writeln!(out, "{}\t{}", escape(&key), escape(&value))?,
        }
    }
    if count_only {
        if ctx.json {
            print_json(&mut out, json!({ "count": count }))?;
        } else {
            writeln!(out, "{count}")?;
        }
    }
    out.flush()?;
    Ok(0)
}

fn watch(ctx: &Ctx, prefix: &[u8], count: Option<u64>, out: &mut dyn Write) -> Result<u8, Failure> {
    let watcher = ctx.db.watch_prefix(prefix)?;
    // On stderr, so that stdout holds only changes: the watch covers commits from here on.
    eprintln!(
        "kvctl: watching {} from commit {}",
        escape(prefix),
        watcher.next_sequence()
    );
    let mut seen = 0u64;
    if count == Some(0) {
        return Ok(0);
    }
    for commit in watcher {
        let commit = match commit {
            Ok(commit) => commit,
            Err(Error::WatchGap {
                missed_from,
                resumed_at,
            }) => {
                if ctx.json {
                    print_json(
                        out,
                        json!({"gap": {"missed_from": missed_from, "resumed_at": resumed_at}}),
                    )?;
                } else {
                    eprintln!(
                        "kvctl: missed commits {missed_from}..{resumed_at} (compacted away before \
                         they were read); re-read the keys to catch up"
                    );
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for change in &commit.changes {
            let (op, key, value) = match change {
                sturdykv::Change::Put { key, value } => ("put", key, Some(value)),
                sturdykv::Change::Delete { key } => ("delete", key, None),
                // A kind of change this kvctl does not know (it is built with its library, so
                // only if the two are out of step): named, with its key.
                other => ("change", other.key(), None),
            };
            if ctx.json {
                let mut object = entry_json(key, value.map(|v| v.as_ref()));
                if let Value::Object(map) = &mut object {
                    map.insert("sequence".into(), json!(commit.sequence));
                    map.insert("op".into(), json!(op));
                }
                print_json(out, object)?;
            } else {
                match value {
                    Some(v) => writeln!(
                        out,
                        "{}\t{op}\t{}\t{}",
                        commit.sequence,
                        escape(key),
                        escape(v)
                    )?,
                    None => writeln!(out, "{}\t{op}\t{}", commit.sequence, escape(key))?,
                }
            }
        }
        out.flush()?;
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(0)
}

fn entry_json(key: &[u8], value: Option<&[u8]>) -> Value {
    let mut object = Map::new();
    json_bytes(&mut object, "key", key);
    if let Some(value) = value {
        json_bytes(&mut object, "value", value);
    }
    Value::Object(object)
}

fn print_json(out: &mut dyn Write, value: Value) -> io::Result<()> {
    writeln!(out, "{value}")
}

/// Paths as text, for output.
fn displayed(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

/// Sorted files as JSON: path, bytes, entries.
fn files_json(files: &[sturdykv::FileStats]) -> Value {
    files
        .iter()
        .map(|f| json!({ "path": f.path.display().to_string(), "bytes": f.bytes, "entries": f.entries }))
        .collect()
}

fn stat(ctx: &Ctx, out: &mut dyn Write) -> Result<u8, Failure> {
    let s = ctx.db.stats()?;
    let quarantine = displayed(&s.recovery.quarantine_files);
    if ctx.json {
        print_json(
            out,
            json!({
                "path": ctx.db.path().display().to_string(),
                "generation": s.generation,
                "keys": s.keys,
                "manifest": s.manifest,
                "log_start": s.log_start,
                "runs": files_json(&s.runs),
                "partitions": files_json(&s.partitions),
                "sorted_bytes": s.sorted_bytes(),
                "wal_bytes": s.wal_bytes,
                "memtable_bytes": s.memtable_bytes,
                "next_sequence": s.next_sequence,
                "flushes": s.flushes,
                "compactions": s.compactions,
                "replayed_records": s.recovery.replayed_records,
                "truncated_bytes": s.recovery.truncated_bytes,
                "log_format_version": s.recovery.log_format_version,
                "quarantine_files": quarantine,
            }),
        )?;
        return Ok(0);
    }
    writeln!(out, "path              {}", ctx.db.path().display())?;
    writeln!(out, "generation        {}", s.generation)?;
    writeln!(out, "keys              {}", s.keys)?;
    writeln!(out, "manifest          {}", s.manifest)?;
    writeln!(out, "log start         {}", s.log_start)?;
    writeln!(
        out,
        "runs              {} ({} bytes)",
        s.runs.len(),
        s.runs.iter().map(|f| f.bytes).sum::<u64>()
    )?;
    writeln!(
        out,
        "partitions        {} ({} bytes, {} keys)",
        s.partitions.len(),
        s.partitions.iter().map(|f| f.bytes).sum::<u64>(),
        s.partition_entries()
    )?;
    for f in s.runs.iter().chain(&s.partitions) {
        writeln!(
            out,
            "  {:<28} {:>12} bytes {:>10} entries",
            f.path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            f.bytes,
            f.entries
        )?;
    }
    writeln!(out, "wal bytes         {}", s.wal_bytes)?;
    writeln!(out, "memtable bytes    {}", s.memtable_bytes)?;
    writeln!(out, "next sequence     {}", s.next_sequence)?;
    writeln!(out, "flushes           {}", s.flushes)?;
    writeln!(out, "compactions       {}", s.compactions)?;
    writeln!(out, "replayed records  {}", s.recovery.replayed_records)?;
    writeln!(out, "truncated bytes   {}", s.recovery.truncated_bytes)?;
    writeln!(out, "log format        {}", s.recovery.log_format_version)?;
    if s.recovery.log_format_version < 2 {
        writeln!(
            out,
            "  note: in a version 1 log damage cannot be told from a torn tail; the next \
             compaction starts a log of the current version"
        )?;
    }
    writeln!(out, "quarantine files  {}", quarantine.len())?;
    for file in quarantine {
        writeln!(out, "  {file}")?;
    }
    Ok(0)
}

/// A progress bar on stderr when it is a terminal, nothing otherwise.
fn progress_bar(what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {percent}% ({eta} left)")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

fn compact(ctx: &Ctx, out: &mut dyn Write) -> Result<u8, Failure> {
    let bar = progress_bar("compacting");
    ctx.db.compact_with_progress(|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let s = ctx.db.stats()?;
    if ctx.json {
        print_json(
            out,
            json!({
                "generation": s.generation,
                "keys": s.keys,
                "partitions": s.partitions.len(),
                "sorted_bytes": s.sorted_bytes(),
            }),
        )?;
    } else {
        writeln!(
            out,
            "compacted: {} keys in {} partitions, {} bytes",
            s.keys,
            s.partitions.len(),
            s.sorted_bytes()
        )?;
    }
    Ok(0)
}

fn backup(ctx: &Ctx, dir: &std::path::Path, out: &mut dyn Write) -> Result<u8, Failure> {
    let report = ctx.db.backup_to(dir)?;
    if ctx.json {
        print_json(
            out,
            json!({
                "path": dir.display().to_string(),
                "sequence": report.sequence,
                "files": displayed(&report.files),
                "bytes": report.bytes,
            }),
        )?;
    } else {
        writeln!(
            out,
            "backed up every commit before {} into {}: {} files, {} bytes",
            report.sequence,
            dir.display(),
            report.files.len(),
            report.bytes
        )?;
    }
    Ok(0)
}

fn repair(path: &std::path::Path, json: bool, out: &mut dyn Write) -> Result<u8, Failure> {
    let report = sturdykv::Db::repair(path)?;
    let shown = |key: &[u8]| escape(key);
    if json {
        let lost: Vec<Value> = report
            .lost
            .iter()
            .map(|lost| {
                let keys: Vec<Value> = lost
                    .keys
                    .iter()
                    .map(|k| {
                        let mut key = Map::new();
                        json_bytes(&mut key, "key", k);
                        Value::Object(key)
                    })
                    .collect();
                json!({
                    "file": lost.file.display().to_string(),
                    "offset": lost.offset,
                    "first_sequence": lost.first_seq,
                    "last_sequence": lost.last_seq,
                    "keys": keys,
                })
            })
            .collect();
        print_json(
            out,
            json!({
                "generation": report.generation,
                "keys": report.keys,
                "records_kept": report.records_kept,
                "lost": lost,
                "lost_blocks": report.lost_keys.iter().map(|lost| {
                    let mut block = Map::new();
                    block.insert("file".into(), lost.file.display().to_string().into());
                    block.insert("offset".into(), lost.offset.into());
                    if let Some(from) = &lost.from {
                        json_bytes(&mut block, "from", from);
                    }
                    if let Some(below) = &lost.below {
                        json_bytes(&mut block, "below", below);
                    }
                    Value::Object(block)
                }).collect::<Vec<_>>(),
                "torn_tail_bytes": report.torn_tail_bytes,
                "quarantine_files": displayed(&report.quarantine_files),
            }),
        )?;
        return Ok(0);
    }
    for lost in &report.lost {
        let records = if lost.first_seq == lost.last_seq {
            format!("record {}", lost.first_seq)
        } else {
            format!("records {} to {}", lost.first_seq, lost.last_seq)
        };
        let keys: Vec<String> = lost.keys.iter().map(|k| shown(k)).collect();
        writeln!(
            out,
            "lost {records} at offset {} of {}{}",
            lost.offset,
            lost.file.display(),
            if keys.is_empty() {
                " (no key could be read in them)".to_string()
            } else {
                format!(": keys {}", keys.join(", "))
            }
        )?;
    }
    for lost in &report.lost_keys {
        let from = lost.from.as_deref().map_or("(unknown)".into(), shown);
        let below = lost.below.as_deref().map_or("the end".into(), shown);
        writeln!(
            out,
            "lost the block at offset {} of {}: keys from {from} to before {below}, \
             unless written again since",
            lost.offset,
            lost.file.display()
        )?;
    }
    for file in displayed(&report.quarantine_files) {
        writeln!(out, "kept the damaged file in {file}")?;
    }
    writeln!(
        out,
        "repaired: {} records kept, {} keys, generation {}",
        report.records_kept, report.keys, report.generation
    )?;
    Ok(0)
}

/// `check`'s report of a store that failed a check (or could not be opened): the error as one
/// JSON object with `--json`, else on stderr, and on damage every damaged log record and
/// snapshot block (from an inspection that writes nothing); the exit status says what it was.
fn check_failed(
    path: &std::path::Path,
    json: bool,
    e: Error,
    out: &mut dyn Write,
) -> Result<u8, Failure> {
    let failure = Failure::Store(e);
    let code = failure.exit_code();
    let Failure::Store(e) = &failure else {
        return Err(failure);
    };
    // Every damaged place, not only the first: what a repair would lose.
    let inspected = match e {
        Error::Corruption { .. } => Db::inspect_damage(path).ok(),
        _ => None,
    };
    let mut damaged = Vec::new();
    if let Some(report) = &inspected {
        for lost in &report.lost {
            let keys: Vec<String> = lost.keys.iter().map(|k| escape(k)).collect();
            damaged.push((
                json!({
                    "file": lost.file.display().to_string(),
                    "offset": lost.offset,
                    "what": "log records",
                    "first_sequence": lost.first_seq,
                    "last_sequence": lost.last_seq,
                    "keys": keys,
                }),
                format!(
                    "DAMAGED {} at offset {}: log records {} to {}{}",
                    lost.file.display(),
                    lost.offset,
                    lost.first_seq,
                    lost.last_seq,
                    if keys.is_empty() {
                        String::new()
                    } else {
                        format!(" (keys {})", keys.join(", "))
                    }
                ),
            ));
        }
        for lost in &report.lost_keys {
            let from = lost.from.as_deref().map(escape);
            let below = lost.below.as_deref().map(escape);
            damaged.push((
                json!({
                    "file": lost.file.display().to_string(),
                    "offset": lost.offset,
                    "what": "sorted-file block",
                    "from_key": from,
                    "below_key": below,
                }),
                format!(
                    "DAMAGED {} at offset {}: a sorted-file block, keys from {} to before {}",
                    lost.file.display(),
                    lost.offset,
                    from.as_deref().unwrap_or("(unknown)"),
                    below.as_deref().unwrap_or("the end")
                ),
            ));
        }
    }
    if json {
        let damage = match e {
            Error::Corruption {
                file,
                offset,
                reason,
            } => json!({ "file": file.display().to_string(), "offset": offset, "reason": reason }),
            _ => Value::Null,
        };
        let every: Vec<Value> = damaged.into_iter().map(|(v, _)| v).collect();
        print_json(
            out,
            json!({ "ok": false, "error": e.to_string(), "damage": damage, "damaged": every }),
        )?;
    } else {
        eprintln!("kvctl: {e}");
        for (_, line) in damaged {
            writeln!(out, "{line}")?;
        }
    }
    Ok(code)
}

fn check(ctx: &Ctx, out: &mut dyn Write) -> Result<u8, Failure> {
    let bar = progress_bar("checking");
    let verified = ctx.db.verify(|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = match verified {
        Ok(report) => report,
        Err(e) => return check_failed(ctx.db.path(), ctx.json, e, out),
    };
    let quarantine = displayed(&report.quarantine_files);
    if ctx.json {
        print_json(
            out,
            json!({
                "ok": true,
                "manifest": report.manifest.as_ref().map(|p| p.display().to_string()),
                "files": files_json(&report.files),
                "wal": report.wal.display().to_string(),
                "wal_records": report.wal_records,
                "wal_bytes": report.wal_bytes,
                "log_format_version": report.log_format_version,
                "torn_tail_offset": report.torn_tail,
                "quarantine_files": quarantine,
                "damage": Value::Null,
            }),
        )?;
        return Ok(0);
    }
    if let Some(manifest) = &report.manifest {
        writeln!(out, "ok  {}", manifest.display())?;
    }
    for file in &report.files {
        writeln!(
            out,
            "ok  {}: {} entries, {} bytes",
            file.path.display(),
            file.entries,
            file.bytes
        )?;
    }
    for (wal, records) in &report.older_wals {
        writeln!(out, "ok  {}: {} records", wal.display(), records)?;
    }
    writeln!(
        out,
        "ok  {}: {} records, {} bytes",
        report.wal.display(),
        report.wal_records,
        report.wal_bytes
    )?;
    if let Some(offset) = report.torn_tail {
        writeln!(
            out,
            "note {}: a torn tail at offset {offset}: writes a crash interrupted before they were \
             acknowledged; normal after a crash, cut off at the next write",
            report.wal.display()
        )?;
    }
    if report.log_format_version < 2 {
        writeln!(
            out,
            "note {}: log format version {}: damage in it cannot be told from a torn tail (the \
             next compaction starts a log of the current version)",
            report.wal.display(),
            report.log_format_version
        )?;
    }
    for file in quarantine {
        writeln!(
            out,
            "note {file}: log bytes a repair set aside (records still decoded in them); \
             sturdykv never reads or deletes it: inspect it, then delete it"
        )?;
    }
    Ok(0)
}

fn load(ctx: &Ctx, out: &mut dyn Write) -> Result<u8, Failure> {
    let bar = progress_bar("loading");
    let count = dump::load(&ctx.db, io::stdin().lock(), |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if ctx.json {
        print_json(out, json!({ "loaded": count }))?;
    } else {
        writeln!(out, "loaded {count} entries")?;
    }
    Ok(0)
}
