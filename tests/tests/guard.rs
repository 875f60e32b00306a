//! The accept-queue guard against the real kernel, only in the test's own
//! network namespace: a listener that never accepts, its queue filled
//! connection by connection; with the guard armed at bound N, connection
//! N+1 is refused at SYN time (RST: ECONNREFUSED at once; drop mode: the
//! connect times out) while the queue stays at N, another port is
//! untouched, and once disarmed every connection is queued again. The
//! listener is re-acquired (by inode, through `/proc` and pidfd_getfd)
//! after the server binds a new one.

use std::{
    net::{SocketAddr, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use governor::act::net::{NetEnforcer, listener_fd};
use governor_engine::config::RejectMode;
use governor_integration::{enter_own_netns, eventually, require_root};

/// A listener on 127.0.0.1 with accept-queue room for `backlog`, which is
/// never accepted from.
fn idle_listener(backlog: i32) -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    s.listen(backlog).expect("listen");
    let port = s
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    (s, port)
}

fn connect(port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout)
}

/// The listener's accept-queue depth as the kernel reports it
/// (`tcpi_unacked` of a listener is its `sk_ack_backlog`).
fn queue_depth(s: &socket2::Socket) -> u32 {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info.tcpi_unacked
    }
}

/// Connects until the queue holds `n` (each one waited for).
fn fill(s: &socket2::Socket, port: u16, n: u32, kept: &mut Vec<TcpStream>) {
    loop {
        let depth = queue_depth(s);
        if depth >= n {
            break;
        }
        kept.push(connect(port, Duration::from_secs(2)).expect("queued connect admitted"));
        let want = depth + 1;
        assert!(
            eventually(Duration::from_secs(2), || queue_depth(s) >= want),
            "accept queue did not grow to {want}"
        );
    }
}

fn enforcer_here() -> Option<NetEnforcer> {
    let mut e = NetEnforcer::load().expect("enforcement object loads");
    if let Some(why) = e.guard_unavailable() {
        governor_integration::skip(why);
        return None;
    }
    e.attach_netns(Path::new("/proc/thread-self/ns/net"))
        .expect("sk_lookup attaches to the test's namespace");
    Some(e)
}

#[test]
fn guard_refuses_at_syn_time_beyond_the_bound_and_spares_other_ports() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let Some(mut e) = enforcer_here() else { return };
        let (guarded, port) = idle_listener(64);
        let (_other, other_port) = idle_listener(64);
        const BOUND: u32 = 3;
        e.set_guard(port, BOUND, RejectMode::Reset, &guarded)
            .expect("guard armed");
        let mut kept = Vec::new();
        fill(&guarded, port, BOUND, &mut kept);
        // Beyond the bound: refused with RST, at once.
        for _ in 0..5 {
            let t = Instant::now();
            let err = connect(port, Duration::from_secs(2)).expect_err("refused over the bound");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
            assert!(t.elapsed() < Duration::from_millis(500), "refused at once");
        }
        assert_eq!(
            queue_depth(&guarded),
            BOUND,
            "the queue stayed at the bound"
        );
        let v = e.port_verdicts().expect("verdicts");
        assert_eq!(v[&port].guarded, 5, "every refusal counted as guarded");
        assert_eq!(v[&port].refused, 0, "no bucket refusals");
        assert_eq!(v[&port].admitted, u64::from(BOUND));
        // Another port is not guarded.
        for _ in 0..6 {
            kept.push(connect(other_port, Duration::from_secs(2)).expect("other port admitted"));
        }
        assert!(
            !v.contains_key(&other_port),
            "the other port is not even counted"
        );
        // A higher bound admits again, up to it.
        e.set_guard_bound(port, BOUND + 2, RejectMode::Reset)
            .expect("bound moved");
        fill(&guarded, port, BOUND + 2, &mut kept);
        connect(port, Duration::from_secs(2)).expect_err("refused at the new bound");
        // Disarmed: queued again, past the old bound.
        e.clear_guard(port).expect("guard disarmed");
        for _ in 0..3 {
            kept.push(connect(port, Duration::from_secs(2)).expect("admitted once disarmed"));
        }
        assert!(eventually(Duration::from_secs(2), || queue_depth(&guarded)
            == BOUND + 5));
        e.clear_guard(port).expect("clearing twice is fine");
    })
    .join()
    .expect("test thread");
}

