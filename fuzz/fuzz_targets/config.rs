//! The config parser (`governor_engine::config::from_str`): no panic, no
//! hang, and every error still names its place, the way `governor check`
//! prints it: `fuzz.toml:LINE:COL: error: …` with a line and column inside
//! the text, or `fuzz.toml: error: …` for an unlocated one.

#![no_main]

use governor_engine::config::{self, ConfigErrors};
use libfuzzer_sys::fuzz_target;

const NAME: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    // The agent reads the file with `read_to_string`: only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(errs) = config::from_str(text, NAME) else {
        return;
    };
    assert_eq!(errs.source_name, NAME);
    assert!(!errs.errors.is_empty(), "an Err without an error");
    let lines: Vec<&str> = text.split('\n').collect();
    let mut whole = String::new();
    for e in &errs.errors {
        let one = ConfigErrors {
            source_name: NAME.to_owned(),
            errors: vec![e.clone()],
        }
        .to_string();
        match e.location {
            Some((line, col)) => {
                let prefix = format!("{NAME}:{line}:{col}: error: ");
                assert!(one.starts_with(&prefix), "not `{prefix}…`: {one:?}");
                assert!(
                    (1..=lines.len()).contains(&line),
                    "line {line} of a text of {} lines: {one:?}",
                    lines.len()
                );
                let width = lines[line - 1].chars().count();
                assert!(
                    (1..=width + 1).contains(&col),
                    "column {col} of a line of {width} characters: {one:?}"
                );
            }
            None => {
                let prefix = format!("{NAME}: error: ");
                assert!(one.starts_with(&prefix), "not `{prefix}…`: {one:?}");
            }
        }
        assert!(
            !e.problem.trim().is_empty(),
            "an error that names no problem: {one:?}"
        );
        assert!(one.contains("\n  help: "), "no help line: {one:?}");
        whole.push_str(&one);
    }
    // The report is the errors, in order, each as above.
    assert_eq!(errs.to_string(), whole);
});
