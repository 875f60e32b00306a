//! The sensors against the real kernel, in test-owned cgroups and network
//! namespaces only: run-queue latency per cgroup, accepted connections per
//! port, outbound connects per cgroup, accept-queue pressure, and reclaiming
//! the map entries of cgroups that are gone.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use governor::{
    probes::ReadMode,
    sense::{
        cgroupfs::{CgroupFs, CgroupIndex, DEFAULT_ROOT},
        sensor::{ListenerReader, Sensor, SensorScope},
        sockdiag::SockDiag,
    },
};
use governor_engine::snapshot::{CgroupPath, Snapshot};
use governor_integration::{
    Children, CpuTestCgroup, TestCgroup, enter_own_netns, eventually, field, probes, require_root,
    serial,
};

// The tests that load CPUs take `serial()`, one at a time: the crowded-CPU
// test counts its quiet worker's waits against its wake-ups, and any other
// test's processes on CPU 1 add waits (in a parallel run B measured 1566
// waits for 1489 wake-ups, 5% asked).

fn cgroup_index() -> CgroupIndex {
    CgroupIndex::new(CgroupFs::discover(Path::new(DEFAULT_ROOT)).expect("cgroup2"))
}

/// A sock_diag reader of the calling thread's network namespace.
fn listeners_here() -> ListenerReader {
    let mut diag = SockDiag::new().expect("sock_diag");
    Box::new(move || Ok(diag.listen_queues()?))
}

fn sensor(subtrees: Vec<CgroupPath>, proc_root: &str, listeners: Option<ListenerReader>) -> Sensor {
    sensor_of(
        SensorScope {
            subtrees,
            watched: Vec::new(),
            files: Vec::new(),
        },
        proc_root,
        listeners,
    )
}

/// A primed sensor of `scope`.
fn sensor_of(scope: SensorScope, proc_root: &str, listeners: Option<ListenerReader>) -> Sensor {
    let mut s = Sensor::new(
        probes(),
        cgroup_index(),
        PathBuf::from(proc_root),
        listeners,
        scope,
    );
    s.prime().expect("first reading");
    s
}

fn runq_of(s: &Snapshot, path: &CgroupPath) -> governor_engine::snapshot::RunqStats {
    s.cgroup(path).map(|c| c.runq).unwrap_or_default()
}

#[test]
fn runq_p99_of_a_crowded_cpu_is_ten_times_a_quiet_ones_and_counts_match_wakeups() {
    require_root();
    let _serial = serial();
    // A and B are siblings under a parent that outweighs the rest of the
    // host, so that other work on a shared machine does not crowd B's CPU.
    let parent = CpuTestCgroup::new("runq");
    parent.outweigh_the_host();
    let ca = parent.child("a");
    let cb = parent.child("b");
    let (a, b) = (&ca.v2, &cb.v2);
    let mut sensor = sensor(vec![a.path.clone(), b.path.clone()], "/proc", None);

    let (pa, pb) = (a.procs(), b.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let secs = "3";
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", secs, "--join", pa]);
        ca.join(kids.procs[h].id());
    }
    let wa = kids.spawn(&["worker", "--cpu", "0", "--seconds", secs, "--join", pa]);
    ca.join(kids.procs[wa].id());
    let wb = kids.spawn(&["worker", "--cpu", "1", "--seconds", secs, "--join", pb]);
    cb.join(kids.procs[wb].id());
    let out_a = kids.wait_output(wa);
    let out_b = kids.wait_output(wb);
    for i in 0..2 {
        kids.wait_output(i);
    }
    thread::sleep(Duration::from_millis(100));
    let snap = sensor.sample().expect("a snapshot");
    let (ra, rb) = (runq_of(&snap, &a.path), runq_of(&snap, &b.path));
    let wakeups_b = field(&out_b, "wakeups");
    println!("A: {ra:?} ({out_a})\nB: {rb:?} ({out_b})");
    assert!(
        ra.count > 0 && rb.count > 0,
        "both cgroups were measured: A {ra:?}, B {rb:?}"
    );
    // Under emulation (the VM tests run QEMU's TCG) a vCPU is a host thread
    // that other work on the host preempts, so B's "quiet" CPU is not quiet
    // and wakeups are timed loosely: there the claims are weaker (3×, 15%),
    // which still tells a crowded CPU from a quiet one and a count that
    // follows the wakeups. On real CPUs they are the issue's: 10× and 5%.
    let emulated = std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm");
    let (ratio, tolerance) = if emulated { (3, 0.15) } else { (10, 0.05) };
    assert!(
        ra.p99_us >= ratio * rb.p99_us.max(1),
        "A's p99 {}µs should be at least {ratio}× B's {}µs",
        ra.p99_us,
        rb.p99_us
    );
    let diff = (rb.count as f64 - wakeups_b as f64).abs() / wakeups_b as f64;
    assert!(
        diff <= tolerance,
        "B measured {} waits for {wakeups_b} wakeups of its worker ({:.1}% off, want ≤ {:.0}%)",
        rb.count,
        diff * 100.0,
        tolerance * 100.0
    );
}

