//! Every script in scripts/ answers `--help` (usage on stdout, exit 0) and refuses an unknown
//! flag with exit 2, both before it builds, installs or starts anything. And the docs' commands
//! run as written: every flag they give chatloop, chatload or a script is one it has, the
//! README's flags table is `chatloop --help`'s list, the deploy files are quoted exactly, and
//! every relative link resolves. (`.ci/run` runs the README's run, test and websockets
//! commands themselves; tests/docs.rs replays docs/protocol.md.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Scripts not held to the rule yet, each with its reason (none now).
const EXEMPT: &[&str] = &[];

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scripts/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .filter(|p| !EXEMPT.contains(&p.file_name().unwrap().to_str().unwrap()))
        .collect();
    all.sort();
    all
}

/// Runs `bash SCRIPT ARG`, killed after 10 s: a script that ignores the flag and starts its
/// real work must fail here, not run on.
fn run(script: &Path, arg: &str) -> Output {
    let mut child = Command::new("bash")
        .arg(script)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bash");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{} {arg}: still running after 10 s (it ignored the flag?)\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn every_script_answers_help_and_refuses_unknown_flags() {
    let scripts = scripts();
    assert!(scripts.len() >= 4, "{scripts:?}");
    for script in &scripts {
        let name = script.file_name().unwrap().to_str().unwrap();

        let out = run(script, "--help");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{name} --help\n{stdout}\n{stderr}");
        assert!(stdout.contains(name), "{name} --help: the usage names the script\n{stdout}");
        assert!(stdout.lines().count() >= 3, "{name} --help: a usage, not a line\n{stdout}");
        assert!(stderr.is_empty(), "{name} --help wrote to stderr: {stderr}");
        assert!(!stdout.contains("set -euo"), "{name} --help leaks the script's code\n{stdout}");

        let out = run(script, "--no-such-flag");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} --no-such-flag\n{stderr}");
        assert!(stderr.contains("--no-such-flag"), "{name}: the error names the flag: {stderr}");
    }
}

/// The bench's refusals come before it builds or starts anything: a --baseline that is not a
/// program, and a uWebSockets peer whose sources are not where it is told to look (a clean
/// clone without them: the benches skip its rows with this reason).
#[test]
fn bench_refuses_a_missing_baseline_and_the_uws_peer_says_why_it_is_absent() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = run(&root.join("scripts/bench.sh"), "--baseline=/nonexistent/chatloop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--baseline /nonexistent/chatloop: not an executable file"), "{stderr}");

    let out = Command::new("bash")
        .arg(root.join("scripts/uws-peer.sh"))
        .env("UWS_PEER_DIR", "/nonexistent/uws")
        .stdin(Stdio::null())
        .output()
        .expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sources are absent") && stderr.contains("UWS_PEER_DIR=/nonexistent/uws"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no binary path printed: {}", String::from_utf8_lossy(&out.stdout));
}

/// Each file of deploy/ that the README quotes (a fence right after the line
/// `<!-- quoted from deploy/FILE; ... -->`) is quoted whole and exactly, and the README names
/// each of them, so the recipes scripts/deploy-test.sh runs are the ones the README shows.
#[test]
fn readme_quotes_the_deploy_files_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let marker = "<!-- quoted from ";
    let mut quoted = 0;
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(marker) else { continue };
        let file = rest.split([';', ' ']).next().unwrap();
        assert!(file.starts_with("deploy/"), "README quotes {file}, not a file of deploy/");
        let fence = lines.next().unwrap_or_default();
        assert!(fence.starts_with("```"), "README: no fence right after the quote of {file}");
        let body: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
        let want = std::fs::read_to_string(root.join(file)).expect(file);
        assert_eq!(format!("{}\n", body.join("\n")), want, "README's quote of {file} differs from the file");
        quoted += 1;
    }
    assert!(quoted >= 1, "README quotes no deploy/ file");
    for entry in std::fs::read_dir(root.join("deploy")).expect("deploy/") {
        let name = entry.expect("entry").file_name();
        let path = format!("deploy/{}", name.to_str().unwrap());
        assert!(readme.contains(&path), "README does not name {path}");
    }
}

/// The markdown files whose commands and links are checked.
const DOCS: &[&str] = &[
    "README.md",
    "docs/protocol.md",
    "docs/operations.md",
    "docs/performance.md",
    "docs/design.md",
    "ARCHITECTURE.md",
];

/// The programs whose flags the docs may name, each with how to get its `--help`.
fn help_of(program: &str) -> Option<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = match program.rsplit('/').next().unwrap() {
        "chatloop" => Command::new(env!("CARGO_BIN_EXE_chatloop")).arg("--help").output().expect("chatloop"),
        "chatload" => Command::new(env!("CARGO_BIN_EXE_chatload")).arg("--help").output().expect("chatload"),
        s if program.starts_with("scripts/") && s.ends_with(".sh") => {
            let path = root.join(program);
            assert!(path.is_file(), "the docs run {program}, which does not exist");
            run(&path, "--help")
        }
        _ => return None,
    };
    assert_eq!(out.status.code(), Some(0), "{program} --help");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `text` holds `flag` as a whole word (not as the start of a longer flag).
