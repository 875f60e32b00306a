//! `governor run` end to end, as a separate process, acting only on
//! test-owned namespaces and cgroups: overload shedding on accept-queue fill,
//! the same in dry-run, reload with a broken config, SIGTERM.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use governor::sense::sockdiag::SockDiag;
use governor_integration::{
    AgentConfig, AgentProcess, Children, NetNs, enter_netns, eventually, field, metric,
    require_root, scrape,
};

const BACKLOG: i32 = 16;

/// A server of fixed capacity in `ns`: accepts one connection every
/// `every`, never faster; runs until dropped.
struct SlowServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SlowServer {
    fn start(ns: &NetNs, every: Duration) -> Self {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            enter_netns(&path);
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.set_reuse_address(true).expect("reuse");
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            s.bind(&addr.into()).expect("bind");
            s.listen(BACKLOG).expect("listen");
            s.set_nonblocking(true).expect("nonblocking");
            let port = s
                .local_addr()
                .expect("addr")
                .as_socket()
                .expect("inet")
                .port();
            tx.send(port).expect("send port");
            while !flag.load(Ordering::Relaxed) {
                let _ = s.accept();
                thread::sleep(every);
            }
        });
        let port = rx.recv().expect("server port");
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples the accept queue of `port` in `ns` every 20 ms until `stop`.
fn watch_queue(
    ns: &NetNs,
    port: u16,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<(Instant, u32)>> {
    let path = ns.path();
    thread::spawn(move || {
        enter_netns(&path);
        let mut diag = SockDiag::new().expect("sock_diag");
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(qs) = diag.listen_queues()
                && let Some(q) = qs.get(&port)
            {
                out.push((Instant::now(), q.accept_queue));
            }
            thread::sleep(Duration::from_millis(20));
        }
        out
    })
}

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    metrics: String,
}

fn write_config(ns: &NetNs, port: u16, dry_run: bool, tag: &str) -> Setup {
    write_config_rate(ns, port, dry_run, tag, "60/s")
}

/// [`write_config`] with the throttle's `rate` as given.
fn write_config_rate(ns: &NetNs, port: u16, dry_run: bool, tag: &str, rate: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = 20_000 + (std::process::id() % 20_000) as u16 + u16::from(dry_run);
    let files = AgentConfig::new(dir.path(), format!("127.0.0.1:{metrics_port}"), 7)
        .netns(&ns.path())
        .dry_run(dry_run)
        .write(&format!(
            r#"[[policy]]
name = "shed-{tag}"
signal = {{ kind = "accept_queue_fill", port = {port} }}
high = 0.5
low = 0.1
for = "200ms"
settle = "1s"
recover_every = "5s"
jitter = 0.3
ladder = [
  {{ action = "throttle_connections", port = {port}, rate = "{rate}", burst = 5, mode = "reset" }},
  {{ action = "reject_connections", port = {port}, mode = "reset" }},
]
"#
        ));
    Setup {
        _dir: dir,
        config: files.config,
        socket: files.socket,
        log: files.log,
        metrics: files.metrics,
    }
}

/// Offers 5× the server's capacity for 4 s from inside `ns`.
fn offer_load(ns: &NetNs, port: u16) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_govtest-load"));
    cmd.args(["flood", "--addr", &format!("127.0.0.1:{port}")])
        .args(["--count", "2000", "--rate", "500", "--timeout-ms", "1000"])
        .stdout(std::process::Stdio::piped());
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    kids.procs.push(ns.spawn(cmd));
    kids.wait_output(0)
}

/// The rate `N` in `<marker>N/s` of a decision's text.
fn rate_after(text: &str, marker: &str) -> Option<f64> {
    let after = text.split(marker).nth(1)?;
    after.split("/s").next()?.trim().parse().ok()
}

/// The rate in `throttle_connections N/s (...)` of a decision's text.
fn throttle_rate(text: &str) -> Option<f64> {
    rate_after(text, "throttle_connections ")
}

