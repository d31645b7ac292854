//! The interactive shell: each line is a kvctl command without `kvctl --db DIR`, with line
//! editing and history on a terminal (like `sqlite3` and `redis-cli`). When stdin is not a
//! terminal, the same loop runs the commands it reads, one per line.

use std::io::{self, BufRead, IsTerminal, Write};

use clap::Parser;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::{Command, Ctx, Failure, execute, report};

const HELP: &str = "\
Commands (as on the command line, without `kvctl --db DIR`):
  get KEY | put KEY VALUE | delete KEY
  scan [--prefix P] [--from K] [--to K] [--limit N] [--reverse] [--keys-only] [--count]
  stat | check | compact | dump
  help | exit | quit
Quote arguments with spaces: put greeting \"hello world\". `COMMAND --help` explains one.";

/// One shell line, parsed like the command line.
#[derive(Parser, Debug)]
#[command(name = "", no_binary_name = true, disable_version_flag = true)]
struct Line {
    #[command(subcommand)]
    command: Command,
}

/// Runs the shell until `exit`, end of input or Ctrl-D. Returns 0, or for a script the status of
/// the last command that failed.
pub fn run(ctx: &Ctx) -> Result<u8, Failure> {
    let shell = Ctx {
        db: ctx.db.clone(),
        json: ctx.json,
        input: ctx.input,
        shell: true,
    };
    if io::stdin().is_terminal() {
        interactive(&shell)
    } else {
        let mut status = 0;
        for line in io::stdin().lock().lines() {
            match run_line(&shell, &line?) {
                Some(0) => {}
                Some(code) => status = code,
                None => break,
            }
        }
        Ok(status)
    }
}

fn interactive(ctx: &Ctx) -> Result<u8, Failure> {
    let mut editor = DefaultEditor::new().map_err(|e| Failure::Io(io::Error::other(e)))?;
    let history =
        std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".kvctl_history"));
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!(
        "kvctl shell on {}; `help` lists the commands, Ctrl-D leaves.",
        ctx.db.path().display()
    );
    loop {
        match editor.readline("kvctl> ") {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if run_line(ctx, &line).is_none() {
                    break;
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Failure::Io(io::Error::other(e))),
        }
    }
    if let Some(path) = &history {
        let _ = editor.save_history(path);
    }
    Ok(0)
}

/// Runs one line; `None` means leave the shell.
fn run_line(ctx: &Ctx, line: &str) -> Option<u8> {
    let line = line.trim();
    match line {
        "" => return Some(0),
        _ if line.starts_with('#') => return Some(0),
        "exit" | "quit" => return None,
        "help" => {
            println!("{HELP}");
            return Some(0);
        }
        _ => {}
    }
    let Some(words) = shlex::split(line) else {
        eprintln!("kvctl: unbalanced quotes in: {line}");
        return Some(crate::EXIT_USAGE);
    };
    let command = match Line::try_parse_from(words) {
        Ok(parsed) => parsed.command,
        Err(e) => {
            let _ = e.print();
            return Some(if e.use_stderr() { crate::EXIT_USAGE } else { 0 });
        }
    };
    let mut out = io::stdout().lock();
    let status = report(execute(ctx, command, &mut out));
    let _ = out.flush();
    Some(status)
}
