//! Connection admission against the real kernel, only in the test's own
//! network namespaces and cgroups: inbound per-port token buckets (reset and
//! drop), exemptions, other ports and established connections untouched;
//! outbound per-cgroup throttling with EPERM, a sibling cgroup untouched.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use governor::act::net::{NetEnforcer, Rule};
use governor_engine::config::RejectMode;
use governor_integration::{Children, TestCgroup, enter_own_netns, field, require_root};

/// A listener on 127.0.0.1 that accepts (and closes) until dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut kept = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        // Echo one message if one comes, so a test can use an
                        // established connection; keep a few open.
                        let _ = s.set_nonblocking(true);
                        let mut buf = [0u8; 16];
                        if let Ok(n) = s.read(&mut buf) {
                            let _ = s.write_all(&buf[..n]);
                        }
                        if kept.len() < 4 {
                            kept.push(s);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_micros(200)),
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enforcer_here() -> NetEnforcer {
    let mut e = NetEnforcer::load().expect("enforcement object loads");
    e.attach_netns(Path::new("/proc/thread-self/ns/net"))
        .expect("sk_lookup attaches to our namespace");
    e
}

/// Connects from `source` (an address on lo) to `port`.
fn connect_from(source: [u8; 4], port: u16) -> std::io::Result<()> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let from: SocketAddr = (source, 0).into();
    s.bind(&from.into())?;
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    s.connect_timeout(&to.into(), Duration::from_millis(500))
}

#[test]
fn inbound_throttle_admits_the_rate_resets_the_rest_and_spares_others() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let limited = Server::start();
        let other = Server::start();
        // An established connection from before the rule must keep working.
        let mut established = TcpStream::connect(limited.addr()).expect("connect before the rule");
        thread::sleep(Duration::from_millis(50));

        let mut e = enforcer_here();
        let rule = Rule {
            rate: Some(200.0),
            burst: 20,
            mode: RejectMode::Reset,
            exempt: vec!["127.0.0.2/32".parse().expect("net")],
        };
        e.set_port(limited.port, &rule).expect("rule set");

        let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
        let flood = kids.spawn(&[
            "connect",
            "--addr",
            &limited.addr(),
            "--count",
            "10000",
            "--rate",
            "2000",
            "--timeout-ms",
            "1000",
        ]);
        let calm = kids.spawn(&[
            "connect",
            "--addr",
            &other.addr(),
            "--count",
            "250",
            "--rate",
            "50",
        ]);
        thread::sleep(Duration::from_secs(1));
        let exempt_ok = (0..50)
            .filter(|_| connect_from([127, 0, 0, 2], limited.port).is_ok())
            .count();
        established
            .write_all(b"ping")
            .expect("established connection writes");
        let out = kids.wait_output(flood);
        let calm_out = kids.wait_output(calm);
        println!("flood: {out}\nother port: {calm_out}\nexempt: {exempt_ok}/50");

        let secs = field(&out, "ms") as f64 / 1000.0;
        let admitted = field(&out, "ok") as f64;
        let expected = 200.0 * secs + 20.0;
        assert!(
            (admitted - expected).abs() <= 0.10 * expected,
            "admitted {admitted} in {secs:.2}s, expected {expected:.0} ±10% (200/s + burst 20)"
        );
        assert_eq!(
            field(&out, "refused") + field(&out, "ok"),
            10_000,
            "the rest was refused at once (RST): {out}"
        );
        assert_eq!(
            field(&out, "timeout"),
            0,
            "reset mode never leaves a client waiting"
        );
        assert_eq!(
            field(&calm_out, "ok"),
            250,
            "another port is unaffected: {calm_out}"
        );
        assert_eq!(exempt_ok, 50, "an exempt source is unaffected");
        // Every refusal the client saw was counted by the kernel (a slow,
        // emulated flood lasts longer and is admitted more: a fixed 8,000
        // failed a 6.1 guest with 2,730 admitted and 7,397 refused).
        let v = e.port_verdicts().expect("verdicts");
        assert_eq!(v[&limited.port].dropped, 0, "reset mode drops nothing");
        assert!(
            v[&limited.port].refused >= field(&out, "refused"),
            "the kernel counted the refusals: {:?}, the client saw {}",
            v[&limited.port],
            field(&out, "refused")
        );
        e.clear_port(limited.port).expect("rule cleared");
        assert!(
            TcpStream::connect(limited.addr()).is_ok(),
            "after clearing, connects pass again"
        );
    })
    .join()
    .expect("test thread");
}