#[test]
fn a_share_throttle_admits_a_share_of_the_servers_capacity_and_is_re_set_once_drained() {
    require_root();
    let ns = NetNs::new("shr");
    let server = SlowServer::start(&ns, Duration::from_millis(10)); // 100/s
    let setup = write_config_rate(&ns, server.port, false, "share", "90%");
    let agent = AgentProcess::start(&setup.config, &setup.socket, &setup.log);
    let out = offer_load(&ns, server.port);
    println!("clients: {out}");
    let status = agent.status().expect("status");
    for d in &status.recent {
        println!("{:>6.1}s {}", d.at_s, d.text);
    }
    let applied = status
        .recent
        .iter()
        .find(|d| d.kind == "applied" && d.to_rung == 1 && d.from_rung == 0)
        .expect("the share throttle was applied");
    let capacity = rate_after(&applied.text, "of the accepted ")
        .expect("the decision names the accepted rate it was resolved from");
    let reset = status
        .recent
        .iter()
        .find(|d| d.kind == "applied" && d.text.contains(": re-set throttle_connections"))
        .unwrap_or_else(|| panic!("the rate was re-set once drained: {:?}", status.recent));
    let rate = throttle_rate(&reset.text).expect("a rate");
    // Re-set from the rate the server took since, less what still drains
    // the few connections left waiting (named in the decision, 0 if none).
    let took = rate_after(&reset.text, "of the accepted ").expect("the re-set names its rate");
    let drain = rate_after(&reset.text, ", less ").unwrap_or(0.0);
    println!("measured capacity {capacity}/s, took {took}/s, re-set to {rate}/s (less {drain}/s)");
    assert!(
        (rate - (0.9 * took - drain).round()).abs() <= 1.0,
        "re-set to 90% of the measured {took}/s less {drain}/s: {rate}/s"
    );
    assert!(
        throttle_rate(&applied.text).is_some_and(|r| r < rate),
        "the first rate held back some to drain the backlog: {}",
        applied.text
    );
    assert!(
        field(&out, "refused") > 0,
        "the excess was refused at once (RST): {out}"
    );
    // The measured capacity is the server's (100/s) on real CPUs; an
    // emulated CPU serves far less, which is what the share is about.
    if std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm") {
        governor_integration::skip(&format!(
            "the server's nominal capacity needs real CPUs (emulated: measured {capacity}/s)"
        ));
        return;
    }
    assert!(
        (70.0..=130.0).contains(&capacity),
        "the measured capacity is the server's 100/s: {capacity}/s"
    );
}

