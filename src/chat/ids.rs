//! Who may hold an id: the uniqueness key, and ids held back for a client the server closed.
//!
//! Two ids are the same user if they differ only in ASCII case or in characters people cannot
//! tell apart in a sans-serif face: `0`/`o`, and `1`/`l`/`I` (and with case folded, `i` and `L`
//! too). `aIice`, `a1ice` and `alice` are one key, so a newcomer cannot pose as someone online.
//!
//! When the server closes a session (slow consumer, idle timeout, protocol error) the client
//! did not choose to leave, and its id is held for it for a grace period: only a reconnect
//! presenting the secret from its welcome (`resume`) takes it back. Otherwise a second
//! connection could kick a user (by flooding it) and take its id in the next millisecond.

use data_encoding::BASE64URL_NOPAD;
use std::collections::HashMap;
use std::time::Instant;

/// The uniqueness key of a valid id: lowercase, with `0` as `o` and `1`, `i` as `l`.
pub fn key(id: &str) -> String {
    id.bytes()
        .map(|b| match b.to_ascii_lowercase() {
            b'0' => 'o',
            b'1' | b'i' => 'l',
            c => c as char,
        })
        .collect()
}

/// A resume secret: 128 random bits.
pub type Secret = [u8; 16];

/// A fresh secret from the OS's randomness. If that ever fails, `RandomState` (also seeded by
/// the OS, once per thread) mixed with the time still gives an unguessable value.
pub fn new_secret() -> Secret {
    let mut s = [0u8; 16];
    if getrandom::fill(&mut s).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in s.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    s
}

/// The secret as the welcome's `resume` token: base64url without padding (22 characters).
pub fn token_text(s: &Secret) -> String {
    BASE64URL_NOPAD.encode(s)
}

/// A `resume` token from a URL; None unless it is exactly a token we could have issued.
pub fn parse_token(t: &str) -> Option<Secret> {
    let bytes = BASE64URL_NOPAD.decode(t.as_bytes()).ok()?;
    bytes.try_into().ok()
}

struct Hold {
    secret: Secret,
    until: Instant,
}

/// Ids held for clients the server closed, keyed by `key`.
#[derive(Default)]
pub struct Reserved {
    held: HashMap<String, Hold>,
}

/// What a claim of a held id comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not held (or the hold has expired).
    Free,
    /// Held for this claimant, who presented the right secret: the hold is gone now.
    Resumed,
    /// Held for someone else.
    Held,
}

impl Reserved {
    /// Holds `key` for the client that knows `secret`, until `until`.
    pub fn hold(&mut self, key: String, secret: Secret, until: Instant) {
        self.held.insert(key, Hold { secret, until });
    }

    /// Whether `key` is held for someone at `now` (whoever presents what).
    pub fn is_held(&self, key: &str, now: Instant) -> bool {
        self.held.get(key).is_some_and(|h| now < h.until)
    }

    /// A claim of `key` by a client presenting `presented`; a right secret ends the hold.
    pub fn claim(&mut self, key: &str, presented: Option<&Secret>, now: Instant) -> Claim {
        match self.held.get(key) {
            Some(h) if now >= h.until => Claim::Free,
            Some(h) if presented.is_some_and(|p| constant_time_eq(p, &h.secret)) => {
                self.held.remove(key);
                Claim::Resumed
            }
            Some(_) => Claim::Held,
            None => Claim::Free,
        }
    }

    /// Ends the holds whose grace has passed and returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let gone: Vec<String> =
            self.held.iter().filter(|(_, h)| now >= h.until).map(|(k, _)| k.clone()).collect();
        for k in &gone {
            self.held.remove(k);
        }
        gone
    }

    /// The earliest moment a hold ends.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.held.values().map(|h| h.until).min()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.held.keys().map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub fn shrink(&mut self) {
        self.held.shrink_to_fit();
    }
}

/// Compares secrets without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &Secret, b: &Secret) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn confusables_and_case_fold_to_one_key() {
        for same in ["alice", "ALICE", "aIice", "a1ice", "AL1CE", "aiice"] {
            assert_eq!(key(same), "allce", "{same}");
        }
        assert_eq!(key("b0b"), key("bob"));
        assert_eq!(key("B0B"), "bob");
        assert_ne!(key("bob"), key("rob"));
        assert_eq!(key("x_y-z.9"), "x_y-z.9");
    }

    #[test]
    fn tokens_round_trip_and_strangers_do_not_parse() {
        let s = new_secret();
        let t = token_text(&s);
        assert_eq!(t.len(), 22);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(parse_token(&t), Some(s));
        assert_ne!(new_secret(), s);
        for bad in ["", "abc", "AAAAAAAAAAAAAAAAAAAAAAAA", "!!!!!!!!!!!!!!!!!!!!!!", &t[..21]] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_hold_lets_only_its_secret_in_and_ends_with_its_grace() {
        let t0 = Instant::now();
        let mut r = Reserved::default();
        let (s, wrong) = (new_secret(), new_secret());
        r.hold("alice".into(), s, t0 + Duration::from_secs(10));
        assert!(r.is_held("alice", t0));
        assert_eq!(r.claim("alice", None, t0), Claim::Held);
        assert_eq!(r.claim("alice", Some(&wrong), t0), Claim::Held);
        assert_eq!(r.claim("bob", None, t0), Claim::Free);
        assert_eq!(r.claim("alice", Some(&s), t0), Claim::Resumed);
        assert_eq!(r.claim("alice", Some(&s), t0), Claim::Free, "a secret works once");
        r.hold("alice".into(), s, t0 + Duration::from_secs(10));
        let late = t0 + Duration::from_secs(10);
        assert_eq!(r.claim("alice", None, late), Claim::Free);
        assert_eq!(r.expire(late), vec!["alice".to_string()]);
        assert_eq!(r.len(), 0);
    }
}
