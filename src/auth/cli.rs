//! `chatloop token`: mints a signed token from the shell, so a script can do
//! `TOKEN=$(chatloop token --key secret --sub alice --ttl 10m)` and connect with it.
//! Errors are one line on stderr with exit status 2, like the server's flags.

use super::{Alg, MintRequest, SigningKey, keys, mint, unix_ms};
use crate::flags::Cli;
use std::time::{Duration, SystemTime};

pub const HELP: &str = "\
Usage: chatloop token --key FILE --sub ID --ttl DURATION [options]

Prints a signed token (a JWT) for chatloop's --auth token mode.

  --key FILE      a raw shared secret of at least 32 bytes (HS256; HS384 needs 48, HS512 64),
                  or a PEM private key: RSA (RS256), EC P-256 (ES256), EC P-384 (ES384),
                  Ed25519 (EdDSA). A text secret file loses one trailing line ending.
  --sub ID        the user id (1 to 32 of A-Z a-z 0-9 _ - .)
  --ttl DURATION  how long it is valid: 90s, 10m, 2h, 7d, or seconds (at most 3650d)
  --rooms LIST    the rooms it allows, comma-separated names or prefixes ending in *
                  ('lobby,team-*'); without it, every room
  --aud A         the audience claim
  --iss I         the issuer claim
  --kid K         the key's name, for a server given --auth-key K=FILE
  --alg ALG       HS256 HS384 HS512 RS256 RS384 RS512 ES256 ES384 EdDSA (default: the key's)
  --help          this text

Each flag is given once. Exit status: 0 with the token on stdout, 2 on bad input (one line
on stderr).
";

/// The longest TTL accepted: ten years is already longer than any sane token lives.
const MAX_TTL_SECS: u64 = 3650 * 86_400;

/// Runs the subcommand on the arguments after `token`; returns the exit status.
pub fn main(args: impl IntoIterator<Item = String>) -> i32 {
    match run(args, unix_ms(SystemTime::now())) {
        Ok(Some(token)) => {
            println!("{token}");
            0
        }
        Ok(None) => {
            print!("{HELP}");
            0
        }
        Err(e) => {
            eprintln!("chatloop token: {e}");
            2
        }
    }
}

/// The token for a command line, `None` for `--help`.
pub fn run(args: impl IntoIterator<Item = String>, now_ms: u64) -> Result<Option<String>, String> {
    let (mut key, mut sub, mut ttl, mut rooms, mut aud, mut iss, mut kid, mut alg) =
        (None, None, None, None, None, None, None, None);
    let mut cli = Cli::new(args);
    while let Some(flag) = cli.next_flag()? {
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--key" => key = Some(cli.value()?),
            "--sub" => sub = Some(cli.value()?),
            "--ttl" => ttl = Some(duration("--ttl", &cli.value()?)?),
            "--rooms" => {
                let v = cli.value()?;
                let list: Vec<String> =
                    v.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
                // An empty claim would be a token that joins no room at all: a typo or an
                // unset variable far more often than what was meant.
                if list.is_empty() {
                    return Err(format!(
                        "--rooms: '{v}' names no room; give names or prefixes ('lobby,team-*'), \
                         or leave --rooms out for every room"
                    ));
                }
                rooms = Some(list);
            }
            "--aud" => aud = Some(cli.value()?),
            "--iss" => iss = Some(cli.value()?),
            "--kid" => kid = Some(cli.value()?),
            "--alg" => {
                let v = cli.value()?;
                alg = Some(Alg::parse(&v).ok_or_else(|| format!("--alg: unknown algorithm '{v}'"))?);
            }
            other => return Err(format!("unknown flag '{other}' (see chatloop token --help)")),
        }
    }
    let key = key.ok_or("--key FILE is required")?;
    let sub = sub.ok_or("--sub ID is required")?;
    let ttl = ttl.ok_or("--ttl DURATION is required")?;
    let signing = SigningKey::parse(&keys::read_key_file(&key)?).map_err(|e| format!("{key}: {e}"))?;
    let rooms: Option<Vec<String>> = rooms;
    let req = MintRequest {
        sub: &sub,
        ttl,
        rooms: rooms.as_deref(),
        aud: aud.as_deref(),
        iss: iss.as_deref(),
        kid: kid.as_deref(),
        alg,
    };
    mint(&signing, &req, now_ms).map(Some)
}

/// `90s`, `10m`, `2h`, `7d`, or a number of seconds.
pub fn duration(flag: &str, v: &str) -> Result<Duration, String> {
    let (num, unit) = match v.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c),
        _ => (v, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("{flag}: '{v}' is not a duration like 90s, 10m, 2h or 7d")),
    };
    let n: u64 =
        num.parse().map_err(|_| format!("{flag}: '{v}' is not a duration like 90s, 10m, 2h or 7d"))?;
    let secs = n.checked_mul(scale).filter(|s| (1..=MAX_TTL_SECS).contains(s));
    let secs = secs.ok_or_else(|| format!("{flag}: must be from 1 second to 3650 days"))?;
    Ok(Duration::from_secs(secs))
}