#[test]
fn overload_is_shed_at_once_and_the_rung_returns_to_zero() {
    require_root();
    let ns = NetNs::new("ovl");
    let server = SlowServer::start(&ns, Duration::from_millis(10)); // 100/s
    let setup = write_config(&ns, server.port, false, "live");
    let agent = AgentProcess::start(&setup.config, &setup.socket, &setup.log);

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_queue(&ns, server.port, Arc::clone(&stop));
    let load_started = Instant::now();
    let out = offer_load(&ns, server.port);
    let load_ended = Instant::now();
    println!("clients: {out}");

    // The rung returns to 0 once the load is gone.
    let back = eventually(Duration::from_secs(30), || {
        agent
            .status()
            .is_some_and(|s| s.policies.iter().all(|p| p.rung == 0))
    });
    stop.store(true, Ordering::Relaxed);
    let samples = watcher.join().expect("watcher");
    let status = agent.status().expect("status");
    let metrics = scrape(&setup.metrics);
    println!("{}", status.table());
    for l in metrics.lines().filter(|l| {
        l.starts_with("governor_decisions_total") || l.starts_with("governor_policy_rung")
    }) {
        println!("{l}");
    }
    assert!(
        back,
        "the rung returned to 0 after the load; log:\n{}",
        agent.log_text()
    );

    let first_applied = status
        .recent
        .iter()
        .find(|d| d.kind == "applied")
        .map(|d| d.at_s)
        .expect("a rung was applied");
    assert!(
        status.recent.iter().any(|d| d.kind == "reverted"),
        "the throttle was lifted"
    );
    // From one second after the first action to the end of the load, the
    // accept queue stays under high (0.5 × backlog).
    let started_s = status.uptime_s
        - load_ended.elapsed().as_secs_f64()
        - (load_ended - load_started).as_secs_f64();
    let action_at = load_started + Duration::from_secs_f64((first_applied - started_s).max(0.0));
    let after: Vec<u32> = samples
        .iter()
        .filter(|(t, _)| *t > action_at + Duration::from_secs(1) && *t < load_ended)
        .map(|(_, q)| *q)
        .collect();
    let max_after = after.iter().copied().max().unwrap_or(0);
    println!(
        "accept queue after the action: {} samples, max {max_after} (high = {})",
        after.len(),
        BACKLOG / 2
    );
    assert!(
        field(&out, "refused") > 0,
        "clients were refused at once (RST): {out}"
    );
    assert!(
        metric(
            &metrics,
            "governor_decisions_total{action=\"throttle_connections\",direction=\"up\",kind=\"applied\""
        )
        .unwrap_or(0.0)
            >= 1.0,
        "metrics show the applied throttle"
    );
    assert!(!after.is_empty(), "the queue was sampled under the action");
    // The effect needs real CPUs: under emulation (the VM tests run QEMU's
    // TCG) the server accepts far below its nominal 100/s, so even the
    // throttled rate overflows it. The decisions above are checked there
    // too; the effect is reported as skipped, not as passed.
    if std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm") {
        governor_integration::skip(&format!(
            "accept queue under high needs real CPUs (emulated: max {max_after} after the action)"
        ));
        return;
    }
    assert!(
        max_after < (BACKLOG as u32) / 2,
        "accept queue stayed under high: max {max_after}"
    );
}

#[test]
fn dry_run_changes_nothing_and_reports_would() {
    require_root();
    let ns = NetNs::new("dry");
    let server = SlowServer::start(&ns, Duration::from_millis(10));
    let setup = write_config(&ns, server.port, true, "dry");
    let agent = AgentProcess::start(&setup.config, &setup.socket, &setup.log);
    let out = offer_load(&ns, server.port);
    println!("clients: {out}");
    let status = agent.status().expect("status");
    println!("{}", status.table());
    assert_eq!(field(&out, "refused"), 0, "dry-run refused nothing: {out}");
    let would: Vec<_> = status.recent.iter().filter(|d| d.kind == "would").collect();
    assert!(
        would
            .iter()
            .any(|d| d.action == "throttle_connections" && d.to_rung == 1),
        "the throttle is reported as would: {:?}",
        status.recent
    );
    assert!(
        status
            .recent
            .iter()
            .all(|d| d.kind != "applied" && d.kind != "reverted"),
        "nothing applied"
    );
    assert!(status.dry_run);
}

#[test]
fn a_broken_reload_is_refused_and_sigterm_stops_within_two_seconds() {
    require_root();
    let ns = NetNs::new("rld");
    let server = SlowServer::start(&ns, Duration::from_millis(10));
    let setup = write_config(&ns, server.port, true, "reload");
    let mut agent = AgentProcess::start(&setup.config, &setup.socket, &setup.log);
    let good = std::fs::read_to_string(&setup.config).expect("config");
    std::fs::write(&setup.config, good.replace("high = 0.5", "high = \"fast\""))
        .expect("break config");
    agent.signal(libc::SIGHUP);
    let refused = eventually(Duration::from_secs(5), || {
        agent.log_text().contains("reload refused")
    });
    assert!(
        refused,
        "the reload was refused; log:\n{}",
        agent.log_text()
    );
    let status = agent.status().expect("the agent still answers");
    assert_eq!(status.policies.len(), 1, "the old policy keeps running");
    assert_eq!(status.policies[0].name, "shed-reload");
    let (st, took) = agent.stop();
    println!("stopped with {st} in {took:?}");
    assert!(st.success(), "exit 0 on SIGTERM");
    assert!(took < Duration::from_secs(2), "stopped in {took:?}");
    assert!(!Path::new(&setup.socket).exists(), "status socket removed");
}

