//! Every script in scripts/ answers `--help` (usage on stdout, exit 0) and refuses an unknown
//! flag with exit 2, both before it builds, installs or starts anything.

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
