//! Interoperability of signed tokens with an independent implementation, PyJWT (with
//! `cryptography` for RSA, EC and Ed25519): tokens PyJWT mints, for every algorithm we
//! support, verify with `chatloop::auth`; tokens `chatloop token` mints verify in PyJWT.
//!
//! The keys are made by openssl for each run. PyJWT lives in a venv under target/
//! (`target/auth-venv`), made once from PyPI and reused. Without PyPI the test fails and says
//! so: a test that silently passed would claim an interoperability nobody checked.

use chatloop::auth::{Key, KeySet, Reason, Verifier, unix_ms};
use serde_json::{Value, json};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

/// What PyJWT is asked to do: read a JSON job on stdin, print a JSON list of results.
const SCRIPT: &str = r#"
import json, sys, jwt
job = json.load(sys.stdin)

def key(path, alg):
    data = open(path, "rb").read()
    if alg.startswith("HS"):
        # chatloop's rule for a text secret file: one trailing line ending is not the secret.
        return data[:-1] if data.endswith(b"\n") else data
    return data

out = []
for t in job:
    if "claims" in t:
        out.append(jwt.encode(t["claims"], key(t["key"], t["alg"]), algorithm=t["alg"], headers=t.get("headers")))
    else:
        try:
            claims = jwt.decode(t["token"], key(t["key"], t["alg"]), algorithms=[t["alg"]],
                                audience=t.get("aud"), issuer=t.get("iss"),
                                options={"require": ["exp", "iat", "sub"]})
            out.append({"claims": claims, "header": jwt.get_unverified_header(t["token"])})
        except Exception as e:
            out.append({"error": type(e).__name__ + ": " + str(e)})