/// The run delay (ns) and timeslices the kernel has accounted to each
/// thread of `pids` so far (`/proc/PID/task/TID/schedstat`: run time, run
/// delay, timeslices), summed.
fn kernel_run_delay(pids: &[u32]) -> (u64, u64) {
    let (mut delay, mut slices) = (0, 0);
    for pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the task is alive");
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            let f: Vec<u64> = text
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [_, d, n] = f[..] {
                delay += d;
                slices += n;
            }
        }
    }
    (delay, slices)
}

/// What the probes measured for a crowded cgroup over two seconds adds up
/// to what the kernel itself accounts as its tasks' run-queue delay over
/// the same span (`/proc/PID/task/*/schedstat`): the waits' sum (bucket
/// midpoints, each within 6.25%) within 10% of the run-delay growth, and
/// their count within 5% of the timeslices begun. On kernels where the
/// probes read the kernel's own `sched_info` this is the same accounting;
/// elsewhere they time waits themselves and must agree with it.
#[test]
fn a_cgroups_waits_add_up_to_the_run_delay_the_kernel_accounts_its_tasks() {
    require_root();
    let _serial = serial();
    let parent = CpuTestCgroup::new("delay");
    parent.outweigh_the_host();
    let ca = parent.child("a");
    let a = &ca.v2;
    let mut sensor = sensor(vec![a.path.clone()], "/proc", None);
    let pa = a.procs();
    let pa = pa.to_str().expect("utf-8");
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let mut pids = Vec::new();
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "4", "--join", pa]);
        ca.join(kids.procs[h].id());
        pids.push(kids.procs[h].id());
    }
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", "4", "--join", pa]);
    ca.join(kids.procs[w].id());
    pids.push(kids.procs[w].id());
    // Start the span once all three run in the cgroup, and after two
    // samples: a cgroup that waited before a sample has a histogram slot
    // after it where the probes use slots (the sched_info variant), so
    // that the span measures that path there.
    thread::sleep(Duration::from_millis(600));
    sensor.sample().expect("a snapshot");
    thread::sleep(Duration::from_millis(200));
    sensor.sample().expect("a snapshot");
    let id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&a.dir).expect("the cgroup"));
    let slot = sensor.probes().slot_of(id);
    println!(
        "variant: sched_info {}; the cgroup's histogram slot: {slot:?}",
        sensor.probes().sched_info()
    );
    assert_eq!(
        slot.is_some(),
        sensor.probes().sched_info(),
        "a cgroup that waited has a slot exactly where the probes use slots"
    );
    let (d0, n0) = kernel_run_delay(&pids);
    thread::sleep(Duration::from_secs(2));
    let (d1, n1) = kernel_run_delay(&pids);
    let snap = sensor.sample().expect("a snapshot");
    for i in 0..3 {
        kids.wait_output(i);
    }
    let hist = snap
        .cgroup(&a.path)
        .and_then(|c| c.runq_hist.clone())
        .expect("the cgroup's histogram");
    let hist: Vec<(usize, u64)> = hist.iter().collect();
    // The host's histogram holds every cgroup's waits, this one's among
    // them (the sched_info switch leaves them out of the kernel's host
    // histogram; the agent adds them back), bucket by bucket. The raw and
    // classic variants count a wait on the host at the switch-in and on
    // its cgroup at the task's switch-out, so a span's cgroup may hold one
    // wait per task that the host counted before it.
    let slack = if sensor.probes().sched_info() {
        0
    } else {
        pids.len() as u64
    };
    let host: BTreeMap<usize, u64> = snap
        .host
        .runq_hist
        .as_ref()
        .expect("the host's histogram")
        .iter()
        .collect();
    for &(b, c) in &hist {
        let h = host.get(&b).copied().unwrap_or(0);
        assert!(
            h + slack >= c,
            "bucket {b}: the host counts {h} waits, the cgroup {c} (slack {slack})"
        );
    }
    agrees_with_the_kernels_run_delay(&hist, d1 - d0, n1 - n0);
}

