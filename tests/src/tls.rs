//! Throw-away certificate authorities for TLS tests.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// A CA and one server certificate it signed, written as PEM files into a directory.
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_pem: String,
    dir: PathBuf,
    ca: Certificate,
    ca_key: KeyPair,
}

/// A certificate and key issued by a `TestPki`, as PEM text and files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a CA and a server certificate valid for `localhost` and 127.0.0.1.
pub fn generate(dir: &Path) -> TestPki {
    generate_named(dir, "ca")
}

/// Like `generate`, with files named `{stem}.crt`, `{stem}-server.crt`, ... so that several
/// CAs can share a directory.
pub fn generate_named(dir: &Path, stem: &str) -> TestPki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("strait test CA {stem}"));
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let (server_cert, server_key) = if stem == "ca" {
        (dir.join("server.crt"), dir.join("server.key"))
    } else {
        (
            dir.join(format!("{stem}-server.crt")),
            dir.join(format!("{stem}-server.key")),
        )
    };
    let ca_cert = dir.join(format!("{stem}.crt"));
    let pki = TestPki {
        ca_cert,
        server_cert,
        server_key,
        ca_pem: ca.pem(),
        dir: dir.to_path_buf(),
        ca,
        ca_key,
    };
    std::fs::write(&pki.ca_cert, pki.ca.pem()).expect("write CA");
    let server = pki.issue_server("server-tmp");
    std::fs::rename(&server.cert, &pki.server_cert).expect("place server cert");
    std::fs::rename(&server.key, &pki.server_key).expect("place server key");
    pki
}

impl TestPki {
    /// A new server certificate for `localhost`/127.0.0.1, written to `{stem}.crt/.key`.
    pub fn issue_server(&self, stem: &str) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        self.issue(params, stem)
    }

    /// A client certificate for `name`; `expired` makes one whose validity ended in 2021.
    pub fn issue_client(&self, stem: &str, name: &str, expired: bool) -> Issued {
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.issue(params, stem)
    }

    /// A client certificate naming a URI SAN (a SPIFFE ID) and a DNS name.
    pub fn issue_client_uri(&self, stem: &str, uri: &str, dns: &str) -> Issued {
        let mut params = CertificateParams::new(vec![dns.to_string()]).expect("client params");
        params
            .subject_alt_names
            .insert(0, rcgen::SanType::URI(uri.try_into().expect("a URI SAN")));
        params.distinguished_name.push(DnType::CommonName, dns);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, stem)
    }

    fn issue(&self, params: CertificateParams, stem: &str) -> Issued {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("certificate");
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.crt")),
            key: self.dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert, &issued.cert_pem).expect("write cert");
        std::fs::write(&issued.key, &issued.key_pem).expect("write key");
        issued
    }
}
