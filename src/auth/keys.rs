//! Keys: what a key file holds decides its family of algorithms (RFC 7518), and a key accepts
//! only the algorithms of its own family. That rule is the defence against algorithm
//! confusion: a public key is never used as an HMAC secret, whatever a token's `alg` says.
//!
//! A key file is either PEM (a public key to verify, a private key to mint) or a raw shared
//! secret. Secrets: a text file (printable UTF-8) loses one trailing line ending, because
//! `echo "$SECRET" > file` and editors add one that the other side's copy of the secret lacks;
//! any other file is the secret byte for byte.

use super::Reason;
use hmac::{Hmac, KeyInit, Mac};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, PrivateKey as RsaPrivateKey, PublicKey as RsaPublicKey};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The shortest shared secret accepted: RFC 7518 3.2 asks HS256 for a key of at least the
/// hash's size, 32 bytes (HS384 and HS512: 48 and 64, checked per algorithm).
pub const MIN_SECRET: usize = 32;

/// The smallest RSA modulus accepted, in bits (RFC 7518 3.3 and NIST: 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// A key file larger than this is refused before it is parsed (a 4096-bit RSA PEM is 3.3 KB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The algorithms a token may name in its `alg`; `none` is not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The name in a JWS header. RFC 9864's `Ed25519` is read as `EdDSA`: with Ed25519 keys
    /// the only ones we accept, the two name the same thing.
    pub fn parse(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::HS256,
            "HS384" => Alg::HS384,
            "HS512" => Alg::HS512,
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" | "Ed25519" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }
}

/// What a key file held: the family decides the algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Family {
    /// The algorithm `chatloop token` signs with when `--alg` is not given.
    pub fn default_alg(self) -> Alg {
        match self {
            Family::Hmac => Alg::HS256,
            Family::Rsa => Alg::RS256,
            Family::P256 => Alg::ES256,
            Family::P384 => Alg::ES384,
            Family::Ed25519 => Alg::EdDSA,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Hmac => "a shared secret (HS256/384/512)",
            Family::Rsa => "an RSA key (RS256/384/512)",
            Family::P256 => "an EC P-256 key (ES256)",
            Family::P384 => "an EC P-384 key (ES384)",
            Family::Ed25519 => "an Ed25519 key (EdDSA)",
        }
    }
}

/// A key that verifies signatures.
pub enum Key {
    Hmac(Vec<u8>),
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl std::fmt::Debug for Key {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", self.family())
    }
}

/// A key that signs (minting only; the server never holds one of these except a secret).
pub enum SigningKey {
    Hmac(Vec<u8>),
    Rsa(Box<RsaPrivateKey>),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// Whether a secret of `len` bytes is long enough for `alg` (RFC 7518 3.2: at least the size
/// of the hash output).
fn secret_fits(alg: Alg, len: usize) -> bool {
    min_secret(alg).is_some_and(|min| len >= min)
}

/// The shortest secret an HMAC algorithm takes (its hash's size, RFC 7518 3.2); `None` for
/// the others, which take no secret at all.
fn min_secret(alg: Alg) -> Option<usize> {
    match alg {
        Alg::HS256 => Some(32),
        Alg::HS384 => Some(48),
        Alg::HS512 => Some(64),
        _ => None,
    }
}

fn family_of(alg: Alg) -> Family {
    match alg {
        Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
        Alg::RS256 | Alg::RS384 | Alg::RS512 => Family::Rsa,
        Alg::ES256 => Family::P256,
        Alg::ES384 => Family::P384,
        Alg::EdDSA => Family::Ed25519,
    }
}

fn hmac_tag(alg: Alg, secret: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
    fn tag<M: Mac + KeyInit>(secret: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
        let mut mac = <M as KeyInit>::new_from_slice(secret).ok()?;
        mac.update(msg);
        Some(mac.finalize().into_bytes().to_vec())
    }
    match alg {
        Alg::HS256 => tag::<Hmac<Sha256>>(secret, msg),
        Alg::HS384 => tag::<Hmac<Sha384>>(secret, msg),
        Alg::HS512 => tag::<Hmac<Sha512>>(secret, msg),
        _ => None,
    }
}

fn hmac_check(alg: Alg, secret: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    // `verify_slice` compares in constant time.
    fn check<M: Mac + KeyInit>(secret: &[u8], msg: &[u8], sig: &[u8]) -> bool {
        let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else { return false };
        mac.update(msg);
        mac.verify_slice(sig).is_ok()
    }
    match alg {
        Alg::HS256 => check::<Hmac<Sha256>>(secret, msg, sig),
        Alg::HS384 => check::<Hmac<Sha384>>(secret, msg, sig),
        Alg::HS512 => check::<Hmac<Sha512>>(secret, msg, sig),
        _ => false,
    }
}

impl Key {
    pub fn family(&self) -> Family {
        match self {
            Key::Hmac(_) => Family::Hmac,
            Key::Rsa(_) => Family::Rsa,
            Key::P256(_) => Family::P256,
            Key::P384(_) => Family::P384,
            Key::Ed25519(_) => Family::Ed25519,
        }
    }