/// Asserts that the waits of a histogram (bucket, count) add up to `delay`
/// ns of the kernel's run delay (bucket midpoints; within 10%, 25% under
/// emulation) and count `slices` timeslices (5%, 15%).
fn agrees_with_the_kernels_run_delay(hist: &[(usize, u64)], delay: u64, slices: u64) {
    let (count, sum_ns) = hist.iter().fold((0u64, 0f64), |(n, s), &(b, c)| {
        let (lo, hi) = governor_engine::snapshot::buckets::range(b);
        let mid = if hi == u64::MAX {
            lo as f64
        } else {
            (lo + hi) as f64 / 2.0
        };
        (n + c, s + mid * c as f64)
    });
    println!(
        "probes: {count} waits, {:.1} ms; kernel: {slices} timeslices, {:.1} ms of run delay",
        sum_ns / 1e6,
        delay as f64 / 1e6
    );
    assert!(
        delay > 100_000_000,
        "the CPU was crowded: {delay} ns of run delay"
    );
    let emulated = std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm");
    let (sum_tol, count_tol) = if emulated { (0.25, 0.15) } else { (0.10, 0.05) };
    let sum_off = (sum_ns - delay as f64).abs() / delay as f64;
    assert!(
        sum_off <= sum_tol,
        "waits add up to {:.1} ms, the kernel's run delay grew {:.1} ms ({:.1}% off, want ≤ {:.0}%)",
        sum_ns / 1e6,
        delay as f64 / 1e6,
        sum_off * 100.0,
        sum_tol * 100.0
    );
    let count_off = (count as f64 - slices as f64).abs() / slices as f64;
    assert!(
        count_off <= count_tol,
        "{count} waits measured for {slices} timeslices ({:.1}% off, want ≤ {:.0}%)",
        count_off * 100.0,
        count_tol * 100.0
    );
}

