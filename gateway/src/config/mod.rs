//! Configuration: one TOML file, parsed strictly, validated completely, turned into one internal
//! model. A file with any problem never starts the gateway.

mod diagnostics;
mod duration;
mod file;
mod model;
mod spanned;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use diagnostics::{ConfigError, Problem};
pub use duration::parse_duration;
pub use model::*;
pub use validate::MAX_RETRY_BUFFER;

/// Reads, parses and validates a config file, reporting every problem found.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            position: None,
            key_path: String::new(),
            message: format!("cannot read config file: {e}"),
        }],
    })?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    parse(&source, path, base_dir)
}

/// The JSON Schema of the config file (`strait schema`), pretty-printed.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(file::FileConfig);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Parses and validates config text. `file` names it in errors; relative paths inside it
/// (certificates, keys) resolve against `base_dir`.
pub fn parse(source: &str, file: &Path, base_dir: &Path) -> Result<Config, ConfigError> {
    let external = validate::deserialize(source, file)?;
    validate::validate(external, source, file, base_dir)
}
