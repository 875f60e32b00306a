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