/// The per-process histograms (`governor observe --processes`) agree with
/// the kernel's run delay as the per-cgroup ones do: a worker crowded by
/// two hogs on CPU 0, over two seconds. Where the probes use histogram
/// slots (the sched_info variant) the worker has one by then (it waited in
/// the takes before the span), so the span measures that path there.
#[test]
fn a_processes_waits_add_up_to_the_run_delay_the_kernel_accounts_it() {
    require_root();
    let _serial = serial();
    let cpus = aya::util::nr_cpus().expect("cpus");
    let mut p =
        governor::probes::Probes::load_with(Some(governor::probes::Probes::process_entries(cpus)))
            .expect("the embedded object loads");
    p.attach_all().expect("probes attach");
    let parent = CpuTestCgroup::new("pdelay");
    parent.outweigh_the_host();
    let ca = parent.child("a");
    let pa = ca.v2.procs();
    let pa = pa.to_str().expect("utf-8");
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    for _ in 0..2 {
        let h = kids.spawn(&["hog", "--cpu", "0", "--seconds", "4", "--join", pa]);
        ca.join(kids.procs[h].id());
    }
    let w = kids.spawn(&["worker", "--cpu", "0", "--seconds", "4", "--join", pa]);
    ca.join(kids.procs[w].id());
    let worker = kids.procs[w].id();
    thread::sleep(Duration::from_millis(600));
    p.take_processes().expect("a take");
    thread::sleep(Duration::from_millis(200));
    p.take_processes().expect("a take");
    let slot = p.process_slot_of(worker);
    println!(
        "variant: sched_info {}; the worker's slot: {slot:?}",
        p.sched_info()
    );
    assert_eq!(
        slot.is_some(),
        p.sched_info(),
        "a process that waited has a slot exactly where the probes use slots"
    );
    let (d0, n0) = kernel_run_delay(&[worker]);
    thread::sleep(Duration::from_secs(2));
    let (d1, n1) = kernel_run_delay(&[worker]);
    let taken = p.take_processes().expect("a take");
    for i in 0..3 {
        kids.wait_output(i);
    }
    let hist = taken.get(&worker).expect("the worker's histogram");
    let hist: Vec<(usize, u64)> = hist
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, c)| c > 0)
        .collect();
    agrees_with_the_kernels_run_delay(&hist, d1 - d0, n1 - n0);
}

/// Where the kernel allocates task storage safely from a scheduler
/// tracepoint (Linux 6.4 on, with BTF), the scheduler probes run on BTF
/// tracepoints with each task's wait in its own storage, not on the raw
/// tracepoints and the task hash: the run-queue test above then measures
/// that path (on the 6.1 guest, the raw one).
#[test]
fn the_scheduler_probes_keep_waits_in_task_storage_from_linux_6_4() {
    require_root();
    use aya::util::KernelVersion;
    let version = KernelVersion::current().expect("the kernel's version");
    let new = version >= KernelVersion::new(6, 4, 0);
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let p = probes();
    assert!(p.counts_runq(), "the scheduler probes are attached");
    assert_eq!(
        p.sched_btf(),
        btf && new,
        "Linux {version:?}, BTF {btf}: BTF tracepoints with task storage {}",
        p.sched_btf()
    );
    assert_eq!(p.sched_raw(), btf && !new);
    // Where the kernel's BTF has its own run-queue accounting (sched_info,
    // group scheduling), the BTF switch reads it and no wake-up probe runs.
    let info = btf
        && governor::probes::btf::KernelBtf::open(Path::new("/sys/kernel/btf/vmlinux"))
            .and_then(|b| b.sched_info_offsets())
            .is_ok();
    assert_eq!(
        p.sched_info(),
        p.sched_btf() && info,
        "waits from sched_info: {} (BTF switch {}, offsets {info})",
        p.sched_info(),
        p.sched_btf()
    );
    let counts = p.counters().expect("the probe counters");
    assert_eq!(
        counts.contains_key("sched_wakeup"),
        !p.sched_info(),
        "a wake-up count is shown exactly where wake-up probes run: {counts:?}"
    );
}

