//! `strait schema`: the JSON Schema of the config file, committed as config/strait.schema.json.

use std::path::{Path, PathBuf};

use strait_tests::gateway::{check_config, strait_command};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schema() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("config/strait.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// TOML to the JSON an editor's schema validator sees.
fn as_json(toml_text: &str) -> serde_json::Value {
    let value: toml::Value = toml::from_str(toml_text).expect("TOML parses");
    serde_json::to_value(value).unwrap()
}

#[test]
fn committed_schema_matches_strait_schema() {
    let (code, printed) = strait_command(&["schema"]);
    assert_eq!(code, 0, "{printed}");
    let committed = std::fs::read_to_string(repo().join("config/strait.schema.json")).unwrap();
    assert!(
        printed == committed,
        "config/strait.schema.json is out of date; regenerate it with:\n  \
         cargo run -q -p strait -- schema > config/strait.schema.json"
    );
}

#[test]
fn shipped_configs_validate_against_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&as_json(&text))
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 3, "found the example configs");
}

/// Mistakes an editor should flag are flagged by the schema, and `strait check` refuses them too.
#[test]
fn schema_flags_what_strait_check_refuses() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let base = r#"
[[listener]]
name = "public"
listen = "127.0.0.1:50051"

[[route]]
listener = "public"
service = "*"
upstream = "echo"

[[upstream]]
name = "echo"
endpoints = [{ addr = "127.0.0.1:50061" }]
"#;
    assert!(validator.is_valid(&as_json(base)));
    let dir = tempfile::tempdir().unwrap();
    for (mistake, text) in [
        (
            "unknown key",
            base.replace("name = \"echo\"", "name = \"echo\"\nretries = 3"),
        ),
        (
            "wrong type",
            format!("[gateway]\nthreads = \"two\"\n{base}"),
        ),
        (
            "bad duration",
            base.replace(
                "name = \"echo\"",
                "name = \"echo\"\nconnect_timeout = \"5 sec\"",
            ),
        ),
        (
            "missing field",
            base.replace("listen = \"127.0.0.1:50051\"", ""),
        ),
    ] {
        assert!(
            !validator.is_valid(&as_json(&text)),
            "schema accepts a {mistake}"
        );
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let (code, output) = check_config(&path);
        assert_eq!(code, 2, "strait check accepts a {mistake}: {output}");
    }
}
