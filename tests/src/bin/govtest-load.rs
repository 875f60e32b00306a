//! Workloads for governor's integration tests, run as separate processes so
//! that each can live in its own test cgroup (cgroup membership is per
//! process). Every role is bounded in time or count.
//!
//! ```text
//! govtest-load hog     --cpu N --seconds S [--join PROCS]
//! govtest-load worker  --cpu N --seconds S [--period-us 2000] [--work-us 1000] [--join PROCS]
//! govtest-load connect --addr IP:PORT --count N [--join PROCS]
//! govtest-load churn   --base DIR --count N
//! govtest-load phased  --cpu N --seconds S [--busy-ms 1000] [--idle-ms 1000] [--period-us 2000] [--work-us 1000]
//! govtest-load counthog --cpu N --seconds S
//! govtest-load rrserver --port P --rate R --seconds S [--backlog 128]
//! govtest-load rrclient --addr IP:PORT --rate R --seconds S [--timeout-ms 1000] [--steady-after-ms 0] [--poisson SEED]
//! govtest-load pauseserver --port P --pause-ms M --seconds S [--backlog 16]
//! govtest-load pulse   --addr IP:PORT --rate R --seconds S
//! govtest-load listeners --base-port P --count N --seconds S
//! govtest-load visit   --base DIR --count N --seconds S
//! govtest-load herd    --addr IP:PORT --clients 200 --seconds S [--retry-ms 50] [--timeout-ms 200]
//! govtest-load rrherd  --addr IP:PORT --clients 500 --seconds S [--retry-ms 100] [--timeout-ms 1000]
//! ```
//! `--join PROCS` writes the process's pid to a `cgroup.procs` file first.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn join(args: &[String]) -> Result<(), String> {
    if let Some(procs) = arg::<PathBuf>(args, "--join") {
        fs::write(&procs, std::process::id().to_string())
            .map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    Ok(())
}

fn pin(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "pinning to cpu {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn spin_until(deadline: Instant) {
    while Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// The Internet checksum of `data`, folded.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = u32::from(chunk[0]) << 8 | u32::from(*chunk.get(1).unwrap_or(&0));
        sum += word;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends SYNs on a raw socket until `until`; prints how many.
fn synflood(
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    port: u16,
    until: Instant,
) -> Result<(), String> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(format!("raw socket: {}", std::io::Error::last_os_error()));
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let pseudo: u32 = {
        let (s, d) = (src.octets(), dst.octets());
        [s[0], s[1], s[2], s[3], d[0], d[1], d[2], d[3]]
            .chunks(2)
            .map(|c| u32::from(c[0]) << 8 | u32::from(c[1]))
            .sum::<u32>()
            + 6
            + 20
    };
    let mut sent = 0u64;
    let mut sport: u16 = 10_000;
    let start = Instant::now();
    while (sent & 0xff != 0) || Instant::now() < until {
        sport = if sport >= 60_000 { 10_000 } else { sport + 1 };
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&port.to_be_bytes());
        tcp[4..8].copy_from_slice(&(sent as u32).to_be_bytes());
        tcp[12] = 5 << 4; // data offset: 5 words
        tcp[13] = 0x02; // SYN
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let c = checksum(&tcp, pseudo);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        // SAFETY: valid buffer and address for the call.
        let rc = unsafe {
            libc::sendto(
                fd,
                tcp.as_ptr().cast(),
                tcp.len(),
                0,
                (&raw const sin).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOBUFS) {
                return Err(format!("sendto: {e}"));
            }
        } else {
            sent += 1;
        }
    }
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    println!("sent={sent} ms={}", start.elapsed().as_millis());
    Ok(())
}