#[test]
fn inbound_drop_mode_makes_clients_time_out_and_retry() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let server = Server::start();
        let mut e = enforcer_here();
        let rule = Rule {
            rate: Some(1.0),
            burst: 1,
            mode: RejectMode::Drop,
            exempt: vec![],
        };
        e.set_port(server.port, &rule).expect("rule set");
        let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
        // The first connect takes the only token; the next ones find none.
        let quick = kids.spawn(&[
            "connect",
            "--addr",
            &server.addr(),
            "--count",
            "4",
            "--timeout-ms",
            "250",
        ]);
        let out = kids.wait_output(quick);
        println!("quick: {out}");
        assert_eq!(field(&out, "ok"), 1, "one connect fits the bucket: {out}");
        assert_eq!(field(&out, "refused"), 0, "drop mode sends no RST: {out}");
        assert_eq!(field(&out, "timeout"), 3, "the others time out: {out}");
        // A patient client retries its SYN (after ~1 s) and gets in once a
        // token is back.
        let started = Instant::now();
        let patient = TcpStream::connect_timeout(
            &server.addr().parse().expect("addr"),
            Duration::from_secs(5),
        );
        let waited = started.elapsed();
        println!("patient: {patient:?} after {waited:?}");
        assert!(
            patient.is_ok(),
            "a retried SYN is admitted when a token is back"
        );
        assert!(
            waited >= Duration::from_millis(800),
            "it needed a retransmission ({waited:?})"
        );
    })
    .join()
    .expect("test thread");
}

/// Drop mode for an IPv6 client: its SYN is dropped too (it times out and
/// retries), not reset. The sink used to be IPv4 only, and a lookup can be
/// steered only to a socket of its own family: IPv6 clients got RST.
#[test]
fn inbound_drop_mode_drops_ipv6_syns_too() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let listener = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(e) => {
                println!(
                    "SKIPPED: inbound_drop_mode_drops_ipv6_syns_too: no IPv6 loopback here ({e})"
                );
                return;
            }
        };
        let addr = listener.local_addr().expect("addr");
        let accepting = thread::spawn(move || {
            // Accept whatever gets in until the test ends.
            let mut kept = Vec::new();
            for s in listener.incoming().take(4) {
                match s {
                    Ok(s) => kept.push(s),
                    Err(_) => break,
                }
            }
        });
        let mut e = enforcer_here();
        let rule = Rule {
            rate: Some(0.5),
            burst: 1,
            mode: RejectMode::Drop,
            exempt: vec![],
        };
        e.set_port(addr.port(), &rule).expect("rule set");
        let first = TcpStream::connect_timeout(&addr, Duration::from_millis(500));
        assert!(first.is_ok(), "the token admits the first: {first:?}");
        let second = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        let kind = second.as_ref().err().map(std::io::Error::kind);
        println!("second IPv6 connect: {second:?}");
        assert_eq!(
            kind,
            Some(std::io::ErrorKind::TimedOut),
            "drop mode sends no RST to an IPv6 client either: {second:?}"
        );
        let v = e.port_verdicts().expect("verdicts");
        // Counted as dropped (the SYN went to the sink), not as refused.
        assert!(
            v[&addr.port()].dropped >= 1 && v[&addr.port()].refused == 0,
            "{:?}",
            v[&addr.port()]
        );
        e.clear_port(addr.port()).expect("rule cleared");
        // Let the acceptor end: connect until it has taken its four.
        for _ in 0..4 {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        }
        let _ = accepting.join();
    })
    .join()
    .expect("test thread");
}

