//! sock_diag accept-queue reader against the kernel: a listener with backlog
//! 8 that never accepts, flooded with 20 connects, in a network namespace of
//! the test's own (needs root for `unshare(CLONE_NEWNET)`).

use std::{
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use governor::sense::{
    procfs::listen_counters,
    sensor::port_stats,
    sockdiag::{ListenQueue, SockDiag},
};
use socket2::{Domain, Protocol, Socket, Type};

const BACKLOG: i32 = 8;
const CONNECTS: usize = 20;

fn queue_of(diag: &mut SockDiag, port: u16) -> Option<ListenQueue> {
    diag.listen_queues().expect("sock_diag dump").remove(&port)
}

#[test]
fn accept_queue_of_a_flooded_listener() {
    governor_integration::enter_own_netns();
    // This thread's namespace: /proc/net would show the main thread's.
    let proc_root = Path::new("/proc/thread-self");
    let before = listen_counters(proc_root).expect("read netstat");

    let listener = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    listener.bind(&any.into()).expect("bind 127.0.0.1:0");
    listener.listen(BACKLOG).expect("listen");
    let addr = listener
        .local_addr()
        .expect("local_addr")
        .as_socket()
        .expect("inet address");

    let mut diag = SockDiag::new().expect("open sock_diag");
    let idle = queue_of(&mut diag, addr.port()).expect("listener not reported");
    assert_eq!(
        (idle.accept_queue, idle.accept_queue_max, idle.listeners),
        (0, 8, 1)
    );
    assert!(!idle.any_full);

    let mut clients = Vec::with_capacity(CONNECTS);
    for _ in 0..CONNECTS {
        let c = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        c.set_nonblocking(true).expect("nonblocking");
        match c.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => panic!("connect to {addr}: {e}"),
        }
        clients.push(c);
    }

    // Handshakes on loopback finish in microseconds; allow a few seconds.
    let full = BACKLOG as u32 + 1;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = idle;
    while Instant::now() < deadline {
        seen = queue_of(&mut diag, addr.port()).expect("listener vanished");
        if seen.accept_queue >= full {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        seen.accept_queue, full,
        "accept queue of a backlog-8 listener: {seen:?}"
    );
    assert_eq!(seen.accept_queue_max, 8, "{seen:?}");
    assert!(seen.any_full, "{seen:?}");

    // The 11 connections that found the queue full were dropped, and counted.
    let after = listen_counters(proc_root).expect("read netstat");
    let grown = after.since(&before);
    assert!(
        grown.listen_overflows > 0,
        "ListenOverflows did not grow: {before:?} → {after:?}"
    );
    assert!(grown.listen_drops >= grown.listen_overflows, "{grown:?}");

    // And the full port is charged with them.
    let stats = port_stats(seen.port, 0, Some(&seen), grown.listen_overflows, 1.0)
        .expect("a full port is reported");
    assert_eq!(stats.overflows, grown.listen_overflows);

    drop(clients);
    drop(listener);
}
