//! The tracefs `format` file parser (`probes::tracefs::EventFormat::parse`),
//! whose offsets the kernel programs are given at load time. No panic; an
//! error names a line of the text; every field found has a C name and is
//! found by it.

#![no_main]

use governor::probes::tracefs::{EventFormat, FieldKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match EventFormat::parse(text) {
        Ok(format) => {
            for f in &format.fields {
                assert!(
                    !f.name.is_empty()
                        && f.name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "field name {:?}",
                    f.name
                );
                let found = format.field(&f.name).expect("a field is found by its name");
                assert_eq!(found.name, f.name);
                if let FieldKind::Array { len } = f.kind {
                    let _ = f.size.checked_div(len);
                }
            }
        }
        Err((line, reason)) => {
            let lines = text.lines().count();
            assert!(
                (1..=lines).contains(&line),
                "line {line} of {lines}: {reason}"
            );
            assert!(!reason.is_empty());
        }
    }
});
