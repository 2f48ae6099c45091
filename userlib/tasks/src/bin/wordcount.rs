//! Word counts as a map and a reduce over text blobs.
//!
//! `wordcount map TEXT` counts the words of one text; `wordcount reduce COUNTS...` merges counts.
//! Counts are a blob of lines `word count\n`, sorted by word: one canonical form, so equal
//! counts have equal handles. A word is a maximal run of ASCII letters, lowercased.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use cairn_userlib::{Handle, TaskError, TaskResult, create_blob, open};

fn count(text: &[u8], into: &mut BTreeMap<Vec<u8>, u64>) {
    for word in text.split(|b| !b.is_ascii_alphabetic()).filter(|w| !w.is_empty()) {
        *into.entry(word.to_ascii_lowercase()).or_default() += 1;
    }
}

fn parse(counts: &[u8], into: &mut BTreeMap<Vec<u8>, u64>) -> Result<(), TaskError> {
    for line in counts.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let space = line.iter().position(|&b| b == b' ').ok_or("counts line without a space")?;
        let n: u64 = core::str::from_utf8(&line[space + 1..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("counts line without a number")?;
        *into.entry(line[..space].to_vec()).or_default() += n;
    }
    Ok(())
}

fn render(counts: &BTreeMap<Vec<u8>, u64>) -> Handle {
    let mut out = String::new();
    for (word, n) in counts {
        // Words are ASCII letters only, so this is valid UTF-8.
        let _ = writeln!(out, "{} {n}", core::str::from_utf8(word).unwrap_or("?"));
    }
    create_blob(out.as_bytes())
}

fn run(args: &[Handle]) -> TaskResult {
    let (mode, inputs) = args.split_first().ok_or("wordcount needs a mode: map or reduce")?;
    let mut counts = BTreeMap::new();
    match open(mode) {
        b"map" => {
            let [text] = inputs else { return Err("wordcount map takes one text".into()) };
            count(open(text), &mut counts);
        }
        b"reduce" => {
            for part in inputs {
                parse(open(part), &mut counts)?;
            }
        }
        _ => return Err("wordcount mode must be map or reduce".into()),
    }
    Ok(render(&counts))
}

cairn_userlib::task!(run);