    /// Whether this key may check a token whose header names `alg`: its family's algorithms
    /// only (so never an HMAC over a public key), and for a secret only the hashes it is long
    /// enough for.
    pub fn accepts(&self, alg: Alg) -> bool {
        match self {
            Key::Hmac(s) => secret_fits(alg, s.len()),
            k => family_of(alg) == k.family(),
        }
    }

    /// Whether `sig` is this key's signature of `msg` under `alg`. False for an algorithm the
    /// key does not accept, so a caller cannot get the family check wrong.
    pub fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match self {
            Key::Hmac(secret) => hmac_check(alg, secret, msg, sig),
            Key::Rsa(key) => {
                let (scheme, digest) = match alg {
                    Alg::RS256 => (Pkcs1v15Sign::new::<Sha256>(), Sha256::digest(msg).to_vec()),
                    Alg::RS384 => (Pkcs1v15Sign::new::<Sha384>(), Sha384::digest(msg).to_vec()),
                    Alg::RS512 => (Pkcs1v15Sign::new::<Sha512>(), Sha512::digest(msg).to_vec()),
                    _ => return false,
                };
                key.verify(scheme, &digest, sig).is_ok()
            }
            // JWS carries r||s (RFC 7518 3.4), not DER: `from_slice` takes exactly that.
            Key::P256(key) => {
                p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.verify(msg, &s).is_ok())
            }
            Key::P384(key) => {
                p384::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.verify(msg, &s).is_ok())
            }
            // Strict: refuses small-order keys and non-canonical signatures, which no honest
            // signer makes.
            Key::Ed25519(key) => {
                ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| key.verify_strict(msg, &s).is_ok())
            }
        }
    }

    /// A key from a key file's content: a PEM public key or a raw secret.
    pub fn parse(content: &[u8]) -> Result<Key, String> {
        let Some(pem) = pem_text(content)? else {
            return secret(content).map(Key::Hmac);
        };
        match pem_label(pem) {
            "PUBLIC KEY" => {
                if let Ok(k) = RsaPublicKey::from_public_key_pem(pem) {
                    return rsa_size(k.size() * 8).map(|()| Key::Rsa(k));
                }
                if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
                    return Ok(Key::P256(k));
                }
                if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
                    return Ok(Key::P384(k));
                }
                if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
                    return Ok(Key::Ed25519(k));
                }
                Err("a public key of none of RSA, EC P-256, EC P-384 or Ed25519".into())
            }
            "RSA PUBLIC KEY" => {
                let k =
                    RsaPublicKey::from_pkcs1_pem(pem).map_err(|e| format!("not an RSA public key: {e}"))?;
                rsa_size(k.size() * 8).map(|()| Key::Rsa(k))
            }
            "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" | "ENCRYPTED PRIVATE KEY" => {
                Err("a private key: the server needs only the public key (openssl pkey -in FILE -pubout)"
                    .into())
            }
            other => Err(format!("a PEM '{other}', not a public key")),
        }
    }
}

impl SigningKey {
    pub fn family(&self) -> Family {
        match self {
            SigningKey::Hmac(_) => Family::Hmac,
            SigningKey::Rsa(_) => Family::Rsa,
            SigningKey::P256(_) => Family::P256,
            SigningKey::P384(_) => Family::P384,
            SigningKey::Ed25519(_) => Family::Ed25519,
        }
    }