/// Open-loop connects; prints the outcome counts.
fn flood(addr: SocketAddr, count: u64, rate: f64, timeout: Duration) -> Result<(), String> {
    use std::os::fd::AsRawFd as _;
    let started = Instant::now();
    let mut pending: Vec<(socket2::Socket, Instant)> = Vec::new();
    let (mut ok, mut refused, mut timedout, mut other, mut sent) = (0u64, 0u64, 0u64, 0u64, 0u64);
    while sent < count || !pending.is_empty() {
        let now = Instant::now();
        while sent < count && started + Duration::from_secs_f64(sent as f64 / rate) <= now {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .map_err(|e| e.to_string())?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            match s.connect(&addr.into()) {
                Ok(()) => ok += 1,
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => pending.push((s, now)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(_) => other += 1,
            }
            sent += 1;
        }
        let mut fds: Vec<libc::pollfd> = pending
            .iter()
            .map(|(s, _)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1) };
        let now = Instant::now();
        let mut keep = Vec::with_capacity(pending.len());
        for ((s, at), fd) in pending.into_iter().zip(fds) {
            if fd.revents != 0 {
                match s.take_error() {
                    Ok(None) => ok += 1,
                    Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused += 1
                    }
                    _ => other += 1,
                }
            } else if now.duration_since(at) >= timeout {
                timedout += 1;
            } else {
                keep.push((s, at));
            }
        }
        pending = keep;
    }
    println!(
        "ok={ok} refused={refused} eperm=0 timeout={timedout} other={other} ms={}",
        started.elapsed().as_millis()
    );
    Ok(())
}

/// CLOCK_MONOTONIC now, nanoseconds: the clock the bench and the agent's
/// `Instant`s share, so events can be lined up across processes.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reads `at_ns`.
fn sleep_until_mono(at_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; EINTR just ends the sleep early.
    unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    };
}

fn raise_nofile() {
    let lim = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    // SAFETY: setrlimit with a valid struct; failure leaves the old limit.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A latency-sensitive worker with busy and idle phases. In a busy phase it
/// wakes every `period` (absolute `clock_nanosleep`, timer slack 1 ns) and
/// computes for `work`; the overshoot of each wake-up past its due time is
/// its wake-up latency (mostly run-queue wait). Prints one `phase=` line per
/// busy phase and the busy phases' overall percentiles.
fn phased(
    until: Instant,
    busy: Duration,
    idle: Duration,
    period: Duration,
    work: Duration,
) -> Result<(), String> {
    // SAFETY: prctl with plain integers.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let mut all: Vec<u64> = Vec::new();
    let mut phase = 0u32;
    while Instant::now() + busy <= until {
        let phase_start = mono_ns();
        let phase_end = phase_start + busy.as_nanos() as u64;
        let mut lat = Vec::new();
        let mut due = phase_start;
        loop {
            spin_until(Instant::now() + work);
            due += period.as_nanos() as u64;
            if due >= phase_end {
                break;
            }
            let now = mono_ns();
            if due <= now {
                // Late already (we lost the CPU while computing): count the
                // lateness once and start the period again from now, so
                // that one long stall is one sample, not a backlog of them.
                lat.push((now - due) / 1000);
                due = now;
                continue;
            }
            sleep_until_mono(due);
            lat.push(mono_ns().saturating_sub(due) / 1000);
        }
        lat.sort_unstable();
        println!(
            "phase={phase} t_ns={phase_start} wakeups={} p50_us={} p99_us={} max_us={}",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat.last().copied().unwrap_or(0)
        );
        all.extend_from_slice(&lat);
        phase += 1;
        let idle_until = Instant::now() + idle;
        if idle_until > until {
            break;
        }
        std::thread::sleep(idle);
    }
    all.sort_unstable();
    println!(
        "phases={phase} busy_wakeups={} p50_us={} p99_us={} max_us={}",
        all.len(),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0)
    );
    Ok(())
}

/// Spins until `until`, counting units of work (a fixed small computation
/// each); prints the count, so the work done under a limit can be compared.
fn counting_hog(until: Instant) {
    let mut work = 0u64;
    let mut x = 1u64;
    'outer: loop {
        for _ in 0..1000 {
            for _ in 0..100 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            work += 1;
        }
        if Instant::now() >= until {
            break 'outer;
        }
    }
    println!("work={work}");
}

