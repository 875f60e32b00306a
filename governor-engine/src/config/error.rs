//! Config errors: each names the place (`file:line:col`), the problem and
//! how to fix it, the way a compiler does.

use std::fmt;

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column (in characters) of the offending text, if known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub help: String,
}

impl ConfigError {
    /// An error at byte offset `at` of `source`.
    pub(crate) fn at(
        source: &str,
        at: usize,
        problem: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            location: Some(line_col(source, at)),
            problem: problem.into(),
            help: help.into(),
        }
    }

    /// An error about the file as a whole (e.g. it cannot be read).
    pub fn unlocated(problem: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            location: None,
            problem: problem.into(),
            help: help.into(),
        }
    }
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file (or `<embedded ...>`) the errors are in.
    pub source_name: String,
    /// The problems; never empty.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    /// `file:line:col: error: <problem>` and `  help: <how to fix>`, one pair per error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.errors {
            match e.location {
                Some((line, col)) => {
                    write!(f, "{}:{line}:{col}: error: {}", self.source_name, e.problem)?
                }
                None => write!(f, "{}: error: {}", self.source_name, e.problem)?,
            }
            writeln!(f, "\n  help: {}", e.help)?;
        }
        Ok(())
    }
}

/// 1-based line and column (counted in characters) of byte offset `at`.
fn line_col(source: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(source.len());
    while !source.is_char_boundary(at) {
        at -= 1;
    }
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, source[line_start..at].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
    }
}
