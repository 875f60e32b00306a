//! `governor top` against a real dry-run agent: the full screen inside a
//! private tmux server (read back with `capture-pane`), and the plain lines
//! when stdout is a pipe.
//!
//! The agent watches a test-owned cgroup (a worker and two hogs share CPU 0
//! in two test cgroups, so its run-queue signal moves) and a port of a
//! test-owned network namespace whose listener never accepts: three
//! connections wait in its accept queue of 16. Everything is dry-run.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use governor_integration::{
    AgentConfig, AgentProcess, Children, NetNs, TestCgroup, enter_netns, governor_bin,
    require_root, skip,
};

const BACKLOG: i32 = 16;
const QUEUED: usize = 3;

/// A listener in `ns` that never accepts, with [`QUEUED`] connections
/// waiting in its accept queue; closed when dropped.
struct StuckListener {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl StuckListener {
    fn start(ns: &NetNs) -> Self {
        let path = ns.path();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            enter_netns(&path);
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            s.bind(&addr.into()).expect("bind");
            s.listen(BACKLOG).expect("listen");
            let local = s.local_addr().expect("addr").as_socket().expect("inet");
            let clients: Vec<_> = (0..QUEUED)
                .map(|_| std::net::TcpStream::connect(local).expect("connect"))
                .collect();
            tx.send(local.port()).expect("send port");
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
            drop(clients);
        });
        let port = rx.recv().expect("listener port");
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StuckListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A dry-run agent with a run-queue policy on a test cgroup under load and
/// an accept-queue policy on a test namespace's port. Field order is drop
/// order: the agent stops before its cgroups and namespace go.
struct Setup {
    agent: AgentProcess,
    _load: Children,
    _listener: StuckListener,
    _ns: NetNs,
    _api: TestCgroup,
    _batch: TestCgroup,
    port: u16,
    api: String,
    _dir: tempfile::TempDir,
}

fn setup(tag: &str, offset: u16) -> Setup {
    require_root();
    let api = TestCgroup::new(&format!("{tag}-api"));
    let batch = TestCgroup::new(&format!("{tag}-batch"));
    let ns = NetNs::new(tag);
    let listener = StuckListener::start(&ns);
    let mut load = Children::new(env!("CARGO_BIN_EXE_govtest-load"));
    let (pa, pb) = (api.procs(), batch.procs());
    let (pa, pb) = (pa.to_str().expect("utf-8"), pb.to_str().expect("utf-8"));
    load.spawn(&["worker", "--cpu", "0", "--seconds", "60", "--join", pa]);
    for _ in 0..2 {
        load.spawn(&["hog", "--cpu", "0", "--seconds", "60", "--join", pb]);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics_port = 41_000 + (std::process::id() % 20_000) as u16 + offset;
    let files = AgentConfig::new(dir.path(), format!("127.0.0.1:{metrics_port}"), 3)
        .netns(&ns.path())
        .dry_run(true)
        .write(&format!(
            r#"[[policy]]
name = "top-{tag}-runq"
signal = {{ kind = "runq_p99", cgroup = "{api}" }}
high = "2ms"
low = "500us"
for = "300ms"
settle = "1s"
recover_every = "5s"
ladder = [{{ action = "cpu_limit", cgroup = "{batch}", cpus = 0.2 }}]

[[policy]]
name = "top-{tag}-accept"
signal = {{ kind = "accept_queue_fill", port = {port} }}
high = 0.9
low = 0.1
ladder = [{{ action = "throttle_connections", port = {port}, rate = "50/s", burst = 5, mode = "reset" }}]
"#,
            api = api.path,
            batch = batch.path,
            port = listener.port,
        ));
    let agent = AgentProcess::start(&files.config, &files.socket, &files.log);
    Setup {
        agent,
        _load: load,
        port: listener.port,
        _listener: listener,
        _ns: ns,
        api: api.path.to_string(),
        _api: api,
        _batch: batch,
        _dir: dir,
    }
}

/// A private tmux server (`tmux -L NAME`), killed when dropped.
struct Tmux {
    name: String,
}

impl Tmux {
    /// None if tmux is not installed.
    fn new(tag: &str) -> Option<Self> {
        let ok = Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Self {
            name: format!("governor-top-{}-{tag}", std::process::id()),
        })
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-u", "-L", &self.name, "-f", "/dev/null"])
            .args(args)
            .env("LC_ALL", "C.UTF-8")
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    /// A detached 160×48 session running `sh -c SCRIPT`.
    fn start(&self, script: &str) {
        let out = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "48",
            "sh",
            "-c",
            script,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The visible screen, as text.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// The screen once `cond` holds of it, within `timeout`; else the last.
    fn wait_screen(&self, timeout: Duration, cond: impl Fn(&str) -> bool) -> (bool, String) {
        let end = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if cond(&s) {
                return (true, s);
            }
            if Instant::now() > end {
                return (false, s);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// True if a `governor` runs as a child of the pane's shell.
    fn top_runs(&self) -> bool {
        !self.top_pids().is_empty()
    }

    /// The pids of the `governor`s running as children of the pane's
    /// shell (not zombies).
    fn top_pids(&self) -> Vec<u32> {
        let out = self.cmd(&["list-panes", "-t", "top", "-F", "#{pane_pid}"]);
        let Ok(shell) = String::from_utf8_lossy(&out.stdout).trim().parse::<u32>() else {
            return Vec::new();
        };
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
                // pid (comm) state ppid …
                let (head, tail) = stat.rsplit_once(") ")?;
                let mut f = tail.split_whitespace();
                let state = f.next()?;
                let ppid = f.next()?.parse::<u32>().ok()?;
                (ppid == shell && head.ends_with("(governor") && state != "Z").then_some(pid)
            })
            .collect()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn has_braille(s: &str) -> bool {
    s.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c))
}

/// The script of the pane: a marker, top, then how it exited and whether the
/// terminal is back in canonical mode; then it waits to be read.
fn pane_script(args: &str) -> String {
    format!(
        "echo BEFORE-TOP; {bin} top {args}; echo \"TOP-EXITED rc=$?\"; \
         stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; \
         echo TTY-END; exec sleep 600",
        bin = governor_bin().display(),
    )
}

/// After `q`: top exited 0, the normal screen (with the marker printed
/// before it) is back, and the terminal is canonical with echo again.
fn assert_quit_and_restored(tmux: &Tmux) {
    let out = tmux.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success(), "send-keys q");
    let (done, screen) = tmux.wait_screen(Duration::from_secs(10), |s| s.contains("TTY-END"));
    assert!(done, "top did not quit on q; screen:\n{screen}");
    assert!(screen.contains("TOP-EXITED rc=0"), "{screen}");
    assert!(
        screen.contains("BEFORE-TOP"),
        "the alternate screen was not left:\n{screen}"
    );
    let tty = screen
        .lines()
        .find(|l| l.contains("TTY-END"))
        .expect("tty line");
    let modes: Vec<&str> = tty.split_whitespace().collect();
    assert!(
        modes.contains(&"icanon") && modes.contains(&"echo"),
        "the terminal is still raw after top: {tty:?}"
    );
    assert!(!tmux.top_runs(), "top still runs in the pane");
}

#[test]
fn top_shows_policies_watermarks_and_a_chart_and_q_restores_the_terminal() {
    let Some(tmux) = Tmux::new("screen") else {
        skip("tmux is not installed (cargo xtask setup installs it)");
        return;
    };
    let s = setup("tui", 0);
    let name = format!("top-{}-runq", "tui");
    tmux.start(&pane_script(&format!(
        "--socket {} --interval 200ms",
        s.agent.socket.display()
    )));
    let (ok, screen) = tmux.wait_screen(Duration::from_secs(20), |sc| {
        sc.contains(&format!("{name}  rung "))
            && sc.contains("high 2ms  low 500us")
            && sc.contains("high 0.9  low 0.1")
            && sc.contains(&s.port.to_string())
            && sc.contains("now")
            && has_braille(sc)
    });
    assert!(
        ok,
        "top did not show the policy, its rung, watermarks and a chart; screen:\n{screen}\nagent log:\n{}",
        s.agent.log_text()
    );
    println!("{screen}");
    let rung_line = screen
        .lines()
        .find(|l| l.contains(&format!("{name}  rung ")))
        .expect("rung line");
    assert!(
        rung_line.contains("rung 0/1") || rung_line.contains("rung 1/1"),
        "{rung_line}"
    );
    assert!(
        screen.contains(&format!("{}/{BACKLOG}", QUEUED)),
        "the port's accept queue ({QUEUED}/{BACKLOG}) is not shown:\n{screen}"
    );
    assert!(
        !screen.contains("BEFORE-TOP"),
        "not on the alternate screen"
    );
    assert!(screen.contains("DRY-RUN"));
    assert!(tmux.top_runs(), "top is not a child of the pane's shell");
    assert_quit_and_restored(&tmux);
}

#[test]
fn top_says_when_the_agent_is_unreachable_and_keeps_trying() {
    let Some(tmux) = Tmux::new("gone") else {
        skip("tmux is not installed (cargo xtask setup installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    tmux.start(&pane_script(&format!(
        "--socket {} --interval 200ms",
        socket.display()
    )));
    let want = format!(
        "agent not reachable at {}, retrying every 200ms: cannot reach the agent",
        socket.display()
    );
    let (ok, screen) = tmux.wait_screen(Duration::from_secs(10), |s| s.contains(&want));
    assert!(ok, "no 'not reachable' line; screen:\n{screen}");
    thread::sleep(Duration::from_millis(600));
    assert!(tmux.top_runs(), "top gave up");
    assert_quit_and_restored(&tmux);
}

#[test]
fn top_exits_when_its_terminal_goes_away() {
    let Some(tmux) = Tmux::new("hup") else {
        skip("tmux is not installed (cargo xtask setup installs it)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("none.sock");
    tmux.start(&pane_script(&format!(
        "--socket {} --interval 200ms",
        socket.display()
    )));
    let (ok, screen) = tmux.wait_screen(Duration::from_secs(10), |s| {
        s.contains("agent not reachable")
    });
    assert!(ok, "top did not start; screen:\n{screen}");
    let pids = tmux.top_pids();
    assert_eq!(pids.len(), 1, "one top in the pane: {pids:?}");
    // The terminal hangs up under it (as when an ssh session drops).
    let _ = tmux.cmd(&["kill-server"]);
    let gone = governor_integration::eventually(Duration::from_secs(5), || {
        !Path::new(&format!("/proc/{}", pids[0])).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pids[0]))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, t)| t.starts_with('Z')))
    });
    if !gone {
        // SAFETY: our own child's child, by pid; it is left over otherwise.
        unsafe { libc::kill(i32::try_from(pids[0]).expect("pid"), libc::SIGKILL) };
    }
    assert!(gone, "top kept running after its terminal hung up");
}