/// A request/response server of fixed capacity on `port` (all addresses):
/// one connection at a time, at most `rate` responses per second (paced),
/// each after reading the request line. Prints how many it served.
fn rr_server(port: u16, rate: f64, backlog: i32, until: Instant) -> Result<(), String> {
    use std::io::{Read as _, Write as _};
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    let addr: SocketAddr = format!("0.0.0.0:{port}").parse().map_err(|_| "addr")?;
    s.bind(&addr.into())
        .map_err(|e| format!("bind {addr}: {e}"))?;
    s.listen(backlog).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    let gap = Duration::from_secs_f64(1.0 / rate);
    let mut next = Instant::now();
    let mut served = 0u64;
    while Instant::now() < until {
        let (c, _) = match s.accept() {
            Ok(c) => c,
            Err(_) => {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        };
        let mut c: TcpStream = c.into();
        let _ = c.set_nonblocking(false);
        let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(n) if n > 0 => {}
            _ => continue, // the client gave up: no work done for it
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
        next += gap;
        if c.write_all(b"ok\n").is_ok() {
            served += 1;
        }
    }
    println!("served={served}");
    Ok(())
}

/// Accepts and closes connections on `port`, after not accepting at all for
/// `pause` (its accept queue then fills). Prints how many it accepted.
fn pause_server(port: u16, backlog: i32, pause: Duration, until: Instant) -> Result<(), String> {
    use std::io::Write as _;
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    s.set_reuse_address(true).map_err(|e| e.to_string())?;
    let addr: SocketAddr = format!("0.0.0.0:{port}").parse().map_err(|_| "addr")?;
    s.bind(&addr.into())
        .map_err(|e| format!("bind {addr}: {e}"))?;
    s.listen(backlog).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    println!("ready");
    let _ = std::io::stdout().flush();
    std::thread::sleep(pause);
    let mut accepted = 0u64;
    while Instant::now() < until {
        match s.accept() {
            Ok(_) => accepted += 1,
            Err(_) => std::thread::sleep(Duration::from_micros(500)),
        }
    }
    println!("accepted={accepted}");
    Ok(())
}

/// Outcome of one non-blocking connect, once known.
enum Outcome {
    Ok,
    Refused,
    Other,
}

fn connect_nb(addr: SocketAddr) -> Result<(socket2::Socket, Option<Outcome>), String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    let o = match s.connect(&addr.into()) {
        Ok(()) => Some(Outcome::Ok),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => None,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Some(Outcome::Refused),
        Err(_) => Some(Outcome::Other),
    };
    Ok((s, o))
}

fn poll_fds(socks: &[&socket2::Socket], events: i16, ms: i32) -> Vec<i16> {
    use std::os::fd::AsRawFd as _;
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: fds is a valid array of pollfd for the call.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    fds.iter().map(|f| f.revents).collect()
}

/// Open-loop connects at `rate` for the run; prints the CLOCK_MONOTONIC
/// time (ns) of each refusal that follows a success (`refusal_onsets=`):
/// the moments a reject took effect, to 1/rate.
fn pulse(addr: SocketAddr, rate: f64, until: Instant) -> Result<(), String> {
    raise_nofile();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut pending: Vec<(socket2::Socket, Instant)> = Vec::new();
    let mut last_ok = true;
    let mut onsets: Vec<u64> = Vec::new();
    let (mut ok, mut refused) = (0u64, 0u64);
    let mut note = |o: Outcome, ok: &mut u64, refused: &mut u64, last_ok: &mut bool| match o {
        Outcome::Ok => {
            *ok += 1;
            *last_ok = true;
        }
        Outcome::Refused => {
            *refused += 1;
            if *last_ok {
                onsets.push(mono_ns());
            }
            *last_ok = false;
        }
        Outcome::Other => {}
    };
    while Instant::now() < until || !pending.is_empty() {
        let now = Instant::now();
        while now < until && start + Duration::from_secs_f64(sent as f64 / rate) <= now {
            let (s, o) = connect_nb(addr)?;
            sent += 1;
            match o {
                Some(o) => note(o, &mut ok, &mut refused, &mut last_ok),
                None => pending.push((s, now)),
            }
        }
        let refs: Vec<&socket2::Socket> = pending.iter().map(|(s, _)| s).collect();
        let rev = poll_fds(&refs, libc::POLLOUT, 1);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(pending.len());
        for ((s, at), r) in pending.into_iter().zip(rev) {
            if r != 0 {
                let o = match s.take_error() {
                    Ok(None) => Outcome::Ok,
                    Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        Outcome::Refused
                    }
                    _ => Outcome::Other,
                };
                note(o, &mut ok, &mut refused, &mut last_ok);
            } else if now.duration_since(at) < Duration::from_millis(500) {
                keep.push((s, at));
            }
        }
        pending = keep;
    }
    let on: Vec<String> = onsets.iter().map(u64::to_string).collect();
    println!("ok={ok} refused={refused} refusal_onsets={}", on.join(","));
    Ok(())
}

