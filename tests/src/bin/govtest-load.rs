//! Workloads for governor's integration tests, run as separate processes so
//! that each can live in its own test cgroup (cgroup membership is per
//! process). Every role is bounded in time or count.
//!
//! ```text
//! govtest-load hog     --cpu N --seconds S [--join PROCS]
//! govtest-load worker  --cpu N --seconds S [--period-us 2000] [--work-us 1000] [--join PROCS]
//! govtest-load connect --addr IP:PORT --count N [--join PROCS]
//! govtest-load churn   --base DIR --count N
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
                use governor::{
                    act::net::{NetEnforcer, Rule},
                    config::RejectMode,
                };
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
