//! Connecting to etcd with the configured members, auth and TLS.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::DiscoveryError;
use crate::config::EtcdConfig;

/// HTTP/2 keep-alive on the etcd connection: a hung member is noticed within ~8 s instead of
/// the watch silently waiting forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn connect(config: &EtcdConfig) -> Result<Client, DiscoveryError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.dial_timeout)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true);
    if let Some(auth) = &config.auth {
        let password = std::fs::read_to_string(&auth.password_file).map_err(|source| {
            DiscoveryError::PasswordFile {
                path: auth.password_file.display().to_string(),
                source,
            }
        })?;
        options = options.with_user(
            auth.username.clone(),
            password.trim_end_matches(['\n', '\r']),
        );
    }
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|source| DiscoveryError::TlsFile {
                path: path.display().to_string(),
                source,
            })
        };
        let mut tls_options = TlsOptions::new();
        if let Some(ca) = &tls.ca {
            tls_options = tls_options.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &tls.identity {
            tls_options = tls_options.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls_options);
    }
    let client = tokio::time::timeout(
        config.dial_timeout * 2,
        Client::connect(config.endpoints.clone(), Some(options)),
    )
    .await
    .map_err(|_| DiscoveryError::Timeout(config.dial_timeout * 2))??;
    Ok(client)
}
