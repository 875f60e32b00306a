//! What the scenario benchmarks share: test-owned cgroups and namespaces
//! (removed on every exit path), workload processes (ended by pid), the
//! real agent driven through a temporary config, and its status and metrics.

use std::{
    fs,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::util::workspace_root;

/// CLOCK_MONOTONIC now, nanoseconds: shared with the workloads (which
/// print it) and with the agent (whose `Instant`s read it).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The median of `v` (NaN if empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The `p` quantile (nearest rank) of `v` (NaN if empty).
pub fn quantile(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.to_vec();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `key=<number>` from a workload's output.
pub fn field(out: &str, key: &str) -> Option<f64> {
    let k = format!("{key}=");
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&k))
        .and_then(|v| v.parse().ok())
}

/// `key=<text>` from a workload's output.
pub fn field_str<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    let k = format!("{key}=");
    out.split_whitespace().find_map(|w| w.strip_prefix(&k))
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique suffix for names made by this process.
pub fn unique(tag: &str) -> String {
    format!(
        "{}-{}-{tag}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory under `target/bench/`, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        Self::under(&workspace_root().join("target/bench/tmp"), tag)
    }

    /// A scratch directory on a tmpfs (`/dev/shm`), or under `target` if
    /// there is none.
    pub fn in_memory(tag: &str) -> anyhow::Result<Self> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            Self::under(shm, &format!("governor-bench-{tag}"))
        } else {
            Self::new(tag)
        }
    }

    fn under(base: &Path, tag: &str) -> anyhow::Result<Self> {
        let dir = base.join(unique(tag));
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const CGROUP2: &str = "/sys/fs/cgroup";
const CGROUP2_HYBRID: &str = "/sys/fs/cgroup/unified";
const CPU_V1: &str = "/sys/fs/cgroup/cpu";

/// Kills by pid every process listed in `dir/cgroup.procs` (only our own
/// workloads are ever in a bench cgroup), then removes `dir`.
fn empty_and_remove(dir: &Path) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = eventually(Duration::from_secs(5), || {
        fs::remove_dir(dir).is_ok() || !dir.exists()
    });
}

/// A bench-owned cgroup: its cgroup2 directory and, on hybrid hosts, the v1
/// cpu controller's directory of the same path (where cpu files act).
pub struct CpuCgroup {
    /// Path relative to the cgroup2 mount, as the config names it.
    pub path: String,
    pub v2: PathBuf,
    pub v1: Option<PathBuf>,
}

fn hybrid() -> bool {
    Path::new(CGROUP2_HYBRID).join("cgroup.procs").is_file()
}

impl CpuCgroup {
    /// `/governor-bench-<unique>-<name>` in every hierarchy.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        Self::at(&format!("/governor-bench-{}", unique(name)))
    }

    fn at(path: &str) -> anyhow::Result<Self> {
        let (root, v1) = if hybrid() {
            (CGROUP2_HYBRID, Some(PathBuf::from(CPU_V1)))
        } else {
            (CGROUP2, None)
        };
        let v2 = PathBuf::from(format!("{root}{path}"));
        fs::create_dir(&v2).with_context(|| format!("mkdir {}", v2.display()))?;
        let v1 = match v1 {
            Some(r) => {
                let d = PathBuf::from(format!("{}{path}", r.display()));
                if let Err(e) = fs::create_dir(&d) {
                    let _ = fs::remove_dir(&v2);
                    return Err(e).with_context(|| format!("mkdir {}", d.display()));
                }
                Some(d)
            }
            None => None,
        };
        Ok(Self {
            path: path.to_owned(),
            v2,
            v1,
        })
    }

    /// A child `name` (drop it before its parent).
    pub fn child(&self, name: &str) -> anyhow::Result<Self> {
        if self.v1.is_none() {
            let control = self.v2.join("cgroup.subtree_control");
            fs::write(&control, "+cpu").with_context(|| format!("{}", control.display()))?;
        }
        Self::at(&format!("{}/{name}", self.path))
    }

    /// Where the cpu files are.
    pub fn cpu_dir(&self) -> &Path {
        self.v1.as_deref().unwrap_or(&self.v2)
    }

    pub fn procs(&self) -> PathBuf {
        self.v2.join("cgroup.procs")
    }

    /// Moves `pid` into the v1 side too (the v2 side is joined by the
    /// workload itself with `--join`).
    pub fn join_v1(&self, pid: u32) -> anyhow::Result<()> {
        if let Some(d) = &self.v1 {
            fs::write(d.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("joining {pid} to {}", d.display()))?;
        }
        Ok(())
    }

    /// Writes a cpu file: `weight` is the cgroup2 value (1–10000), mapped to
    /// `cpu.shares` on v1 hosts as the actuators map it.
    pub fn set_weight(&self, weight: u32) -> anyhow::Result<()> {
        let (file, value) = if self.v1.is_some() {
            // cgroup2 weight 100 == v1 shares 1024.
            (
                "cpu.shares",
                (u64::from(weight) * 1024 / 100).max(2).to_string(),
            )
        } else {
            ("cpu.weight", weight.to_string())
        };
        let p = self.cpu_dir().join(file);
        fs::write(&p, value).with_context(|| format!("{}", p.display()))
    }

    /// A quota of `cpus` CPUs per 100 ms period.
    pub fn set_quota(&self, cpus: f64) -> anyhow::Result<()> {
        let quota = (cpus * 100_000.0) as u64;
        if self.v1.is_some() {
            fs::write(self.cpu_dir().join("cpu.cfs_period_us"), "100000")?;
            fs::write(self.cpu_dir().join("cpu.cfs_quota_us"), quota.to_string())?;
        } else {
            fs::write(self.cpu_dir().join("cpu.max"), format!("{quota} 100000"))?;
        }
        Ok(())
    }

    /// The file the `cpu_limit` actuator writes.
    pub fn quota_file(&self) -> PathBuf {
        if self.v1.is_some() {
            self.cpu_dir().join("cpu.cfs_quota_us")
        } else {
            self.cpu_dir().join("cpu.max")
        }
    }

    /// The largest weight, so work on this shared machine does not swamp
    /// the measurement inside.
    pub fn outweigh_the_host(&self) -> anyhow::Result<()> {
        self.set_weight(10_000)
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        if let Some(d) = &self.v1 {
            empty_and_remove(d);
        }
        empty_and_remove(&self.v2);
    }
}

