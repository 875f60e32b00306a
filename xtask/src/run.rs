//! `cargo xtask run`: setup, build, then the agent on this host in dry-run.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, ExitCode},
};

use anyhow::Context as _;

use crate::{
    setup,
    util::{is_root, run as run_cmd, say, workspace_root},
};

/// Builds governor in release mode and runs it in the foreground until Ctrl-C.
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
    say(format!(
        "starting `{} run --dry-run --live{}{}` with the embedded default config; Ctrl-C stops it",
        bin.display(),
        if args.is_empty() { "" } else { " " },
        args.join(" ")
    ));
    let mut cmd = Command::new(&bin);
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
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
