//! cgroupfs parsers, each given the input: flat keyed files (`cpu.stat` of
//! cgroup2 and of the v1 cpu controller), pressure files (`cpu.pressure`,
//! read by the procfs parser), and `/proc/self/cgroup` lines (the agent's own
//! cgroup is the `0::` line's path, `agent::own_cgroup`; v1 lines'
//! paths too), through `CgroupPath::new`. No panic; an error names the file;
//! a cgroup path is normalised once and for all.

#![no_main]

use std::path::Path;

use governor::sense::{cgroupfs::parse_flat_keyed, procfs::some_avg10};
use governor_engine::snapshot::CgroupPath;
use libfuzzer_sys::fuzz_target;

fn cgroup_path(p: &str) {
    let Ok(cg) = CgroupPath::new(p) else {
        return;
    };
    let s = cg.as_str();
    assert!(s.starts_with('/'), "{s:?}");
    assert!(
        s == "/" || (!s.ends_with('/') && !s.contains("//")),
        "{s:?}"
    );
    assert_eq!(
        CgroupPath::new(s).ok().as_ref(),
        Some(&cg),
        "not normal: {s:?}"
    );
    assert_eq!(
        format!("/{}", cg.relative()),
        if s == "/" { "/" } else { s }
    );
    assert!(cg.is_within(&cg) && cg.is_within(&CgroupPath::root()));
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("/sys/fs/cgroup/fuzz/cpu.stat");
    match parse_flat_keyed(text, file) {
        Ok(stat) => {
            for key in stat.keys() {
                assert!(
                    !key.is_empty() && !key.contains(char::is_whitespace),
                    "{key:?}"
                );
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("/sys/fs/cgroup/fuzz/cpu.stat"),
                "the error names no file: {msg}"
            );
        }
    }
    let _ = some_avg10(text);
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("0::") {
            cgroup_path(p.trim());
        } else if let Some((_, p)) = line.split_once(':').and_then(|(_, r)| r.split_once(':')) {
            cgroup_path(p.trim());
        }
    }
});
