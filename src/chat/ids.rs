//! Who may hold an id: the uniqueness key, and ids held back for a client the server closed.
//!
//! Two ids are the same user if they differ only in ASCII case or in characters people cannot
//! tell apart in a sans-serif face: `0`/`o`, and `1`/`l`/`I` (and with case folded, `i` and `L`
//! too). `aIice`, `a1ice` and `alice` are one key, so a newcomer cannot pose as someone online.
//!
//! Each session gets a secret (128 bits) in its welcome, as a base64url token: it is what
//! takes the id back after a lost connection (see `resume`). Without it a second connection
//! could kick a user (by flooding it) and take its id in the next millisecond. A session's
//! secret is derived, not stored (`Secrets`): 16 bytes less in every connection.

use data_encoding::BASE64URL_NOPAD;

/// The uniqueness key of a valid id: lowercase, with `0` as `o` and `1`, `i` as `l`.
pub fn key(id: &str) -> String {
    id.bytes().map(|b| fold(b) as char).collect()
}

/// One byte of an id as it is in its key.
pub fn fold(b: u8) -> u8 {
    match b.to_ascii_lowercase() {
        b'0' => b'o',
        b'1' | b'i' => b'l',
        c => c,
    }
}

/// Derives each session's resume secret: HMAC-SHA256, under a key drawn from the OS at
/// start-up, of the connection's generation (unique to it among the process's connections
/// until 2^32 more have come) and the id, cut to 128 bits. Unguessable without the key, like
/// a random secret, and computed when needed (the welcome, a replacement, the hold) instead
/// of kept in every connection. A hold keeps its secret itself: the connection is gone.
pub struct Secrets {
    key: [u8; 32],
}

impl Default for Secrets {
    fn default() -> Self {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&new_secret());
        key[16..].copy_from_slice(&new_secret());
        Secrets { key }
    }
}

impl Secrets {
    /// The secret of the session of `id` on the connection of `generation`.
    pub fn of(&self, generation: u32, id: &str) -> Secret {
        use hmac::{KeyInit, Mac};
        let mut mac =
            <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(&generation.to_le_bytes());
        mac.update(id.as_bytes());
        let mut s = [0u8; 16];
        s.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        s
    }
}

/// A resume secret: 128 bits.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sessions_secret_is_fixed_by_its_connection_and_id_and_unguessable_without_the_key() {
        let (k, other) = (Secrets::default(), Secrets::default());
        assert_eq!(k.of(7, "alice"), k.of(7, "alice"), "derived again, the same");
        let all = [k.of(7, "alice"), k.of(8, "alice"), k.of(7, "alicf"), other.of(7, "alice")];
        for (i, a) in all.iter().enumerate() {
            assert!(all[i + 1..].iter().all(|b| a != b), "{i}: another connection, id or key");
        }
        assert_ne!(k.of(7, "alice"), [0u8; 16]);
    }

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
}