/// One request of [`rr_client`] in flight.
struct Request {
    sock: socket2::Socket,
    started: Instant,
    sent: bool,
}

/// Open-loop request/response client: starts `rate` requests per second
/// (connect, send a line, read the answer), each given `timeout`. Prints
/// counts, goodput (answers per second of the run), latency percentiles of
/// the answered requests, and per-100 ms answered/refused/timed-out counts.
///
/// Requests started `steady_after` or later are also summarised on their
/// own (`steady_goodput`, `steady_p99_us`): the loop's steady state, apart
/// from the transient before a limit is found.
fn rr_client(
    addr: SocketAddr,
    rate: f64,
    secs: f64,
    timeout: Duration,
    steady_after: Duration,
    poisson: Option<u64>,
) -> Result<(), String> {
    use rand::{RngExt as _, SeedableRng as _};
    use std::io::{Read as _, Write as _};
    raise_nofile();
    // Arrival instants (seconds since start): evenly spaced, or a Poisson
    // process of the same rate (exponential gaps from a seeded generator).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(poisson.unwrap_or(0));
    let mut next_at = 0.0f64;
    let mut gap = move || match poisson {
        Some(_) => -(1.0 - rng.random::<f64>()).ln() / rate,
        None => 1.0 / rate,
    };
    let start = Instant::now();
    let offer_until = start + Duration::from_secs_f64(secs);
    let buckets = (secs * 10.0).ceil() as usize + (timeout.as_millis() as usize / 100) + 2;
    let mut series = vec![(0u32, 0u32, 0u32); buckets];
    let bucket = |t: Instant| ((t - start).as_millis() as usize / 100).min(buckets - 1);
    let (mut sent, mut ok, mut refused, mut timedout, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut lat: Vec<u64> = Vec::new();
    let mut steady: Vec<u64> = Vec::new();
    let steady_from = start + steady_after;
    let mut pending: Vec<Request> = Vec::new();
    while Instant::now() < offer_until || !pending.is_empty() {
        let now = Instant::now();
        while now < offer_until && start + Duration::from_secs_f64(next_at) <= now {
            let (sock, o) = connect_nb(addr)?;
            sent += 1;
            next_at += gap();
            match o {
                Some(Outcome::Refused) => {
                    refused += 1;
                    series[bucket(now)].1 += 1;
                }
                Some(Outcome::Other) => other += 1,
                Some(Outcome::Ok) | None => pending.push(Request {
                    sock,
                    started: now,
                    sent: false,
                }),
            }
        }
        let refs: Vec<&socket2::Socket> = pending.iter().map(|r| &r.sock).collect();
        let rev = poll_fds(&refs, libc::POLLOUT | libc::POLLIN, 1);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(pending.len());
        for (mut r, ev) in pending.into_iter().zip(rev) {
            if ev != 0 && !r.sent {
                match r.sock.take_error() {
                    Ok(None) => {
                        let mut t: &socket2::Socket = &r.sock;
                        if t.write_all(b"x\n").is_ok() {
                            r.sent = true;
                        } else {
                            other += 1;
                            continue;
                        }
                    }
                    Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        refused += 1;
                        series[bucket(now)].1 += 1;
                        continue;
                    }
                    _ => {
                        other += 1;
                        continue;
                    }
                }
            } else if ev & libc::POLLIN != 0 && r.sent {
                let mut buf = [0u8; 16];
                let mut t: &socket2::Socket = &r.sock;
                match t.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        ok += 1;
                        lat.push((now - r.started).as_micros() as u64);
                        if r.started >= steady_from {
                            steady.push((now - r.started).as_micros() as u64);
                        }
                        series[bucket(now)].0 += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        keep.push(r);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        refused += 1;
                        series[bucket(now)].1 += 1;
                    }
                    _ => other += 1,
                }
                continue;
            }
            if now.duration_since(r.started) >= timeout {
                timedout += 1;
                series[bucket(now)].2 += 1;
            } else {
                keep.push(r);
            }
        }
        pending = keep;
    }
    lat.sort_unstable();
    steady.sort_unstable();
    let steady_secs = (secs - steady_after.as_secs_f64()).max(1e-9);
    let s: Vec<String> = series
        .iter()
        .map(|(a, b, c)| format!("{a}:{b}:{c}"))
        .collect();
    println!(
        "sent={sent} ok={ok} refused={refused} timeout={timedout} other={other} goodput={:.1} p50_us={} p99_us={} steady_goodput={:.1} steady_p99_us={} series={}",
        ok as f64 / secs,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        steady.len() as f64 / steady_secs,
        percentile(&steady, 0.99),
        s.join(",")
    );
    Ok(())
}

