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