#[test]
fn guard_in_drop_mode_makes_connects_time_out() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let Some(mut e) = enforcer_here() else { return };
        let (guarded, port) = idle_listener(64);
        e.set_guard(port, 2, RejectMode::Drop, &guarded)
            .expect("guard armed");
        let mut kept = Vec::new();
        fill(&guarded, port, 2, &mut kept);
        let t = Instant::now();
        let err = connect(port, Duration::from_millis(700)).expect_err("dropped over the bound");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(
            t.elapsed() >= Duration::from_millis(600),
            "no RST: a timeout"
        );
        assert_eq!(queue_depth(&guarded), 2);
        assert!(e.port_verdicts().expect("verdicts")[&port].guarded >= 1);
        e.clear_guard(port).expect("disarmed");
    })
    .join()
    .expect("test thread");
}

#[test]
fn the_listener_is_reacquired_by_inode_after_the_server_binds_again() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let Some(mut e) = enforcer_here() else { return };
        let inode = |s: &socket2::Socket| {
            std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .expect("fd")
                .ino()
        };
        let (first, port) = idle_listener(64);
        let dup = listener_fd(Path::new("/proc"), inode(&first)).expect("listener found by inode");
        e.set_guard(port, 1, RejectMode::Reset, &dup)
            .expect("guard armed");
        drop(dup);
        let mut kept = Vec::new();
        fill(&first, port, 1, &mut kept);
        connect(port, Duration::from_secs(2)).expect_err("refused over the bound");
        // The server restarts: a new listener on the same port.
        drop(kept);
        drop(first);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .expect("bind the same port again");
        s.listen(64).unwrap();
        // The old socket left the sock hash when it closed: the guard holds
        // back (admits) until the new one is acquired.
        let mut kept = vec![connect(port, Duration::from_secs(2)).expect("admitted meanwhile")];
        assert!(eventually(Duration::from_secs(2), || queue_depth(&s) == 1));
        let dup = listener_fd(Path::new("/proc"), inode(&s)).expect("new listener found");
        e.set_listener(port, &dup).expect("listener replaced");
        connect(port, Duration::from_secs(2)).expect_err("the new queue is guarded");
        kept.clear();
        e.clear_guard(port).expect("disarmed");
    })
    .join()
    .expect("test thread");
}

/// Runs `f` on a thread that joined `ns` (sockets it makes live there).
fn in_ns<T: Send + 'static>(
    ns: &governor_integration::NetNs,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let path = ns.path();
    thread::spawn(move || {
        governor_integration::enter_netns(&path);
        f()
    })
    .join()
    .expect("namespace thread")
}

/// Connects from inside `ns` until the queue of `s` holds `n`; returns the
/// connections (kept open so that they stay queued).
fn fill_in(
    ns: &governor_integration::NetNs,
    s: &std::sync::Arc<socket2::Socket>,
    port: u16,
    n: u32,
) -> Vec<TcpStream> {
    let s = std::sync::Arc::clone(s);
    in_ns(ns, move || {
        let mut kept = Vec::new();
        fill(&s, port, n, &mut kept);
        kept
    })
}