/// A worker (wakes every 2 ms, works 1 ms) in `a` and two hogs in `b`, all
/// on CPU 0, for `secs`. Returns the children (ended when dropped).
fn noisy_neighbours(
    a: &governor_integration::CpuTestCgroup,
    b: &governor_integration::CpuTestCgroup,
    secs: &str,
) -> (Children, usize, Vec<usize>) {
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (pa, pb) = (a.v2.procs(), b.v2.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", secs, "--join", pa]);
    a.join(kids.procs[w].id());
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", secs, "--join", pb]);
        b.join(kids.procs[h].id());
        hogs.push(h);
    }
    (kids, w, hogs)
}

fn nn_config(
    dir: &Path,
    a: &CgroupPathStr,
    b: &CgroupPathStr,
    ladder: &str,
) -> (PathBuf, PathBuf, String) {
    let metrics = format!(
        "127.0.0.1:{}",
        21_000 + (std::process::id() % 20_000) as u16
    );
    let files = AgentConfig::new(dir, metrics, 11).write(&format!(
        r#"[[policy]]
name = "api-over-batch"
signal = {{ kind = "runq_p99", cgroup = "{a}" }}
high = "2ms"
low = "500us"
for = "500ms"
settle = "1s"
recover_every = "8s"
jitter = 0.3
ladder = [{ladder}]
"#,
        a = a.0,
        ladder = ladder.replace("{b}", &b.0),
    ));
    (files.config, files.socket, files.metrics)
}

struct CgroupPathStr(String);

#[test]
fn noisy_neighbour_is_idled_then_released_in_jittered_steps() {
    require_root();
    let parent = governor_integration::CpuTestCgroup::new("nn");
    parent.outweigh_the_host();
    let a = parent.child("api");
    let b = parent.child("batch");
    let original = b.cpu_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let ladder = r#"{ action = "cpu_weight", cgroup = "{b}", weight = "idle" }, { action = "cpu_limit", cgroup = "{b}", cpus = 0.2 }"#;
    let (config, socket, metrics) = nn_config(
        dir.path(),
        &CgroupPathStr(a.v2.path.to_string()),
        &CgroupPathStr(b.v2.path.to_string()),
        ladder,
    );
    let mut agent = AgentProcess::start(&config, &socket, &dir.path().join("governor.log"));
    let (mut kids, w, _hogs) = noisy_neighbours(&a, &b, "6");
    kids.wait_output(w);
    let during = scrape(&metrics);
    // The hogs are gone with the worker; the policy steps down.
    let back = eventually(Duration::from_secs(30), || {
        agent.status().is_some_and(|s| s.policies[0].rung == 0)
    });
    let status = agent.status().expect("status");
    println!("{}", status.table());
    for l in scrape(&metrics)
        .lines()
        .filter(|l| l.starts_with("governor_decisions_total") || l.starts_with("governor_policy_"))
    {
        println!("{l}");
    }
    assert!(back, "the rung returned to 0; log:\n{}", agent.log_text());
    let applied: Vec<_> = status
        .recent
        .iter()
        .filter(|d| d.kind == "applied")
        .collect();
    let first = applied.first().expect("a rung was applied");
    assert_eq!(first.action, "cpu_weight", "the first rung is the weight");
    // `for` is 500 ms: applied within 3 ticks after it elapsed.
    let emulated = std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm");
    assert!(
        first.held_for_ms >= 500 && (emulated || first.held_for_ms <= 800),
        "applied after {} ms over high",
        first.held_for_ms
    );
    let signal_during = metric(&during, "governor_policy_signal{policy=\"api-over-batch\"}")
        .expect("signal metric");
    println!(
        "A's p99 at the end of the load: {:.0} µs",
        signal_during * 1e6
    );
    let reverted: Vec<_> = status
        .recent
        .iter()
        .filter(|d| d.kind == "reverted")
        .collect();
    assert_eq!(
        reverted.len(),
        applied.len(),
        "every rung applied was lifted"
    );
    assert_eq!(
        b.cpu_files(),
        original,
        "the batch cgroup's files are back to their originals"
    );
    drop(kids);
    // What the agent recorded replays to the very decisions it took: a
    // real host's snapshots, a live ladder, jitter, the stop's release.
    let (st, _) = agent.stop();
    assert!(st.success(), "{st}");
    let (code, out) = governor_integration::replay(&[&dir.path().join("journal/record")]);
    println!("governor replay: {out}");
    assert_eq!(code, Some(0), "{out}");
    let n = applied.len() + reverted.len();
    assert!(
        out.lines().any(|l| l
            .strip_prefix("identical: all ")
            .and_then(|r| r.split(' ').next())
            .and_then(|k| k.parse::<usize>().ok())
            .is_some_and(|k| k >= n)),
        "the replay reproduced the {n} decisions at least: {out}"
    );
    // The effect needs real CPUs: under emulation (QEMU's TCG in the VM
    // tests) host work preempting the vCPUs adds waits no weight removes.
    if emulated {
        governor_integration::skip(&format!(
            "A's p99 under low needs real CPUs (emulated: {:.0} µs)",
            signal_during * 1e6
        ));
        return;
    }
    assert!(
        signal_during < 500e-6,
        "with the batch idled, A's p99 fell under low: {:.0} µs",
        signal_during * 1e6
    );
}