    /// Why this key cannot sign `alg`, as the one-line error names it: a secret too short
    /// for its hash, or a key of another family than the algorithm needs.
    pub fn why_not(&self, alg: Alg) -> String {
        match (self, min_secret(alg)) {
            (SigningKey::Hmac(s), Some(min)) => {
                format!(
                    "{} needs a secret of at least {min} bytes; this one is {} bytes",
                    alg.as_str(),
                    s.len()
                )
            }
            (k, _) => format!(
                "{} needs {}, but the key is {}",
                alg.as_str(),
                family_of(alg).name(),
                k.family().name()
            ),
        }
    }

    /// Whether this key can sign `alg` (its family's, and a secret long enough for it).
    pub fn can_sign(&self, alg: Alg) -> bool {
        match self {
            SigningKey::Hmac(s) => secret_fits(alg, s.len()),
            k => family_of(alg) == k.family(),
        }
    }

    /// The signature of `msg` under `alg`, `None` if this key cannot sign it.
    pub fn sign(&self, alg: Alg, msg: &[u8]) -> Option<Vec<u8>> {
        if !self.can_sign(alg) {
            return None;
        }
        match self {
            SigningKey::Hmac(secret) => hmac_tag(alg, secret, msg),
            // rsa's `Signer` blinds with the system's random numbers (its "getrandom" feature).
            SigningKey::Rsa(key) => {
                let key = (**key).clone();
                let sig: Result<rsa::pkcs1v15::Signature, _> = match alg {
                    Alg::RS256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(key).try_sign(msg),
                    Alg::RS384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(key).try_sign(msg),
                    Alg::RS512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(key).try_sign(msg),
                    _ => return None,
                };
                sig.ok().map(|s| s.to_vec())
            }
            // RFC 6979 deterministic nonces: no random numbers needed, none to get wrong.
            SigningKey::P256(key) => {
                let sig: p256::ecdsa::Signature = key.try_sign(msg).ok()?;
                Some(sig.to_bytes().to_vec())
            }
            SigningKey::P384(key) => {
                let sig: p384::ecdsa::Signature = key.try_sign(msg).ok()?;
                Some(sig.to_bytes().to_vec())
            }
            SigningKey::Ed25519(key) => Some(key.sign(msg).to_bytes().to_vec()),
        }
    }

    /// A signing key from a key file's content: a PEM private key (PKCS#8, or the older
    /// PKCS#1 RSA and SEC1 EC forms that `openssl genrsa` and `ecparam` write) or a secret.
    pub fn parse(content: &[u8]) -> Result<SigningKey, String> {
        let Some(pem) = pem_text(content)? else {
            return secret(content).map(SigningKey::Hmac);
        };
        match pem_label(pem) {
            "PRIVATE KEY" => {
                if let Ok(k) = RsaPrivateKey::from_pkcs8_pem(pem) {
                    return rsa_size(k.size() * 8).map(|()| SigningKey::Rsa(Box::new(k)));
                }
                if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
                    return Ok(SigningKey::P256(k));
                }
                if let Ok(k) = p384::ecdsa::SigningKey::from_pkcs8_pem(pem) {
                    return Ok(SigningKey::P384(k));
                }
                if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
                    return Ok(SigningKey::Ed25519(Box::new(k)));
                }
                Err("a private key of none of RSA, EC P-256, EC P-384 or Ed25519".into())
            }
            "RSA PRIVATE KEY" => {
                let k =
                    RsaPrivateKey::from_pkcs1_pem(pem).map_err(|e| format!("not an RSA private key: {e}"))?;
                rsa_size(k.size() * 8).map(|()| SigningKey::Rsa(Box::new(k)))
            }
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
                    return Ok(SigningKey::P256(k.into()));
                }
                if let Ok(k) = p384::SecretKey::from_sec1_pem(pem) {
                    return Ok(SigningKey::P384(k.into()));
                }
                Err("an EC private key on neither P-256 nor P-384".into())
            }
            "ENCRYPTED PRIVATE KEY" => {
                Err("an encrypted private key: decrypt it first (openssl pkey)".into())
            }
            "PUBLIC KEY" | "RSA PUBLIC KEY" => Err("a public key cannot sign: give the private key".into()),
            other => Err(format!("a PEM '{other}', not a private key")),
        }
    }
}

fn rsa_size(bits: usize) -> Result<(), String> {
    match bits >= MIN_RSA_BITS {
        true => Ok(()),
        false => Err(format!("an RSA key of {bits} bits: at least {MIN_RSA_BITS} are needed")),
    }
}

