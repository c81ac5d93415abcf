//! Unit tests of caller authentication: tokens signed here with keys generated here.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::cache::token_hash;
use super::jwt::{JwtProvider, JwtSettings, KeySource};
use super::*;

/// jsonwebtoken checks `exp` and `nbf` against the real clock: tokens are made around it.
fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

struct EcKey {
    encoding: EncodingKey,
    jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn ec_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    EcKey {
        encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                    "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
    }
}

fn ed_key(kid: &str) -> EcKey {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    EcKey {
        encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key_raw())}),
    }
}

fn key_set(keys: &[&EcKey], generation: u64) -> Arc<KeySet> {
    let jwks = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    Arc::new(KeySet::from_jwks(jwks.to_string().as_bytes(), generation).unwrap())
}

fn settings() -> JwtSettings {
    JwtSettings {
        issuer: "https://id.example.com".into(),
        audiences: vec!["strait".into()],
        clock_skew: Duration::from_secs(30),
        from_header: http::header::AUTHORIZATION,
        claim_headers: vec![("sub".into(), HeaderName::from_static("x-user-id"))],
        max_token_bytes: 8192,
        forward: false,
    }
}

fn provider(keys: Arc<KeySet>) -> JwtProvider {
    JwtProvider::new("users", settings(), KeySource::Fixed(keys))
}

fn claims() -> Value {
    json!({"iss": "https://id.example.com", "aud": "strait", "sub": "alice",
           "exp": now() + 600, "scope": "cart:read cart:write", "roles": ["buyer"],
           "realm": {"tier": "gold"}})
}

fn sign(key: &EcKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &key.encoding).unwrap()
}

fn reason(result: Result<Arc<Principal>, Denial>) -> DenyReason {
    result.expect_err("refused").reason
}

#[test]
fn a_good_token_names_its_subject_and_claims() {
    let key = ec_key("k1");
    let jwt = provider(key_set(&[&key], 1));
    let token = sign(&key, Algorithm::ES256, Some("k1"), &claims());
    let principal = jwt.verify(token.as_bytes(), now()).unwrap();
    assert_eq!(principal.subject, "alice");
    assert_eq!(&*principal.provider, "users");
    assert_eq!(
        principal.claims.as_ref().unwrap()["scope"],
        "cart:read cart:write"
    );
    let headers = jwt.claim_headers(&principal);
    assert_eq!(
        headers,
        vec![(
            HeaderName::from_static("x-user-id"),
            HeaderValue::from_static("alice")
        )]
    );
}

#[test]
fn eddsa_tokens_verify_too() {
    let key = ed_key("ed");
    let jwt = provider(key_set(&[&key], 1));
    let token = sign(&key, Algorithm::EdDSA, Some("ed"), &claims());
    assert_eq!(
        jwt.verify(token.as_bytes(), now()).unwrap().subject,
        "alice"
    );
}

#[test]
fn time_issuer_and_audience_are_checked() {
    let key = ec_key("k1");
    let jwt = provider(key_set(&[&key], 1));
    // jsonwebtoken reads its own clock for exp/nbf, so the claims keep ten seconds from the
    // 30 s skew boundary: a slow machine ticking a second or two must not flip an answer.
    let t = now();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims();
        change(&mut c);
        jwt.verify(sign(&key, Algorithm::ES256, Some("k1"), &c).as_bytes(), t)
    };
    assert_eq!(
        reason(with(&|c| c["exp"] = json!(t - 40))),
        DenyReason::Expired
    );
    // Within the clock skew an expired token is still good.
    assert!(with(&|c| c["exp"] = json!(t - 20)).is_ok());
    assert_eq!(
        reason(with(&|c| c["nbf"] = json!(t + 40))),
        DenyReason::Invalid
    );
    assert!(with(&|c| c["nbf"] = json!(t + 20)).is_ok());
    assert_eq!(
        reason(with(&|c| c["iss"] = json!("https://evil.example"))),
        DenyReason::Invalid
    );
    assert_eq!(
        reason(with(&|c| c["aud"] = json!("other"))),
        DenyReason::Invalid
    );
    assert!(with(&|c| c["aud"] = json!(["other", "strait"])).is_ok());
    let missing_exp = with(&|c| {
        c.as_object_mut().unwrap().remove("exp");
    });
    assert_eq!(
        missing_exp.unwrap_err().message,
        "token lacks the \"exp\" claim"
    );
    assert_eq!(
        reason(with(&|c| {
            c.as_object_mut().unwrap().remove("iss");
        })),
        DenyReason::Invalid
    );
}

