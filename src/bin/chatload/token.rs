//! `--token-key FILE`: a signed token for each client (its `sub` is the client's id), for a
//! server in `--auth token` mode, sent as `?token=` on every connect and resume. Minted with
//! the library's `auth::mint`, the same code as `chatloop token`.

use chatloop::auth::{self, MintRequest, SigningKey};
use std::time::{Duration, SystemTime};

/// The key and how long the tokens live (the whole run: see `ttl`).
pub struct Tokens {
    key: SigningKey,
    kid: Option<String>,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({:?}, kid {:?}, ttl {:?})", self.key.family(), self.kid, self.ttl)
    }
}

/// Long enough for any run: chatload's hard deadline (warmup + duration + drain + 30 s)
/// plus a minute, whole seconds rounded up.
pub fn ttl(warmup: Duration, duration: Duration, drain: Duration) -> Duration {
    let run = warmup + duration + drain + Duration::from_secs(90);
    Duration::from_secs(run.as_secs() + u64::from(run.subsec_nanos() > 0))
}

impl Tokens {
    /// Reads the key file and mints one token to prove it can sign, so a bad key is a flag
    /// error (exit 2) rather than every connection refused.
    pub fn load(path: &str, kid: Option<String>, ttl: Duration) -> Result<Tokens, String> {
        let content = auth::keys::read_key_file(path).map_err(|e| format!("--token-key: {e}"))?;
        let key = SigningKey::parse(&content).map_err(|e| format!("--token-key {path}: {e}"))?;
        let tokens = Tokens { key, kid, ttl };
        tokens.mint("chatload").map_err(|e| format!("--token-key {path}: {e}"))?;
        Ok(tokens)
    }

    /// A token for `id`, valid from now for the run.
    pub fn mint(&self, id: &str) -> Result<String, String> {
        let req = MintRequest { sub: id, ttl: self.ttl, kid: self.kid.as_deref(), ..MintRequest::default() };
        auth::mint(&self.key, &req, auth::unix_ms(SystemTime::now()))
    }

    /// `&token=TOKEN` for `id` (base64url and dots need no escaping in a query). An id the
    /// key cannot mint for (none of chatload's) gets no token: the server says `missing`.
    pub fn query(&self, id: &str) -> String {
        self.mint(id).map(|t| format!("&token={t}")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mints_for_the_client_id_and_the_whole_run() {
        let dir = std::env::temp_dir().join(format!("chatload-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let ttl = ttl(Duration::from_secs(20), Duration::from_millis(10_500), Duration::from_secs(2));
        assert_eq!(ttl, Duration::from_secs(123));
        let t = Tokens::load(path.to_str().unwrap(), Some("k1".into()), ttl).unwrap();
        let q = t.query("cl1-m0");
        let token = q.strip_prefix("&token=").unwrap();
        let mut keys = auth::KeySet::new();
        keys.load(&format!("k1={}", path.display())).unwrap();
        let claims = auth::Verifier::new(keys).verify(token.as_bytes(), auth::unix_ms(SystemTime::now()));
        assert_eq!(claims.unwrap().sub, "cl1-m0");
        assert!(format!("{t:?}").contains("k1") && !format!("{t:?}").contains("0123"));
        std::fs::write(&path, "short").unwrap();
        let e = Tokens::load(path.to_str().unwrap(), None, ttl).unwrap_err();
        assert!(e.starts_with("--token-key") && e.contains("at least"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