/// The PEM text if the content is PEM (it starts with a `-----BEGIN` line, blank space
/// aside), `None` if it is a secret. A file that looks like PEM is never taken as a secret:
/// that would make a public key an HMAC secret, the confusion this module exists to prevent.
fn pem_text(content: &[u8]) -> Result<Option<&str>, String> {
    let start = content.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(content.len());
    if !content[start..].starts_with(b"-----BEGIN ") {
        return Ok(None);
    }
    let text = std::str::from_utf8(&content[start..]).map_err(|_| "PEM that is not text".to_string())?;
    Ok(Some(text))
}

/// The label of a PEM's first `-----BEGIN LABEL-----` line.
fn pem_label(pem: &str) -> &str {
    let line = pem.lines().next().unwrap_or("");
    line.trim_end().trim_start_matches("-----BEGIN ").trim_end_matches("-----")
}

/// A shared secret from a file's content (see the module's doc for the line ending).
fn secret(content: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(content).ok().filter(|t| {
        let body = t.strip_suffix('\n').map_or(*t, |b| b.strip_suffix('\r').unwrap_or(b));
        !body.chars().any(char::is_control)
    });
    let bytes = match text {
        Some(t) => t.strip_suffix('\n').map_or(t, |b| b.strip_suffix('\r').unwrap_or(b)).as_bytes(),
        None => content,
    };
    if bytes.len() < MIN_SECRET {
        return Err(format!(
            "a secret of {} bytes: at least {MIN_SECRET} are needed (e.g. openssl rand -hex 32)",
            bytes.len()
        ));
    }
    Ok(bytes.to_vec())
}

/// Reads a key file, refusing one too large to be a key before reading it all.
pub fn read_key_file(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut content = Vec::new();
    file.take(MAX_KEY_FILE + 1).read_to_end(&mut content).map_err(|e| format!("{path}: {e}"))?;
    if content.len() as u64 > MAX_KEY_FILE {
        return Err(format!("{path}: larger than {MAX_KEY_FILE} bytes, not a key"));
    }
    Ok(content)
}

/// The keys a server verifies with: each optionally named (`kid`). Rotation is several keys
/// at once: a token verifies if any key that may check it accepts it.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<(Option<String>, Key)>,
}

impl KeySet {
    pub fn new() -> KeySet {
        KeySet::default()
    }

    /// Adds a key; a name must be new (two keys of one `kid` would make the name choose
    /// nothing).
    pub fn add(&mut self, kid: Option<String>, key: Key) -> Result<(), String> {
        if let Some(k) = &kid
            && self.keys.iter().any(|(n, _)| n.as_deref() == Some(k))
        {
            return Err(format!("two keys named '{k}'"));
        }
        self.keys.push((kid, key));
        Ok(())
    }

    /// Loads one `--auth-key` value: `FILE`, or `KID=FILE` for a named key. A value whose
    /// part before the first `=` is empty or holds a `/` is a path as a whole
    /// (`./a=b.pem`).
    pub fn load(&mut self, spec: &str) -> Result<(), String> {
        let (kid, path) = match spec.split_once('=') {
            Some((kid, path)) if !kid.is_empty() && !kid.contains('/') => (Some(kid.to_string()), path),
            _ => (None, spec),
        };
        let key = Key::parse(&read_key_file(path)?).map_err(|e| format!("{path}: {e}"))?;
        self.add(kid, key)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Checks a signature. A `kid` that names a key selects that key alone; a `kid` that
    /// names none leaves the unnamed keys (they accept any token of their family, named or
    /// not); no `kid` tries every key. Only keys that accept `alg` are tried, so the work is
    /// at most one check per key of the family.
    pub fn verify(&self, kid: Option<&str>, alg: Alg, msg: &[u8], sig: &[u8]) -> Result<(), Reason> {
        let named = kid.filter(|k| self.keys.iter().any(|(n, _)| n.as_deref() == Some(*k)));
        let ok = self
            .keys
            .iter()
            .filter(|(name, _)| match (named, kid) {
                (Some(k), _) => name.as_deref() == Some(k),
                (None, Some(_)) => name.is_none(),
                (None, None) => true,
            })
            .filter(|(_, key)| key.accepts(alg))
            .any(|(_, key)| key.verify(alg, msg, sig));
        if ok { Ok(()) } else { Err(Reason::BadSignature) }
    }
}
