//! `dump` and `load`: a lossless, line-oriented text format.
//!
//! ```text
//! sturdykv-dump 1
//! <base64 key><TAB><base64 value>
//! ...
//! end <number of entries>
//! ```
//!
//! Base64 is the standard alphabet with padding (an empty key or value is an empty field). Keys
//! appear in order. The `end` line makes a truncated file detectable.

use std::io::{BufRead, Write};

use sturdykv::{Batch, Db};

use crate::Failure;
use crate::codec::{base64, unbase64};

const HEADER: &str = "sturdykv-dump 1";
/// Operations per batch when loading.
const LOAD_BATCH: usize = 10_000;

/// Writes every entry of `db` to `out`.
pub fn dump(db: &Db, out: &mut dyn Write) -> Result<u64, Failure> {
    writeln!(out, "{HEADER}")?;
    let mut count = 0u64;
    for entry in db.range::<&[u8], _>(..) {
        let (key, value) = entry?;
        writeln!(out, "{}\t{}", base64(&key), base64(&value))?;
        count += 1;
    }
    writeln!(out, "end {count}")?;
    out.flush()?;
    Ok(count)
}

/// Reads a whole dump from `input`, checks every line and the trailer, and only then writes it
/// to `db` in batches. Returns the number of entries.
pub fn load(
    db: &Db,
    input: impl BufRead,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, Failure> {
    let entries = parse(input)?;
    let total = entries.len() as u64;
    let mut done = 0;
    for chunk in entries.chunks(LOAD_BATCH) {
        let mut batch = Batch::new();
        for (key, value) in chunk {
            batch.put(key, value);
        }
        db.write(batch)?;
        done += chunk.len() as u64;
        progress(done, total);
    }
    Ok(total)
}

/// A key and its value, as bytes.
type Entry = (Vec<u8>, Vec<u8>);

fn parse(input: impl BufRead) -> Result<Vec<Entry>, Failure> {
    let bad = |line: usize, why: &str| {
        Failure::Input(format!("load: line {line}: {why}; nothing was written"))
    };
    let mut lines = input.lines();
    match lines.next().transpose()? {
        Some(header) if header == HEADER => {}
        Some(_) => {
            return Err(bad(
                1,
                &format!("not a sturdykv dump (expected `{HEADER}`)"),
            ));
        }
        None => return Err(bad(1, "empty input, not a sturdykv dump")),
    }
    let mut entries = Vec::new();
    for (n, line) in lines.enumerate() {
        let (number, line) = (n + 2, line?);
        if let Some(count) = line.strip_prefix("end ") {
            if count.parse::<usize>().ok() != Some(entries.len()) {
                return Err(bad(
                    number,
                    &format!(
                        "the trailer says {count} entries, the dump holds {}",
                        entries.len()
                    ),
                ));
            }
            return Ok(entries);
        }
        let decoded = line
            .split_once('\t')
            .and_then(|(k, v)| Some((unbase64(k)?, unbase64(v)?)));
        match decoded {
            Some(entry) => entries.push(entry),
            None => {
                return Err(bad(
                    number,
                    "expected `<base64 key><TAB><base64 value>` or `end <count>`",
                ));
            }
        }
    }
    Err(bad(
        entries.len() + 2,
        "the dump is truncated (no `end` line)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_what_is_not_a_whole_dump() {
        let ok = format!("{HEADER}\nYQ==\t\n\tYg==\nend 2\n");
        assert_eq!(parse(ok.as_bytes()).ok().map(|e| e.len()), Some(2));
        for broken in [
            String::new(),
            "hello\n".to_string(),
            format!("{HEADER}\nYQ==\t\n"),
            format!("{HEADER}\nYQ==\t\nend 3\n"),
            format!("{HEADER}\nnot base64!\t\nend 1\n"),
            format!("{HEADER}\nYQ==\nend 1\n"),
        ] {
            assert!(parse(broken.as_bytes()).is_err(), "{broken:?}");
        }
    }
}
