//! Support for governor's integration tests: they need root, the real kernel,
//! and create (and always remove) their own cgroups, namespaces and processes.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// Panics with a clear message unless we run as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this integration test needs root (it loads eBPF programs); run it via `cargo xtask test` as root"
    );
}

/// A `log` logger that keeps every record's text, so a test can assert that
/// a line logged by a kernel program reached the agent's log.
pub struct CapturedLog {
    lines: Mutex<Vec<String>>,
}

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(format!("{} {}", record.level(), record.args()));
        }
    }
    fn flush(&self) {}
}

impl CapturedLog {
    /// Installs the capturing logger as the global `log` logger (once per process).
    pub fn install() -> &'static CapturedLog {
        static LOG: OnceLock<&'static CapturedLog> = OnceLock::new();
        LOG.get_or_init(|| {
            let log: &'static CapturedLog = Box::leak(Box::new(CapturedLog {
                lines: Mutex::new(Vec::new()),
            }));
            log::set_logger(log).expect("no other global logger in the test process");
            log::set_max_level(log::LevelFilter::Trace);
            log
        })
    }

    /// Waits up to `timeout` for a captured line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().ok()?.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A cgroup2 directory owned by one test, removed (with every process the
/// test put in it, killed by pid) when dropped, on every exit path.
pub struct TestCgroup {
    /// Absolute directory.
    pub dir: std::path::PathBuf,
    /// Path relative to the cgroup2 mount.
    pub path: governor::snapshot::CgroupPath,
}

/// The cgroup2 mount of this host.
pub fn cgroup2_root() -> std::path::PathBuf {
    let fs = governor::sense::cgroupfs::CgroupFs::discover(std::path::Path::new(
        governor::sense::cgroupfs::DEFAULT_ROOT,
    ))
    .expect("a cgroup2 hierarchy");
    fs.cgroup2_root().to_path_buf()
}

impl TestCgroup {
    /// Creates `<cgroup2>/governor-test-<pid>-<name>`.
    pub fn new(name: &str) -> Self {
        let root = cgroup2_root();
        let leaf = format!("governor-test-{}-{name}", std::process::id());
        let dir = root.join(&leaf);
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = governor::snapshot::CgroupPath::new(&format!("/{leaf}")).expect("valid path");
        Self { dir, path }
    }

    /// Its `cgroup.procs` file.
    pub fn procs(&self) -> std::path::PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Its cgroup2 id (the directory's inode number).
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only our own workloads are ever in a test cgroup; end them by pid.
        if let Ok(text) = std::fs::read_to_string(self.procs()) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = eventually(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists()
        });
    }
}

/// Child processes killed by pid when dropped.
pub struct Children {
    /// The workload binary, `env!("CARGO_BIN_EXE_govtest-load")` in a test.
    pub bin: std::path::PathBuf,
    /// The children started.
    pub procs: Vec<std::process::Child>,
}

impl Children {
    /// No children yet; they will run `bin`.
    pub fn new(bin: &str) -> Self {
        Self {
            bin: bin.into(),
            procs: Vec::new(),
        }
    }

    /// Starts `govtest-load ARGS`, stdout piped.
    pub fn spawn(&mut self, args: &[&str]) -> usize {
        let child = std::process::Command::new(&self.bin)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting govtest-load {args:?}: {e}"));
        self.procs.push(child);
        self.procs.len() - 1
    }

    /// Waits for child `i` and returns its stdout; panics if it failed.
    pub fn wait_output(&mut self, i: usize) -> String {
        use std::io::Read as _;
        let child = &mut self.procs[i];
        let status = child.wait().expect("wait for child");
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        assert!(
            status.success(),
            "workload {i} failed: {status}; stdout: {out}"
        );
        out
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads `key=<u64>` from a workload's output.
pub fn field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in workload output {out:?}"))
}

/// Loads and attaches the probes (no log forwarding).
pub fn probes() -> governor::ebpf::Probes {
    let mut p = governor::ebpf::Probes::load().expect("the embedded object loads");
    p.attach_all().expect("probes attach");
    p
}

/// Moves the calling thread (only) into a new network namespace with `lo`
/// up. Children spawned from this thread inherit it; the namespace goes away
/// with the thread and its children.
pub fn enter_own_netns() {
    // SAFETY: unshare takes flags only; CLONE_NEWNET affects this thread alone.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    if let Err(e) = loopback_up() {
        panic!("bringing lo up in the new network namespace: {e}");
    }
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace with
/// SIOCGIFFLAGS/SIOCSIFFLAGS: no iproute2 needed (the VM guests have none).
fn loopback_up() -> std::io::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened here and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
        *d = *s as libc::c_char;
    }
    // SAFETY: a socket fd and an ifreq naming an interface; the kernel fills the flags.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, with the flags to set.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Reports the calling test as skipped, with the reason: prints
/// `SKIPPED: <test>: <reason>` on a line of its own straight to stdout (past
/// libtest's capture), which `cargo xtask test` and `cargo xtask vm-test`
/// count as skipped, never as passed. The caller returns right after; use
/// [`skip_unless!`].
pub fn skip(reason: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\nSKIPPED: {test}: {reason}");
    let _ = out.flush();
}

/// `skip_unless!(cond, "reason {}", x)`: unless `cond` holds, reports the
/// test as skipped with the reason and returns from it. Only for something
/// the running kernel lacks (a tracepoint, a cgroup file), named in the reason.
#[macro_export]
macro_rules! skip_unless {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            $crate::skip(&format!($($reason)+));
            return;
        }
    };
}
