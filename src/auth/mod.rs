//! Signed tokens (issue 24): who a connection is and which rooms it may enter.
//!
//! A token is a JWS in compact form (`header.payload.signature`, base64url without padding,
//! RFC 7515) carrying JWT claims (RFC 7519). [`Verifier::verify`] checks one against a
//! [`KeySet`] and returns its [`Claims`] or the [`Reason`] it was refused, whose names are the
//! `reason` the server will send. [`mint`] makes one (`chatloop token`, tests, chatload).
//!
//! Hostile input does bounded work: a token longer than [`MAX_TOKEN`] is refused before any
//! decoding, the header decides which keys are tried (at most one signature check per key of
//! its algorithm's family), and the claims are parsed only after the signature holds. No
//! input panics. Time is a parameter (`now_ms`, Unix milliseconds), so tests and the loop's
//! clock decide it, never this module.

pub mod cli;
pub mod keys;

pub use keys::{Alg, Family, Key, KeySet, SigningKey};

use crate::protocol;
use data_encoding::BASE64URL_NOPAD;
use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest token accepted, checked before anything is decoded. An RS512 token with a
/// 4096-bit key and a long rooms list is under 2 KiB; 8 KiB fits in any header or URL.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Why a token was refused; [`Reason::as_str`] is the wire name (issue 24's list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token at all.
    Missing,
    /// Not a compact JWS, bad base64url or JSON, a claim of the wrong type, no `exp`, a
    /// `crit` header, a `rooms` entry that is no room name or prefix, or too long.
    Malformed,
    /// No key that may check this token's `alg` accepts its signature; also `alg: none`, an
    /// unknown `alg`, and an `alg` outside every key's family (algorithm confusion).
    BadSignature,
    Expired,
    /// Before `nbf`, or issued (`iat`) in the future, beyond the leeway.
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    /// No `sub`, or one that breaks the id rule.
    BadSub,
    /// Issued (`iat`; none counts as before) before a revocation's moment for its `sub`
    /// (issue 25's `POST /api/revoke`); decided by the server, not by `verify`.
    Revoked,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::Missing,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongAudience,
        Reason::WrongIssuer,
        Reason::BadSub,
        Reason::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::BadSub => "bad_sub",
            Reason::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a `rooms` claim, folded to lowercase as room names are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    /// `team-*`: every room whose name starts with `team-`; `*` alone: every room.
    Prefix(String),
}

impl Pattern {
    /// A room name (the id rule's characters, 1 to 32), or a prefix of one followed by `*`.
    pub fn parse(entry: &str) -> Option<Pattern> {
        match entry.strip_suffix('*') {
            Some("") => Some(Pattern::Prefix(String::new())),
            // A prefix follows the room-name rule itself, so `team*` also matches `team`.
            Some(prefix) => protocol::room_name(prefix).map(|p| Pattern::Prefix(p.to_string())),
            None => protocol::room_name(entry).map(|n| Pattern::Exact(n.to_string())),
        }
    }

    fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Exact(name) => room == name,
            Pattern::Prefix(prefix) => room.starts_with(prefix.as_str()),
        }
    }
}

/// The rooms a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rooms {
    /// No `rooms` claim: every room.
    All,
    Only(Vec<Pattern>),
}

