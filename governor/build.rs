//! Builds the kernel programs (`governor-ebpf`) for `bpfel-unknown-none` with
//! the nightly toolchain and bpf-linker, so that the agent embeds them: one
//! build, one self-contained binary. Also records the git commit the
//! agent is built from (`governor_build_info{revision}`).

use std::{env, path::Path, process::Command};

use governor_toolchain as ebpf_toolchain;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../governor-common/src");
    println!("cargo:rerun-if-changed=../governor-ebpf/src");
    println!("cargo:rerun-if-env-changed=GOVERNOR_CACHE_DIR");
    println!("cargo:rerun-if-env-changed=PATH");
    revision();

    let toolchain = match ebpf_toolchain::preflight() {
        Ok(t) => t,
        Err(msg) => {
            // Name the missing piece and the command that installs it; exit
            // plainly (an Err would add a backtrace that hides the message).
            eprintln!("error: cannot build governor's kernel programs: {msg}");
            std::process::exit(1);
        }
    };

    // aya-build runs `rustup run nightly cargo build`, which finds bpf-linker
    // on PATH: put ours first.
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![toolchain.bpf_linker_dir];
    dirs.extend(env::split_paths(&path));
    let joined = env::join_paths(dirs)?;
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", joined) };

    let manifest_dir = env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../governor-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "governor-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// Sets `GOVERNOR_REVISION` for the crate: `$GOVERNOR_REVISION` if set,
/// else the commit of the git checkout being built (12 hex digits), else
/// "unknown" (a build from a source tarball, such as a Debian package's).
fn revision() {
    println!("cargo:rerun-if-env-changed=GOVERNOR_REVISION");
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    let revision = env::var("GOVERNOR_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // A new commit or checkout re-runs this script. Only files that exist
    // are named: a missing one would re-run it at every build.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let mut files = vec![format!("{git_dir}/HEAD"), format!("{git_dir}/packed-refs")];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            files.push(format!("{git_dir}/{r}"));
        }
        for f in files.iter().filter(|f| Path::new(f).exists()) {
            println!("cargo:rerun-if-changed={f}");
        }
    }
    println!("cargo:rustc-env=GOVERNOR_REVISION={revision}");
}