#[test]
fn accepted_per_port_and_connects_per_cgroup_are_exact() {
    require_root();
    const N: u64 = 40;
    let conn = TestCgroup::new("conn");
    let conn_path = conn.path.clone();
    let procs = conn.procs();
    // Everything network-facing runs in a thread inside its own namespace.
    let (accepted, conn_out) = thread::spawn(move || {
        enter_own_netns();
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let server = thread::spawn(move || {
            for _ in 0..N {
                let _ = listener.accept().expect("accept");
            }
        });
        let mut sensor = sensor(
            vec![conn_path.clone()],
            "/proc/thread-self",
            Some(listeners_here()),
        );
        // Where the kernel has BTF, the counts come from the raw tracepoint
        // (no perf_event_open, which a hardened unit or Debian's
        // perf_event_paranoid=3 may refuse); else from the classic one.
        assert_eq!(
            sensor.probes().sock_raw(),
            std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
            "the socket-state probe runs on its raw tracepoint exactly where BTF exists"
        );
        let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
        let addr = format!("127.0.0.1:{port}");
        let c = kids.spawn(&[
            "connect",
            "--addr",
            &addr,
            "--count",
            &N.to_string(),
            "--join",
            procs.to_str().expect("utf-8"),
        ]);
        let (mut accepted, mut conn_out) = (0u64, 0u64);
        let mut tally = |s: &Snapshot| {
            accepted += s.port(port).map_or(0, |p| p.accepted);
            conn_out += s.cgroup(&conn_path).map_or(0, |c| c.conn_out);
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while kids.procs[c].try_wait().expect("child").is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
            tally(&sensor.sample().expect("snapshot"));
        }
        let out = kids.wait_output(c);
        assert_eq!(field(&out, "ok"), N, "all connects succeeded: {out}");
        server.join().expect("server");
        thread::sleep(Duration::from_millis(200));
        tally(&sensor.sample().expect("snapshot"));
        (accepted, conn_out)
    })
    .join()
    .expect("network thread");
    assert_eq!(accepted, N, "accepted on the port over the intervals");
    assert_eq!(
        conn_out, N,
        "outbound connects of the test cgroup over the intervals"
    );
}

/// Port P of another network namespace is another listener: its accepted
/// connections are not counted for port P of the sensor's namespace (the
/// probe keyed by port alone summed every namespace's, e.g. every pod's
/// 8080 on a node).
#[test]
fn accepted_connections_on_the_same_port_in_another_namespace_are_not_counted() {
    require_root();
    const OURS: u64 = 10;
    const THEIRS: usize = 30;
    let (tx_port, rx_port) = std::sync::mpsc::channel::<u16>();
    let (tx_done, rx_done) = std::sync::mpsc::channel::<usize>();
    let (accepted, theirs) = thread::spawn(move || {
        enter_own_netns();
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let port = listener.local_addr().expect("addr").port();
        let mut sensor = sensor(Vec::new(), "/proc/thread-self", Some(listeners_here()));
        if !sensor.probes().sock_raw() {
            return (None, 0);
        }
        // The other namespace: the same port, connected to many times.
        let other = thread::spawn(move || {
            enter_own_netns();
            let port = rx_port.recv().expect("port");
            let l = TcpListener::bind(("127.0.0.1", port)).expect("the same port, elsewhere");
            let accepts = thread::spawn(move || {
                for _ in 0..THEIRS {
                    let _ = l.accept().expect("accept");
                }
            });
            let ok = (0..THEIRS)
                .filter(|_| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
                .count();
            accepts.join().expect("accepts");
            let _ = tx_done.send(ok);
        });
        tx_port.send(port).expect("send port");
        let server = thread::spawn(move || {
            for _ in 0..OURS {
                let _ = listener.accept().expect("accept");
            }
        });
        let mut accepted = 0;
        for _ in 0..OURS {
            std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect here");
        }
        server.join().expect("server");
        let theirs = rx_done.recv().expect("the other namespace's connects");
        other.join().expect("other namespace");
        thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            accepted += sensor
                .sample()
                .expect("snapshot")
                .port(port)
                .map_or(0, |p| p.accepted);
            thread::sleep(Duration::from_millis(100));
        }
        (Some(accepted), theirs)
    })
    .join()
    .expect("network thread");
    let Some(accepted) = accepted else {
        governor_integration::skip(
            "no kernel BTF: the classic tracepoint does not say a socket's namespace",
        );
        return;
    };
    println!("accepted here: {accepted} (ours {OURS}; {theirs} on the same port elsewhere)");
    assert_eq!(theirs, THEIRS, "the other namespace's connects succeeded");
    assert_eq!(
        accepted, OURS,
        "only this namespace's connections on the port"
    );
}

