//! `[[auth]]` providers (their key files read and parsed here, so `strait check` proves them),
//! routes' `auth` and `require_claims`, and `[admin] token_file`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::{check_section_name, duration_up_to, int_in, resolve, span};
use crate::auth::{
    ApiKeyTable, HmacSecret, JwksSpec, JwtSettings, KeySet, RegoPolicy, RequiredClaims, SanPattern,
};
use crate::config::diagnostics::Diagnostics;
use crate::config::file::{AuthSection, ExtAuthzSection, JwtSection, RouteSection};
use crate::config::model::{
    AdminToken, AuthConfig, AuthKind, ExtAuthzConfig, JwtKeys, ListenerConfig, RouteAuthConfig,
};
use crate::config::spanned::Spanned;

pub(super) const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
pub(super) const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);

pub(super) fn validate_auth(
    sections: &[AuthSection],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Vec<AuthConfig> {
    let mut seen = HashSet::new();
    let mut providers = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("auth[{i}]");
        let name = section.name.get_ref();
        check_section_name(&section.name, &mut seen, &path, "auth", diag);
        let kinds = [
            section.jwt.is_some(),
            section.api_keys.is_some(),
            section.mtls.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            diag.at(
                span(&section.name),
                path.clone(),
                "an [[auth]] needs exactly one of [auth.jwt], [auth.api_keys] or [auth.mtls]",
            );
            continue;
        }
        let kind = if let Some(jwt) = &section.jwt {
            validate_jwt(jwt, name, &format!("{path}.jwt"), base_dir, diag)
        } else if let Some(keys) = &section.api_keys {
            let key_path = format!("{path}.api_keys");
            let file = resolve(base_dir, keys.keys_file.get_ref());
            let table = match std::fs::read_to_string(&file) {
                Ok(text) => ApiKeyTable::parse(&text).map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot read {}: {e}", file.display())),
            };
            let table = match table {
                Ok(table) => Some(Arc::new(table)),
                Err(e) => {
                    diag.at(span(&keys.keys_file), format!("{key_path}.keys_file"), e);
                    None
                }
            };
            let header = header_name(
                keys.from_header.as_ref(),
                "x-api-key",
                &format!("{key_path}.from_header"),
                diag,
            );
            table.map(|keys_table| AuthKind::ApiKeys {
                keys: keys_table,
                header,
                forward: keys.forward.unwrap_or(false),
            })
        } else if let Some(mtls) = &section.mtls {
            let allowed = mtls.allowed_sans.as_deref().unwrap_or_default();
            for (j, pattern) in allowed.iter().enumerate() {
                let text = pattern.get_ref();
                if text.is_empty() || text.trim() != text || text[..text.len() - 1].contains('*') {
                    diag.at(
                        span(pattern),
                        format!("{path}.mtls.allowed_sans[{j}]"),
                        format!(
                            "{text:?} is not a SAN pattern: a URI or DNS name, exact or ending in `*`"
                        ),
                    );
                }
            }
            Some(AuthKind::Mtls {
                allowed_sans: allowed
                    .iter()
                    .map(|p| SanPattern::new(p.get_ref()))
                    .collect(),
                forward_client_cert: mtls.forward_client_cert.unwrap_or(false),
            })
        } else {
            None
        };
        if let Some(kind) = kind {
            providers.push(AuthConfig {
                name: name.clone(),
                kind,
            });
        }
    }
    providers
}

