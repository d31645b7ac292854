//! `kvctl`: inspect and edit a sturdykv store from the shell. A thin client of the public API: one
//! function per subcommand, no engine logic here.

use std::ffi::OsString;
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use sturdykv::{Db, Error, Options};

/// Exit statuses, documented in `--help`.
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 3;
const EXIT_CORRUPT: u8 = 4;
const EXIT_NOT_A_STORE: u8 = 5;
const EXIT_LOCKED: u8 = 6;

const AFTER_HELP: &str = "\
Exit status: 0 success, 1 key not found, 2 usage error, 3 I/O or other failure,
4 corruption detected, 5 not a sturdykv store (or a newer format), 6 store locked by another process.

Examples:
  kvctl --db demo.db put greeting hello
  kvctl --db demo.db get greeting
  head -c 1000 /dev/urandom | kvctl --db demo.db put blob
  KVCTL_DB=demo.db kvctl scan --prefix user/ --limit 10";

/// Inspect and edit a sturdykv store.
#[derive(Parser, Debug)]
#[command(name = "kvctl", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The store directory.
    #[arg(long, env = "KVCTL_DB", value_name = "DIR")]
    db: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Set KEY to VALUE (read VALUE from stdin, byte for byte, if it is absent or `-`).
    #[command(
        after_help = "Examples:\n  kvctl --db demo.db put greeting hello\n  kvctl --db demo.db put photo < photo.jpg"
    )]
    Put {
        /// The key.
        key: OsString,
        /// The value; absent or `-` reads stdin.
        value: Option<OsString>,
    },
    /// Print the value of KEY: its exact bytes when stdout is not a terminal.
    #[command(
        after_help = "Exit status 1 if the key is absent.\n\nExamples:\n  kvctl --db demo.db get greeting\n  kvctl --db demo.db get photo > photo.jpg"
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
    #[command(after_help = "Example:\n  kvctl --db demo.db scan --prefix user/ --limit 10")]
    Scan {
        /// Only keys starting with this prefix.
        #[arg(long)]
        prefix: Option<OsString>,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print figures about the store.
    Stat,
    /// Fold the log into a new snapshot now (a progress bar on a terminal).
    #[command(after_help = "Example:\n  kvctl --db demo.db compact")]
    Compact,
    /// Read back and verify every byte of the snapshot and the log. Exit status 4 on corruption,
    /// naming the file and the byte offset.
    #[command(after_help = "Example:\n  kvctl --db demo.db check")]
    Check,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Store(e)) => {
            eprintln!("kvctl: {e}");
            ExitCode::from(exit_code(&e))
        }
        Err(Failure::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Io(e)) => {
            eprintln!("kvctl: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// What can stop a command: the store, or our own stdin/stdout.
enum Failure {
    Store(Error),
    Io(io::Error),
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

fn exit_code(e: &Error) -> u8 {
    match e {
        Error::Corruption { .. } => EXIT_CORRUPT,
        Error::NotAStore { .. } | Error::UnsupportedVersion { .. } => EXIT_NOT_A_STORE,
        Error::Locked { .. } => EXIT_LOCKED,
        _ => EXIT_FAILURE,
    }
}

fn run(cli: Cli) -> Result<u8, Failure> {
    // Only `put` may create a store; reading a mistyped path must not leave a new directory behind.
    let creates = matches!(cli.command, Command::Put { .. });
    let db = Options::new().create_if_missing(creates).open(&cli.db)?;
    match cli.command {
        Command::Put { key, value } => put(&db, &key, value),
        Command::Get { key } => get(&db, &key),
        Command::Delete { key } => delete(&db, &key),
        Command::Scan { prefix, limit } => scan(&db, prefix, limit),
        Command::Stat => stat(&db),
        Command::Compact => compact(&db),
        Command::Check => check(&db),
    }
}

fn put(db: &Db, key: &OsString, value: Option<OsString>) -> Result<u8, Failure> {
    let value = match value {
        Some(v) if v != "-" => v.as_bytes().to_vec(),
        _ => {
            let mut buf = Vec::new();
            io::stdin().lock().read_to_end(&mut buf)?;
            buf
        }
    };
    db.put(key.as_bytes(), value)?;
    Ok(0)
}

fn get(db: &Db, key: &OsString) -> Result<u8, Failure> {
    let Some(value) = db.get(key.as_bytes())? else {
        eprintln!("kvctl: key {} not found", escape(key.as_bytes()));
        return Ok(EXIT_NOT_FOUND);
    };
    let mut out = io::stdout().lock();
    if out.is_terminal() {
        writeln!(out, "{}", escape(&value))?;
    } else {
        out.write_all(&value)?;
    }
    out.flush()?;
    Ok(0)
}

fn delete(db: &Db, key: &OsString) -> Result<u8, Failure> {
    if !db.contains_key(key.as_bytes())? {
        eprintln!("kvctl: key {} not found", escape(key.as_bytes()));
        return Ok(EXIT_NOT_FOUND);
    }
    db.delete(key.as_bytes())?;
    Ok(0)
}

fn scan(db: &Db, prefix: Option<OsString>, limit: Option<usize>) -> Result<u8, Failure> {
    let entries = match &prefix {
        Some(p) => db.prefix(p.as_bytes()),
        None => db.range::<&[u8], _>(..),
    };
    let mut out = io::BufWriter::new(io::stdout().lock());
    for entry in entries.take(limit.unwrap_or(usize::MAX)) {
        let (key, value) = entry?;
        writeln!(out, "{}\t{}", escape(&key), escape(&value))?;
    }
    out.flush()?;
    Ok(0)
}

fn stat(db: &Db) -> Result<u8, Failure> {
    let s = db.stats()?;
    let mut out = io::stdout().lock();
    writeln!(out, "path              {}", db.path().display())?;
    writeln!(out, "generation        {}", s.generation)?;
    writeln!(out, "keys              {}", s.keys)?;
    writeln!(out, "snapshot bytes    {}", s.snapshot_bytes)?;
    writeln!(out, "snapshot keys     {}", s.snapshot_keys)?;
    writeln!(out, "wal bytes         {}", s.wal_bytes)?;
    writeln!(out, "memtable bytes    {}", s.memtable_bytes)?;
    writeln!(out, "next sequence     {}", s.next_sequence)?;
    writeln!(out, "compactions       {}", s.compactions)?;
    writeln!(out, "replayed records  {}", s.recovery.replayed_records)?;
    writeln!(out, "truncated bytes   {}", s.recovery.truncated_bytes)?;
    writeln!(
        out,
        "quarantine files  {}",
        s.recovery.quarantine_files.len()
    )?;
    for file in &s.recovery.quarantine_files {
        writeln!(out, "  {}", file.display())?;
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

fn compact(db: &Db) -> Result<u8, Failure> {
    let bar = progress_bar("compacting");
    db.compact_with_progress(|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let s = db.stats()?;
    println!(
        "compacted into generation {}: {} keys, snapshot {} bytes",
        s.generation, s.keys, s.snapshot_bytes
    );
    Ok(0)
}

fn check(db: &Db) -> Result<u8, Failure> {
    let bar = progress_bar("checking");
    let report = db.verify(|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    let mut out = io::stdout().lock();
    if let Some(snapshot) = &report.snapshot {
        writeln!(
            out,
            "ok  {}: {} entries, {} bytes",
            snapshot.display(),
            report.snapshot_entries,
            report.snapshot_bytes
        )?;
    }
    writeln!(
        out,
        "ok  {}: {} records, {} bytes",
        report.wal.display(),
        report.wal_records,
        report.wal_bytes
    )?;
    for file in &report.quarantine_files {
        writeln!(
            out,
            "note {}: log bytes set aside by an earlier recovery; inspect, then delete it",
            file.display()
        )?;
    }
    Ok(0)
}

/// Escapes bytes reversibly for a line of text: printable ASCII as is, `\t`, `\n`, `\r`, `\\`,
/// `\'`, `\"`, and `\xNN` for everything else.
fn escape(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}