/// A network namespace of ours, `lo` up, deleted when dropped.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("govbench-{}", unique(tag));
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .context("ip (iproute2)")?
            .success();
        if !ok {
            bail!("ip netns add {name} failed");
        }
        let ns = Self { name };
        let ok = Command::new("ip")
            .args(["-n", &ns.name, "link", "set", "lo", "up"])
            .status()?
            .success();
        if !ok {
            bail!("ip link set lo up in {} failed", ns.name);
        }
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `nft -f -` with `rules` inside the namespace.
    pub fn nft(&self, rules: &str) -> anyhow::Result<()> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .context("nft (package nftables)")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(rules.as_bytes())?;
        }
        if !child.wait()?.success() {
            bail!("nft -f failed for:\n{rules}");
        }
        Ok(())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Workload processes (`govtest-load`), ended by pid when dropped.
#[derive(Default)]
pub struct Workloads {
    procs: Vec<Child>,
}

/// Where a workload runs.
#[derive(Default, Clone, Copy)]
pub struct Place<'a> {
    pub netns: Option<&'a NetNs>,
    pub cgroup: Option<&'a CpuCgroup>,
}

pub fn load_bin() -> PathBuf {
    crate::util::target_dir().join("release/govtest-load")
}

impl Workloads {
    /// Starts `govtest-load ARGS` at `place`; stdout piped. Returns its index.
    pub fn spawn(&mut self, place: Place<'_>, args: &[&str]) -> anyhow::Result<usize> {
        let mut cmd = match place.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(load_bin());
                c
            }
            None => Command::new(load_bin()),
        };
        cmd.args(args);
        if let Some(cg) = place.cgroup {
            cmd.arg("--join").arg(cg.procs());
        }
        cmd.stdout(Stdio::piped()).stdin(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting govtest-load {args:?}"))?;
        if let Some(cg) = place.cgroup {
            cg.join_v1(child.id())?;
        }
        self.procs.push(child);
        Ok(self.procs.len() - 1)
    }

    /// Reads child `i`'s stdout up to its first line containing `ready`.
    pub fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let out = self.procs[i].stdout.as_mut().context("stdout")?;
        let mut buf = Vec::new();
        let mut b = [0u8; 1];
        while !String::from_utf8_lossy(&buf).contains("ready") {
            if out.read(&mut b)? == 0 {
                bail!("workload {i} ended before it was ready");
            }
            buf.push(b[0]);
        }
        Ok(())
    }

    /// Waits for child `i`; its stdout.
    pub fn output(&mut self, i: usize) -> anyhow::Result<String> {
        let child = &mut self.procs[i];
        let mut out = String::new();
        if let Some(mut s) = child.stdout.take() {
            s.read_to_string(&mut out)?;
        }
        let st = child.wait()?;
        if !st.success() {
            bail!("workload {i} failed ({st}): {out}");
        }
        Ok(out)
    }
}

