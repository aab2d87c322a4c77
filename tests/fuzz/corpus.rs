//! The corpus: hand-made hostile inputs in tests/corpus/{http,json}/*.txt, one raw input per
//! file, named `EXPECTED-what.txt`, and the runners that give each its expected answer.

use crate::Check;
use crate::chat::{chat_with, check_handle};
use crate::http::{RuleSet, check_http, check_prefix};
use crate::json::check_decode;
use chatloop::chat::{Limits, Outcome};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind)
}

/// (file name, raw bytes) of every `*.txt` in tests/corpus/KIND, sorted by name.
fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(kind);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("corpus file"))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus in {}", dir.display());
    out
}

/// The answer a corpus file expects: its name up to the first `-`.
fn expected_label(name: &str) -> &str {
    name.split_once('-').map_or(name.trim_end_matches(".txt"), |(label, _)| label)
}

pub(crate) static HTTP_SEEDS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| corpus("http").into_iter().map(|(_, b)| b).collect());
pub(crate) static JSON_SEEDS: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| corpus("json").into_iter().map(|(_, b)| b).collect());

#[test]
fn http_corpus() {
    let mut failures = Vec::new();
    for (name, buf) in corpus("http") {
        let want = expected_label(&name);
        let run = || -> Check<String> {
            // The label is checked under the corpus's rules ...
            let label = check_http(&buf, &RuleSet::corpus().rules())?;
            // ... and every other rule set must give some clear answer too.
            for (echo, allow_origin, allow_host, bound_to_loopback) in [
                (false, vec![], vec![], true),
                (true, vec!["*".to_string()], vec!["*".to_string()], true),
                (false, vec!["http://evil".into()], vec![], false),
                (true, vec![], vec!["h".into()], false),
            ] {
                check_http(
                    &buf,
                    &RuleSet { echo, allow_origin, allow_host, bound_to_loopback, api: false }.rules(),
                )?;
            }
            // Every split point of the head, as reads may deliver it.
            let step = (buf.len() / 2048).max(1);
            for cut in (0..buf.len()).step_by(step) {
                check_prefix(&buf, cut)?;
            }
            Ok(label)
        };
        match run() {
            Ok(label) if label == want => {}
            Ok(label) => failures.push(format!("{name}: expected {want}, got {label}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "http corpus:\n{}", failures.join("\n"));
}

#[test]
fn json_corpus() {
    let mut failures = Vec::new();
    for (name, raw) in corpus("json") {
        let want = expected_label(&name);
        let Ok(frame) = String::from_utf8(raw) else {
            failures.push(format!("{name}: not UTF-8 (a text frame always is)"));
            continue;
        };
        let run = || -> Check<String> {
            check_decode(&frame, false)?;
            let (mut chat, mut model) = chat_with(&["alice", "Bob", "carol"], Limits::default())?;
            let outcome = check_handle(&mut chat, &mut model, 0, &frame)?;
            Ok(match outcome {
                Outcome::Room { .. } | Outcome::Unconfirmed { .. } | Outcome::Pending { .. } => "room".into(),
                Outcome::Remote { .. } => "remote".into(),
                Outcome::Private => "private".into(),
                Outcome::Joined { .. } => "joined".into(),
                Outcome::Left { .. } => "left".into(),
                Outcome::Answered => "answered".into(),
                Outcome::Refused(code) => code.as_str().into(),
            })
        };
        match run() {
            Ok(label) if label == want => {}
            Ok(label) => failures.push(format!("{name}: expected {want}, got {label}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "json corpus:\n{}", failures.join("\n"));
}
