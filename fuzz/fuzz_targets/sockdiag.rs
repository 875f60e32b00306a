//! sock_diag's datagram parser (`sense::sockdiag::parse_datagram`): the
//! input is one datagram of a dump answer, as `recv` returns it; the request's
//! sequence number is taken from its first message so that its messages are
//! read, not skipped. No panic; errors name the address family; every
//! listener found is counted once per port.

#![no_main]

use governor::sense::sockdiag::{parse_datagram, per_port};
use libfuzzer_sys::fuzz_target;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

fuzz_target!(|data: &[u8]| {
    // idiag_family of the first response, as in a real dump of that family.
    let family = if data.get(16) == Some(&AF_INET6) {
        AF_INET6
    } else {
        AF_INET
    };
    let seq = data
        .get(8..12)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let mut out = Vec::new();
    if let Err(e) = parse_datagram(data, family, seq, &mut out) {
        let msg = e.to_string();
        let name = if family == AF_INET6 { "IPv6" } else { "IPv4" };
        assert!(msg.contains(name), "the error names no family: {msg}");
    }
    let ports = per_port(&out);
    let counted: u64 = ports.values().map(|q| u64::from(q.listeners)).sum();
    assert_eq!(counted, out.len() as u64);
    for (port, q) in &ports {
        assert_eq!(*port, q.port);
        assert_eq!(
            q.any_full,
            out.iter().any(|l| l.local.port() == *port && l.is_full())
        );
    }
});
