//! The journal reader, through the real path: the input is written as
//! `journal.json` in a scratch directory and opened with `Journal::open`
//! (lock, leftover temporary file, parse, boot check). No panic; an error
//! names the journal's path; and a journal that opens reads back the same
//! entries after the agent rewrites it (what is reverted after a crash is
//! what was read).

#![no_main]

use std::{
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use governor::act::journal::{self, Journal};
use libfuzzer_sys::fuzz_target;

static DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_dir() {
    if let Some(d) = DIR.get() {
        let _ = fs::remove_dir_all(d);
    }
}

/// This process's scratch directory (in memory where /dev/shm exists),
/// removed at exit.
fn dir() -> &'static Path {
    DIR.get_or_init(|| {
        let base = Path::new("/dev/shm");
        let base = if base.is_dir() {
            base.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("governor-fuzz-journal.{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        // SAFETY: `remove_dir` is an `extern "C" fn()` that does not unwind.
        unsafe { libc::atexit(remove_dir) };
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dir();
    fs::create_dir_all(d).expect("creating the scratch directory");
    let _ = fs::remove_file(d.join(journal::BEFORE_REBOOT));
    fs::write(d.join(journal::FILE), data).expect("writing journal.json");
    let shown = d.display().to_string();
    let j = match Journal::open(d) {
        Ok(j) => j,
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&shown), "the error names no path: {msg}");
            return;
        }
    };
    let entries = j.entries().to_vec();
    for e in &entries {
        let _ = (e.unit(), e.held_by("p"), j.find(&e.file));
    }
    let Some(first) = entries.first().cloned() else {
        return;
    };
    // Replacing an entry by itself rewrites the whole journal.
    let mut j = j;
    j.put(first).expect("rewriting the journal it read");
    drop(j);
    let again = Journal::open(d).expect("opening the journal it wrote");
    assert_eq!(
        again.entries(),
        &entries[..],
        "entries changed through a write and a read"
    );
});