/// `clients` clients, each connecting to `addr` until one connect succeeds,
/// retrying `retry` after a refusal or a `timeout`. Prints how many got
/// through and the successes per 10 ms since the start (`hist=`).
fn herd(
    addr: SocketAddr,
    clients: usize,
    retry: Duration,
    timeout: Duration,
    until: Instant,
) -> Result<(), String> {
    raise_nofile();
    let start = Instant::now();
    let mut next: Vec<Option<Instant>> = vec![Some(start); clients];
    let mut inflight: Vec<(usize, socket2::Socket, Instant)> = Vec::new();
    let mut done_at: Vec<u64> = Vec::new();
    let mut attempts = 0u64;
    while Instant::now() < until && done_at.len() < clients {
        let now = Instant::now();
        for (i, n) in next.iter_mut().enumerate() {
            if n.is_some_and(|t| t <= now) {
                *n = None;
                attempts += 1;
                let (s, o) = connect_nb(addr)?;
                match o {
                    Some(Outcome::Ok) => done_at.push((now - start).as_millis() as u64),
                    Some(_) => *n = Some(now + retry),
                    None => inflight.push((i, s, now)),
                }
            }
        }
        let refs: Vec<&socket2::Socket> = inflight.iter().map(|(_, s, _)| s).collect();
        let rev = poll_fds(&refs, libc::POLLOUT, 1);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(inflight.len());
        for ((i, s, at), r) in inflight.into_iter().zip(rev) {
            if r != 0 {
                match s.take_error() {
                    Ok(None) => done_at.push((now - start).as_millis() as u64),
                    _ => next[i] = Some(now + retry),
                }
            } else if now.duration_since(at) >= timeout {
                next[i] = Some(now + retry);
            } else {
                keep.push((i, s, at));
            }
        }
        inflight = keep;
    }
    let mut hist = std::collections::BTreeMap::new();
    for t in &done_at {
        *hist.entry(t / 10).or_insert(0u32) += 1;
    }
    let h: Vec<String> = hist
        .iter()
        .map(|(k, v)| format!("{}:{v}", k * 10))
        .collect();
    println!(
        "done={} attempts={attempts} start_ns={} hist={}",
        done_at.len(),
        mono_ns() - start.elapsed().as_nanos() as u64,
        h.join(",")
    );
    Ok(())
}

