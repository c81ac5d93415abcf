//! Caller credentials for the auth tests: signing keys and tokens made here, and a JWKS served
//! over HTTPS by a real TLS server whose answers a test changes while the gateway runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::tls::TestPki;

/// An ES256 key with its `kid`: signs tokens, and is published as a JWK.
pub struct SigningKey {
    pub kid: String,
    encoding: EncodingKey,
    pub jwk: Value,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl SigningKey {
    pub fn es256(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let raw = pair.public_key_raw();
        SigningKey {
            kid: kid.to_string(),
            encoding: EncodingKey::from_ec_der(&pair.serialize_der()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}),
        }
    }

    /// A token with these claims, naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token signed by this key that names another `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signed")
    }
}

/// A `keys_file` line of an `api_keys` provider: the key's name and the hex SHA-256 of the key.
pub fn api_key_line(name: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{name} {hex}\n")
}

/// A JWKS document publishing `keys`.
pub fn jwks(keys: &[&SigningKey]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

pub const ISSUER: &str = "https://id.strait.test";

/// Claims from `ISSUER` for audience "strait", subject `sub`, expiring `exp_in` seconds from
/// now (negative: already expired), with `extra` merged in.
pub fn claims(sub: &str, exp_in: i64, extra: Value) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let mut claims = json!({"iss": ISSUER, "aud": "strait", "sub": sub, "exp": now + exp_in,
                            "iat": now});
    if let (Some(into), Some(from)) = (claims.as_object_mut(), extra.as_object()) {
        into.extend(from.clone());
    }
    claims
}

/// What the JWKS server answers.
#[derive(Debug, Clone)]
pub enum JwksAnswer {
    Document(String),
    Status(u16),
    Garbage,
    /// Accepts the connection and the request, and never answers.
    Hang,
}

/// An HTTPS server of one JWKS, on loopback, with a certificate for `localhost` from `pki`.
pub struct JwksServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<JwksAnswer>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(pki: &TestPki, answer: JwksAnswer) -> JwksServer {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&pki.server_cert)
            .expect("server cert")
            .map(|c| c.expect("cert"))
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&pki.server_key).expect("key");
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicU64::new(0));
        let task = {
            let (answer, requests) = (answer.clone(), requests.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (acceptor, answer, requests) =
                        (acceptor.clone(), answer.clone(), requests.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        requests.fetch_add(1, Ordering::SeqCst);
                        let current = answer.lock().unwrap().clone();
                        if let JwksAnswer::Hang = current {
                            std::future::pending::<()>().await;
                        }
                        let (status, body) = match current {
                            JwksAnswer::Hang => unreachable!("never answered"),
                            JwksAnswer::Document(doc) => (200, doc),
                            JwksAnswer::Status(code) => (code, "unavailable".to_string()),
                            JwksAnswer::Garbage => (200, "<html>not a jwks</html>".to_string()),
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            })
        };
        JwksServer {
            addr,
            answer,
            requests,
            task,
        }
    }

    /// The URL the gateway is configured with (the certificate is for `localhost`).
    pub fn url(&self) -> String {
        format!(
            "https://localhost:{}/.well-known/jwks.json",
            self.addr.port()
        )
    }

    pub fn answer(&self, answer: JwksAnswer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