#[test]
fn after_kill_9_a_restart_reverts_from_the_journal() {
    require_root();
    let parent = governor_integration::CpuTestCgroup::new("k9");
    parent.outweigh_the_host();
    let a = parent.child("api");
    let b = parent.child("batch");
    let original = b.cpu_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let ladder = r#"{ action = "cpu_limit", cgroup = "{b}", cpus = 0.2 }"#;
    let (config, socket, _metrics) = nn_config(
        dir.path(),
        &CgroupPathStr(a.v2.path.to_string()),
        &CgroupPathStr(b.v2.path.to_string()),
        ladder,
    );
    let log = dir.path().join("governor.log");
    let mut agent = AgentProcess::start(&config, &socket, &log);
    let (kids, _w, _hogs) = noisy_neighbours(&a, &b, "10");
    let limited = eventually(Duration::from_secs(8), || b.cpu_files() != original);
    assert!(limited, "the limit was applied; log:\n{}", agent.log_text());
    agent.signal(libc::SIGKILL);
    let _ = agent.child.wait();
    assert_ne!(
        b.cpu_files(),
        original,
        "the limit outlived the killed agent (as a crash would leave it)"
    );
    drop(kids);
    // Watch the files from before the restart: the revert is the agent's
    // first act, long before it answers on its status socket.
    let files: Vec<(PathBuf, String)> = original
        .iter()
        .map(|(name, text)| (b.cpu_dir().join(name), text.clone()))
        .collect();
    let started = Instant::now();
    let watcher = thread::spawn(move || {
        let back = |f: &[(PathBuf, String)]| {
            f.iter()
                .all(|(p, t)| std::fs::read_to_string(p).is_ok_and(|n| &n == t))
        };
        let ok = eventually(Duration::from_secs(20), || back(&files));
        ok.then(|| started.elapsed())
    });
    let again = AgentProcess::start(&config, &socket, &dir.path().join("governor2.log"));
    let took = watcher.join().expect("watcher");
    println!("restored {took:?} after the restart began");
    let took = took
        .unwrap_or_else(|| panic!("the restart reverted the limit; log:\n{}", again.log_text()));
    assert_eq!(
        b.cpu_files(),
        original,
        "every file holds its original text"
    );
    // The agent's start under emulation (VM tests) is several times slower.
    let bound = if std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm") {
        10
    } else {
        1
    };
    assert!(
        took < Duration::from_secs(bound),
        "reverted in {took:?} (bound {bound}s)"
    );
    assert!(
        again.log_text().contains("restored 1"),
        "the journal report says so:\n{}",
        again.log_text()
    );
}