/// A reconnect storm against a request/response server: `clients` clients
/// start at once, each making one request (connect, send, wait for the
/// answer); a refused or reset attempt is retried after `retry` (times a
/// seeded random factor in [0.5, 1.5), as clients with jittered backoff
/// do), an attempt unanswered after `timeout` is abandoned and retried.
/// Prints how many were served, when the last was, and the latency of the
/// attempts that were answered (connect to answer).
fn rr_herd(
    addr: SocketAddr,
    clients: usize,
    retry: Duration,
    timeout: Duration,
    until: Instant,
) -> Result<(), String> {
    use rand::{RngExt as _, SeedableRng as _};
    use std::io::{Read as _, Write as _};
    raise_nofile();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(clients as u64);
    let start = Instant::now();
    let mut next: Vec<Option<Instant>> = vec![Some(start); clients];
    let mut inflight: Vec<(usize, Request)> = Vec::new();
    let (mut attempts, mut refused, mut timedout, mut served) = (0u64, 0u64, 0u64, 0usize);
    let mut lat: Vec<u64> = Vec::new();
    let mut last_ms = 0u64;
    while Instant::now() < until && served < clients {
        let now = Instant::now();
        for (i, n) in next.iter_mut().enumerate() {
            if n.is_some_and(|t| t <= now) {
                *n = None;
                attempts += 1;
                let (sock, o) = connect_nb(addr)?;
                match o {
                    Some(Outcome::Refused) | Some(Outcome::Other) => {
                        refused += 1;
                        *n = Some(now + retry.mul_f64(rng.random_range(0.5..1.5)));
                    }
                    Some(Outcome::Ok) | None => inflight.push((
                        i,
                        Request {
                            sock,
                            started: now,
                            sent: false,
                        },
                    )),
                }
            }
        }
        let refs: Vec<&socket2::Socket> = inflight.iter().map(|(_, r)| &r.sock).collect();
        let rev = poll_fds(&refs, libc::POLLOUT | libc::POLLIN, 1);
        let now = Instant::now();
        let mut keep = Vec::with_capacity(inflight.len());
        for ((i, mut r), ev) in inflight.into_iter().zip(rev) {
            let mut again = false;
            if ev != 0 && !r.sent {
                let mut t: &socket2::Socket = &r.sock;
                if matches!(r.sock.take_error(), Ok(None)) && t.write_all(b"x\n").is_ok() {
                    r.sent = true;
                    keep.push((i, r));
                } else {
                    refused += 1;
                    again = true;
                }
            } else if ev & libc::POLLIN != 0 && r.sent {
                let mut buf = [0u8; 16];
                let mut t: &socket2::Socket = &r.sock;
                match t.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        served += 1;
                        lat.push((now - r.started).as_micros() as u64);
                        last_ms = (now - start).as_millis() as u64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => keep.push((i, r)),
                    _ => {
                        refused += 1;
                        again = true;
                    }
                }
            } else if now.duration_since(r.started) >= timeout {
                timedout += 1;
                again = true;
            } else {
                keep.push((i, r));
            }
            if again {
                next[i] = Some(now + retry.mul_f64(rng.random_range(0.5..1.5)));
            }
        }
        inflight = keep;
    }
    lat.sort_unstable();
    println!(
        "served={served} clients={clients} attempts={attempts} refused={refused} timeout={timedout} last_ms={last_ms} rate={:.1} p50_us={} p99_us={}",
        served as f64 / (last_ms.max(1) as f64 / 1000.0),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
    );
    Ok(())
}