impl Rooms {
    /// Parses a `rooms` list (`["lobby","team-*"]`); `None` if an entry is no room name or
    /// prefix.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Option<Rooms> {
        entries.iter().map(|e| Pattern::parse(e.as_ref())).collect::<Option<Vec<_>>>().map(Rooms::Only)
    }

    /// Whether a room may be entered. `room` is the folded name (`protocol::room_name`);
    /// a name that is not folded matches no pattern, so a caller that forgets to fold is
    /// refused, never let in.
    pub fn may_enter(&self, room: &str) -> bool {
        match self {
            Rooms::All => true,
            Rooms::Only(patterns) => patterns.iter().any(|p| p.matches(room)),
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The id, which passed `protocol::valid_id`.
    pub sub: String,
    /// The token's `exp` in Unix milliseconds (the welcome's `exp`).
    pub exp_ms: u64,
    pub rooms: Rooms,
    /// The algorithm that signed it (for metrics and logs).
    pub alg: Alg,
    /// The token's `iat` in Unix milliseconds, if it has one (a revocation compares it).
    pub iat_ms: Option<u64>,
}

impl Claims {
    pub fn may_enter(&self, room: &str) -> bool {
        self.rooms.may_enter(room)
    }
}

/// What a server checks tokens with: its keys and the claims' rules.
#[derive(Debug)]
pub struct Verifier {
    pub keys: KeySet,
    /// Clock leeway for `exp`, `nbf` and `iat` (issue 24's default: 30 s).
    pub leeway: Duration,
    /// When set, `aud` must be, or be a list holding, this value.
    pub audience: Option<String>,
    /// When set, `iss` must equal this value.
    pub issuer: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// Present at all is refused: we understand no extension (RFC 7515 4.1.11).
    crit: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims as sent. A present claim of the wrong type (`"exp":"soon"`, `"sub":null`) fails
/// to parse, so it is `malformed` rather than silently absent; serde refuses a claim given
/// twice, so two parsers can never read two different tokens from one.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default, deserialize_with = "present")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "present")]
    exp: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    nbf: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    iat: Option<f64>,
    #[serde(default, deserialize_with = "present")]
    aud: Option<Audience>,
    #[serde(default, deserialize_with = "present")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "present")]
    rooms: Option<Vec<String>>,
}

/// A field that may be missing but, when present, must have its type (not null).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A NumericDate (seconds, possibly with a fraction) in milliseconds; negative ones are 0,
/// huge ones saturate (float-to-int casts saturate in Rust).
fn date_ms(seconds: f64) -> u64 {
    (seconds * 1000.0).floor() as u64
}

/// Unix milliseconds of a `SystemTime` (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Verifier {
    pub fn new(keys: KeySet) -> Verifier {
        Verifier { keys, leeway: Duration::from_secs(30), audience: None, issuer: None }
    }

    /// Checks a token at `now_ms` (Unix milliseconds). The order is fixed: size, shape,
    /// header, signature, then the claims, so unsigned input learns nothing about them.
    pub fn verify(&self, token: &[u8], now_ms: u64) -> Result<Claims, Reason> {
        if token.is_empty() {
            return Err(Reason::Missing);
        }
        if token.len() > MAX_TOKEN {
            return Err(Reason::Malformed);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(h64), Some(p64), Some(s64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reason::Malformed);
        };
        let decode = |part: &[u8]| BASE64URL_NOPAD.decode(part).map_err(|_| Reason::Malformed);
        let header: Header = serde_json::from_slice(&decode(h64)?).map_err(|_| Reason::Malformed)?;
        if header.crit.is_some() {
            return Err(Reason::Malformed);
        }
        // `none`, and names we do not know, are refused like a wrong signature: no key of
        // ours vouches for the token.
        let alg = Alg::parse(&header.alg).ok_or(Reason::BadSignature)?;
        let signature = decode(s64)?;
        let signed = &token[..h64.len() + 1 + p64.len()];
        self.keys.verify(header.kid.as_deref(), alg, signed, &signature)?;

        let claims: RawClaims = serde_json::from_slice(&decode(p64)?).map_err(|_| Reason::Malformed)?;
        let exp_ms = date_ms(claims.exp.ok_or(Reason::Malformed)?);
        let leeway = u64::try_from(self.leeway.as_millis()).unwrap_or(u64::MAX);
        if exp_ms.saturating_add(leeway) <= now_ms {
            return Err(Reason::Expired);
        }
        for at in [claims.nbf, claims.iat].into_iter().flatten() {
            if date_ms(at) > now_ms.saturating_add(leeway) {
                return Err(Reason::NotYetValid);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &claims.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(list)) => list.iter().any(|a| a == want),
                None => false,
            };
            if !ok {
                return Err(Reason::WrongAudience);
            }
        }
        if let Some(want) = &self.issuer
            && claims.iss.as_deref() != Some(want.as_str())
        {
            return Err(Reason::WrongIssuer);
        }
        let rooms = match &claims.rooms {
            None => Rooms::All,
            Some(list) => Rooms::parse(list).ok_or(Reason::Malformed)?,
        };
        let sub = claims.sub.filter(|s| protocol::valid_id(s)).ok_or(Reason::BadSub)?;
        Ok(Claims { sub, exp_ms, rooms, alg, iat_ms: claims.iat.map(date_ms) })
    }
}

/// What to put in a minted token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest<'a> {
    pub sub: &'a str,
    pub ttl: Duration,
    /// `None`: no `rooms` claim (every room).
    pub rooms: Option<&'a [String]>,
    pub aud: Option<&'a str>,
    pub iss: Option<&'a str>,
    pub kid: Option<&'a str>,
    /// `None`: the key family's default (HS256, RS256, ES256, ES384, EdDSA).
    pub alg: Option<Alg>,
}

/// Signs a token issued at `now_ms`: `iat` is now, `exp` now plus the TTL (whole seconds, as
/// most verifiers expect NumericDates). Refuses what [`Verifier::verify`] would refuse: an
/// id that breaks the rule, a rooms entry that is no name or prefix, an algorithm the key
/// cannot sign.
pub fn mint(key: &SigningKey, req: &MintRequest<'_>, now_ms: u64) -> Result<String, String> {
    if !protocol::valid_id(req.sub) {
        return Err(format!("'{}' is not a valid id (1 to 32 of A-Z a-z 0-9 _ - .)", req.sub));
    }
    if let Some(rooms) = req.rooms
        && let Some(bad) = rooms.iter().find(|r| Pattern::parse(r).is_none())
    {
        return Err(format!("'{bad}' is neither a room name nor a prefix ending in *"));
    }
    let alg = req.alg.unwrap_or(key.family().default_alg());
    if !key.can_sign(alg) {
        return Err(key.why_not(alg));
    }
    if req.ttl.as_secs() == 0 {
        return Err("the TTL must be at least 1 second".into());
    }
    let iat = now_ms / 1000;
    let exp = iat.saturating_add(req.ttl.as_secs());
    let mut header = serde_json::json!({ "alg": alg.as_str(), "typ": "JWT" });
    if let Some(kid) = req.kid {
        header["kid"] = kid.into();
    }
    let mut claims = serde_json::json!({ "sub": req.sub, "iat": iat, "exp": exp });
    if let Some(rooms) = req.rooms {
        claims["rooms"] = rooms.into();
    }
    if let Some(aud) = req.aud {
        claims["aud"] = aud.into();
    }
    if let Some(iss) = req.iss {
        claims["iss"] = iss.into();
    }
    let mut token = BASE64URL_NOPAD.encode(header.to_string().as_bytes());
    token.push('.');
    token.push_str(&BASE64URL_NOPAD.encode(claims.to_string().as_bytes()));
    let sig =
        key.sign(alg, token.as_bytes()).ok_or_else(|| format!("signing with {} failed", alg.as_str()))?;
    token.push('.');
    token.push_str(&BASE64URL_NOPAD.encode(&sig));
    Ok(token)
}

#[cfg(test)]
mod tests;