/// The issue "recovery stalls on sparse noise", end to end: a worker (wakes
/// every 2 ms) beside two hogs, policy high 1 ms / low 300 µs / `for`
/// 500 ms / `recover_every` 1 s on `cpu_limit 0.2`. Once the hogs stop the
/// worker runs on alone; a p99 of one tick's few dozen wake-ups was their
/// maximum, and one slow wake-up restarted `for` (in 4 of 8 runs the limit
/// was still there 30 s later). Over the 1 s window the limit is lifted
/// within 15 s, and `status` always says why the policy is where it is.
#[test]
fn a_limit_is_lifted_soon_after_the_hogs_stop_despite_sparse_slow_wakeups() {
    require_root();
    let parent = governor_integration::CpuTestCgroup::new("sparse");
    parent.outweigh_the_host();
    let a = parent.child("api");
    let b = parent.child("batch");
    let original = b.cpu_files();
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = format!(
        "127.0.0.1:{}",
        21_000 + (std::process::id() % 20_000) as u16 + 7
    );
    let files = AgentConfig::new(dir.path(), metrics, 5).write(&format!(
        r#"[[policy]]
name = "worker-over-hogs"
signal = {{ kind = "runq_p99", cgroup = "{a}" }}
high = "1ms"
low = "300us"
for = "500ms"
recover_every = "1s"
ladder = [{{ action = "cpu_limit", cgroup = "{b}", cpus = 0.2 }}]
"#,
        a = a.v2.path,
        b = b.v2.path,
    ));
    let agent = AgentProcess::start(&files.config, &files.socket, &files.log);
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (pa, pb) = (a.v2.procs(), b.v2.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", "30", "--join", pa]);
    a.join(kids.procs[w].id());
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "5", "--join", pb]);
        b.join(kids.procs[h].id());
        hogs.push(h);
    }
    let limited = eventually(Duration::from_secs(5), || b.cpu_files() != original);
    assert!(limited, "the limit was applied; log:\n{}", agent.log_text());
    for h in hogs {
        kids.wait_output(h);
    }
    let stopped = Instant::now();
    let mut whys = Vec::new();
    // Polls at which the policy's signal was under `low`.
    let (mut polls, mut clear) = (0u32, 0u32);
    let lifted = eventually(Duration::from_secs(15), || {
        let Some(s) = agent.status() else {
            return false;
        };
        let p = &s.policies[0];
        assert!(!p.why.is_empty(), "status says why: {p:?}");
        polls += 1;
        clear += u32::from(p.why.starts_with("under low") || p.why.starts_with("waiting"));
        if whys.last() != Some(&p.why) {
            whys.push(p.why.clone());
        }
        p.rung == 0
    });
    let took = stopped.elapsed();
    let status = agent.status().expect("status");
    let table = status.table();
    println!(
        "{table}\nlifted: {lifted} after {took:?}; under low at {clear} of {polls} polls; why, in turn: {whys:#?}"
    );
    assert!(table.contains("  why: "), "{table}");
    if !lifted && clear * 2 < polls {
        // Not the issue's case: on a host this busy the worker itself waits
        // over `low` (the window says so, and the policy rightly holds).
        governor_integration::skip(&format!(
            "the worker alone waits over low on this busy host (under low at {clear} of {polls} polls)"
        ));
        return;
    }
    assert!(
        lifted,
        "the limit is lifted within 15 s of the hogs' stop; why, in turn: {whys:#?}; log:\n{}",
        agent.log_text()
    );
    assert_eq!(b.cpu_files(), original, "the batch cgroup's files are back");
}