#[test]
fn the_key_decides_the_algorithm_never_the_token() {
    let key = ec_key("k1");
    let jwt = provider(key_set(&[&key], 1));
    // alg: none, unsigned.
    let header = b64(br#"{"alg":"none","kid":"k1"}"#);
    let body = b64(claims().to_string().as_bytes());
    let unsigned = format!("{header}.{body}.");
    assert_eq!(
        reason(jwt.verify(unsigned.as_bytes(), now())),
        DenyReason::Invalid
    );
    // HS256 with the public key's coordinates as the secret (the classic confusion).
    let public = serde_json::to_vec(&key.jwk).unwrap();
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("k1".into());
    let forged = jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&public)).unwrap();
    let denial = jwt.verify(forged.as_bytes(), now()).unwrap_err();
    assert_eq!(denial.reason, DenyReason::Invalid);
    assert_eq!(
        denial.message,
        "token uses an algorithm its key does not allow"
    );
    // A signature by another key under the same kid.
    let other = ec_key("k1");
    let wrong = sign(&other, Algorithm::ES256, Some("k1"), &claims());
    assert_eq!(
        jwt.verify(wrong.as_bytes(), now()).unwrap_err().message,
        "token signature does not verify"
    );
}

#[test]
fn kids_are_looked_up_never_guessed() {
    let (a, b) = (ec_key("a"), ec_key("b"));
    let jwt = provider(key_set(&[&a, &b], 1));
    assert!(jwt
        .verify(
            sign(&b, Algorithm::ES256, Some("b"), &claims()).as_bytes(),
            now()
        )
        .is_ok());
    let unknown = sign(&a, Algorithm::ES256, Some("zzz"), &claims());
    assert_eq!(
        jwt.verify(unknown.as_bytes(), now()).unwrap_err().message,
        "token names no known key"
    );
    let injected = sign(&a, Algorithm::ES256, Some(&"../".repeat(200)), &claims());
    assert_eq!(
        reason(jwt.verify(injected.as_bytes(), now())),
        DenyReason::Invalid
    );
    // Without a kid among two keys: refused; with one key: that key.
    let no_kid = sign(&a, Algorithm::ES256, None, &claims());
    assert_eq!(
        reason(jwt.verify(no_kid.as_bytes(), now())),
        DenyReason::Invalid
    );
    let single = provider(key_set(&[&a], 2));
    assert!(single.verify(no_kid.as_bytes(), now()).is_ok());
}

#[test]
fn malformed_and_oversized_tokens_are_refused_without_a_panic() {
    let key = ec_key("k1");
    let jwt = provider(key_set(&[&key], 1));
    for token in [
        "",
        ".",
        "..",
        "a.b.c",
        "!!!.???.***",
        "eyJhbGciOiJFUzI1NiJ9.e30",
        "\u{0}\u{1}.x.y",
        "eyJ9.eyJ9.eyJ9",
    ] {
        assert_eq!(
            reason(jwt.verify(token.as_bytes(), now())),
            DenyReason::Invalid,
            "{token:?}"
        );
    }
    assert_eq!(
        reason(jwt.verify(&[0xff, 0xfe, b'.', b'.'], now())),
        DenyReason::Invalid
    );
    let mut headers = HeaderMap::new();
    let big = format!("Bearer {}", "a".repeat(8193));
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::try_from(big).unwrap(),
    );
    let denial = jwt.authenticate(&headers).unwrap_err();
    assert_eq!(
        (denial.reason, denial.message.as_str()),
        (DenyReason::Invalid, "token too large")
    );
}

