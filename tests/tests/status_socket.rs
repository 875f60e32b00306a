//! The status socket under load, as the agent runs it: the server on a
//! two-worker runtime beside a 100 ms ticker that stands for the agent's
//! loop (it takes the published report's lock every tick, as the loop does),
//! while 1,000 clients ask for the status at once and over and over, and 100
//! connect and never read. Needs no root.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use governor::show::status::{Published, serve};
use governor_engine::{
    config::Protected,
    decide::{PolicyStatus, State},
};
use tokio::io::AsyncReadExt as _;

const CLIENTS: usize = 1000;
const STALLERS: usize = 100;
const POLICIES: usize = 2000;
const TICK: Duration = Duration::from_millis(100);
const IDLE: Duration = Duration::from_secs(5);
const LOAD: Duration = Duration::from_secs(8);

/// The statuses of [`POLICIES`] policies, as the engine makes them.
fn policies() -> Vec<PolicyStatus> {
    use std::fmt::Write as _;
    let mut toml = String::from("[agent]\n");
    for i in 0..POLICIES {
        let _ = write!(
            toml,
            "[[policy]]\nname = \"policy-{i:05}-of-a-host-with-many\"\n\
             signal = {{ kind = \"runq_p99\", cgroup = \"/workload/api{i}\" }}\n\
             high = \"2ms\"\nlow = \"1ms\"\n\
             ladder = [{{ action = \"cpu_limit\", cgroup = \"/workload/batch{i}\", cpus = 0.25 }}]\n"
        );
    }
    let cfg = governor_engine::config::from_str(&toml, "load.toml").expect("config");
    State::new(&cfg, Protected::for_config(&cfg, None), 1).status()
}

/// One tick as the ticker saw it.
struct Tick {
    at: Instant,
    period: Duration,
    /// From when it was due (sent, or its timer's deadline) to when it ran.
    wake: Duration,
    lock_wait: Duration,
}

/// Percentile `p` (0..=100) of `v`, which it sorts.
fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer, then a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    assert!(
        lim.rlim_cur >= 4096,
        "needs 4096 descriptors, the hard limit is {}",
        lim.rlim_cur
    );
}

/// Period, wake-up latency and lock wait of ticks in `[from, to)`, as
/// (count, [p50, p99, max] of each).
fn figures(ticks: &[Tick], from: Instant, to: Instant) -> (usize, [[Duration; 3]; 3]) {
    let w: Vec<&Tick> = ticks
        .iter()
        .skip(1)
        .filter(|t| t.at > from && t.at <= to)
        .collect();
    let three = |mut v: Vec<Duration>| [pct(&mut v, 50.0), pct(&mut v, 99.0), pct(&mut v, 100.0)];
    (
        w.len(),
        [
            three(w.iter().map(|t| t.period).collect()),
            three(w.iter().map(|t| t.wake).collect()),
            three(w.iter().map(|t| t.lock_wait).collect()),
        ],
    )
}

fn show(what: &str, n: usize, f: &[[Duration; 3]; 3]) {
    eprintln!(
        "  {what} ({n} ticks): period p50 {:.1} / p99 {:.1} / max {:.1} ms; woken late p50 {:.2} / p99 {:.2} / max {:.2} ms; lock wait p50 {:.3} / p99 {:.3} / max {:.3} ms",
        ms(f[0][0]),
        ms(f[0][1]),
        ms(f[0][2]),
        ms(f[1][0]),
        ms(f[1][1]),
        ms(f[1][2]),
        ms(f[2][0]),
        ms(f[2][1]),
        ms(f[2][2]),
    );
}

