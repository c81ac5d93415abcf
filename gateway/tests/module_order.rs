//! Data flows one way (docs/architecture.md): `lib.rs` lists the modules in that order, and no
//! module's code names a module listed after it, so there is no import circle. Test code (after
//! a file's `#[cfg(test)]`, and `tests.rs` files) may reach anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules `lib.rs` declares, in order.
fn declared_order() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| {
            let line = line.trim();
            let rest = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))?;
            Some(rest.trim_end_matches(';').to_string())
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a file's non-test code names through `crate::`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    code.match_indices("crate::")
        .map(|(at, _)| {
            code[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The top-level module a source file belongs to (`None`: `lib.rs`, `main.rs`).
fn module_of(relative: &Path, order: &[String]) -> Option<usize> {
    let first = relative.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs");
    order.iter().position(|m| m == name)
}

#[test]
fn no_module_names_one_listed_after_it() {
    let order = declared_order();
    assert!(order.len() > 20, "lib.rs lists the modules: {order:?}");
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut backwards = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src()).unwrap();
        let Some(own) = module_of(relative, &order) else {
            continue;
        };
        if relative.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for named in named_modules(&text) {
            let theirs = order.iter().position(|m| *m == named);
            if theirs.is_some_and(|theirs| theirs > own) {
                backwards.push(format!("{} names crate::{named}", relative.display()));
            }
        }
    }
    assert!(
        backwards.is_empty(),
        "imports against the data flow (or an import circle):\n{}",
        backwards.join("\n")
    );
}

#[test]
fn the_check_reads_code_but_not_tests() {
    let names = named_modules(
        "use crate::proxy::call;\nfn f() { crate::app::run(); }\n#[cfg(test)]\nuse crate::xds;",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["app".to_string(), "proxy".to_string()]
    );
    let order = vec!["grpc".to_string(), "proxy".to_string()];
    assert_eq!(module_of(Path::new("proxy/call/mod.rs"), &order), Some(1));
    assert_eq!(module_of(Path::new("grpc.rs"), &order), Some(0));
    assert_eq!(module_of(Path::new("main.rs"), &order), None);
}