#[test]
fn outbound_throttle_refuses_with_eperm_at_once_and_spares_the_sibling() {
    require_root();
    let limited = TestCgroup::new("out-limited");
    let sibling = TestCgroup::new("out-sibling");
    let server = Server::start();
    let mut e = NetEnforcer::load().expect("enforcement object loads");
    e.attach_cgroup(&limited.dir)
        .expect("connect4/6 attach to the test cgroup");
    let rule = Rule {
        rate: Some(50.0),
        burst: 5,
        mode: RejectMode::Reset,
        exempt: vec![],
    };
    e.set_cgroup(limited.id(), &rule).expect("rule set");

    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let lp = limited.procs();
    let sp = sibling.procs();
    let a = kids.spawn(&[
        "connect",
        "--addr",
        &server.addr(),
        "--count",
        "600",
        "--rate",
        "300",
        "--join",
        lp.to_str().expect("utf-8"),
    ]);
    let b = kids.spawn(&[
        "connect",
        "--addr",
        &server.addr(),
        "--count",
        "300",
        "--rate",
        "150",
        "--join",
        sp.to_str().expect("utf-8"),
    ]);
    let out_a = kids.wait_output(a);
    let out_b = kids.wait_output(b);
    println!("limited: {out_a}\nsibling: {out_b}");
    let secs = field(&out_a, "ms") as f64 / 1000.0;
    let expected = 50.0 * secs + 5.0;
    let ok = field(&out_a, "ok") as f64;
    assert!(
        (ok - expected).abs() <= 0.10 * expected,
        "admitted {ok} in {secs:.2}s, expected {expected:.0} ±10%"
    );
    assert_eq!(
        field(&out_a, "eperm") + field(&out_a, "ok"),
        600,
        "the rest failed with EPERM: {out_a}"
    );
    assert_eq!(field(&out_a, "timeout"), 0, "nothing waited");
    assert_eq!(
        field(&out_b, "ok"),
        300,
        "the sibling cgroup is unaffected: {out_b}"
    );
    e.detach_cgroup(&limited.dir).expect("detach");
}

/// A decision of policy "p" on `action`, as the engine makes them.
fn decision(
    kind: governor_engine::decide::DecisionKind,
    change: governor_engine::decide::Change,
    action: governor_engine::config::Action,
    from: usize,
    to: usize,
) -> governor_engine::decide::Decision {
    decision_of("p", kind, change, action, from, to)
}

/// A decision of `policy` on `action`.
fn decision_of(
    policy: &str,
    kind: governor_engine::decide::DecisionKind,
    change: governor_engine::decide::Change,
    action: governor_engine::config::Action,
    from: usize,
    to: usize,
) -> governor_engine::decide::Decision {
    use governor_engine::{
        config::{Scope, SignalKind, SignalSpec},
        decide::{Cause, Decision, Reason},
    };
    Decision {
        at: Duration::ZERO,
        policy: policy.into(),
        kind,
        change,
        target: action.target(),
        action,
        from_rung: from,
        to_rung: to,
        reason: Reason {
            signal: SignalSpec {
                kind: SignalKind::AcceptQueueFill,
                scope: Scope::Port(1),
            },
            value: None,
            watermark: None,
            held_for: Duration::ZERO,
            cause: Cause::Over,
            blame: None,
        },
    }
}

/// Cgroup-file actions are not what these tests are about.
struct NoCgroups;

impl governor::act::rules::CgroupActuation for NoCgroups {
    fn apply(&mut self, _: &str, _: &governor_engine::config::Action) -> anyhow::Result<()> {
        anyhow::bail!("not in this test")
    }
    fn lift(&mut self, _: &str, _: &governor_engine::config::Action) -> anyhow::Result<()> {
        Ok(())
    }
    fn revert_all(&mut self) -> String {
        String::new()
    }
}

/// A cgroup removed and made again at the same path is a new cgroup: a
/// rule imposed on it must attach the connect programs to it anew. They
/// were remembered by path, so the new cgroup got a rule and no program.
#[test]
fn a_cgroup_made_again_at_its_path_gets_its_own_connect_programs() {
    use governor::act::rules::Actuators;
    use governor_engine::{
        config::{Action, Target},
        decide::{Change, DecisionKind},
    };
    require_root();
    let cg = TestCgroup::new("remade");
    let server = Server::start();
    let fs = governor::sense::cgroupfs::CgroupFs::discover(Path::new(
        governor::sense::cgroupfs::DEFAULT_ROOT,
    ))
    .expect("cgroup2");
    let mut act = Actuators::new(fs, Box::new(NoCgroups), "/proc/self/ns/net".into());
    let reject = Action::RejectConnections {
        target: Target::Cgroup(cg.path.clone()),
        mode: RejectMode::Reset,
        exempt: vec![],
    };
    let connects = |kids: &mut Children| {
        let procs = cg.procs();
        let c = kids.spawn(&[
            "connect",
            "--addr",
            &server.addr(),
            "--count",
            "5",
            "--join",
            procs.to_str().expect("utf-8"),
        ]);
        kids.wait_output(c)
    };
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    act.carry_out(&decision(
        DecisionKind::Applied,
        Change::Impose,
        reject.clone(),
        0,
        1,
    ))
    .expect("reject on the first cgroup");
    let first = connects(&mut kids);
    assert_eq!(
        field(&first, "eperm"),
        5,
        "refused in the first cgroup: {first}"
    );
    // The same path, a new cgroup (the old one is empty: its connect
    // helper has exited).
    let old_id = cg.id();
    std::fs::remove_dir(&cg.dir).expect("rmdir the test cgroup");
    std::fs::create_dir(&cg.dir).expect("mkdir it again");
    assert_ne!(cg.id(), old_id, "a new cgroup");
    act.carry_out(&decision(
        DecisionKind::Applied,
        Change::Impose,
        reject,
        1,
        2,
    ))
    .expect("reject on the new cgroup");
    let second = connects(&mut kids);
    println!("first cgroup: {first}\nmade again: {second}");
    assert_eq!(
        field(&second, "eperm"),
        5,
        "refused in the cgroup made again at the path: {second}"
    );
    act.revert_all();
}