fn validate_jwt(
    jwt: &JwtSection,
    name: &str,
    path: &str,
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Option<AuthKind> {
    let issuer = jwt.issuer.get_ref();
    if issuer.trim().is_empty() {
        diag.at(
            span(&jwt.issuer),
            format!("{path}.issuer"),
            "must not be empty",
        );
    }
    let sources = [
        jwt.jwks_file.as_ref(),
        jwt.jwks_url.as_ref(),
        jwt.secret_file.as_ref(),
    ];
    let given: Vec<&Spanned<String>> = sources.into_iter().flatten().collect();
    if given.len() != 1 {
        diag.at(
            span(&jwt.issuer),
            path.to_string(),
            "needs exactly one of jwks_file, jwks_url or secret_file",
        );
        return None;
    }
    let remote_only = [
        ("jwks_ca", jwt.jwks_ca.as_ref().map(|s| s.span())),
        ("jwks_refresh", jwt.jwks_refresh.as_ref().map(|s| s.span())),
        ("jwks_timeout", jwt.jwks_timeout.as_ref().map(|s| s.span())),
    ];
    if jwt.jwks_url.is_none() {
        for (key, at) in remote_only {
            if at.is_some() {
                diag.at(at, format!("{path}.{key}"), "applies only with jwks_url");
            }
        }
    }
    let keys = if let Some(file) = &jwt.jwks_file {
        let resolved = resolve(base_dir, file.get_ref());
        match std::fs::read(&resolved) {
            Ok(text) => match KeySet::from_jwks(&text, 1) {
                Ok(set) => Some(JwtKeys::Fixed(Arc::new(set))),
                Err(e) => {
                    diag.at(span(file), format!("{path}.jwks_file"), e.to_string());
                    None
                }
            },
            Err(e) => {
                diag.at(
                    span(file),
                    format!("{path}.jwks_file"),
                    format!("cannot read {}: {e}", resolved.display()),
                );
                None
            }
        }
    } else if let Some(secret) = &jwt.secret_file {
        let resolved = resolve(base_dir, secret.get_ref());
        let read = std::fs::read(&resolved)
            .map_err(|e| format!("cannot read {}: {e}", resolved.display()))
            .and_then(|text| HmacSecret::from_file_text(&text).map_err(|e| e.to_string()));
        match read {
            Ok(secret) => Some(JwtKeys::Fixed(Arc::new(KeySet::from_secret(&secret, 1)))),
            Err(e) => {
                diag.at(span(secret), format!("{path}.secret_file"), e);
                None
            }
        }
    } else {
        let url = jwt.jwks_url.as_ref()?;
        let text = url.get_ref();
        let host_ok = text
            .strip_prefix("https://")
            .and_then(|rest| rest.split('/').next())
            .is_some_and(|authority| {
                !authority.is_empty()
                    && !authority.contains('@')
                    && authority.parse::<http::uri::Authority>().is_ok()
            });
        if !host_ok {
            diag.at(
                span(url),
                format!("{path}.jwks_url"),
                format!(
                    "{text:?} is not an https:// URL with a host (keys are fetched over TLS only)"
                ),
            );
        }
        let ca = jwt.jwks_ca.as_ref().map(|ca| {
            let resolved = resolve(base_dir, ca.get_ref());
            if let Err(e) = super::tls_files::check_certificates(&resolved) {
                diag.at(span(ca), format!("{path}.jwks_ca"), e);
            }
            resolved
        });
        let refresh = duration_up_to(
            &jwt.jwks_refresh,
            DEFAULT_JWKS_REFRESH,
            Duration::from_secs(24 * 3600),
            format!("{path}.jwks_refresh"),
            diag,
        );
        if let Some(r) = &jwt.jwks_refresh {
            if r.get_ref().0 < crate::auth::MIN_REFRESH {
                diag.at(
                    span(r),
                    format!("{path}.jwks_refresh"),
                    "must be at least 30s",
                );
            }
        }
        let timeout = duration_up_to(
            &jwt.jwks_timeout,
            DEFAULT_JWKS_TIMEOUT,
            Duration::from_secs(60),
            format!("{path}.jwks_timeout"),
            diag,
        );
        if jwt
            .jwks_timeout
            .as_ref()
            .is_some_and(|t| t.get_ref().0.is_zero())
        {
            diag.at(
                jwt.jwks_timeout.as_ref().map(|t| t.span()),
                format!("{path}.jwks_timeout"),
                "must be more than 0s",
            );
        }
        Some(JwtKeys::Remote(JwksSpec {
            provider: name.to_string(),
            url: text.clone(),
            ca,
            refresh,
            timeout,
        }))
    };
    let clock_skew = duration_up_to(
        &jwt.clock_skew,
        DEFAULT_CLOCK_SKEW,
        Duration::from_secs(300),
        format!("{path}.clock_skew"),
        diag,
    );
    let from_header = header_name(
        jwt.from_header.as_ref(),
        "authorization",
        &format!("{path}.from_header"),
        diag,
    );
    let mut claim_headers = Vec::new();
    if let Some(map) = &jwt.claim_headers {
        let mut headers_seen = HashSet::new();
        for (claim, header) in map.get_ref() {
            let key = format!("{path}.claim_headers.{claim}");
            match HeaderName::try_from(header.as_str()) {
                Ok(h) if is_settable(&h) => {
                    if !headers_seen.insert(h.clone()) {
                        diag.at(span(map), key, format!("header {header:?} is used twice"));
                    }
                    claim_headers.push((claim.clone(), h));
                }
                _ => diag.at(
                    span(map),
                    key,
                    format!(
                        "{header:?} is not a header the gateway may set (a lower-case name, not a pseudo-header, not grpc-*, not the token's own)"
                    ),
                ),
            }
        }
        if claim_headers.iter().any(|(_, h)| *h == from_header) {
            diag.at(
                span(map),
                format!("{path}.claim_headers"),
                "a claim header cannot be the header the token comes in",
            );
        }
    }
    let max_token_bytes = int_in(
        &jwt.max_token_bytes,
        256..=65_536,
        crate::auth::DEFAULT_MAX_TOKEN_BYTES as u32,
        format!("{path}.max_token_bytes"),
        diag,
    ) as usize;
    let audiences: Vec<String> = jwt
        .audiences
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|a| a.get_ref().clone())
        .collect();
    Some(AuthKind::Jwt {
        settings: JwtSettings {
            issuer: issuer.clone(),
            audiences,
            clock_skew,
            from_header,
            claim_headers,
            max_token_bytes,
            forward: jwt.forward.unwrap_or(false),
        },
        keys: keys?,
    })
}