impl Drop for Workloads {
    fn drop(&mut self) {
        for c in &mut self.procs {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// `governor run` with a temporary config, stopped (SIGTERM, then SIGKILL,
/// by pid) when dropped.
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    pub metrics: String,
    pub log: PathBuf,
    /// CLOCK_MONOTONIC (ns) of the agent's time zero, for its `at_s`.
    pub zero_ns: u64,
    _dir: Scratch,
    _journal: Scratch,
}

static PORTS: AtomicU32 = AtomicU32::new(0);

impl Agent {
    /// Prints the decisions of `policy` logged so far, one line each with
    /// its reason, indented under the run they belong to.
    pub fn print_decisions(&self, policy: &str) {
        let needle = format!("policy {policy}:");
        for line in fs::read_to_string(&self.log).unwrap_or_default().lines() {
            if let Some(at) = line.find(&needle) {
                eprintln!("      {}", &line[at..]);
            }
        }
    }

    /// Starts the agent with `policies` (TOML `[[policy]]` tables) and the
    /// `[agent]` keys it needs, plus `extra` agent keys (e.g. `netns = ...`).
    pub fn start(extra: &str, policies: &str) -> anyhow::Result<Self> {
        let dir = Scratch::new("agent")?;
        // The journal on a tmpfs, as under /run on a systemd host: on this
        // machine's disk an fsync took up to 1.2 s, which delayed actions
        // (a reaction trip of 774 ms in a full run).
        let journal = Scratch::in_memory("journal")?;
        let socket = dir.0.join("governor.sock");
        let port =
            30_000 + (std::process::id() % 10_000) + PORTS.fetch_add(1, Ordering::Relaxed) % 1000;
        let metrics = format!("127.0.0.1:{port}");
        let config = dir.0.join("governor.toml");
        fs::write(
            &config,
            format!(
                "[agent]\ntick = \"100ms\"\nmetrics_addr = \"{metrics}\"\nstatus_socket = \"{}\"\njournal_dir = \"{}\"\nrecord_dir = \"{}\"\nseed = 7\n{extra}\n{policies}",
                socket.display(),
                journal.0.display(),
                journal.0.join("record").display()
            ),
        )?;
        let log = dir.0.join("governor.log");
        let child = Command::new(crate::util::target_dir().join("release/governor"))
            .args(["run", "--config"])
            .arg(&config)
            .env("GOVERNOR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .context("starting governor run")?;
        let mut agent = Self {
            child,
            socket,
            metrics,
            log,
            zero_ns: 0,
            _dir: dir,
            _journal: journal,
        };
        let up = eventually(Duration::from_secs(20), || agent.status().is_ok());
        if !up {
            bail!(
                "the agent did not come up; log:\n{}",
                fs::read_to_string(&agent.log).unwrap_or_default()
            );
        }
        // The report's `uptime_s` is the time of the agent's last tick, so
        // `now − uptime_s` overstates time zero by up to a tick: take the
        // smallest over three ticks' worth of reads 2 ms apart.
        let mut zero = u64::MAX;
        let end = Instant::now() + Duration::from_millis(350);
        while Instant::now() < end {
            let before = mono_ns();
            if let Ok(s) = agent.status() {
                let up = s["uptime_s"].as_f64().unwrap_or(0.0);
                zero = zero.min(before.saturating_sub((up * 1e9) as u64));
            }
            thread::sleep(Duration::from_millis(2));
        }
        agent.zero_ns = zero;
        Ok(agent)
    }

    /// Its status report (JSON).
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(serde_json::from_str(&text)?)
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where it records (`record_dir`; kept until the agent is dropped).
    pub fn record_dir(&self) -> PathBuf {
        self._journal.0.join("record")
    }

    /// Stops it (SIGTERM, then SIGKILL after 3 s) and waits for it; its
    /// directories stay until it is dropped.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: signalling our own child by pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = eventually(Duration::from_secs(3), || {
                matches!(self.child.try_wait(), Ok(Some(_)))
            });
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// GET /metrics from `addr`.
pub fn scrape(addr: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// The value of the first metric line starting with `prefix`.
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// One sample of a policy over time.
#[derive(Debug, Clone, Copy)]
pub struct PolicySample {
    /// Seconds since the sampler started.
    pub t: f64,
    pub signal: f64,
    pub rung: f64,
}

/// Scrapes `policy`'s signal and rung every 100 ms until stopped.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<PolicySample>>>,
}

impl Sampler {
    pub fn start(agent: &Agent, policy: &str, t0: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let addr = agent.metrics.clone();
        let sig = format!("governor_policy_signal{{policy=\"{policy}\"}}");
        let rung = format!("governor_policy_rung{{policy=\"{policy}\"}}");
        let handle = thread::spawn(move || {
            let mut out = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let text = scrape(&addr);
                out.push(PolicySample {
                    t: t0.elapsed().as_secs_f64(),
                    signal: metric(&text, &sig).unwrap_or(f64::NAN),
                    rung: metric(&text, &rung).unwrap_or(f64::NAN),
                });
                thread::sleep(Duration::from_millis(100));
            }
            out
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Vec<PolicySample> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