/// `governor run` with a live policy whose `guard` names a port in the
/// test's namespace: the agent arms the guard from the start (no trip: the
/// policy's watermark is never crossed), the kernel resets the SYN beyond
/// the bound, `/metrics` counts it as `guarded` and shows the bound, the
/// log explains it; after the server binds a new listener the agent arms
/// the guard on it within seconds; after the agent stops, nothing is
/// refused.
#[test]
fn the_agent_arms_a_policys_guard_from_the_start_counts_its_refusals_and_releases_it() {
    require_root();
    let ns = governor_integration::NetNs::new("guard-agent");
    let (s, port) = in_ns(&ns, || idle_listener(16));
    let s = std::sync::Arc::new(s);
    if NetEnforcer::load()
        .expect("enforcement object loads")
        .guard_unavailable()
        .is_some()
    {
        governor_integration::skip("the guard is unavailable on this kernel");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!(
        "127.0.0.1:{}",
        24_000 + (std::process::id() % 20_000) as u16
    );
    let files = governor_integration::AgentConfig::new(dir.path(), metrics, 9)
        .netns(&ns.path())
        .write(&format!(
            r#"[[policy]]
name = "guarded"
signal = {{ kind = "accept_queue_fill", port = {port} }}
high = 0.99
low = 0.1
guard = {{ port = {port}, max_queue = 3, min = 3, mode = "reset" }}
ladder = [{{ action = "throttle_connections", port = {port}, rate = "10/s", burst = 1, mode = "reset" }}]
"#
        ));
    let mut agent =
        governor_integration::AgentProcess::start(&files.config, &files.socket, &files.log);
    let armed = format!("guard on :{port} armed at bound 3");
    assert!(
        eventually(Duration::from_secs(10), || agent
            .log_text()
            .contains(&armed)),
        "the agent armed the guard at start; log:\n{}",
        agent.log_text()
    );
    let kept = fill_in(&ns, &s, port, 3);
    let refused = in_ns(&ns, move || {
        let t = Instant::now();
        (connect(port, Duration::from_secs(2)).err(), t.elapsed())
    });
    match refused {
        (Some(e), took) => {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "reset at SYN time: {e}"
            );
            assert!(took < Duration::from_millis(500), "at once: {took:?}");
        }
        (None, _) => panic!("the 4th connection was admitted past the guard's bound 3"),
    }
    assert_eq!(queue_depth(&s), 3, "the queue stayed at the bound");
    let series =
        format!("governor_admission_verdicts_total{{target=\"port {port}\",verdict=\"guarded\"}}");
    let bound = format!("governor_port_guard_bound{{port=\"{port}\"}}");
    let mut text = String::new();
    let counted = eventually(Duration::from_secs(5), || {
        text = governor_integration::scrape(&files.metrics);
        governor_integration::metric(&text, &series) == Some(1.0)
            && governor_integration::metric(&text, &bound) == Some(3.0)
    });
    assert!(
        counted,
        "/metrics counts the refusal and shows the bound:\n{text}"
    );
    let explained = format!("guard on :{port} reset 1 SYNs");
    assert!(
        eventually(Duration::from_secs(3), || agent
            .log_text()
            .contains(&explained)),
        "the refusal is explained in the log:\n{}",
        agent.log_text()
    );
    // The server binds again: a new listening socket on the same port.
    drop(kept);
    drop(s);
    let (s2, port2) = in_ns(&ns, move || {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        s.set_reuse_address(true).expect("reuse");
        s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .expect("bind the same port again");
        s.listen(16).expect("listen");
        (s, port)
    });
    assert_eq!(port2, port);
    let s2 = std::sync::Arc::new(s2);
    let changed = "(the listener changed)";
    assert!(
        eventually(Duration::from_secs(5), || agent
            .log_text()
            .contains(changed)),
        "the agent armed the guard on the new listener; log:\n{}",
        agent.log_text()
    );
    let _kept = fill_in(&ns, &s2, port, 3);
    let again = in_ns(&ns, move || connect(port, Duration::from_secs(2)).err());
    assert_eq!(
        again.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused),
        "the new listener is guarded too"
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "clean stop; log:\n{}", agent.log_text());
    let after = in_ns(&ns, move || {
        connect(port, Duration::from_secs(2)).map(|_| ())
    });
    assert!(
        after.is_ok(),
        "after the agent stopped nothing is refused: {after:?}"
    );
    assert_eq!(queue_depth(&s2), 4, "the 4th connection was queued");
}