/// Holds `count` listening sockets on ports `base`.. until `until`.
fn listeners(base: u16, count: u16, until: Instant) -> Result<(), String> {
    use std::io::Write as _;
    let mut held = Vec::new();
    for p in base..base.saturating_add(count) {
        held.push(
            std::net::TcpListener::bind(("0.0.0.0", p)).map_err(|e| format!("bind {p}: {e}"))?,
        );
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("listened={}", held.len());
    Ok(())
}

/// Visits `base/c0` .. `base/c{count-1}` in turn until `until`: joins each,
/// sleeps twice briefly (so each sees scheduler events), returns to `base`.
fn visit(base: &std::path::Path, count: u64, until: Instant) -> Result<(), String> {
    let me = std::process::id().to_string();
    let mut visits = 0u64;
    while Instant::now() < until {
        for i in 0..count {
            let procs = base.join(format!("c{i}")).join("cgroup.procs");
            fs::write(&procs, &me).map_err(|e| format!("{}: {e}", procs.display()))?;
            std::thread::sleep(Duration::from_micros(200));
            std::thread::sleep(Duration::from_micros(200));
            visits += 1;
            if Instant::now() >= until {
                break;
            }
        }
    }
    fs::write(base.join("cgroup.procs"), &me).map_err(|e| e.to_string())?;
    println!("visits={visits}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let result = (|| -> Result<(), String> {
        join(&args)?;
        pin(arg(&args, "--cpu"))?;
        let seconds: f64 = arg(&args, "--seconds").unwrap_or(1.0);
        let until = Instant::now() + Duration::from_secs_f64(seconds.min(60.0));
        match role.as_str() {
            "hog" => spin_until(until),
            "worker" => {
                // Wake every period, then spend `work` of CPU: a pure sleeper
                // is favoured by the scheduler, a worker that computes is not.
                let period = Duration::from_micros(arg(&args, "--period-us").unwrap_or(2000));
                let work = Duration::from_micros(arg(&args, "--work-us").unwrap_or(1000));
                let mut next = Instant::now();
                let mut wakeups = 0u64;
                while Instant::now() < until {
                    spin_until(Instant::now() + work);
                    next += period;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                        wakeups += 1;
                    } else {
                        next = now;
                    }
                }
                println!("wakeups={wakeups}");
            }
            "connect" => {
                // `--count` connects to `--addr`, paced at `--rate` per second
                // if given, each with `--timeout-ms`; prints how they ended.
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                let count: u64 = arg(&args, "--count").ok_or("--count N")?;
                let rate: f64 = arg(&args, "--rate").unwrap_or(0.0);
                let timeout = Duration::from_millis(arg(&args, "--timeout-ms").unwrap_or(2000));
                let started = Instant::now();
                let (mut ok, mut refused, mut eperm, mut timedout, mut other) =
                    (0u64, 0u64, 0u64, 0u64, 0u64);
                for i in 0..count.min(100_000) {
                    if rate > 0.0 {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(_) => ok += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                        Err(e) if e.raw_os_error() == Some(libc::EPERM) => eperm += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => timedout += 1,
                        Err(_) => other += 1,
                    }
                }
                println!(
                    "ok={ok} refused={refused} eperm={eperm} timeout={timedout} other={other} ms={}",
                    started.elapsed().as_millis()
                );
            }
            "flood" => {
                // Like `connect`, but non-blocking: `--rate` connects per
                // second are started whatever happens to earlier ones, each
                // given `--timeout-ms` to complete; an open-loop load.
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                let count: u64 = arg(&args, "--count").ok_or("--count N")?;
                let rate: f64 = arg(&args, "--rate").ok_or("--rate R")?;
                let timeout = Duration::from_millis(arg(&args, "--timeout-ms").unwrap_or(1000));
                flood(addr, count.min(100_000), rate, timeout)?;
            }
            "synflood" => {
                // Raw TCP SYNs to `--dst IP --port P` from varying source
                // ports, as fast as one core sends them, for `--seconds`.
                let dst: std::net::Ipv4Addr = arg(&args, "--dst").ok_or("--dst IPv4")?;
                let src: std::net::Ipv4Addr = arg(&args, "--src").ok_or("--src IPv4")?;
                let port: u16 = arg(&args, "--port").ok_or("--port P")?;
                synflood(src, dst, port, until)?;
            }
            "enforce" => {
                // Attach governor's inbound admission in the calling
                // namespace with one rule, until --seconds pass.
                use governor::act::net::{NetEnforcer, Rule};
                use governor_engine::config::RejectMode;
                let port: u16 = arg(&args, "--port").ok_or("--port P")?;
                let rate: f64 = arg(&args, "--rate").unwrap_or(0.0);
                let mode = match arg::<String>(&args, "--mode").as_deref() {
                    Some("drop") => RejectMode::Drop,
                    _ => RejectMode::Reset,
                };
                let mut e = NetEnforcer::load().map_err(|e| e.to_string())?;
                e.attach_netns(std::path::Path::new("/proc/thread-self/ns/net"))
                    .map_err(|e| e.to_string())?;
                let rule = Rule {
                    rate: (rate > 0.0).then_some(rate),
                    burst: 1,
                    mode,
                    exempt: vec![],
                };
                e.set_port(port, &rule).map_err(|e| e.to_string())?;
                println!("ready");
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let v = e.port_verdicts().map_err(|e| e.to_string())?;
                let v = v.get(&port).copied().unwrap_or_default();
                println!("admitted={} refused={}", v.admitted, v.refused);
            }
            "churn" => {
                // Create cgroups one by one, run in each for a moment, leave,
                // remove it. Prints the ids (inode numbers) it made.
                use std::os::unix::fs::MetadataExt as _;
                let base: PathBuf = arg(&args, "--base").ok_or("--base DIR")?;
                let count: u64 = arg(&args, "--count").ok_or("--count N")?;
                let me = std::process::id().to_string();
                let mut ids = Vec::new();
                for i in 0..count.min(10_000) {
                    let dir = base.join(format!("churn-{i}"));
                    fs::create_dir(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
                    ids.push(fs::metadata(&dir).map_err(|e| e.to_string())?.ino());
                    fs::write(dir.join("cgroup.procs"), &me).map_err(|e| e.to_string())?;
                    // Sleep twice: the first switch-out ends a wait, the second
                    // attributes it while we are still in this cgroup.
                    std::thread::sleep(Duration::from_micros(200));
                    std::thread::sleep(Duration::from_micros(200));
                    fs::write(base.join("cgroup.procs"), &me).map_err(|e| e.to_string())?;
                    fs::remove_dir(&dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))?;
                }
                let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                println!("ids={}", ids.join(","));
            }
            "phased" => {
                // Busy/idle phases of a latency-sensitive worker; see `phased`.
                let ms = |k: &str, d: u64| Duration::from_millis(arg(&args, k).unwrap_or(d));
                let us = |k: &str, d: u64| Duration::from_micros(arg(&args, k).unwrap_or(d));
                phased(
                    until,
                    ms("--busy-ms", 1000),
                    ms("--idle-ms", 1000),
                    us("--period-us", 2000),
                    us("--work-us", 1000),
                )?;
            }
            "counthog" => counting_hog(until),
            "rrserver" => {
                let port: u16 = arg(&args, "--port").ok_or("--port P")?;
                let rate: f64 = arg(&args, "--rate").ok_or("--rate R")?;
                rr_server(port, rate, arg(&args, "--backlog").unwrap_or(128), until)?;
            }
            "pauseserver" => {
                let port: u16 = arg(&args, "--port").ok_or("--port P")?;
                let pause = Duration::from_millis(arg(&args, "--pause-ms").unwrap_or(0));
                pause_server(port, arg(&args, "--backlog").unwrap_or(16), pause, until)?;
            }
            "pulse" => {
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                pulse(addr, arg(&args, "--rate").unwrap_or(500.0), until)?;
            }
            "rrclient" => {
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                let rate: f64 = arg(&args, "--rate").ok_or("--rate R")?;
                let timeout = Duration::from_millis(arg(&args, "--timeout-ms").unwrap_or(1000));
                let steady = Duration::from_millis(arg(&args, "--steady-after-ms").unwrap_or(0));
                let poisson: Option<u64> = arg(&args, "--poisson");
                rr_client(addr, rate, seconds.min(60.0), timeout, steady, poisson)?;
            }
            "herd" => {
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                herd(
                    addr,
                    arg(&args, "--clients").unwrap_or(200),
                    Duration::from_millis(arg(&args, "--retry-ms").unwrap_or(50)),
                    Duration::from_millis(arg(&args, "--timeout-ms").unwrap_or(200)),
                    until,
                )?;
            }
            "rrherd" => {
                let addr: SocketAddr = arg(&args, "--addr").ok_or("--addr IP:PORT")?;
                rr_herd(
                    addr,
                    arg(&args, "--clients").unwrap_or(500),
                    Duration::from_millis(arg(&args, "--retry-ms").unwrap_or(100)),
                    Duration::from_millis(arg(&args, "--timeout-ms").unwrap_or(1000)),
                    until,
                )?;
            }
            "listeners" => {
                let base: u16 = arg(&args, "--base-port").ok_or("--base-port P")?;
                listeners(base, arg(&args, "--count").unwrap_or(100), until)?;
            }
            "visit" => {
                let base: PathBuf = arg(&args, "--base").ok_or("--base DIR")?;
                visit(&base, arg(&args, "--count").unwrap_or(1000), until)?;
            }
            other => return Err(format!("unknown role {other:?}")),
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("govtest-load {role}: {e}");
            ExitCode::FAILURE
        }
    }
}