#[test]
fn the_token_comes_from_a_bearer_header_once() {
    let key = ec_key("k1");
    let jwt = provider(key_set(&[&key], 1));
    let token = sign(
        &key,
        Algorithm::ES256,
        Some("k1"),
        &json!({"iss": "https://id.example.com",
        "aud": "strait", "sub": "bob", "exp": jsonwebtoken::get_current_timestamp() + 600}),
    );
    let mut headers = HeaderMap::new();
    assert_eq!(
        jwt.authenticate(&headers).unwrap_err().reason,
        DenyReason::Missing
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    assert_eq!(
        jwt.authenticate(&headers).unwrap_err().reason,
        DenyReason::Missing
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::try_from(format!("bearer {token}")).unwrap(),
    );
    assert_eq!(jwt.authenticate(&headers).unwrap().subject, "bob");
    headers.append(
        http::header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    assert_eq!(
        jwt.authenticate(&headers).unwrap_err().message,
        "more than one token"
    );
}

#[test]
fn a_reused_token_is_checked_once_and_only_under_its_key_set() {
    let key = ec_key("k1");
    let first = key_set(&[&key], 1);
    let jwt = provider(first);
    let token = sign(&key, Algorithm::ES256, Some("k1"), &claims());
    let a = jwt.verify(token.as_bytes(), now()).unwrap();
    assert_eq!(jwt.cached_tokens(), 1);
    let b = jwt.verify(token.as_bytes(), now()).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "the second call is answered from the cache"
    );
    // A cache entry under another key set generation is worthless, and one past its exp
    // (and the skew) is not used.
    let cache = super::cache::TokenCache::new(4);
    cache.put(token_hash(b"e"), a.clone(), now() + 10, 1);
    assert!(cache.get(&token_hash(b"e"), 1, now() + 11).is_none());
    cache.put(token_hash(b"t"), a.clone(), now() + 10, 1);
    assert!(cache.get(&token_hash(b"t"), 1, now()).is_some());
    assert!(cache.get(&token_hash(b"t"), 2, now()).is_none());
    assert!(
        cache.get(&token_hash(b"t"), 1, now()).is_none(),
        "a stale entry is dropped"
    );
}

#[test]
fn a_jwks_skips_keys_it_cannot_use_and_refuses_an_empty_set() {
    let key = ec_key("k1");
    let jwks = json!({"keys": [
        key.jwk,
        {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": key.jwk["x"], "y": key.jwk["y"]},
        {"kty": "RSA", "kid": "rsa-bad-alg", "alg": "ES256", "n": "AQAB", "e": "AQAB"}
    ]});
    let set = KeySet::from_jwks(jwks.to_string().as_bytes(), 1).unwrap();
    assert_eq!(set.len(), 1);
    for bad in [
        &b"{}"[..],
        b"[]",
        b"not json",
        br#"{"keys": []}"#,
        br#"{"keys": [{"kty": "oct", "k": "AA"}]}"#,
    ] {
        assert!(
            KeySet::from_jwks(bad, 1).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn hs256_needs_its_secret_and_nothing_else() {
    let secret = HmacSecret::from_file_text(b"  s3cret-of-32-bytes-or-more-please \n").unwrap();
    let jwt = provider(Arc::new(KeySet::from_secret(&secret, 1)));
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"s3cret-of-32-bytes-or-more-please"),
    )
    .unwrap();
    assert!(jwt.verify(token.as_bytes(), now()).is_ok());
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(b"another"),
    )
    .unwrap();
    assert_eq!(
        reason(jwt.verify(other.as_bytes(), now())),
        DenyReason::Invalid
    );
    assert!(HmacSecret::from_file_text(b" \n").is_err());
}

fn principal(claims: Value) -> Principal {
    Principal {
        provider: "users".into(),
        subject: "alice".into(),
        claims: Some(Arc::new(claims.as_object().unwrap().clone())),
    }
}

#[test]
fn required_claims_match_values_arrays_and_scopes() {
    let p = principal(claims());
    let require = |pairs: &[(&str, &str)]| RequiredClaims {
        claims: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };
    assert!(require(&[("scope", "cart:write")]).check(&p).is_ok());
    assert!(require(&[("scope", "cart:read cart:write")])
        .check(&p)
        .is_ok());
    assert_eq!(require(&[("scope", "cart")]).check(&p), Err("scope"));
    assert!(require(&[("roles", "buyer")]).check(&p).is_ok());
    assert_eq!(require(&[("roles", "admin")]).check(&p), Err("roles"));
    assert!(require(&[("realm.tier", "gold")]).check(&p).is_ok());
    assert_eq!(
        require(&[("realm.tier.x", "gold")]).check(&p),
        Err("realm.tier.x")
    );
    assert!(require(&[("exp", &(now() + 600).to_string())])
        .check(&p)
        .is_ok());
    assert_eq!(
        require(&[("sub", "alice"), ("missing", "x")]).check(&p),
        Err("missing")
    );
    let key_holder = Principal {
        provider: "keys".into(),
        subject: "ci".into(),
        claims: None,
    };
    assert!(require(&[("sub", "ci")]).check(&key_holder).is_ok());
    assert_eq!(require(&[("scope", "x")]).check(&key_holder), Err("scope"));
}

#[test]
fn api_keys_are_stored_and_found_by_hash() {
    use sha2::{Digest, Sha256};
    let hex = |key: &str| {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let text = format!(
        "# name hash\nci {}\n\nbilling   {}  # the billing job\n",
        hex("k-ci"),
        hex("k-bill")
    );
    let table = Arc::new(ApiKeyTable::parse(&text).unwrap());
    assert_eq!(table.len(), 2);
    let provider = ApiKeyProvider::new("keys", table, HeaderName::from_static("x-api-key"), false);
    let mut headers = HeaderMap::new();
    assert_eq!(
        provider.authenticate(&headers).unwrap_err().reason,
        DenyReason::Missing
    );
    headers.insert("x-api-key", HeaderValue::from_static("k-bill"));
    assert_eq!(provider.authenticate(&headers).unwrap().subject, "billing");
    headers.insert("x-api-key", HeaderValue::from_static("k-nope"));
    assert_eq!(
        provider.authenticate(&headers).unwrap_err().message,
        "unknown API key"
    );
    headers.append("x-api-key", HeaderValue::from_static("k-ci"));
    assert_eq!(
        provider.authenticate(&headers).unwrap_err().message,
        "more than one API key"
    );
    assert_eq!(
        provider.consumed_header(),
        Some(&HeaderName::from_static("x-api-key"))
    );
    for (bad, error) in [
        ("ci", ApiKeyError::Shape { line: 1 }),
        (
            "ci abc",
            ApiKeyError::Hash {
                line: 1,
                hash: "abc".into(),
            },
        ),
        (
            &format!("a {}\na {}", hex("1"), hex("2")),
            ApiKeyError::DuplicateName {
                line: 2,
                name: "a".into(),
            },
        ),
        (
            &format!("a {}\nb {}", hex("1"), hex("1")),
            ApiKeyError::DuplicateKey { line: 2 },
        ),
        ("# nothing\n", ApiKeyError::Empty),
    ] {
        assert_eq!(ApiKeyTable::parse(bad), Err(error));
    }
}

fn peer() -> crate::tls::PeerIdentity {
    crate::tls::PeerIdentity {
        uris: vec!["spiffe://td/ns/shop/sa/cart".into()],
        dns: vec!["cart.shop.svc".into()],
        subject: "CN=cart, O=\"Shop, Inc\"".into(),
        hash: "ab".repeat(32),
    }
}

#[test]
fn mtls_names_the_certificate_and_narrows_by_san() {
    let open = MtlsProvider::new("mesh", vec![], false);
    assert_eq!(
        open.authenticate(None).unwrap_err().reason,
        DenyReason::Missing
    );
    assert_eq!(
        open.authenticate(Some(&peer())).unwrap().subject,
        "spiffe://td/ns/shop/sa/cart"
    );
    let narrow = MtlsProvider::new("mesh", vec![SanPattern::new("cart.shop.*")], true);
    assert_eq!(
        narrow.authenticate(Some(&peer())).unwrap().subject,
        "cart.shop.svc"
    );
    let other = MtlsProvider::new(
        "mesh",
        vec![SanPattern::new("spiffe://td/ns/billing/*")],
        false,
    );
    assert_eq!(
        other.authenticate(Some(&peer())).unwrap_err().reason,
        DenyReason::Forbidden
    );
    let (name, value) = narrow.xfcc(Some(&peer())).unwrap();
    assert_eq!(name, XFCC);
    assert_eq!(
        value.to_str().unwrap(),
        format!(
            "Hash={};Subject=\"CN=cart, O=\\\"Shop, Inc\\\"\";URI=spiffe://td/ns/shop/sa/cart;DNS=cart.shop.svc",
            "ab".repeat(32)
        )
    );
    assert!(open.xfcc(Some(&peer())).is_none());
    let nameless = crate::tls::PeerIdentity {
        uris: vec![],
        dns: vec![],
        ..peer()
    };
    assert_eq!(
        open.authenticate(Some(&nameless)).unwrap_err().reason,
        DenyReason::Invalid
    );
}

#[test]
fn a_route_takes_the_first_provider_that_accepts() {
    use sha2::{Digest, Sha256};
    let key = ec_key("k1");
    let jwt = Arc::new(Provider::Jwt(Box::new(provider(key_set(&[&key], 1)))));
    let hash: String = Sha256::digest(b"k-ci")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keys = Arc::new(Provider::ApiKeys(ApiKeyProvider::new(
        "keys",
        Arc::new(ApiKeyTable::parse(&format!("ci {hash}")).unwrap()),
        HeaderName::from_static("x-api-key"),
        true,
    )));
    let route = RouteAuth {
        providers: vec![jwt, keys],
        require: RequiredClaims {
            claims: vec![("sub".into(), "ci".into())],
        },
        policy: None,
    };
    let mut headers = HeaderMap::new();
    let creds = |h: &HeaderMap| {
        route
            .check(
                Credentials {
                    headers: h,
                    peer: None,
                },
                CallFacts::default(),
            )
            .map(|a| a.principal.subject.clone())
    };
    assert_eq!(creds(&headers).unwrap_err().reason, DenyReason::Missing);
    headers.insert("x-api-key", HeaderValue::from_static("k-ci"));
    assert_eq!(creds(&headers).unwrap(), "ci");
    // A bad token is told even when the next provider has nothing: invalid beats missing.
    headers.remove("x-api-key");
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer x.y.z"),
    );
    assert_eq!(creds(&headers).unwrap_err().reason, DenyReason::Invalid);
    // Accepted, but not what the route requires: forbidden.
    let now = jsonwebtoken::get_current_timestamp();
    let mut c = claims();
    c["exp"] = json!(now + 600);
    let token = sign(&key, Algorithm::ES256, Some("k1"), &c);
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
    );
    let denial = route
        .check(
            Credentials {
                headers: &headers,
                peer: None,
            },
            CallFacts::default(),
        )
        .unwrap_err();
    assert_eq!(denial.reason, DenyReason::Forbidden);
    assert!(!denial.message.contains(&token));
}

#[test]
fn providers_list_every_identity_header_they_set() {
    let key = ec_key("k1");
    let providers = Providers::new(vec![
        Provider::Jwt(Box::new(provider(key_set(&[&key], 1)))),
        Provider::Mtls(MtlsProvider::new("mesh", vec![], true)),
        Provider::Mtls(MtlsProvider::new("mesh2", vec![], false)),
    ]);
    let owned: Vec<&str> = providers
        .owned_headers()
        .iter()
        .map(|h| h.as_str())
        .collect();
    assert_eq!(owned, ["x-forwarded-client-cert", "x-user-id"]);
}

#[test]
fn cache_control_max_age_is_read() {
    assert_eq!(
        super::jwks::max_age("public, max-age=300"),
        Some(Duration::from_secs(300))
    );
    assert_eq!(super::jwks::max_age("no-store"), None);
    assert_eq!(super::jwks::max_age("max-age=abc"), None);
}

#[test]
fn a_rego_policy_decides_about_an_accepted_caller_and_fails_closed() {
    let policy = RegoPolicy::compile(
        std::path::Path::new("cart.rego"),
        r#"package strait

allow if {
    input.principal.subject == "alice"
    input.method == "Unary"
    input.metadata["x-tenant"] == "t1"
    "cart:write" in split(input.claims.scope, " ")
}
"#,
    )
    .unwrap();
    let p = principal(claims());
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("t1"));
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer secret"),
    );
    let input = |method: &'static str, headers: &HeaderMap| -> bool {
        let facts = PolicyInput {
            listener: "public",
            route: "shop.Cart",
            service: "shop.Cart",
            method,
            principal: &p,
            peer: None,
            headers,
        };
        policy.allows(&facts).unwrap()
    };
    assert!(input("Unary", &headers));
    assert!(!input("Delete", &headers), "undefined is a denial");
    headers.insert("x-tenant", HeaderValue::from_static("t2"));
    assert!(!input("Unary", &headers));

    let not_bool = RegoPolicy::compile(
        std::path::Path::new("odd.rego"),
        "package strait\n\nallow := \"yes\"\n",
    )
    .unwrap();
    let facts = PolicyInput {
        listener: "public",
        route: "*",
        service: "s",
        method: "m",
        principal: &p,
        peer: None,
        headers: &headers,
    };
    assert!(!not_bool.allows(&facts).unwrap(), "only `true` allows");

    for (text, needle) in [
        ("package other\n\nallow := true\n", "package strait"),
        ("package strait\n\ndeny := true\n", "define `allow`"),
        ("package strait\n\nallow if {\n", ""),
    ] {
        let error = RegoPolicy::compile(std::path::Path::new("bad.rego"), text)
            .expect_err(text)
            .to_string();
        assert!(error.contains(needle), "{error}");
    }
}