/// Stepping down from reject (rung 2) to throttle (rung 1) puts the
/// throttle back in force; it must not open the port (a bug the herd
/// benchmark found).
#[test]
fn stepping_down_from_reject_restores_the_throttle_below() {
    use governor::act::rules::Actuators;
    use governor_engine::{
        config::{Action, Target, units::Rate},
        decide::{Change, DecisionKind},
    };
    require_root();
    let ns = governor_integration::NetNs::new("steps");
    let path = ns.path();
    let outcome = thread::spawn(move || {
        governor_integration::enter_netns(&path);
        let server = Server::start();
        let fs = governor::sense::cgroupfs::CgroupFs::discover(Path::new(
            governor::sense::cgroupfs::DEFAULT_ROOT,
        ))
        .expect("cgroup2");
        let mut act = Actuators::new(fs, Box::new(NoCgroups), path.clone());
        let throttle = Action::ThrottleConnections {
            target: Target::Port(server.port),
            rate: Rate::per_second(1.0),
            of_accepted: None,
            burst: 1,
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        let reject = Action::RejectConnections {
            target: Target::Port(server.port),
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        act.carry_out(&decision(
            DecisionKind::Applied,
            Change::Impose,
            throttle,
            0,
            1,
        ))
        .expect("throttle");
        act.carry_out(&decision(
            DecisionKind::Applied,
            Change::Impose,
            reject.clone(),
            1,
            2,
        ))
        .expect("reject");
        let under_reject = (0..3)
            .filter(|_| TcpStream::connect(server.addr()).is_ok())
            .count();
        act.carry_out(&decision(
            DecisionKind::Reverted,
            Change::Lift,
            reject,
            2,
            1,
        ))
        .expect("step down");
        let under_throttle = (0..5)
            .filter(|_| TcpStream::connect(server.addr()).is_ok())
            .count();
        (under_reject, under_throttle)
    })
    .join()
    .expect("test thread");
    println!(
        "admitted under reject: {}, after stepping down to 1/s: {}",
        outcome.0, outcome.1
    );
    assert_eq!(outcome.0, 0, "reject refuses everything");
    assert_eq!(
        outcome.1, 1,
        "after stepping down, the 1/s throttle admits one of five at once"
    );
}

/// Two policies on one port share the kernel's one bucket for it: the
/// strictest claim is in force, and one policy lifting puts the other's
/// back. Before, the newest claim won (a loose throttle opened a port
/// another policy rejected) and a lift cleared the port for both.
#[test]
fn two_policies_on_one_port_the_strictest_claim_holds_and_a_lift_restores_the_other() {
    use governor::act::rules::Actuators;
    use governor_engine::{
        config::{Action, Target, units::Rate},
        decide::{Change, DecisionKind},
    };
    require_root();
    let ns = governor_integration::NetNs::new("compose");
    let path = ns.path();
    let seen = thread::spawn(move || {
        governor_integration::enter_netns(&path);
        let server = Server::start();
        let fs = governor::sense::cgroupfs::CgroupFs::discover(Path::new(
            governor::sense::cgroupfs::DEFAULT_ROOT,
        ))
        .expect("cgroup2");
        let mut act = Actuators::new(fs, Box::new(NoCgroups), path.clone());
        let throttle = |rate: f64, burst: u32| Action::ThrottleConnections {
            target: Target::Port(server.port),
            rate: Rate::per_second(rate),
            of_accepted: None,
            burst,
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        let reject = Action::RejectConnections {
            target: Target::Port(server.port),
            mode: RejectMode::Reset,
            exempt: vec![],
        };
        let mut carry = |policy: &str, kind, change, action: &Action| {
            act.carry_out(&decision_of(policy, kind, change, action.clone(), 0, 1))
                .unwrap_or_else(|e| panic!("{policy}: {e:#}"));
        };
        let admitted = |n: usize| {
            (0..n)
                .filter(|_| TcpStream::connect(server.addr()).is_ok())
                .count()
        };
        let (loose, tight) = (throttle(1000.0, 100), throttle(1.0, 1));
        let mut seen = Vec::new();
        carry("a", DecisionKind::Applied, Change::Impose, &reject);
        carry("b", DecisionKind::Applied, Change::Impose, &loose);
        seen.push(("a reject + b 1000/s", admitted(3)));
        carry("b", DecisionKind::Reverted, Change::Lift, &loose);
        seen.push(("a reject, b lifted", admitted(3)));
        carry("a", DecisionKind::Reverted, Change::Lift, &reject);
        seen.push(("both lifted", admitted(3)));
        carry("a", DecisionKind::Applied, Change::Impose, &tight);
        carry("b", DecisionKind::Applied, Change::Impose, &loose);
        seen.push(("a 1/s + b 1000/s", admitted(5)));
        carry("a", DecisionKind::Reverted, Change::Lift, &tight);
        seen.push(("a lifted, b 1000/s", admitted(5)));
        carry("b", DecisionKind::Reverted, Change::Lift, &loose);
        act.revert_all();
        seen
    })
    .join()
    .expect("test thread");
    println!("admitted: {seen:?}");
    assert_eq!(
        seen,
        [
            ("a reject + b 1000/s", 0),
            ("a reject, b lifted", 0),
            ("both lifted", 3),
            ("a 1/s + b 1000/s", 1),
            ("a lifted, b 1000/s", 5),
        ],
        "the strictest claim in force at each step"
    );
}

/// Whether the enforcement programs are gone is asked of each cgroup and
/// namespace they were attached to (BPF_PROG_QUERY, CAP_NET_ADMIN), not of
/// the list of every loaded program (CAP_SYS_ADMIN, which the unit lacks).
#[test]
fn release_is_checked_at_each_hook_the_programs_were_attached_to() {
    use governor::act::rules::Actuators;
    use governor_engine::{
        config::{Action, Target},
        decide::{Change, DecisionKind},
    };
    require_root();
    let out = thread::spawn(|| {
        enter_own_netns();
        let cg = TestCgroup::new("detach-check");
        let mut e = enforcer_here();
        e.attach_cgroup(&cg.dir).expect("connect4/6 attach");
        let hooks = e.attachments();
        assert_eq!(hooks.len().1, 3, "the namespace and two cgroup hooks");
        let alive = hooks.check();
        assert_eq!(alive.asked, 3, "{alive:?}");
        assert_eq!(
            alive.attached.len(),
            3,
            "while the enforcer lives, each hook holds one of ours: {alive:?}"
        );
        drop(e);
        let gone = hooks.check();
        assert_eq!(gone.asked, 3, "{gone:?}");
        assert!(gone.attached.is_empty(), "released: {gone:?}");

        // Through the actuators, as the agent stops.
        let fs = governor::sense::cgroupfs::CgroupFs::discover(Path::new(
            governor::sense::cgroupfs::DEFAULT_ROOT,
        ))
        .expect("cgroup2");
        let mut act = Actuators::new(fs, Box::new(NoCgroups), "/proc/thread-self/ns/net".into());
        assert_eq!(act.check_detached(), None, "nothing attached yet");
        act.carry_out(&decision(
            DecisionKind::Applied,
            Change::Impose,
            Action::RejectConnections {
                target: Target::Cgroup(cg.path.clone()),
                mode: RejectMode::Reset,
                exempt: vec![],
            },
            0,
            1,
        ))
        .expect("reject on the cgroup");
        act.revert_all();
        act.check_detached().expect("a check after a release")
    })
    .join()
    .expect("test thread");
    println!("{out}");
    assert!(
        out.starts_with("detached: none of our enforcement programs remains attached"),
        "{out}"
    );
}