fn names_flag(text: &str, flag: &str) -> bool {
    text.match_indices(flag).any(|(i, _)| {
        let next = text[i + flag.len()..].chars().next();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// The commands of a markdown file: the lines of its ```sh blocks (continuations joined,
/// comments dropped), and its inline code spans, each split at `&&`, `|`, `;` and `&`.
fn commands(md: &str) -> Vec<String> {
    let mut cmds = Vec::new();
    let mut prose = String::new();
    let mut fence: Option<String> = None;
    let mut joined = String::new();
    for line in md.lines() {
        match &fence {
            None if line.starts_with("```") => fence = Some(line.trim_start_matches('`').to_string()),
            None => {
                prose.push_str(line);
                prose.push('\n');
            }
            Some(_) if line.starts_with("```") => fence = None,
            Some(lang) if lang == "sh" => {
                let code = line.split(" #").next().unwrap();
                if code.trim_start().starts_with('#') {
                    continue;
                }
                match code.strip_suffix('\\') {
                    Some(part) => joined.push_str(part),
                    None => {
                        joined.push_str(code);
                        cmds.push(std::mem::take(&mut joined));
                    }
                }
            }
            Some(_) => {}
        }
    }
    // Inline spans may wrap across lines.
    let mut spans = prose.split('`').skip(1).step_by(2);
    cmds.extend(spans.by_ref().map(|s| s.replace('\n', " ")));
    cmds.iter()
        .flat_map(|c| {
            c.split("&&").flat_map(|c| c.split(['|', ';', '&'])).map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

/// Every flag the docs give `chatloop`, `chatload` or a script in a command (a ```sh line or an
/// inline span such as `scripts/soak.sh --blip`) is one that program's `--help` names, and
/// every script they run exists: a renamed or dropped flag fails here, not for a reader.
#[test]
fn every_flag_in_the_docs_commands_is_in_its_programs_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut helps: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for doc in DOCS {
        let md = std::fs::read_to_string(root.join(doc)).expect(doc);
        for cmd in commands(&md) {
            let mut words = cmd.split_whitespace().skip_while(|w| *w == "sudo" || w.contains('='));
            let Some(program) = words.next() else { continue };
            let help = helps.entry(program.to_string()).or_insert_with(|| help_of(program));
            let Some(help) = help else { continue };
            for flag in words.filter(|w| w.starts_with("--") && w.len() > 2) {
                let flag = flag.split('=').next().unwrap().trim_end_matches([',', ')', '.', ':']);
                checked += 1;
                if !names_flag(help, flag) {
                    wrong.push(format!("{doc}: `{}`: {program} has no {flag}", cmd.trim()));
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} flags found in the docs' commands");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The README's flags table lists exactly the flags of `chatloop --help`.
#[test]
fn readme_flags_table_is_chatloop_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let help = help_of("chatloop").unwrap();
    let flags_in = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(str::to_string)
            .collect()
    };
    let from_help = flags_in(
        &help
            .lines()
            .filter(|l| l.trim_start().starts_with('-'))
            .map(|l| l.split("  ").find(|s| !s.is_empty()).unwrap_or(""))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let table = readme
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .map(|l| l.split(" | ").next().unwrap())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(from_help.len() >= 30, "{from_help:?}");
    assert_eq!(flags_in(&table), from_help, "README's flags table against chatloop --help");
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every relative link in the docs names a file that exists and, with `#anchor`, a heading of
/// that file.
#[test]
fn every_link_in_the_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = Vec::new();
    let mut links = 0;
    for doc in DOCS {
        let md = std::fs::read_to_string(root.join(doc)).expect(doc);
        let dir = root.join(doc).parent().unwrap().to_path_buf();
        for (i, _) in md.match_indices("](") {
            let target = md[i + 2..].split(')').next().unwrap();
            if target.contains("://") || target.starts_with("mailto:") || target.contains(' ') {
                continue;
            }
            links += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let file = if path.is_empty() { root.join(doc) } else { dir.join(path) };
            if !file.exists() {
                wrong.push(format!("{doc}: ({target}): no file {}", file.display()));
                continue;
            }
            if !anchor.is_empty() {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let mut in_fence = false;
                let found = text.lines().any(|l| {
                    in_fence ^= l.starts_with("```");
                    !in_fence && l.starts_with('#') && slug(l.trim_start_matches('#')) == anchor
                });
                if !found {
                    wrong.push(format!("{doc}: ({target}): no heading #{anchor}"));
                }
            }
        }
    }
    assert!(links >= 20, "only {links} links");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
