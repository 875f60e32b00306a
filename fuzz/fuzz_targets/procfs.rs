//! `/proc` parsers: `some avg10` of a pressure file (`/proc/pressure/*`,
//! also every cgroup's `*.pressure`) and the `TcpExt` listen counters of
//! `/proc/net/netstat`, each given the input. No panic, no hang; an error
//! says what is wrong.

#![no_main]

use governor::sense::procfs::{ListenCounters, parse_listen_counters, some_avg10};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Both are read as UTF-8 (`read_to_string`, `from_utf8` of the pread buffer).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(reason) = some_avg10(text) {
        assert!(!reason.is_empty());
    }
    match parse_listen_counters(text) {
        Ok(c) => assert_eq!(c.since(&c), ListenCounters::default()),
        Err(reason) => assert!(!reason.is_empty()),
    }
});
