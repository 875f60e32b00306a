//! Support for governor's integration tests: they need root, the real kernel,
//! and create (and always remove) their own cgroups, namespaces and processes.

use std::{
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// One test at a time, among the tests of one test binary that take it:
/// those that load CPUs (their counts and waits are skewed by each
/// other's processes) or set per-process failpoints.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
    pub path: governor_engine::snapshot::CgroupPath,
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
        let path =
            governor_engine::snapshot::CgroupPath::new(&format!("/{leaf}")).expect("valid path");
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
pub fn probes() -> governor::probes::Probes {
    let mut p = governor::probes::Probes::load().expect("the embedded object loads");
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

/// The `governor` binary: `$GOVERNOR_BIN`, else `target/<profile>/governor`
/// beside this test's `deps/` directory (`cargo xtask test` builds it).
pub fn governor_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("GOVERNOR_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("governor"))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} is missing: build it first (`cargo build -p governor`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// A named network namespace, like `ip netns add` makes (a bind mount of
/// the namespace at `/run/netns/NAME`, so other processes can join it by
/// path), made without iproute2 (the VM guests have none); unmounted and
/// removed when dropped.
pub struct NetNs {
    /// Its name.
    pub name: String,
}

impl NetNs {
    /// Creates `gov-<pid>-<tag>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let name = format!("gov-{}-{tag}", std::process::id());
        let ns = Self { name };
        let path = ns.path();
        std::fs::create_dir_all("/run/netns").expect("mkdir /run/netns");
        std::fs::File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let target = path.clone();
        std::thread::spawn(move || {
            enter_own_netns();
            let c = |p: &std::path::Path| {
                std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path")
            };
            let (src, dst) = (
                c(std::path::Path::new("/proc/thread-self/ns/net")),
                c(&target),
            );
            // SAFETY: valid NUL-terminated paths; a bind mount with no data.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    dst.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            assert_eq!(
                rc,
                0,
                "bind-mounting the namespace: {}",
                std::io::Error::last_os_error()
            );
        })
        .join()
        .expect("namespace thread");
        ns
    }

    /// Its path, for `setns` and the agent's `netns` key.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// Moves the calling thread into it.
    pub fn enter(&self) {
        enter_netns(&self.path());
    }

    /// Starts `cmd` inside the namespace (from a thread that joined it).
    pub fn spawn(&self, mut cmd: std::process::Command) -> std::process::Child {
        let path = self.path();
        std::thread::spawn(move || {
            enter_netns(&path);
            cmd.spawn().expect("start a process in the namespace")
        })
        .join()
        .expect("namespace thread")
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &std::path::Path) {
    if let Err(e) = governor::sense::netns::join(path) {
        panic!("{e:#}");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let path = self.path();
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// A running `governor run`, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct AgentProcess {
    /// The child.
    pub child: std::process::Child,
    /// Its log (stderr).
    pub log: std::path::PathBuf,
    /// Its status socket.
    pub socket: std::path::PathBuf,
}

/// Runs `governor replay ARGS…`; returns its exit code and stdout + stderr.
pub fn replay(args: &[&std::path::Path]) -> (Option<i32>, String) {
    let out = std::process::Command::new(governor_bin())
        .arg("replay")
        .args(args)
        .output()
        .expect("governor replay");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl AgentProcess {
    /// Starts `governor run --config CONFIG` logging to `log`; waits until
    /// its status socket answers.
    pub fn start(
        config: &std::path::Path,
        socket: &std::path::Path,
        log: &std::path::Path,
    ) -> Self {
        let err = std::fs::File::create(log).expect("log file");
        let child = std::process::Command::new(governor_bin())
            .args(["run", "--config"])
            .arg(config)
            .env("GOVERNOR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start governor");
        let agent = Self {
            child,
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        // Up to 30 s: under TCG a guest's agent spends seconds in the
        // verifier (15 s was once not enough for the share-throttle test's
        // agent on 6.1, which was still loading its probes).
        let up = eventually(Duration::from_secs(30), || agent.status().is_some());
        assert!(up, "the agent did not come up; log:\n{}", agent.log_text());
        agent
    }

    /// Its status report, if it answers.
    pub fn status(&self) -> Option<governor::show::status::StatusReport> {
        governor::show::status::fetch(&self.socket).ok()
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to it (by pid).
    pub fn signal(&self, sig: i32) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// SIGTERM and wait; returns the exit status and how long it took.
    pub fn stop(&mut self) -> (std::process::ExitStatus, Duration) {
        let t = std::time::Instant::now();
        self.signal(libc::SIGTERM);
        let st = self.child.wait().expect("wait for governor");
        (st, t.elapsed())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = eventually(Duration::from_secs(3), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// GET /metrics from `addr`.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the first metric line starting with `prefix` (name and labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A test cgroup in every hierarchy the cpu actuators write: its cgroup2
/// directory ([`TestCgroup`]) and, on hybrid hosts, the v1 cpu controller's
/// directory of the same path, which this test creates and removes itself
/// (the actuators never create one). Processes must join both
/// ([`CpuTestCgroup::join`]): the v1 directory is where the cpu files act,
/// the cgroup2 one is what the probes and `cpu.stat usage_usec` see.
pub struct CpuTestCgroup {
    /// The cgroup2 side.
    pub v2: TestCgroup,
    /// The v1 cpu controller's directory, on hybrid hosts.
    pub cpu_v1: Option<std::path::PathBuf>,
}

impl CpuTestCgroup {
    /// Creates `<cgroup2>/governor-test-<pid>-<name>`, and the same path
    /// under the v1 cpu controller if this host has one.
    pub fn new(name: &str) -> Self {
        let v2 = TestCgroup::new(name);
        let fs = governor::sense::cgroupfs::CgroupFs::discover(std::path::Path::new(
            governor::sense::cgroupfs::DEFAULT_ROOT,
        ))
        .expect("a cgroup2 hierarchy");
        let cpu_v1 = match fs.layout() {
            governor::sense::cgroupfs::Layout::Unified => None,
            governor::sense::cgroupfs::Layout::Hybrid => {
                let root = fs
                    .cpu_v1_root()
                    .expect("a hybrid host with a v1 cpu controller");
                let dir = root.join(v2.path.relative());
                std::fs::create_dir(&dir)
                    .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                Some(dir)
            }
        };
        Self { v2, cpu_v1 }
    }

    /// The directory holding its cpu controller files (`cpu.max`, or
    /// `cpu.cfs_quota_us`, `cpu.shares`, `cpu.idle`).
    pub fn cpu_dir(&self) -> &std::path::Path {
        self.cpu_v1.as_deref().unwrap_or(&self.v2.dir)
    }

    /// Moves `pid` (a process this test started) into the v1 side too; the
    /// cgroup2 side is joined with `govtest-load --join`.
    pub fn join(&self, pid: u32) {
        if let Some(dir) = &self.cpu_v1 {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .unwrap_or_else(|e| panic!("joining {pid} to {}: {e}", procs.display()));
        }
    }

    /// CPU time used by its processes so far, µs (cgroup2 `cpu.stat`
    /// `usage_usec`, there even without the cpu controller).
    pub fn usage_usec(&self) -> u64 {
        let stat = std::fs::read_to_string(self.v2.dir.join("cpu.stat")).expect("cpu.stat");
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())
            .expect("usage_usec in cpu.stat")
    }

    /// The text of each cpu controller file the actuators may write, by
    /// name, to compare before and after.
    pub fn cpu_files(&self) -> Vec<(String, String)> {
        let names: &[&str] = if self.cpu_v1.is_some() {
            &[
                "cpu.cfs_quota_us",
                "cpu.cfs_period_us",
                "cpu.shares",
                "cpu.idle",
            ]
        } else {
            &["cpu.max", "cpu.weight", "cpu.idle"]
        };
        names
            .iter()
            .filter_map(|n| {
                std::fs::read_to_string(self.cpu_dir().join(n))
                    .ok()
                    .map(|t| ((*n).to_owned(), t))
            })
            .collect()
    }
}

impl Drop for CpuTestCgroup {
    fn drop(&mut self) {
        let Some(dir) = &self.cpu_v1 else { return };
        // Only our own workloads are in it; end them by pid.
        if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = eventually(Duration::from_secs(5), || {
            std::fs::remove_dir(dir).is_ok() || !dir.exists()
        });
    }
}

impl CpuTestCgroup {
    /// A child `name` of this test cgroup, in both hierarchies, removed when
    /// dropped (drop it before its parent). On pure cgroup2 hosts the cpu
    /// controller is enabled for the parent's children first.
    pub fn child(&self, name: &str) -> Self {
        if self.cpu_v1.is_none() {
            let control = self.v2.dir.join("cgroup.subtree_control");
            std::fs::write(&control, "+cpu")
                .unwrap_or_else(|e| panic!("enabling cpu in {}: {e}", control.display()));
        }
        let dir = self.v2.dir.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = governor_engine::snapshot::CgroupPath::new(&format!("{}/{name}", self.v2.path))
            .expect("valid path");
        let cpu_v1 = self.cpu_v1.as_ref().map(|parent| {
            let d = parent.join(name);
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            d
        });
        Self {
            v2: TestCgroup { dir, path },
            cpu_v1,
        }
    }

    /// Gives this cgroup the largest CPU weight (`cpu.weight` 10000, or
    /// `cpu.shares` 262144): work inside it then barely yields to other
    /// cgroups, so a test inside it measures its own processes only, also
    /// on a host shared with other work.
    pub fn outweigh_the_host(&self) {
        let (file, value) = if self.cpu_v1.is_some() {
            ("cpu.shares", "262144")
        } else {
            ("cpu.weight", "10000")
        };
        let path = self.cpu_dir().join(file);
        std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// The `[agent]` section every agent test writes (a 100 ms tick, its own
/// metrics address, status socket and journal, a fixed seed), with the
/// options a test may add; [`AgentConfig::write`] puts the test's policies
/// after it.
pub struct AgentConfig {
    dir: std::path::PathBuf,
    metrics: String,
    seed: u64,
    journal: std::path::PathBuf,
    netns: Option<std::path::PathBuf>,
    dry_run: Option<bool>,
}

/// What [`AgentConfig::write`] wrote, and where the agent will answer.
pub struct AgentFiles {
    /// `DIR/governor.toml`.
    pub config: std::path::PathBuf,
    /// `DIR/governor.sock`, the status socket.
    pub socket: std::path::PathBuf,
    /// `DIR/governor.log`, for [`AgentProcess::start`].
    pub log: std::path::PathBuf,
    /// The metrics address, `127.0.0.1:PORT`.
    pub metrics: String,
}

impl AgentConfig {
    /// Files in `dir`; the journal at `DIR/journal`, recordings under it.
    pub fn new(dir: &std::path::Path, metrics: impl Into<String>, seed: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            metrics: metrics.into(),
            seed,
            journal: dir.join("journal"),
            netns: None,
            dry_run: None,
        }
    }

    /// The journal (and `record/` under it) somewhere else.
    pub fn journal(mut self, dir: &std::path::Path) -> Self {
        self.journal = dir.to_path_buf();
        self
    }

    /// `agent.netns`: the namespace whose sockets are read and guarded.
    pub fn netns(mut self, path: &std::path::Path) -> Self {
        self.netns = Some(path.to_path_buf());
        self
    }

    /// `agent.dry_run`.
    pub fn dry_run(mut self, on: bool) -> Self {
        self.dry_run = Some(on);
        self
    }

    /// Writes the config: this section, then `policies` as given.
    pub fn write(self, policies: &str) -> AgentFiles {
        let socket = self.dir.join("governor.sock");
        let journal = self.journal.display();
        let mut text = format!(
            "[agent]\ntick = \"100ms\"\nmetrics_addr = \"{}\"\nstatus_socket = \"{}\"\n\
             journal_dir = \"{journal}\"\nrecord_dir = \"{journal}/record\"\nseed = {}\n",
            self.metrics,
            socket.display(),
            self.seed,
        );
        if let Some(ns) = &self.netns {
            text += &format!("netns = \"{}\"\n", ns.display());
        }
        if let Some(on) = self.dry_run {
            text += &format!("dry_run = {on}\n");
        }
        text += "\n";
        text += policies;
        let config = self.dir.join("governor.toml");
        std::fs::write(&config, text).expect("write the agent's config");
        AgentFiles {
            config,
            socket,
            log: self.dir.join("governor.log"),
            metrics: self.metrics,
        }
    }
}