/// Reads `child`'s stdout until `blocks` plain blocks (each starts with
/// `governor: `) have come, or `timeout`.
fn read_blocks(stdout: std::process::ChildStdout, blocks: usize, timeout: Duration) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let end = Instant::now() + timeout;
    let mut text = String::new();
    let mut seen = 0;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Ok(line) = rx.recv_timeout(left) else {
            break;
        };
        if line.starts_with("governor: ") {
            seen += 1;
            if seen > blocks {
                break;
            }
        }
        text.push_str(&line);
        text.push('\n');
    }
    text
}

#[test]
fn off_a_terminal_top_prints_plain_blocks() {
    let s = setup("plain", 1);
    let mut child = Command::new(governor_bin())
        .args(["top", "--interval", "300ms", "--socket"])
        .arg(&s.agent.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("governor top");
    let stdout = child.stdout.take().expect("stdout");
    // Its cgroups and ports come from the first snapshot: wait for 3 blocks.
    let text = read_blocks(stdout, 3, Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    println!("{text}");
    let blocks = text.matches("governor: ").count();
    assert_eq!(blocks, 3, "one block per poll:\n{text}");
    assert!(text.contains("top-plain-runq"), "{text}");
    assert!(
        text.contains("  top-plain-runq: high 2ms  low 500us"),
        "{text}"
    );
    assert!(
        text.contains("  top-plain-accept: high 0.9  low 0.1"),
        "{text}"
    );
    let last = text.rsplit("governor: ").next().expect("a block");
    assert!(
        last.contains("CGROUP (by run-queue p99)"),
        "no cgroup table:\n{last}"
    );
    assert!(
        last.contains(&s.api),
        "the loaded test cgroup is not listed:\n{last}"
    );
    let port = last
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&s.port.to_string()))
        .unwrap_or_else(|| panic!("port {} missing:\n{last}", s.port));
    let cols: Vec<&str> = port.split_whitespace().collect();
    assert_eq!(
        cols[1..3],
        [QUEUED.to_string(), BACKLOG.to_string()],
        "queue and backlog of port {}: {port}",
        s.port
    );
}

#[test]
fn top_once_prints_one_block_or_fails_when_nobody_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket: PathBuf = dir.path().join("none.sock");
    let out = Command::new(governor_bin())
        .args(["top", "--once", "--socket"])
        .arg(&socket)
        .output()
        .expect("governor top --once");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot reach the agent at {}", socket.display())),
        "{err}"
    );

    let s = setup("once", 2);
    // The first answer may come before the first tick.
    let ticked = governor_integration::eventually(Duration::from_secs(10), || {
        s.agent
            .status()
            .is_some_and(|r| !r.policies.is_empty() && !r.top_cgroups.is_empty())
    });
    assert!(ticked, "no tick; log:\n{}", s.agent.log_text());
    let out = Command::new(governor_bin())
        .args(["top", "--once", "--socket"])
        .arg(&s.agent.socket)
        .output()
        .expect("governor top --once");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches("governor: ").count(), 1, "{text}");
    assert!(
        text.contains("top-once-runq: high 2ms  low 500us"),
        "{text}"
    );
    assert!(text.contains(&s.api), "the loaded cgroup is listed: {text}");
}
