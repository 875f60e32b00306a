//! Boots one kernel with the test initramfs in QEMU and collects the serial
//! console, line by line, with the time each line arrived.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::util::show;

/// How to run QEMU.
#[derive(Debug, Clone)]
pub struct Machine {
    /// Use KVM instead of TCG (opt-in: nested KVM hangs on the build machines).
    pub kvm: bool,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Give up (and fail) after this long.
    pub timeout: Duration,
    /// A guest that prints nothing for this long is hung (killed); so is
    /// one whose kernel reports a lockup.
    pub silence: Duration,
    /// Appended to the kernel command line (e.g. `loglevel=7` to see stack dumps).
    pub append: String,
}

impl Default for Machine {
    /// TCG, 1 GiB, 2 CPUs, 10 minutes.
    fn default() -> Self {
        Self {
            kvm: false,
            memory_mib: 1024,
            cpus: 2,
            timeout: Duration::from_secs(600),
            silence: Duration::from_secs(180),
            append: String::new(),
        }
    }
}

/// What the console showed.
#[derive(Debug)]
pub struct Console {
    /// Lines, with seconds since QEMU started.
    pub lines: Vec<(f64, String)>,
    /// QEMU was killed at the time-out.
    pub timed_out: bool,
    /// QEMU was killed because the guest printed nothing for `silence`.
    pub hung: bool,
    /// QEMU's exit status, as text.
    pub exit: String,
    /// Seconds from QEMU's start to its end.
    pub secs: f64,
}

/// Boots `image` with `initrd`; every console line goes to `log` and to `each`.
pub fn boot(
    machine: &Machine,
    image: &Path,
    initrd: &Path,
    log: &Path,
    mut each: impl FnMut(f64, &str),
) -> anyhow::Result<Console> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // One host thread runs all vCPUs under TCG: with a thread per vCPU
    // (QEMU's default), a vCPU can run a stale translation of kernel code
    // another vCPU is patching (static keys: `int3` Oops in the scheduler
    // when a test writes `cpu.max`, seen on 6.12 on every run of 2026-11-26,
    // and soft lockups on 6.1), whatever the code under test.
    cmd.args([
        "-accel",
        if machine.kvm {
            "kvm"
        } else {
            "tcg,thread=single"
        },
    ])
    .args(["-m", &machine.memory_mib.to_string()])
    .args(["-smp", &machine.cpus.to_string()])
    .args(["-nographic", "-monitor", "none", "-no-reboot"])
    .arg("-kernel")
    .arg(image)
    .arg("-initrd")
    .arg(initrd)
    .arg("-append")
    .arg(format!("console=ttyS0 panic=-1 quiet {}", machine.append).trim_end())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut file = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    writeln!(file, "# {}", show(&cmd))?;
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| {
        format!(
            "starting `{}` (is qemu-system-x86 installed? `cargo xtask setup`)",
            show(&cmd)
        )
    })?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_owned();
                if tx.send((Instant::now(), line)).is_err() {
                    return;
                }
                buf.clear();
            }
        })
    })
    .collect();
    drop(tx);

    let deadline = started + machine.timeout;
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut hung = false;
    // Once the guest reports a lockup: when to kill it (after the kernel
    // has printed the stuck CPU's trace, which follows the line).
    let mut kill_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if let Some(at) = kill_at
            && now >= at
        {
            // Our own child, by its handle.
            let _ = child.kill();
            writeln!(file, "# the guest kernel reported a lockup: QEMU killed")?;
            break;
        }
        let left = deadline.saturating_duration_since(now);
        let wait = kill_at.map_or(left.min(machine.silence), |at| {
            at.saturating_duration_since(now)
        });
        match rx.recv_timeout(wait) {
            Ok((at, line)) => {
                let t = at.duration_since(started).as_secs_f64();
                writeln!(file, "[{t:8.3}] {line}")?;
                each(t, &line);
                // A kernel that reports a lockup keeps printing about it
                // every minute: hung all the same, without going silent.
                let lockup = is_lockup(&line);
                lines.push((t, line));
                if lockup && kill_at.is_none() {
                    hung = true;
                    kill_at = Some(Instant::now() + LOCKUP_TRACE);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) if kill_at.is_some() => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    timed_out = true;
                } else {
                    hung = true;
                }
                // Our own child, by its handle.
                let _ = child.kill();
                writeln!(
                    file,
                    "# {}: QEMU killed",
                    if hung {
                        format!(
                            "no console output for {:.0}s",
                            machine.silence.as_secs_f64()
                        )
                    } else {
                        format!("timed out after {:.0}s", machine.timeout.as_secs_f64())
                    }
                )?;
                break;
            }
        }
    }
    let status = child.wait().context("waiting for QEMU")?;
    for r in readers {
        let _ = r.join();
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(file, "# QEMU ended after {secs:.1}s: {status}")?;
    Ok(Console {
        lines,
        timed_out,
        hung,
        exit: status.to_string(),
        secs,
    })
}

/// How long a guest that reported a lockup is kept running, for its trace.
const LOCKUP_TRACE: Duration = Duration::from_secs(5);

/// A console line by which the guest kernel says a CPU is stuck.
fn is_lockup(line: &str) -> bool {
    line.contains("BUG: soft lockup - CPU#") || line.contains("rcu_preempt self-detected stall")
}

#[cfg(test)]
mod lockup_tests {
    use super::is_lockup;

    #[test]
    fn soft_lockups_and_rcu_stalls_are_lockups() {
        assert!(is_lockup(
            "[  156.566066] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [a_full_accept_q:336]"
        ));
        assert!(is_lockup(
            "[  131.257019] rcu: INFO: rcu_preempt self-detected stall on CPU"
        ));
        assert!(!is_lockup("GOVTEST-BEGIN sensors"));
    }
}