print(json.dumps(out))
"#;

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is target/tmp: its parent is the target directory, wherever it is.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("target/tmp has a parent").to_path_buf()
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!("{what} failed ({}): {}", out.status, tail.join(" | ")));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The venv's python, made once (per machine, as `.ci/run` does for websockets). It is built
/// beside its final place and renamed, so two test runs at once never see half of one; it
/// is run only as `bin/python3`, which finds its venv wherever the directory is.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let made = PYTHON.get_or_init(|| {
        let venv = target_dir().join("auth-venv");
        let python = venv.join("bin/python3");
        let works = |py: &Path| {
            Command::new(py)
                .args(["-c", "import jwt, cryptography"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works(&python) {
            return Ok(python);
        }
        let building = target_dir().join(format!("auth-venv.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&building);
        run(
            Command::new("timeout").args(["120", "python3", "-m", "venv"]).arg(&building),
            "python3 -m venv",
        )?;
        let pip = Command::new("timeout")
            .arg("600")
            .arg(building.join("bin/python3"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--retries",
                "2",
                "--timeout",
                "30",
                "PyJWT",
                "cryptography",
            ])
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .stdin(Stdio::null())
            .output();
        match pip {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let _ = std::fs::remove_dir_all(&building);
                let err = String::from_utf8_lossy(&o.stderr);
                let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                return Err(format!(
                    "pip could not install PyJWT and cryptography from PyPI ({}; {last}): these tests \
                     need them to check tokens against an independent implementation",
                    o.status
                ));
            }
            Err(e) => return Err(format!("cannot run pip: {e}")),
        }
        let _ = std::fs::remove_dir_all(&venv);
        if std::fs::rename(&building, &venv).is_err() {
            // Another run renamed its venv first: use that one.
            let _ = std::fs::remove_dir_all(&building);
        }
        if works(&python) {
            Ok(python)
        } else {
            Err(format!("{} cannot import jwt after install", python.display()))
        }
    });
    match made {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

/// PyJWT's answers to a job.
fn pyjwt(job: &Value) -> Vec<Value> {
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python");
    child.stdin.take().expect("stdin").write_all(job.to_string().as_bytes()).expect("write the job");
    let out = child.wait_with_output().expect("python's output");
    assert!(out.status.success(), "PyJWT: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("PyJWT's JSON")
}

/// Keys made by openssl for this run: `NAME.key` (private) and `NAME.pub` (public), and
/// `hmac.key` = `hmac.pub`, a 64-byte text secret with a line ending.
fn keys() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("auth-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("key dir");
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").args(args).current_dir(&dir), &format!("openssl {}", args.join(" ")))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        for (name, alg, opt) in [
            ("rsa", "RSA", "rsa_keygen_bits:2048"),
            ("p256", "EC", "ec_paramgen_curve:P-256"),
            ("p384", "EC", "ec_paramgen_curve:P-384"),
        ] {
            openssl(&["genpkey", "-algorithm", alg, "-pkeyopt", opt, "-out", &format!("{name}.key")]);
        }
        openssl(&["genpkey", "-algorithm", "ED25519", "-out", "ed25519.key"]);
        for name in ["rsa", "p256", "p384", "ed25519"] {
            openssl(&["pkey", "-in", &format!("{name}.key"), "-pubout", "-out", &format!("{name}.pub")]);
        }
        let secret = openssl(&["rand", "-hex", "32"]); // 64 hex digits and a newline
        std::fs::write(dir.join("hmac.key"), &secret).expect("secret");
        std::fs::write(dir.join("hmac.pub"), &secret).expect("secret");
        dir
    })
}

fn file(name: &str) -> String {
    keys().join(name).to_str().expect("utf-8 path").to_string()
}

/// Every algorithm and the key files that go with it.
const ALGS: [(&str, &str); 9] = [
    ("HS256", "hmac"),
    ("HS384", "hmac"),
    ("HS512", "hmac"),
    ("RS256", "rsa"),
    ("RS384", "rsa"),
    ("RS512", "rsa"),
    ("ES256", "p256"),
    ("ES384", "p384"),
    ("EdDSA", "ed25519"),
];

fn now_s() -> u64 {
    unix_ms(SystemTime::now()) / 1000
}

#[test]
fn tokens_minted_by_pyjwt_verify_here() {
    let now = now_s();
    let job: Vec<Value> = ALGS
        .iter()
        .flat_map(|(alg, name)| {
            let claims = json!({ "sub": "alice", "iat": now, "exp": now + 600, "rooms": ["lobby", "team-*"],
                                 "aud": ["other", "chat"], "iss": "pyjwt" });
            let key = file(&format!("{name}.key"));
            [
                json!({ "alg": alg, "key": key, "claims": claims }),
                json!({ "alg": alg, "key": key, "claims": claims, "headers": { "kid": "k1" } }),
                // Expired well beyond the leeway: refused here for that reason, not another.
                json!({ "alg": alg, "key": key, "claims": { "sub": "alice", "iat": now - 900, "exp": now - 600 } }),
            ]
        })
        .collect();
    let tokens = pyjwt(&Value::Array(job));
    assert_eq!(tokens.len(), ALGS.len() * 3);
    for (i, (alg, name)) in ALGS.iter().enumerate() {
        let key =
            || Key::parse(&std::fs::read(file(&format!("{name}.pub"))).expect("key")).expect("our parse");
        let mut unnamed = KeySet::new();
        unnamed.add(None, key()).unwrap();
        let mut v = Verifier::new(unnamed);
        v.audience = Some("chat".into());
        v.issuer = Some("pyjwt".into());
        let mut named = KeySet::new();
        named.add(Some("k1".into()), key()).unwrap();
        let mut vn = Verifier::new(named);
        vn.audience = Some("chat".into());
        let now_ms = unix_ms(SystemTime::now());
        let [plain, with_kid, expired] =
            [0, 1, 2].map(|j| tokens[i * 3 + j].as_str().expect("a token").to_string());
        let claims = v.verify(plain.as_bytes(), now_ms).unwrap_or_else(|r| panic!("{alg}: {r}: {plain}"));
        assert_eq!(claims.sub, "alice", "{alg}");
        assert_eq!(claims.exp_ms, (now + 600) * 1000, "{alg}");
        assert_eq!(claims.alg.as_str(), *alg);
        assert!(claims.may_enter("team-red") && !claims.may_enter("staff"), "{alg}");
        assert!(vn.verify(with_kid.as_bytes(), now_ms).is_ok(), "{alg} with kid k1");
        assert_eq!(v.verify(expired.as_bytes(), now_ms), Err(Reason::Expired), "{alg} expired");
        // Another key of another family refuses what PyJWT signed.
        let other = if *name == "p256" { "ed25519" } else { "p256" };
        let mut wrong = KeySet::new();
        wrong.add(None, Key::parse(&std::fs::read(file(&format!("{other}.pub"))).unwrap()).unwrap()).unwrap();
        assert_eq!(Verifier::new(wrong).verify(plain.as_bytes(), now_ms), Err(Reason::BadSignature), "{alg}");
    }
}

#[test]
fn tokens_minted_by_chatloop_token_verify_in_pyjwt() {
    let before = now_s();
    let mut job = Vec::new();
    for (alg, name) in ALGS {
        let out = Command::new(env!("CARGO_BIN_EXE_chatloop"))
            .args(["token", "--key", &file(&format!("{name}.key")), "--sub", "bob", "--ttl", "10m"])
            .args([
                "--rooms",
                "lobby,team-*",
                "--aud",
                "chat",
                "--iss",
                "chatloop",
                "--kid",
                "k1",
                "--alg",
                alg,
            ])
            .output()
            .expect("chatloop token");
        assert!(out.status.success(), "{alg}: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).expect("utf-8").trim_end().to_string();
        assert_eq!(token.matches('.').count(), 2, "{alg}: {token}");
        let key = file(&format!("{name}.pub"));
        job.push(json!({ "alg": alg, "key": key, "token": token, "aud": "chat", "iss": "chatloop" }));
        // PyJWT must also refuse it when the audience is another: it really checks.
        job.push(json!({ "alg": alg, "key": key, "token": token, "aud": "elsewhere", "iss": "chatloop" }));
    }
    let after = now_s();
    let answers = pyjwt(&Value::Array(job));
    for (i, (alg, _)) in ALGS.iter().enumerate() {
        let good = &answers[i * 2];
        let claims = &good["claims"];
        assert_eq!(claims["sub"], "bob", "{alg}: {good}");
        assert_eq!(claims["rooms"], json!(["lobby", "team-*"]), "{alg}");
        let exp = claims["exp"].as_u64().expect("exp");
        assert!(
            (before + 600..=after + 600).contains(&exp),
            "{alg}: exp {exp}, minted in {before}..={after}"
        );
        assert_eq!(good["header"]["alg"], *alg);
        assert_eq!(good["header"]["kid"], "k1");
        let bad = answers[i * 2 + 1]["error"].as_str().unwrap_or("");
        assert!(bad.starts_with("InvalidAudienceError"), "{alg}: {}", answers[i * 2 + 1]);
    }
}

#[test]
fn chatloop_token_fails_in_one_line_with_status_2() {
    for args in [
        vec!["token", "--key", "/nonexistent", "--sub", "a", "--ttl", "1m"],
        vec!["token", "--sub", "a"],
        vec!["token", "--key", "KEY", "--sub", "not valid", "--ttl", "1m"],
        vec!["token", "--key", "PUB", "--sub", "a", "--ttl", "1m"],
        vec!["token", "--key", "KEY", "--sub", "a", "--ttl", "1m", "--alg", "HS256"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| match *a {
                "KEY" => file("p256.key"),
                "PUB" => file("p256.pub"),
                a => a.to_string(),
            })
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_chatloop")).args(&args).output().expect("chatloop token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("chatloop token: ") && err.lines().count() == 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    // Each refusal says what is wrong, not something beside it.
    let secret = file("hmac.key");
    for (args, needle) in [
        (
            vec!["--alg", "RS256"],
            "RS256 needs an RSA key (RS256/384/512), but the key is a shared secret (HS256/384/512)",
        ),
        (vec!["--rooms", ""], "--rooms: '' names no room"),
        (vec!["--rooms", " , "], "--rooms: ' , ' names no room"),
        (vec!["--sub", "b"], "--sub given twice: give it once"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_chatloop"))
            .args(["token", "--key", &secret, "--sub", "a", "--ttl", "1m"])
            .args(&args)
            .output()
            .expect("chatloop token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("chatloop token: {needle}")) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing minted");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_chatloop")).args(["token", "--help"]).output().expect("help");
    assert!(
        help.status.success() && String::from_utf8_lossy(&help.stdout).starts_with("Usage: chatloop token")
    );
}
