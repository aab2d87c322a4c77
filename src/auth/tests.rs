//! Unit tests of the token module: every refusal reason, the attacks (`alg: none`, algorithm
//! confusion, tampering), key selection and rotation, leeway edges, rooms patterns, key
//! files, the subcommand's flags, and a property that no bytes panic. The keys in testdata/
//! were made with openssl for these tests only.

use super::*;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000_000; // ms
const NOW_S: u64 = NOW / 1000;

fn data(name: &str) -> Vec<u8> {
    let path = format!("{}/src/auth/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}
fn public(name: &str) -> Key {
    Key::parse(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
fn private(name: &str) -> SigningKey {
    SigningKey::parse(&data(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"; // 64 B
fn verifier(keys: Vec<(Option<&str>, Key)>) -> Verifier {
    let mut set = KeySet::new();
    for (kid, key) in keys {
        set.add(kid.map(String::from), key).unwrap();
    }
    Verifier::new(set)
}
fn hmac_verifier() -> Verifier {
    verifier(vec![(None, Key::Hmac(SECRET.to_vec()))])
}
/// A token with exactly this header and these claims, signed by `key` under `alg`.
fn raw(key: &SigningKey, alg: Alg, header: &str, claims: &str) -> String {
    let signed = format!(
        "{}.{}",
        BASE64URL_NOPAD.encode(header.as_bytes()),
        BASE64URL_NOPAD.encode(claims.as_bytes())
    );
    let sig = key.sign(alg, signed.as_bytes()).expect("key signs alg");
    format!("{signed}.{}", BASE64URL_NOPAD.encode(&sig))
}
fn hs256(claims: &str) -> String {
    raw(&SigningKey::Hmac(SECRET.to_vec()), Alg::HS256, r#"{"alg":"HS256","typ":"JWT"}"#, claims)
}
fn good_claims() -> String {
    format!(r#"{{"sub":"alice","exp":{}}}"#, NOW_S + 600)
}

#[test]
fn every_algorithm_mints_and_verifies_and_no_other_key_accepts_it() {
    let cases = [
        (Alg::HS256, SigningKey::Hmac(SECRET.to_vec()), Key::Hmac(SECRET.to_vec())),
        (Alg::HS384, SigningKey::Hmac(SECRET.to_vec()), Key::Hmac(SECRET.to_vec())),
        (Alg::HS512, SigningKey::Hmac(SECRET.to_vec()), Key::Hmac(SECRET.to_vec())),
        (Alg::RS256, private("rsa.key"), public("rsa.pub")),
        (Alg::RS384, private("rsa.key"), public("rsa.pub")),
        (Alg::RS512, private("rsa-pkcs1.key"), public("rsa-pkcs1.pub")),
        (Alg::ES256, private("p256.key"), public("p256.pub")),
        (Alg::ES384, private("p384.key"), public("p384.pub")),
        (Alg::EdDSA, private("ed25519.key"), public("ed25519.pub")),
    ];
    let rooms = vec!["lobby".to_string(), "team-*".to_string()];
    for (alg, signer, key) in cases {
        let req = MintRequest {
            sub: "alice",
            ttl: Duration::from_secs(600),
            rooms: Some(&rooms),
            alg: Some(alg),
            ..MintRequest::default()
        };
        let token = mint(&signer, &req, NOW).unwrap();
        let claims = verifier(vec![(None, key)]).verify(token.as_bytes(), NOW).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.exp_ms, (NOW_S + 600) * 1000);
        assert_eq!(claims.alg, alg);
        assert!(claims.may_enter("lobby") && claims.may_enter("team-a") && !claims.may_enter("other"));
        // Every other key, of any family, refuses it.
        let others = [
            Key::Hmac(b"another secret, also 32 bytes or more".to_vec()),
            public("rsa2.pub"),
            public("p256.pub"),
            public("p384.pub"),
            public("ed25519.pub"),
        ];
        for other in others {
            if other.family() == signer.family()
                && other.family() != Family::Hmac
                && other.family() != Family::Rsa
            {
                continue; // the very key that signed
            }
            let v = verifier(vec![(None, other)]);
            assert_eq!(v.verify(token.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?}");
        }
    }
}

#[test]
fn the_default_algorithm_follows_the_key() {
    for (file, alg) in [
        ("rsa.key", Alg::RS256),
        ("p256-sec1.key", Alg::ES256),
        ("p384.key", Alg::ES384),
        ("ed25519.key", Alg::EdDSA),
    ] {
        let req = MintRequest { sub: "bob", ttl: Duration::from_secs(60), ..MintRequest::default() };
        let token = mint(&private(file), &req, NOW).unwrap();
        let header = BASE64URL_NOPAD.decode(token.split('.').next().unwrap().as_bytes()).unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["alg"], alg.as_str(), "{file}");
    }
}

#[test]
fn missing_and_malformed() {
    let v = hmac_verifier();
    assert_eq!(v.verify(b"", NOW), Err(Reason::Missing));
    let good = hs256(&good_claims());
    assert!(v.verify(good.as_bytes(), NOW).is_ok());
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    let too_long = format!("{good}{}", "A".repeat(MAX_TOKEN));
    for bad in [
        "x".to_string(),
        "a.b".to_string(),
        format!("{good}.x"),
        format!("{h}.{p}"),
        format!("{h}=.{p}.{s}"),   // padding
        format!("{h}.{p}.{s}!"),   // not base64url
        format!("{h}.{p}.+{s}"),   // base64, not base64url
        format!("e30.{p}.{s}"),    // {} : no alg
        format!("bnVsbA.{p}.{s}"), // null
        format!("{p}x.{p}.{s}"),   // not canonical base64
        too_long,
    ] {
        assert_eq!(v.verify(bad.as_bytes(), NOW), Err(Reason::Malformed), "{bad}");
    }
    // The payload is decoded only once the signature holds: junk there is a bad signature.
    assert_eq!(v.verify(format!("{h}.{p}+.{s}").as_bytes(), NOW), Err(Reason::BadSignature));
    // Well signed, but claims of the wrong shape.
    for claims in [
        "[]".to_string(),
        "not json".to_string(),
        r#"{"sub":"alice"}"#.to_string(), // no exp
        format!(r#"{{"sub":"alice","exp":"{}"}}"#, NOW_S + 60),
        r#"{"sub":"alice","exp":null}"#.to_string(),
        format!(r#"{{"sub":"alice","exp":{},"exp":{}}}"#, NOW_S + 60, NOW_S + 60),
        format!(r#"{{"sub":"alice","exp":{},"nbf":"x"}}"#, NOW_S + 60),
        format!(r#"{{"sub":"alice","exp":{},"rooms":"lobby"}}"#, NOW_S + 60),
        format!(r#"{{"sub":"alice","exp":{},"rooms":["a b"]}}"#, NOW_S + 60),
        format!(r#"{{"sub":"alice","exp":{},"rooms":["team-**"]}}"#, NOW_S + 60),
        format!(r#"{{"sub":"alice","exp":{},"aud":5}}"#, NOW_S + 60),
    ] {
        assert_eq!(v.verify(hs256(&claims).as_bytes(), NOW), Err(Reason::Malformed), "{claims}");
    }
    // A crit header is an extension we cannot honour.
    let crit = raw(
        &SigningKey::Hmac(SECRET.to_vec()),
        Alg::HS256,
        r#"{"alg":"HS256","crit":["b64"]}"#,
        &good_claims(),
    );
    assert_eq!(v.verify(crit.as_bytes(), NOW), Err(Reason::Malformed));
}

#[test]
fn alg_none_and_unknown_algorithms_are_refused() {
    let v = hmac_verifier();
    let claims = BASE64URL_NOPAD.encode(good_claims().as_bytes());
    for header in
        [r#"{"alg":"none"}"#, r#"{"alg":"None"}"#, r#"{"alg":"NONE"}"#, r#"{"alg":"PS256"}"#, r#"{"alg":""}"#]
    {
        let h = BASE64URL_NOPAD.encode(header.as_bytes());
        for token in [format!("{h}.{claims}."), format!("{h}.{claims}.c2ln")] {
            assert_eq!(v.verify(token.as_bytes(), NOW), Err(Reason::BadSignature), "{token}");
        }
    }
}

/// The classic attack: the attacker knows the server's public key and signs an HS256 token
/// with its PEM text as the HMAC secret. A verifier that let the token's `alg` choose how to
/// use the key would accept it.
#[test]
fn algorithm_confusion_an_hmac_token_keyed_with_the_public_key_is_refused() {
    for file in ["rsa.pub", "rsa-pkcs1.pub", "p256.pub", "p384.pub", "ed25519.pub"] {
        let pem = data(file);
        let trimmed = String::from_utf8(pem.clone()).unwrap().trim_end().as_bytes().to_vec();
        for secret in [pem.clone(), trimmed] {
            for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
                let forger = SigningKey::Hmac(secret.clone());
                let header = format!(r#"{{"alg":"{}","typ":"JWT"}}"#, alg.as_str());
                let forged = raw(&forger, alg, &header, &good_claims());
                // The forgery is sound as HMAC: it would pass were the PEM a secret...
                if secret.len() >= 64 {
                    let naive = verifier(vec![(None, Key::Hmac(secret.clone()))]);
                    assert!(naive.verify(forged.as_bytes(), NOW).is_ok(), "{file} {alg:?}");
                }
                // ...and the public key refuses it, named or not.
                let v = verifier(vec![(None, public(file))]);
                assert_eq!(v.verify(forged.as_bytes(), NOW), Err(Reason::BadSignature), "{file} {alg:?}");
                let v = verifier(vec![(Some("k"), public(file))]);
                let header = format!(r#"{{"alg":"{}","kid":"k"}}"#, alg.as_str());
                let forged = raw(&forger, alg, &header, &good_claims());
                assert_eq!(v.verify(forged.as_bytes(), NOW), Err(Reason::BadSignature), "{file} {alg:?} kid");
            }
        }
        // And a PEM file is never loaded as a secret, whatever it holds.
        assert!(!matches!(Key::parse(&pem), Ok(Key::Hmac(_))));
    }
}

#[test]
fn a_tampered_payload_header_or_signature_is_refused() {
    for (signer, key, alg) in [
        (SigningKey::Hmac(SECRET.to_vec()), Key::Hmac(SECRET.to_vec()), Alg::HS256),
        (private("p256.key"), public("p256.pub"), Alg::ES256),
        (private("rsa.key"), public("rsa.pub"), Alg::RS256),
        (private("ed25519.key"), public("ed25519.pub"), Alg::EdDSA),
    ] {
        let v = verifier(vec![(None, key)]);
        let header = format!(r#"{{"alg":"{}"}}"#, alg.as_str());
        let token = raw(&signer, alg, &header, &good_claims());
        assert!(v.verify(token.as_bytes(), NOW).is_ok());
        let parts: Vec<&str> = token.split('.').collect();
        // The same signature over other claims: alice becomes admin.
        let evil = BASE64URL_NOPAD.encode(good_claims().replace("alice", "admin").as_bytes());
        let swapped = format!("{}.{evil}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(swapped.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?} payload");
        let kid = BASE64URL_NOPAD.encode(format!(r#"{{"alg":"{}","kid":"x"}}"#, alg.as_str()).as_bytes());
        let reheaded = format!("{kid}.{}.{}", parts[1], parts[2]);
        assert_eq!(v.verify(reheaded.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?} header");
        let mut sig = BASE64URL_NOPAD.decode(parts[2].as_bytes()).unwrap();
        for i in [0, sig.len() / 2, sig.len() - 1] {
            sig[i] ^= 1;
            let flipped = format!("{}.{}.{}", parts[0], parts[1], BASE64URL_NOPAD.encode(&sig));
            assert_eq!(v.verify(flipped.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?} sig {i}");
            sig[i] ^= 1;
        }
        let short = format!("{}.{}.{}", parts[0], parts[1], BASE64URL_NOPAD.encode(&sig[..sig.len() - 1]));
        assert_eq!(v.verify(short.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?} short");
        let empty = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(v.verify(empty.as_bytes(), NOW), Err(Reason::BadSignature), "{alg:?} empty");
    }
}

#[test]
fn time_claims_and_leeway_edges() {
    let mut v = hmac_verifier();
    v.leeway = Duration::from_secs(30);
    let at = |claims: String, now: u64| v.verify(hs256(&claims).as_bytes(), now);
    let exp = NOW_S + 10;
    let expiring = format!(r#"{{"sub":"alice","exp":{exp}}}"#);
    let exp_ms = exp * 1000;
    assert!(at(expiring.clone(), exp_ms + 30_000 - 1).is_ok(), "inside the leeway");
    assert_eq!(at(expiring.clone(), exp_ms + 30_000), Err(Reason::Expired), "at exp + leeway");
    assert_eq!(at(expiring.clone(), u64::MAX), Err(Reason::Expired));
    assert_eq!(at(r#"{"sub":"alice","exp":-5}"#.into(), NOW), Err(Reason::Expired));
    assert_eq!(at(r#"{"sub":"alice","exp":0}"#.into(), NOW), Err(Reason::Expired));
    // Fractional NumericDates are allowed (RFC 7519 2).
    assert_eq!(at(format!(r#"{{"sub":"a","exp":{exp}.5}}"#), NOW).unwrap().exp_ms, exp_ms + 500);
    assert!(at(r#"{"sub":"alice","exp":1e300}"#.into(), NOW).is_ok(), "saturates, no panic");

    let far = NOW_S + 3600;
    for claim in ["nbf", "iat"] {
        let starts = NOW_S + 100;
        let c = format!(r#"{{"sub":"alice","exp":{far},"{claim}":{starts}}}"#);
        let start_ms = starts * 1000;
        assert_eq!(at(c.clone(), start_ms - 30_000 - 1), Err(Reason::NotYetValid), "{claim} before leeway");
        assert!(at(c.clone(), start_ms - 30_000).is_ok(), "{claim} at the leeway's edge");
        assert!(at(c.clone(), start_ms).is_ok());
        assert!(at(c, far * 1000).is_ok(), "{claim} long past");
    }
    // No leeway at all.
    v.leeway = Duration::ZERO;
    assert_eq!(v.verify(hs256(&expiring).as_bytes(), exp_ms), Err(Reason::Expired));
    assert!(v.verify(hs256(&expiring).as_bytes(), exp_ms - 1).is_ok());
}

#[test]
fn audience_and_issuer_are_checked_only_when_configured() {
    let mut v = hmac_verifier();
    let exp = NOW_S + 60;
    let with = |extra: &str| hs256(&format!(r#"{{"sub":"alice","exp":{exp}{extra}}}"#));
    assert!(v.verify(with(r#","aud":"other","iss":"other""#).as_bytes(), NOW).is_ok(), "unconfigured");
    v.audience = Some("chat".into());
    v.issuer = Some("https://id.example".into());
    let both = r#","iss":"https://id.example""#;
    assert!(v.verify(with(&format!(r#","aud":"chat"{both}"#)).as_bytes(), NOW).is_ok());
    assert!(v.verify(with(&format!(r#","aud":["x","chat"]{both}"#)).as_bytes(), NOW).is_ok());
    for aud in [r#","aud":"chats""#, r#","aud":["x"]"#, r#","aud":[]"#, ""] {
        let t = with(&format!("{aud}{both}"));
        assert_eq!(v.verify(t.as_bytes(), NOW), Err(Reason::WrongAudience), "{aud}");
    }
    for iss in [r#","iss":"https://id.example/""#, r#","iss":"x""#, ""] {
        let t = with(&format!(r#","aud":"chat"{iss}"#));
        assert_eq!(v.verify(t.as_bytes(), NOW), Err(Reason::WrongIssuer), "{iss}");
    }
}

#[test]
fn sub_must_pass_the_id_rule() {
    let v = hmac_verifier();
    let exp = NOW_S + 60;
    for sub in [
        r#""#,
        r#","sub":"""#,
        r#","sub":"a b""#,
        r#","sub":"élan""#,
        &format!(r#","sub":"{}""#, "a".repeat(33)),
    ] {
        let t = hs256(&format!(r#"{{"exp":{exp}{sub}}}"#));
        assert_eq!(v.verify(t.as_bytes(), NOW), Err(Reason::BadSub), "{sub}");
    }
    let t = hs256(&format!(r#"{{"exp":{exp},"sub":"{}"}}"#, "A.b_c-9".repeat(4)));
    assert_eq!(v.verify(t.as_bytes(), NOW).unwrap().sub, "A.b_c-9".repeat(4));
    // Every reason has its wire name.
    let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "missing",
            "malformed",
            "bad_signature",
            "expired",
            "not_yet_valid",
            "wrong_audience",
            "wrong_issuer",
            "bad_sub",
            "revoked"
        ]
    );
}

#[test]
fn rooms_names_and_prefixes() {
    let v = hmac_verifier();
    let exp = NOW_S + 60;
    let rooms = |list: &str| {
        let t = hs256(&format!(r#"{{"sub":"a","exp":{exp},"rooms":{list}}}"#));
        v.verify(t.as_bytes(), NOW).unwrap()
    };
    let c = rooms(r#"["lobby","Team-*"]"#);
    for (room, ok) in [
        ("lobby", true),
        ("lobby2", false),
        ("lob", false),
        ("team-", true),
        ("team-a", true),
        ("team", false),
        ("xteam-a", false),
        ("Team-a", false), // not folded: refused, never let in
    ] {
        assert_eq!(c.may_enter(room), ok, "{room}");
    }
    assert!(rooms(r#"["*"]"#).may_enter("anything"));
    assert!(!rooms("[]").may_enter("lobby"), "an empty list allows nothing");
    let all = v.verify(hs256(&format!(r#"{{"sub":"a","exp":{exp}}}"#)).as_bytes(), NOW).unwrap();
    assert_eq!(all.rooms, Rooms::All);
    assert!(rooms(r#"["dev*"]"#).may_enter("dev"), "a prefix matches the bare name too");
}

#[test]
fn kid_selects_a_named_key_and_rotation_accepts_any() {
    let old = private("p256.key");
    let new = private("rsa.key");
    let es = |kid: &str| {
        let h = if kid.is_empty() {
            r#"{"alg":"ES256"}"#.to_string()
        } else {
            format!(r#"{{"alg":"ES256","kid":"{kid}"}}"#)
        };
        raw(&old, Alg::ES256, &h, &good_claims())
    };
    let rs = |kid: &str| {
        let h = if kid.is_empty() {
            r#"{"alg":"RS256"}"#.to_string()
        } else {
            format!(r#"{{"alg":"RS256","kid":"{kid}"}}"#)
        };
        raw(&new, Alg::RS256, &h, &good_claims())
    };
    // Unnamed: rotation between two keys of any families; any kid is fine.
    let v = verifier(vec![(None, public("p256.pub")), (None, public("rsa.pub"))]);
    for t in [es(""), es("whatever"), rs(""), rs("k2")] {
        assert!(v.verify(t.as_bytes(), NOW).is_ok(), "{t}");
    }
    // Two RSA keys in rotation: a token of either verifies.
    let v = verifier(vec![(None, public("rsa2.pub")), (None, public("rsa.pub"))]);
    assert!(v.verify(rs("").as_bytes(), NOW).is_ok());
    // Named: the kid picks the key, and only that key.
    let v = verifier(vec![(Some("k1"), public("p256.pub")), (Some("k2"), public("rsa.pub"))]);
    assert!(v.verify(es("k1").as_bytes(), NOW).is_ok());
    assert!(v.verify(rs("k2").as_bytes(), NOW).is_ok());
    assert!(v.verify(es("").as_bytes(), NOW).is_ok(), "no kid: every key is tried");
    assert_eq!(v.verify(es("k2").as_bytes(), NOW), Err(Reason::BadSignature), "k2 is RSA");
    assert_eq!(v.verify(rs("k1").as_bytes(), NOW), Err(Reason::BadSignature));
    assert_eq!(v.verify(es("k3").as_bytes(), NOW), Err(Reason::BadSignature), "no such name, no unnamed key");
    // Two keys of one family, named: a kid naming the wrong one fails even though the other
    // would accept the signature.
    let v = verifier(vec![(Some("old"), public("rsa2.pub")), (Some("new"), public("rsa.pub"))]);
    assert!(v.verify(rs("new").as_bytes(), NOW).is_ok());
    assert_eq!(v.verify(rs("old").as_bytes(), NOW), Err(Reason::BadSignature));
    // A kid that names no key falls to the unnamed ones.
    let v = verifier(vec![(Some("k1"), public("rsa2.pub")), (None, public("p256.pub"))]);
    assert!(v.verify(es("k9").as_bytes(), NOW).is_ok());
    assert_eq!(v.verify(es("k1").as_bytes(), NOW), Err(Reason::BadSignature));
    // Names are unique.
    let mut set = KeySet::new();
    set.add(Some("a".into()), public("p256.pub")).unwrap();
    assert!(set.add(Some("a".into()), public("rsa.pub")).is_err());
}

#[test]
fn key_files() {
    // A secret file: a text one loses one trailing line ending; bytes are kept as they are.
    let Ok(Key::Hmac(s)) = Key::parse(b"0123456789abcdef0123456789abcdef\n") else { panic!() };
    assert_eq!(s.len(), 32);
    let Ok(Key::Hmac(s)) = Key::parse(b"0123456789abcdef0123456789abcdef\r\n") else { panic!() };
    assert_eq!(s.len(), 32);
    let Ok(Key::Hmac(s)) = Key::parse(b"0123456789abcdef0123456789abcdef \n") else { panic!() };
    assert_eq!(s.len(), 33, "only the line ending goes");
    let binary: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(97)).chain([b'\n']).collect();
    let Ok(Key::Hmac(s)) = Key::parse(&binary) else { panic!() };
    assert_eq!(s, binary, "a binary secret is kept whole");
    let e = Key::parse(b"short secret\n").unwrap_err();
    assert!(e.contains("12 bytes") && e.contains("at least 32"), "{e}");
    assert!(Key::parse(b"0123456789abcdef0123456789abcde\n").is_err(), "31 bytes");
    // A secret accepts only the HMAC hashes it is long enough for.
    let k32 = Key::Hmac(vec![7; 32]);
    assert!(k32.accepts(Alg::HS256) && !k32.accepts(Alg::HS384) && !k32.accepts(Alg::HS512));
    assert!(!k32.accepts(Alg::RS256) && !public("rsa.pub").accepts(Alg::HS256));
    let s32 = SigningKey::Hmac(vec![7; 32]);
    let req =
        MintRequest { sub: "a", ttl: Duration::from_secs(1), alg: Some(Alg::HS512), ..Default::default() };
    let e = mint(&s32, &req, NOW).unwrap_err();
    assert_eq!(e, "HS512 needs a secret of at least 64 bytes; this one is 32 bytes");
    // A secret asked for an RSA signature: the key is the problem, not its length.
    let e = mint(&s32, &MintRequest { alg: Some(Alg::RS256), ..req.clone() }, NOW).unwrap_err();
    assert_eq!(e, "RS256 needs an RSA key (RS256/384/512), but the key is a shared secret (HS256/384/512)");

    // PEM: each family, and what is refused with a reason.
    assert_eq!(public("rsa-pkcs1.pub").family(), Family::Rsa);
    assert_eq!(private("p256-sec1.key").family(), Family::P256);
    let e = Key::parse(&data("rsa1024.pub")).unwrap_err();
    assert!(e.contains("1024 bits"), "{e}");
    let e = Key::parse(&data("p256.key")).unwrap_err();
    assert!(e.contains("private key") && e.contains("-pubout"), "{e}");
    let e = SigningKey::parse(&data("p256.pub")).err().unwrap();
    assert!(e.contains("cannot sign"), "{e}");
    assert!(Key::parse(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    assert!(Key::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    assert!(Key::parse(b"  \n-----BEGIN \xff").is_err(), "PEM-looking bytes are never a secret");
    let e = mint(&private("ed25519.key"), &MintRequest { alg: Some(Alg::ES256), ..req }, NOW).unwrap_err();
    assert_eq!(e, "ES256 needs an EC P-256 key (ES256), but the key is an Ed25519 key (EdDSA)");
    // Debug never shows a secret.
    assert_eq!(format!("{:?}", Key::Hmac(SECRET.to_vec())), "Key(Hmac)");
}

#[test]
fn keyset_load_reads_kid_equals_file() {
    let dir = std::env::temp_dir().join(format!("chatloop-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("a=b.pem");
    std::fs::write(&path, data("p256.pub")).unwrap();
    let p = path.to_str().unwrap();
    let mut set = KeySet::new();
    set.load(p).unwrap(); // a '/' before the '=': a path as a whole
    set.load(&format!("k1={p}")).unwrap();
    assert_eq!(set.len(), 2);
    let e = set.load(&format!("k1={p}")).unwrap_err();
    assert!(e.contains("two keys named 'k1'"), "{e}");
    let e = set.load(&format!("k2={}/none", dir.display())).unwrap_err();
    assert!(e.contains("none"), "{e}");
    std::fs::write(dir.join("big"), vec![b'x'; 70_000]).unwrap();
    let e = set.load(dir.join("big").to_str().unwrap()).unwrap_err();
    assert!(e.contains("not a key"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn mint_refuses_what_verify_would() {
    let key = SigningKey::Hmac(SECRET.to_vec());
    let rooms = vec!["lobby".to_string(), "a b".to_string()];
    let req = MintRequest { sub: "alice", ttl: Duration::from_secs(60), ..Default::default() };
    assert!(
        mint(&key, &MintRequest { sub: "a b", ..req.clone() }, NOW).unwrap_err().contains("not a valid id")
    );
    assert!(
        mint(&key, &MintRequest { rooms: Some(&rooms), ..req.clone() }, NOW).unwrap_err().contains("'a b'")
    );
    assert!(mint(&key, &MintRequest { ttl: Duration::from_millis(999), ..req.clone() }, NOW).is_err());
    // aud, iss and kid go where a verifier looks for them.
    let full = MintRequest { aud: Some("chat"), iss: Some("me"), kid: Some("k1"), ..req };
    let token = mint(&key, &full, NOW).unwrap();
    let mut v = verifier(vec![(Some("k1"), Key::Hmac(SECRET.to_vec()))]);
    v.audience = Some("chat".into());
    v.issuer = Some("me".into());
    assert_eq!(v.verify(token.as_bytes(), NOW).unwrap().rooms, Rooms::All);
}

#[test]
fn the_token_subcommand() {
    let dir = std::env::temp_dir().join(format!("chatloop-auth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
    let run = |args: &[&str]| cli::run(args.iter().map(|s| s.to_string()), NOW);
    let s = secret.to_str().unwrap();
    let token =
        run(&["--key", s, "--sub", "alice", "--ttl", "10m", "--rooms", "lobby, team-*"]).unwrap().unwrap();
    let claims = hmac_verifier().verify(token.as_bytes(), NOW).unwrap();
    assert_eq!((claims.sub.as_str(), claims.exp_ms), ("alice", (NOW_S + 600) * 1000));
    assert!(claims.may_enter("team-x") && !claims.may_enter("dev"));
    assert_eq!(run(&["--help"]), Ok(None));
    for (args, needle) in [
        (&["--sub", "a", "--ttl", "1"][..], "--key FILE is required"),
        (&["--key", s, "--ttl", "1"], "--sub ID is required"),
        (&["--key", s, "--sub", "a"], "--ttl DURATION is required"),
        (&["--key", s, "--sub", "a", "--ttl", "0"], "from 1 second"),
        (&["--key", s, "--sub", "a", "--ttl", "5w"], "not a duration"),
        (&["--key", s, "--sub", "a", "--ttl", "ten"], "not a duration"),
        (&["--key", s, "--sub", "a", "--ttl", "99999999999999999d"], "from 1 second"),
        (&["--key", s, "--sub", "a", "--ttl", "1", "--alg", "none"], "unknown algorithm 'none'"),
        (&["--key", s, "--sub", "a", "--ttl", "1", "--bogus"], "unknown flag '--bogus'"),
        (&["--key", "/nonexistent/k", "--sub", "a", "--ttl", "1"], "/nonexistent/k"),
        (&["--key", s, "--sub", "a!", "--ttl", "1"], "not a valid id"),
    ] {
        let e = run(args).unwrap_err();
        assert!(e.contains(needle) && !e.contains('\n'), "{args:?}: {e}");
    }
    assert_eq!(cli::duration("--ttl", "90s"), Ok(Duration::from_secs(90)));
    assert_eq!(cli::duration("--ttl", "2h"), Ok(Duration::from_secs(7200)));
    assert_eq!(cli::duration("--ttl", "7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(cli::duration("--ttl", "45"), Ok(Duration::from_secs(45)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Verification cost per algorithm, for the loop's per-turn budget. Run with
/// `cargo test --release --lib auth::tests::verification_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn verification_cost() {
    let cases = [
        ("HS256", SigningKey::Hmac(SECRET.to_vec()), Key::Hmac(SECRET.to_vec()), Alg::HS256),
        ("ES256", private("p256.key"), public("p256.pub"), Alg::ES256),
        ("ES384", private("p384.key"), public("p384.pub"), Alg::ES384),
        ("RS256", private("rsa.key"), public("rsa.pub"), Alg::RS256),
        ("EdDSA", private("ed25519.key"), public("ed25519.pub"), Alg::EdDSA),
    ];
    let rooms = vec!["lobby".to_string(), "team-*".to_string()];
    for (name, signer, key, alg) in cases {
        let req = MintRequest {
            sub: "alice",
            ttl: Duration::from_secs(600),
            rooms: Some(&rooms),
            alg: Some(alg),
            ..Default::default()
        };
        let token = mint(&signer, &req, NOW).unwrap();
        let v = verifier(vec![(None, key)]);
        let mut bad = token.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let time = |t: &[u8], want_ok: bool| {
            let n = if name == "HS256" { 20_000 } else { 500 };
            let _ = v.verify(t, NOW); // warm
            let start = std::time::Instant::now();
            for _ in 0..n {
                assert_eq!(std::hint::black_box(v.verify(std::hint::black_box(t), NOW)).is_ok(), want_ok);
            }
            start.elapsed().as_secs_f64() * 1e6 / n as f64
        };
        let (good, forged) = (time(token.as_bytes(), true), time(&bad, false));
        println!("{name}: {good:.1} us per valid token, {forged:.1} us per forged one ({} B)", token.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes at all: an answer, never a panic.
    #[test]
    fn any_bytes_never_panic(token in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = hmac_verifier().verify(&token, NOW);
    }

    /// Structured junk that gets past base64 and into the JSON and claim checks: any header
    /// and claims text, validly signed, so the claim parsing itself is exercised.
    #[test]
    fn any_signed_claims_never_panic(
        header in prop_oneof![Just(r#"{"alg":"HS256"}"#.to_string()), "\\PC{0,40}"],
        claims in prop_oneof![
            "\\{\"sub\":\"[a-z]{0,3}\",\"exp\":-?[0-9]{1,22}(\\.[0-9]{0,3})?(e[0-9]{1,3})?\\}",
            "\\{\"sub\":\"a\",\"exp\":99999999999,\"rooms\":\\[(\"\\PC{0,6}\",?){0,3}\\]\\}",
            "\\PC{0,60}",
        ],
        now in any::<u64>(),
    ) {
        let token = raw(&SigningKey::Hmac(SECRET.to_vec()), Alg::HS256, &header, &claims);
        let _ = hmac_verifier().verify(token.as_bytes(), now);
    }
}
