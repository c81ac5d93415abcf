//! Validation of the browser and REST settings: a listener's `grpc_web` and `cors`, and the
//! `[[transcode]]` sections (whose descriptor files are read here, so `strait check` proves
//! them: readable, a FileDescriptorSet, the services present, the annotations well-formed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::resolve;
use crate::config::diagnostics::Diagnostics;
use crate::config::file::{ListenerSection, TranscodeSection};
use crate::config::model::{
    AllowedOrigins, CorsConfig, ListenerConfig, ListenerKind, TranscodeConfig, WebConfig,
};
use crate::transcode::TranscodeTable;

const DEFAULT_CORS_MAX_AGE: Duration = Duration::from_secs(600);
const MAX_CORS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

pub(super) fn validate_listener_web(
    section: &ListenerSection,
    kind: &ListenerKind,
    path: &str,
    diag: &mut Diagnostics,
) -> WebConfig {
    let grpc_web = section.grpc_web.unwrap_or(false);
    let tcp = matches!(kind, ListenerKind::Tcp { .. });
    if grpc_web && tcp {
        diag.at(
            Some(section.name.span()),
            format!("{path}.grpc_web"),
            "gRPC-Web is for grpc listeners; a tcp listener passes bytes through",
        );
    }
    let cors = section.cors.as_ref().map(|cors| {
        if tcp {
            diag.at(
                cors.allow_origins.first().map(|o| o.span()),
                format!("{path}.cors"),
                "cors is for grpc listeners",
            );
        }
        if cors.allow_origins.is_empty() {
            diag.at(
                Some(section.name.span()),
                format!("{path}.cors.allow_origins"),
                "list at least one origin (or \"*\" for any)",
            );
        }
        let mut any = false;
        let mut list = Vec::new();
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            let text = origin.get_ref().trim();
            if text == "*" {
                any = true;
            } else if let Err(reason) = check_origin(text) {
                diag.at(
                    Some(origin.span()),
                    format!("{path}.cors.allow_origins[{i}]"),
                    reason,
                );
            } else {
                list.push(text.trim_end_matches('/').to_string());
            }
        }
        let max_age = match &cors.max_age {
            Some(age) if age.get_ref().0 > MAX_CORS_MAX_AGE => {
                diag.at(
                    Some(age.span()),
                    format!("{path}.cors.max_age"),
                    "at most 24h (browsers cap it lower anyway)",
                );
                DEFAULT_CORS_MAX_AGE
            }
            Some(age) => age.get_ref().0,
            None => DEFAULT_CORS_MAX_AGE,
        };
        CorsConfig {
            allow_origins: if any {
                AllowedOrigins::Any
            } else {
                AllowedOrigins::List(list)
            },
            max_age,
        }
    });
    WebConfig { grpc_web, cors }
}

/// An origin is `scheme://host[:port]`, nothing more: browsers send exactly that.
fn check_origin(text: &str) -> Result<(), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("{text:?} is not an origin like \"https://app.example.com\""))?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    let bare = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
    if !scheme_ok || uri.host().is_none() || !bare {
        return Err(format!(
            "{text:?} is not an origin: write scheme://host[:port] (http or https), without a path"
        ));
    }
    Ok(())
}

pub(super) fn validate_transcodes(
    sections: &[TranscodeSection],
    listeners: &[ListenerConfig],
    base_dir: &Path,
    diag: &mut Diagnostics,
) -> Vec<TranscodeConfig> {
    let mut tables: BTreeMap<String, TranscodeTable> = BTreeMap::new();
    for (i, section) in sections.iter().enumerate() {
        let path = format!("transcode[{i}]");
        let listener = section.listener.get_ref();
        match listeners.iter().find(|l| &l.name == listener) {
            None => {
                diag.at(
                    Some(section.listener.span()),
                    format!("{path}.listener"),
                    format!("no listener named {listener:?}"),
                );
                continue;
            }
            Some(l) if !matches!(l.kind, ListenerKind::Grpc) => {
                diag.at(
                    Some(section.listener.span()),
                    format!("{path}.listener"),
                    format!(
                        "listener {listener:?} is a tcp listener; transcoding needs a grpc one"
                    ),
                );
                continue;
            }
            Some(_) => {}
        }
        if section.services.is_empty() {
            diag.at(
                Some(section.descriptors.span()),
                format!("{path}.services"),
                "name at least one service to expose, e.g. \"shop.Cart\"",
            );
            continue;
        }
        let services: Vec<String> = section
            .services
            .iter()
            .map(|s| s.get_ref().clone())
            .collect();
        let file = resolve(base_dir, section.descriptors.get_ref());
        let table = match TranscodeTable::load(&file, &services) {
            Ok(table) => table,
            Err(e) => {
                let span = match &e {
                    crate::transcode::TranscodeError::NoService(name) => section
                        .services
                        .iter()
                        .find(|s| s.get_ref() == name)
                        .map(|s| s.span()),
                    _ => Some(section.descriptors.span()),
                };
                diag.at(span, format!("{path}.descriptors"), e.to_string());
                continue;
            }
        };
        let merged = match tables.remove(listener) {
            Some(existing) => existing.merge(table),
            None => Ok(table),
        };
        match merged {
            Ok(table) => {
                tables.insert(listener.clone(), table);
            }
            Err(e) => diag.at(
                Some(section.descriptors.span()),
                format!("{path}.descriptors"),
                e.to_string(),
            ),
        }
    }
    tables
        .into_iter()
        .map(|(listener, table)| TranscodeConfig {
            listener,
            table: Arc::new(table),
        })
        .collect()
}