#[test]
fn a_full_accept_queue_reports_depth_limit_and_overflows() {
    require_root();
    let port_stats = thread::spawn(|| {
        enter_own_netns();
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        sock.bind(&addr.into()).expect("bind");
        sock.listen(8).expect("listen 8");
        let port = sock
            .local_addr()
            .expect("addr")
            .as_socket()
            .expect("inet")
            .port();
        let mut sensor = sensor(Vec::new(), "/proc/thread-self", Some(listeners_here()));
        let mut clients = Vec::new();
        for _ in 0..20 {
            let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            c.set_nonblocking(true).expect("nonblocking");
            let target: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let _ = c.connect(&target.into());
            clients.push(c);
        }
        // Let the handshakes that fit complete and the rest overflow.
        let mut found = None;
        eventually(Duration::from_secs(5), || {
            let s = sensor.sample().expect("snapshot");
            if let Some(p) = s.port(port) {
                let mut p = p.clone();
                if let Some(prev) = &found {
                    let prev: &governor_engine::snapshot::PortStats = prev;
                    p.overflows += prev.overflows;
                }
                let done = p.accept_queue >= 9 && p.overflows > 0;
                found = Some(p);
                return done;
            }
            false
        });
        drop(clients);
        found
    })
    .join()
    .expect("network thread")
    .expect("the listening port appears in the snapshots");
    println!("{port_stats:?}");
    assert_eq!(port_stats.accept_queue_max, 8, "backlog");
    assert_eq!(
        port_stats.accept_queue, 9,
        "a full queue holds backlog + 1 on Linux"
    );
    assert!(port_stats.overflows > 0, "overflows were counted");
}

#[test]
fn entries_of_a_thousand_removed_cgroups_are_read_once_and_reclaimed() {
    require_root();
    let _serial = serial();
    let base = TestCgroup::new("churn");
    let mut sensor = sensor(vec![base.path.clone()], "/proc", None);
    let before = sensor.probes().cgroup_ids().expect("map keys").len();
    let batches = sensor.probes().reads_in_batches();
    println!("reads in batches: {batches}");
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    // Two rounds: the agent's batch lookup-and-delete, then the
    // entry-by-entry one of kernels without it.
    for batch in [true, false] {
        let c = kids.spawn(&[
            "churn",
            "--base",
            base.dir.to_str().expect("utf-8"),
            "--count",
            "1000",
            "--join",
            base.procs().to_str().expect("utf-8"),
        ]);
        let out = kids.wait_output(c);
        let ids: Vec<u64> = out
            .trim()
            .strip_prefix("ids=")
            .expect("ids=")
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(ids.len(), 1000);
        let in_map = sensor.probes().cgroup_ids().expect("map keys");
        let seen = ids
            .iter()
            .filter(|id| in_map.binary_search(id).is_ok())
            .count();
        assert!(
            seen >= 900,
            "the probes keyed at least 900 of the 1000 cgroups ({seen})"
        );

        // The cgroups are gone, so their entries are frozen: both read
        // paths see the same histograms, and reading without deleting
        // leaves them in place.
        let probes = sensor.probes_mut();
        let peek = |probes: &mut governor::probes::Probes, batch| {
            probes
                .read_maps_with(ReadMode {
                    batch,
                    drain: false,
                })
                .expect("read")
        };
        let batched = peek(probes, true);
        let iterated = peek(probes, false);
        let drained = probes
            .read_maps_with(ReadMode { batch, drain: true })
            .expect("drain");
        let mut same = 0;
        for id in ids
            .iter()
            .filter(|id| iterated.cgroup_runq.contains_key(id))
        {
            let h = iterated.cgroup_runq.get(id);
            assert_eq!(
                batched.cgroup_runq.get(id),
                h,
                "cgroup {id}: the batch read differs from the entry-by-entry one"
            );
            assert_eq!(
                drained.cgroup_runq.get(id),
                h,
                "cgroup {id}: the draining read (batch: {batch}) differs"
            );
            assert!(h.is_some_and(|h| h.iter().sum::<u64>() > 0));
            same += 1;
        }
        assert_eq!(same, seen, "every read holds every keyed test cgroup");
        println!("batch {batch}: peeks and drain agree on {same} cgroups");
        assert_eq!(
            sensor.probes().reads_in_batches(),
            batches,
            "a batch read was refused: the batch path fell back to entry by entry"
        );

        // Drained: nothing of them is left, and a second read gets nothing.
        let after = sensor.probes().cgroup_ids().expect("map keys");
        let stale = ids
            .iter()
            .filter(|id| after.binary_search(id).is_ok())
            .count();
        assert_eq!(stale, 0, "removed cgroups still have entries after a drain");
        assert!(
            after.len() <= before + 10,
            "map grew from {before} to {} entries",
            after.len()
        );
        let again = sensor.probes_mut().read_maps().expect("drain again");
        assert!(ids.iter().all(|id| !again.cgroup_runq.contains_key(id)));
        sensor.sample().expect("a snapshot after the drain");
    }
}

