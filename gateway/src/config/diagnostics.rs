//! Config problems as an operator needs to see them: file, line, column, key path, what is wrong.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column; `None` when the problem is not tied to a place (e.g. unreadable file).
    pub position: Option<(usize, usize)>,
    /// Dotted key path such as `upstream[0].endpoints[1].weight`.
    pub key_path: String,
    pub message: String,
}

/// Every problem found in one config file. `strait check` prints all of them at once.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        writeln!(
            f,
            "{}: {count} problem{} in configuration",
            self.file.display(),
            if count == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            let file = self.file.display();
            match p.position {
                Some((line, column)) => write!(f, "  {file}:{line}:{column}: ")?,
                None => write!(f, "  {file}: ")?,
            }
            if p.key_path.is_empty() {
                writeln!(f, "{}", p.message)?;
            } else {
                writeln!(f, "{}: {}", p.key_path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Collects problems while validating, turning byte spans into line and column.
pub struct Diagnostics<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Diagnostics<'a> {
    pub fn new(source: &'a str) -> Self {
        Self {
            source,
            problems: Vec::new(),
        }
    }

    pub fn at(
        &mut self,
        span: Option<Range<usize>>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            position: span.map(|s| line_column(self.source, s.start)),
            key_path: key_path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn into_error(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_path_buf(),
            problems: self.problems,
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 8), (2, 3));
        assert_eq!(line_column(src, 1000), (3, 1));
    }

    #[test]
    fn display_lists_every_problem_with_its_place() {
        let mut d = Diagnostics::new("x = 1\ny = 2\n");
        d.at(Some(6..7), "y", "bad y");
        d.at(None, "", "file-level");
        let text = d.into_error(Path::new("c.toml")).to_string();
        assert!(text.contains("2 problems"));
        assert!(text.contains("c.toml:2:1: y: bad y"));
        assert!(text.contains("c.toml: file-level"));
    }
}