/// Headers a provider may set upstream: not pseudo, not gRPC's own, not hop-by-hop.
fn is_settable(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(n.starts_with(':')
        || n.starts_with("grpc-")
        || matches!(
            n,
            "content-type" | "te" | "host" | "connection" | "transfer-encoding" | "authorization"
        ))
}

fn header_name(
    value: Option<&Spanned<String>>,
    default: &'static str,
    key: &str,
    diag: &mut Diagnostics,
) -> HeaderName {
    match value {
        None => HeaderName::from_static(default),
        Some(v) => match HeaderName::try_from(v.get_ref().as_str()) {
            Ok(h) if !h.as_str().starts_with("grpc-") && h.as_str() == v.get_ref() => h,
            _ => {
                diag.at(
                    span(v),
                    key.to_string(),
                    format!(
                        "{:?} is not a lower-case metadata key outside grpc-*",
                        v.get_ref()
                    ),
                );
                HeaderName::from_static(default)
            }
        },
    }
}

/// A route's `auth` and `require_claims`. An `mtls` provider needs the route's listener to ask
/// for client certificates.
pub(super) fn validate_route_auth(
    section: &RouteSection,
    path: &str,
    providers: &[AuthConfig],
    listener: Option<&ListenerConfig>,
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Option<RouteAuthConfig> {
    let by_name: HashMap<&str, &AuthConfig> =
        providers.iter().map(|p| (p.name.as_str(), p)).collect();
    let Some(list) = &section.auth else {
        if let Some(claims) = &section.require_claims {
            diag.at(
                span(claims),
                format!("{path}.require_claims"),
                "needs `auth`: claims come from an accepted credential",
            );
        }
        if let Some(policy) = &section.policy {
            diag.at(
                span(policy),
                format!("{path}.policy"),
                "needs `auth`: a policy decides about an accepted caller",
            );
        }
        return None;
    };
    let policy = section.policy.as_ref().and_then(|file| {
        let resolved = resolve(base_dir, file.get_ref());
        let compiled = std::fs::read_to_string(&resolved)
            .map_err(|e| format!("cannot read {}: {e}", resolved.display()))
            .and_then(|text| RegoPolicy::compile(&resolved, &text).map_err(|e| e.to_string()));
        match compiled {
            Ok(policy) => Some(Arc::new(policy)),
            Err(e) => {
                diag.at(span(file), format!("{path}.policy"), e);
                None
            }
        }
    });
    if list.get_ref().is_empty() {
        diag.at(
            span(list),
            format!("{path}.auth"),
            "lists no provider; leave `auth` out for an open route",
        );
    }
    let mut names = Vec::new();
    for (j, name) in list.get_ref().iter().enumerate() {
        let key = format!("{path}.auth[{j}]");
        match by_name.get(name.get_ref().as_str()) {
            None => diag.at(
                span(name),
                key,
                format!("no [[auth]] named {:?}", name.get_ref()),
            ),
            Some(provider) => {
                if matches!(provider.kind, AuthKind::Mtls { .. })
                    && listener.is_some_and(|l| {
                        l.tls.as_ref().and_then(|t| t.client_ca.as_ref()).is_none()
                    })
                {
                    diag.at(
                        span(name),
                        key,
                        format!(
                            "provider {:?} is mtls, but the route's listener asks no client certificate (set its tls.client_ca)",
                            name.get_ref()
                        ),
                    );
                }
            }
        }
        if names.contains(name.get_ref()) {
            diag.at(span(name), format!("{path}.auth[{j}]"), "listed twice");
        }
        names.push(name.get_ref().clone());
    }
    let require_claims = RequiredClaims {
        claims: section
            .require_claims
            .as_ref()
            .map(|m| {
                m.get_ref()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    Some(RouteAuthConfig {
        providers: names,
        require_claims,
        policy,
    })
}

/// `[admin] token_file`: read, surrounding whitespace stripped, never empty.
pub(super) fn read_admin_token(
    file: &Spanned<String>,
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> (std::path::PathBuf, Option<AdminToken>) {
    let resolved = resolve(base_dir, file.get_ref());
    let token = match std::fs::read(&resolved) {
        Ok(bytes) if bytes.trim_ascii().is_empty() => {
            diag.at(span(file), "admin.token_file", "the token file is empty");
            None
        }
        Ok(bytes) => Some(AdminToken(Arc::from(bytes.trim_ascii()))),
        Err(e) => {
            diag.at(
                span(file),
                "admin.token_file",
                format!("cannot read {}: {e}", resolved.display()),
            );
            None
        }
    };
    (resolved, token)
}

/// `[[ext_authz]]`: unique names, an address gRPC can dial, a bounded timeout.
pub(super) fn validate_ext_authz(
    sections: &[ExtAuthzSection],
    diag: &mut Diagnostics,
) -> Vec<ExtAuthzConfig> {
    let mut seen = HashSet::new();
    let mut services = Vec::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("ext_authz[{i}]");
        let name = section.name.get_ref();
        check_section_name(&section.name, &mut seen, &path, "ext_authz", diag);
        let text = section.address.get_ref();
        let with_scheme = if text.contains("://") {
            text.clone()
        } else {
            format!("http://{text}")
        };
        let uri = match with_scheme.parse::<http::Uri>() {
            Ok(uri)
                if uri.scheme_str() == Some("http")
                    && uri.port_u16().is_some()
                    && uri.path() == "/"
                    && uri.host().is_some_and(|h| !h.is_empty()) =>
            {
                uri
            }
            _ => {
                diag.at(
                    span(&section.address),
                    format!("{path}.address"),
                    format!(
                        "{text:?} is not an address of an h2c gRPC service (\"IP:port\", \"host:port\" or \"http://host:port\")"
                    ),
                );
                continue;
            }
        };
        let timeout = duration_up_to(
            &section.timeout,
            crate::auth::EXT_AUTHZ_TIMEOUT,
            Duration::from_secs(10),
            format!("{path}.timeout"),
            diag,
        );
        if section
            .timeout
            .as_ref()
            .is_some_and(|t| t.get_ref().0.is_zero())
        {
            diag.at(
                section.timeout.as_ref().map(|t| t.span()),
                format!("{path}.timeout"),
                "must be more than 0s",
            );
        }
        services.push(ExtAuthzConfig {
            name: name.clone(),
            uri,
            timeout,
            failure_mode_allow: section.failure_mode_allow.unwrap_or(false),
        });
    }
    services
}

/// A route's `ext_authz` names a service.
pub(super) fn validate_route_ext_authz(
    section: &RouteSection,
    path: &str,
    services: &[ExtAuthzConfig],
    diag: &mut Diagnostics,
) -> Option<String> {
    let name = section.ext_authz.as_ref()?;
    if !services.iter().any(|s| &s.name == name.get_ref()) {
        diag.at(
            span(name),
            format!("{path}.ext_authz"),
            format!("no [[ext_authz]] named {:?}", name.get_ref()),
        );
    }
    Some(name.get_ref().clone())
}

/// `match.principal`: `provider:subject`, exact or ending in `*`; needs the route's `auth`.
pub(super) fn validate_match_principal(
    section: &RouteSection,
    path: &str,
    diag: &mut Diagnostics,
) -> Option<String> {
    let pattern = section.match_on.as_ref()?.get_ref().principal.as_ref()?;
    let text = pattern.get_ref();
    let key = format!("{path}.match.principal");
    if section.auth.is_none() {
        diag.at(
            span(pattern),
            key,
            "needs `auth`: only an accepted caller has a principal",
        );
    } else if text.is_empty() || !text.contains(':') || text[..text.len() - 1].contains('*') {
        diag.at(
            span(pattern),
            key,
            format!("{text:?} is not `provider:subject` (exact, or ending in `*`)"),
        );
    }
    Some(text.clone())
}