#[test]
fn a_watched_cgroup_is_reported_while_it_exists_idle_or_not_and_under_a_new_id_once_made_again() {
    require_root();
    let cg = TestCgroup::new("watched");
    let (path, first_id) = (cg.path.clone(), cg.id());
    let mut sensor = sensor_of(
        SensorScope {
            subtrees: Vec::new(),
            watched: vec![path.clone()],
            files: Vec::new(),
        },
        "/proc",
        None,
    );

    // Idle: reported, with no waits.
    let s = sensor.sample().expect("snapshot");
    let c = s.cgroup(&path).expect("an idle watched cgroup is reported");
    assert_eq!((c.id, c.runq.count), (first_id, 0), "{c:?}");

    // Busy: its waits are counted.
    let mut kids = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let procs = cg.procs();
    let w = kids.spawn(&[
        "worker",
        "--cpu",
        "0",
        "--seconds",
        "1",
        "--join",
        procs.to_str().expect("utf-8"),
    ]);
    let mut waits = 0;
    eventually(Duration::from_secs(3), || {
        thread::sleep(Duration::from_millis(100));
        let s = sensor.sample().expect("snapshot");
        waits += s.cgroup(&path).map_or(0, |c| c.runq.count);
        waits > 0
    });
    kids.wait_output(w);
    assert!(waits > 0, "the worker's waits were counted");

    // Removed: gone from the snapshots (its id is checked every second).
    let dir = cg.dir.clone();
    drop(cg);
    assert!(!dir.exists(), "the test cgroup was removed");
    let gone = eventually(Duration::from_secs(3), || {
        thread::sleep(Duration::from_millis(100));
        sensor.sample().expect("snapshot").cgroup(&path).is_none()
    });
    assert!(gone, "a removed watched cgroup is still reported");

    // Made again under the same path: reported under its new id.
    let again = TestCgroup::new("watched");
    assert_eq!(again.path, path);
    assert_ne!(again.id(), first_id, "cgroup2 ids are not reused");
    let mut seen = None;
    eventually(Duration::from_secs(3), || {
        thread::sleep(Duration::from_millis(100));
        seen = sensor
            .sample()
            .expect("snapshot")
            .cgroup(&path)
            .map(|c| c.id);
        seen == Some(again.id())
    });
    assert_eq!(seen, Some(again.id()), "reported under its new id");
}

