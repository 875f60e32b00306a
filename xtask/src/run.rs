//! `cargo xtask run`: setup, build, then the agent on this host in dry-run.
//!
//! On a terminal the agent runs in the background, its log in
//! `<target>/governor-run.log`, and `governor top` shows it in the
//! foreground; quitting top stops the agent (SIGTERM, by pid; it reverts).
//! Off a terminal the agent runs in the foreground with `--live` lines.

use std::{
    io::IsTerminal as _,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    setup,
    util::{is_root, run as run_cmd, say, workspace_root},
};

/// The status socket of the embedded default config.
const DEFAULT_SOCKET: &str = "/run/governor/governor.sock";
/// How long the agent may take to load its probes and answer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to revert and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Builds governor in release mode and runs it until Ctrl-C (or `q` in top).
pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    setup::setup()?;
    let root = workspace_root();
    say("building governor (release; embeds the kernel programs)");
    run_cmd(
        Command::new("cargo")
            .args(["build", "--release", "--package", "governor"])
            .current_dir(&root),
    )?;
    if !is_root() {
        anyhow::bail!("loading eBPF programs needs root (CAP_BPF, CAP_PERFMON): rerun as root");
    }
    let bin = crate::util::target_dir().join("release/governor");
    if std::io::stdout().is_terminal() && std::io::stdin().is_terminal() {
        with_top(&bin, args)
    } else {
        live_lines(&bin, args)
    }
}

/// Off a terminal: the agent in the foreground, one `--live` line a second.
fn live_lines(bin: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    say(format!(
        "starting `{} run --dry-run --live{}{}` with the embedded default config; Ctrl-C stops it",
        bin.display(),
        if args.is_empty() { "" } else { " " },
        args.join(" ")
    ));
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--dry-run").arg("--live").args(args);
    // Ctrl-C reaches the whole foreground process group: let the agent handle
    // it (revert, detach, report) while we wait for it to finish.
    // SAFETY: SIG_IGN is async-signal-safe and we restore it below.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    // SAFETY: restores the default disposition.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
    Ok(exit_code(status))
}

fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}

/// Set by SIGINT, SIGTERM and SIGHUP while we run the agent and top.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The status socket the agent will use: `status_socket` of the config
/// passed with `--config`, else the default's.
fn socket_of(args: &[String]) -> PathBuf {
    let config = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--config=").map(str::to_owned))
        });
    config
        .and_then(|c| std::fs::read_to_string(c).ok())
        .and_then(|text| status_socket_in(&text))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// `status_socket = "…"` of a config's text (a plain line of `[agent]`).
fn status_socket_in(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|l| {
        let (key, value) = l.split_once('=')?;
        if key.trim() != "status_socket" {
            return None;
        }
        let v = value.trim();
        let v = v.split_once(" #").map_or(v, |(v, _)| v).trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))?;
        Some(PathBuf::from(v))
    })
}

/// The socket file at `path` (device, inode), if there is one.
fn socket_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// SIGTERM to the agent by its pid; waits for it (it reverts), SIGKILL
/// after [`STOP_TIMEOUT`].
fn stop(agent: &mut Child) -> anyhow::Result<ExitStatus> {
    if let Some(st) = agent.try_wait()? {
        return Ok(st);
    }
    if let Ok(pid) = i32::try_from(agent.id()) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let t = Instant::now();
    while t.elapsed() < STOP_TIMEOUT {
        if let Some(st) = agent.try_wait()? {
            return Ok(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    say(format!(
        "the agent did not stop within {STOP_TIMEOUT:?} of SIGTERM: killing it"
    ));
    agent.kill()?;
    Ok(agent.wait()?)
}

/// The last `n` lines of the log at `path`.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// On a terminal: the agent in the background, `governor top` in front.
fn with_top(bin: &Path, args: &[String]) -> anyhow::Result<ExitCode> {
    let log = crate::util::target_dir().join("governor-run.log");
    let socket = socket_of(args);
    say(format!(
        "starting `{} run --dry-run{}{}` in the background (log: {}), then `governor top --socket {}`; q or Ctrl-C quits both",
        bin.display(),
        if args.is_empty() { "" } else { " " },
        args.join(" "),
        log.display(),
        socket.display()
    ));
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // a handled signal is reset to the default in the children by exec.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let before = socket_id(&socket);
    let file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run")
        .arg("--dry-run")
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // A process group of its own: the terminal's Ctrl-C and hangup
            // (which the agent would take for a reload) are ours to pass on.
            libc::setpgid(0, 0);
            // If we die without stopping it, it is stopped (and reverts).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut agent = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;

    // Up when its socket is there (a new one, not a previous agent's).
    let t = Instant::now();
    let up = loop {
        if let Some(st) = agent.try_wait()? {
            say(format!(
                "the agent exited ({st}) before it answered; the end of {}:\n{}",
                log.display(),
                tail(&log, 20)
            ));
            return Ok(exit_code(st).max_failure());
        }
        let now = socket_id(&socket);
        if now.is_some() && now != before {
            break true;
        }
        if INTERRUPTED.load(Ordering::Relaxed) || t.elapsed() > START_TIMEOUT {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !up {
        let st = stop(&mut agent)?;
        say(format!(
            "{} before the agent answered on {}; agent {st}; log: {}",
            if INTERRUPTED.load(Ordering::Relaxed) {
                "interrupted"
            } else {
                "timed out"
            },
            socket.display(),
            log.display()
        ));
        return Ok(ExitCode::FAILURE);
    }

    let top = Command::new(bin)
        .arg("top")
        .arg("--socket")
        .arg(&socket)
        .status();
    let st = stop(&mut agent)?;
    say(format!("agent stopped ({st}); its log: {}", log.display()));
    match top {
        Err(e) => Err(anyhow::Error::new(e).context(format!("starting {} top", bin.display()))),
        Ok(top) if !top.success() => {
            say(format!("governor top exited with {top}"));
            Ok(ExitCode::FAILURE)
        }
        Ok(_) => Ok(exit_code(st)),
    }
}

/// An exit code that is a failure even if the agent's was 0.
trait MaxFailure {
    fn max_failure(self) -> ExitCode;
}

impl MaxFailure for ExitCode {
    fn max_failure(self) -> ExitCode {
        if self == ExitCode::SUCCESS {
            ExitCode::FAILURE
        } else {
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_read_from_the_config_given() {
        let text = "[agent]\ntick = \"100ms\"\nstatus_socket = \"/run/x/g.sock\"  # mine\n";
        assert_eq!(status_socket_in(text), Some(PathBuf::from("/run/x/g.sock")));
        assert_eq!(status_socket_in("[agent]\ntick = \"1s\"\n"), None);
        assert_eq!(socket_of(&[]), PathBuf::from(DEFAULT_SOCKET));
        let dir = std::env::temp_dir().join(format!("xtask-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("g.toml");
        std::fs::write(&cfg, text).expect("write");
        let arg = cfg.display().to_string();
        assert_eq!(
            socket_of(&["--config".into(), arg.clone()]),
            PathBuf::from("/run/x/g.sock")
        );
        assert_eq!(
            socket_of(&[format!("--config={arg}")]),
            PathBuf::from("/run/x/g.sock")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