/// A connection that is closed by its peer, seen without reading from it.
fn peer_closed(s: &tokio::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd as _;
    let mut p = libc::pollfd {
        fd: s.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

#[test]
fn a_thousand_clients_and_a_hundred_that_never_read_leave_the_tick_alone() {
    // A throughput and timing claim: under emulation (the VM guests, QEMU
    // TCG) a 426 KB reply to each of a thousand clients takes longer than
    // the server's 10 s per client (seen: 219 KB after 12.6 s), so every
    // client cannot be served there. The host run checks it.
    if std::env::var("GOVERNOR_TEST_ENV").is_ok_and(|v| v == "vm") {
        governor_integration::skip(
            "a thousand clients beside a 100 ms ticker need real CPUs (emulated: replies cut off by the 10 s per-client limit)",
        );
        return;
    }
    raise_fd_limit();
    // The agent's runtime, as `agent::run` builds it.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("agent-rt")
        .enable_all()
        .build()
        .expect("server runtime");
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client-rt")
        .enable_all()
        .build()
        .expect("client runtime");
    let clients_on = client_rt.handle().clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("governor.sock");
    let list = policies();
    let published = Arc::new(Mutex::new(Published {
        config: "load.toml".into(),
        tick: TICK,
        policies: Arc::new(list.clone()),
        ..Default::default()
    }));
    let full = published.lock().expect("lock").report().to_json().len();
    let server = {
        let _rt = server_rt.enter();
        serve(&path, Arc::clone(&published)).expect("serve")
    };

    // A task on the runtime's workers, beside the server's: a 100 ms timer.
    let stop_ticker = Arc::new(AtomicBool::new(false));
    let worker_ticker = server_rt.spawn({
        let stop = Arc::clone(&stop_ticker);
        async move {
            let mut ticks = Vec::new();
            let mut next = tokio::time::Instant::now() + TICK;
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next).await;
                let at = Instant::now();
                ticks.push(Tick {
                    at,
                    period: at - last,
                    wake: at - next.into_std(),
                    lock_wait: Duration::ZERO,
                });
                next += TICK;
                last = at;
            }
            ticks
        }
    });

    // The agent's shape: a sensor thread sends a snapshot every tick, the
    // loop (`block_on`, as `agent::run`) takes it, builds the statuses and
    // publishes them under the report's lock.
    let (tx, mut rx) = tokio::sync::watch::channel(Instant::now());
    let stop_sensor = Arc::new(AtomicBool::new(false));
    let sensor = std::thread::spawn({
        let stop = Arc::clone(&stop_sensor);
        move || {
            let mut next = Instant::now() + TICK;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if next > now {
                    std::thread::sleep(next - now);
                }
                next += TICK;
                let _ = tx.send(Instant::now());
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let connect_errors = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let mut stallers = Vec::new();
    let started = Instant::now();
    let mut load_from = started;
    let mut ticks = Vec::new();
    server_rt.block_on(async {
        let mut last = Instant::now();
        let mut n = 0u32;
        while started.elapsed() < IDLE + LOAD {
            if tokio::time::timeout(2 * TICK, rx.changed()).await.is_err() {
                continue;
            }
            let at = Instant::now();
            let sent = *rx.borrow_and_update();
            let fresh = Arc::new(list.clone());
            let l0 = Instant::now();
            {
                let mut p = published.lock().expect("lock");
                p.now = started.elapsed();
                p.policies = fresh;
            }
            ticks.push(Tick {
                at,
                period: at - last,
                wake: at - sent,
                lock_wait: l0.elapsed(),
            });
            last = at;
            n += 1;
            if started.elapsed() >= IDLE && clients.is_empty() {
                load_from = Instant::now();
                start_load(
                    &clients_on,
                    &path,
                    full,
                    &stop,
                    &replies,
                    &connect_errors,
                    &mut clients,
                    &mut stallers,
                );
            }
        }
        assert!(n > 0);
    });
    stop.store(true, Ordering::Relaxed);
    let load_to = Instant::now();
    stop_sensor.store(true, Ordering::Relaxed);
    sensor.join().expect("sensor thread");

    let (mut latencies, mut served) = (Vec::new(), 0);
    let mut holds = Vec::new();
    let (mut held, mut dropped) = (0, 0);
    client_rt.block_on(async {
        for c in clients {
            let l = c.await.expect("client");
            served += usize::from(!l.is_empty());
            latencies.extend(l);
        }
        for s in stallers {
            let (h, d) = s.await.expect("staller");
            held += h;
            dropped += d.len();
            holds.extend(d);
        }
    });
    stop_ticker.store(true, Ordering::Relaxed);
    let worker_ticks = server_rt.block_on(worker_ticker).expect("ticker");
    server.abort();

    let (idle_n, idle) = figures(&ticks, started, load_from);
    let (load_n, load) = figures(&ticks, load_from, load_to);
    let (widle_n, widle) = figures(&worker_ticks, started, load_from);
    let (wload_n, wload) = figures(&worker_ticks, load_from, load_to);
    let total = replies.load(Ordering::Relaxed);
    let secs = (load_to - load_from).as_secs_f64();
    eprintln!(
        "status socket load: report {full} bytes ({POLICIES} policies), {CLIENTS} clients asking over and over + {STALLERS} that never read, {secs:.1}s"
    );
    eprintln!(
        "  replies {total} ({:.0}/s, {:.0} MB/s); clients served {served}/{CLIENTS}; latency p50 {:.0} / p99 {:.0} / max {:.0} ms; connects refused (backlog full) {}",
        total as f64 / secs,
        total as f64 * full as f64 / secs / 1e6,
        ms(pct(&mut latencies, 50.0)),
        ms(pct(&mut latencies, 99.0)),
        ms(pct(&mut latencies, 100.0)),
        connect_errors.load(Ordering::Relaxed),
    );
    eprintln!(
        "  never-reading connections: {held} made, {dropped} dropped by the server after p50 {:.0} / p99 {:.0} ms (queue wait included)",
        ms(pct(&mut holds, 50.0)),
        ms(pct(&mut holds, 99.0)),
    );
    show("agent loop, idle", idle_n, &idle);
    show("agent loop, load", load_n, &load);
    show("worker task, idle", widle_n, &widle);
    show("worker task, load", wload_n, &wload);

    assert_eq!(
        served, CLIENTS,
        "every client was answered while others stalled"
    );
    // Every connection that never read ended because the server dropped
    // it, but the one each had open at the end.
    assert!(
        dropped >= STALLERS / 2 && dropped + STALLERS >= held as usize,
        "the server drops clients that do not read: {dropped} of {held}"
    );
    assert!(
        idle_n >= 40 && load_n >= 70 && widle_n >= 40 && wload_n >= 70,
        "{idle_n} idle, {load_n} loaded ticks"
    );
    assert!(
        load[0][1] <= idle[0][1] * 2,
        "the loop's p99 period under load ({:.1} ms) is within 2x of idle ({:.1} ms)",
        ms(load[0][1]),
        ms(idle[0][1])
    );
    assert!(
        wload[0][1] <= widle[0][1] * 2,
        "the worker task's p99 period under load ({:.1} ms) is within 2x of idle ({:.1} ms)",
        ms(wload[0][1]),
        ms(widle[0][1])
    );
    assert!(
        load[2][1] < Duration::from_millis(10),
        "the loop waited {:.3} ms (p99) for the report's lock",
        ms(load[2][1])
    );
}

/// Starts the clients on `rt`: [`CLIENTS`] that ask for the status over and
/// over, [`STALLERS`] that connect and never read (again when dropped).
#[allow(clippy::too_many_arguments)]
fn start_load(
    rt: &tokio::runtime::Handle,
    path: &std::path::Path,
    full: usize,
    stop: &Arc<AtomicBool>,
    replies: &Arc<AtomicU64>,
    connect_errors: &Arc<AtomicU64>,
    clients: &mut Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    stallers: &mut Vec<tokio::task::JoinHandle<(u32, Vec<Duration>)>>,
) {
    for _ in 0..STALLERS {
        let path = path.to_owned();
        let stop = Arc::clone(stop);
        stallers.push(rt.spawn(async move {
            // Connections made, and how long each took to be dropped.
            let (mut made, mut dropped) = (0u32, Vec::new());
            'connect: while !stop.load(Ordering::Relaxed) {
                let Ok(s) = tokio::net::UnixStream::connect(&path).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                made += 1;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(15) {
                    if stop.load(Ordering::Relaxed) {
                        break 'connect;
                    }
                    if peer_closed(&s) {
                        dropped.push(t0.elapsed());
                        continue 'connect;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            (made, dropped)
        }));
    }
    for i in 0..CLIENTS {
        let path = path.to_owned();
        let stop = Arc::clone(stop);
        let replies = Arc::clone(replies);
        let connect_errors = Arc::clone(connect_errors);
        clients.push(rt.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let Ok(mut s) = tokio::net::UnixStream::connect(&path).await else {
                    connect_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut buf = Vec::with_capacity(full + 4096);
                match tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut buf)).await {
                    Ok(Ok(_)) if buf.len() >= full && buf.ends_with(b"}") => {}
                    other => panic!(
                        "client {i}: {} of {full} bytes after {:?} ({:?})",
                        buf.len(),
                        t0.elapsed(),
                        other.map(|r| r.map(|_| ()))
                    ),
                }
                // One client checks the JSON (parsing every reply, in a
                // debug build, would starve the clients themselves).
                if latencies.is_empty() && i == 0 {
                    let v: serde_json::Value =
                        serde_json::from_slice(&buf).expect("the status is JSON");
                    assert_eq!(v["policies"].as_array().map(Vec::len), Some(POLICIES));
                }
                latencies.push(t0.elapsed());
                replies.fetch_add(1, Ordering::Relaxed);
            }
            latencies
        }));
    }
}