#[test]
fn an_idle_listener_is_listed_again_after_a_handshake_or_a_second_a_busy_one_every_tick() {
    require_root();
    thread::spawn(|| {
        enter_own_netns();
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let addr = listener.local_addr().expect("addr");
        let port = addr.port();
        let listings = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&listings);
        let mut diag = SockDiag::new().expect("sock_diag");
        let reader: ListenerReader = Box::new(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(diag.listen_queues()?)
        });
        let listed = || listings.load(std::sync::atomic::Ordering::SeqCst);
        let mut sensor = sensor(Vec::new(), "/proc/thread-self", Some(reader));
        let mut tick = || {
            thread::sleep(Duration::from_millis(50));
            let s = sensor.sample().expect("snapshot");
            s.port(port).map(|p| (p.accept_queue, p.accept_queue_max))
        };

        let (depth, limit) = tick().expect("the listener is reported");
        assert_eq!(depth, 0);
        assert!(limit > 0);
        let n = listed();
        for _ in 0..5 {
            assert_eq!(tick().map(|p| p.0), Some(0), "still reported, empty");
        }
        assert_eq!(
            listed(),
            n,
            "an idle listener is not listed again within a second"
        );

        // A handshake: listed at the next tick, with the connection queued.
        let client = std::net::TcpStream::connect(addr).expect("connect");
        thread::sleep(Duration::from_millis(20));
        assert_eq!(tick().map(|p| p.0), Some(1), "the queued connection");
        assert_eq!(
            listed(),
            n + 1,
            "a handshake makes the next tick list again"
        );
        // A queue that is not empty is listed every tick.
        assert_eq!(tick().map(|p| p.0), Some(1));
        assert_eq!(listed(), n + 2, "a non-empty queue is listed every tick");
        let (_conn, _) = listener.accept().expect("accept");
        assert_eq!(tick().map(|p| p.0), Some(0), "accepted: empty again");
        assert_eq!(listed(), n + 3);
        assert_eq!(tick().map(|p| p.0), Some(0));
        assert_eq!(listed(), n + 3, "empty and no handshake: not listed");
        // A second after the last listing it is listed regardless.
        thread::sleep(governor::sense::sensor::SLOW_EVERY);
        assert_eq!(tick().map(|p| p.0), Some(0));
        assert_eq!(listed(), n + 4, "listed again after a second");
        drop(client);
    })
    .join()
    .expect("network thread");
}

/// A sensor whose probes are loaded but whose scheduler programs are not
/// attached (as on a kernel without the hooks): the run-queue figures of
/// the host and of a watched cgroup are no data, not zeros, so a run-queue
/// policy holds instead of clearing and stepping down; the snapshot says
/// what is missing. With the probes attached the same cgroup reads 0.
#[test]
fn without_the_scheduler_probes_run_queue_latency_is_no_data_not_zero() {
    use governor_engine::{
        config::{Scope, SignalKind, SignalSpec},
        decide::signal,
    };
    require_root();
    let cg = TestCgroup::new("noprobes");
    let path = cg.path.clone();
    let scope = || SensorScope {
        subtrees: Vec::new(),
        watched: vec![path.clone()],
        files: Vec::new(),
    };
    let p99 = |scope| SignalSpec {
        kind: SignalKind::RunqP99,
        scope,
    };
    let unattached = governor::probes::Probes::load().expect("the embedded object loads");
    assert!(!unattached.counts_runq());
    let mut sensor = Sensor::new(
        unattached,
        cgroup_index(),
        PathBuf::from("/proc"),
        None,
        scope(),
    );
    sensor.prime().expect("first reading");
    thread::sleep(Duration::from_millis(100));
    let s = sensor.sample().expect("snapshot");
    println!("host {:?}; missing {:?}", s.host, s.missing);
    assert_eq!(
        s.host.runq, None,
        "no host run-queue figures without the probes"
    );
    assert_eq!(s.host.runq_hist, None);
    let c = s.cgroup(&path).expect("the watched cgroup is reported");
    assert_eq!(c.runq_hist, None, "{c:?}");
    assert_eq!(signal::read(&p99(Scope::Host), &s), None);
    assert_eq!(signal::read(&p99(Scope::Cgroup(path.clone())), &s), None);
    assert!(
        s.missing.iter().any(|m| m.starts_with("run-queue latency")),
        "{:?}",
        s.missing
    );
    drop(sensor);

    // Attached: the idle cgroup is measured, and nothing waited.
    let mut sensor = sensor_of(scope(), "/proc", None);
    thread::sleep(Duration::from_millis(100));
    let s = sensor.sample().expect("snapshot");
    assert!(s.host.runq.is_some_and(|r| r.count > 0), "{:?}", s.host);
    let c = s.cgroup(&path).expect("the watched cgroup is reported");
    assert!(c.runq_hist.is_some(), "{c:?}");
    assert_eq!(
        signal::read(&p99(Scope::Cgroup(path.clone())), &s),
        Some(0.0)
    );
}
