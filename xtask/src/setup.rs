//! `cargo xtask setup`: installs what the build and the tests need, once.
//!
//! Every step checks first and installs only what is missing, so a second run
//! takes seconds and says nothing is missing.

use std::{fs, os::unix::fs::symlink, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::{
    ebpf_toolchain as tc,
    util::{is_root, output, run, say},
};

/// Debian packages used by the tests and benchmarks, and why.
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    (
        "bpftrace",
        "runqlat.bt, the peer of the run-queue probe in `xtask bench`",
    ),
    (
        "linux-perf",
        "`perf bench sched pipe`, the context-switch workload",
    ),
    (
        "stress-ng",
        "CPU hogs for tests, benchmarks and `governor observe` demos",
    ),
    ("wrk", "HTTP load in benchmarks"),
    ("nftables", "the static rate-limit baseline in benchmarks"),
    (
        "iproute2",
        "network namespaces and veth pairs for the network tests",
    ),
    (
        "systemd",
        "`systemd-analyze verify/security` of the unit file",
    ),
    (
        "qemu-system-x86",
        "the VM tests (`cargo xtask vm-test`) on Debian's kernels",
    ),
    (
        "qemu-utils",
        "kept beside qemu-system-x86, whose install alone removes it (qemu-img)",
    ),
    (
        "debian-archive-keyring",
        "verifies the other releases' signatures when fetching VM kernels",
    ),
    (
        "xz-utils",
        "decompresses the VM kernels' modules (.ko.xz) before packing them",
    ),
    (
        "mmdebstrap",
        "builds the Debian root filesystem of `cargo xtask vm-test --systemd`",
    ),
    (
        "cpio",
        "packs that root filesystem as the systemd VM's initramfs",
    ),
    (
        "prometheus",
        "`promtool` for the alert rules' unit tests and `check metrics`, and a private `prometheus` scraping the agent in the integration tests",
    ),
    (
        "chromium",
        "headless Chromium renders `governor replay --html` for the html_report test",
    ),
    (
        "tmux",
        "the `governor top` test drives the full-screen view in a tmux pane and reads the screen",
    ),
    (
        "bpftool",
        "names the programs of each tracer in `cargo xtask bench probes` and builds BCC's stand-in kernel headers from BTF",
    ),
    (
        "bpfcc-tools",
        "BCC's runqlat, run beside governor's probes and bpftrace's runqlat.bt by `cargo xtask bench probes`",
    ),
];

/// Services that a package's maintainer scripts start and enable, of which
/// the tests need only the binaries. When setup installs the package it stops
/// and disables the service at once (a Prometheus on :9090 and its TSDB
/// growing in `/var/lib` is nobody's wish on a build machine); a package that
/// was already installed is left as it is.
const SERVICES_NOT_WANTED: &[(&str, &str)] = &[("prometheus", "prometheus.service")];

/// What setup did.
#[derive(Debug, Default)]
pub struct Report {
    /// Things installed by this run.
    pub installed: Vec<String>,
}

/// Runs every setup step.
pub fn setup() -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut report = Report::default();
    say("setup: checking the toolchain, bpf-linker and Debian packages");
    nightly(&mut report)?;
    rust_src(&mut report)?;
    musl_target(&mut report)?;
    bpf_linker(&mut report)?;
    debian_packages(&mut report)?;
    if report.installed.is_empty() {
        eprintln!(
            "setup: nothing missing ({:.1}s)",
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "setup: installed {} ({:.1}s)",
            report.installed.join(", "),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}

fn ok(what: &str, detail: &str) {
    eprintln!("  ok       {what}: {detail}");
}

fn installing(what: &str, why: &str) {
    eprintln!("  install  {what}: {why}");
}

fn nightly(report: &mut Report) -> anyhow::Result<()> {
    match tc::nightly_id() {
        Ok(id) => ok("nightly toolchain", &id),
        Err(_) => {
            installing("nightly toolchain", "builds the kernel programs");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                tc::NIGHTLY,
                "--profile",
                "minimal",
            ]))?;
            report.installed.push("nightly".into());
        }
    }
    Ok(())
}

fn rust_src(report: &mut Report) -> anyhow::Result<()> {
    let sysroot = tc::nightly_sysroot().map_err(anyhow::Error::msg)?;
    if tc::has_rust_src(&sysroot) {
        ok("rust-src (nightly)", "present");
    } else {
        installing(
            "rust-src (nightly)",
            "`-Z build-std=core` for bpfel-unknown-none",
        );
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            tc::NIGHTLY,
        ]))?;
        report.installed.push("rust-src".into());
    }
    Ok(())
}

fn musl_target(report: &mut Report) -> anyhow::Result<()> {
    const MUSL: &str = "x86_64-unknown-linux-musl";
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if installed.lines().any(|l| l.trim() == MUSL) {
        ok("musl target (stable)", "present");
    } else {
        installing(
            "musl target (stable)",
            "static test binaries for the VM tests",
        );
        run(Command::new("rustup").args(["target", "add", MUSL]))?;
        report.installed.push(MUSL.into());
    }
    Ok(())
}

fn bpf_linker(report: &mut Report) -> anyhow::Result<()> {
    let id = tc::nightly_id().map_err(anyhow::Error::msg)?;
    let cache = tc::cache_dir();
    let bin = tc::bpf_linker_bin(&cache, &id);
    if bin.is_file() && output(Command::new(&bin).arg("--version")).is_some() {
        ok("bpf-linker", &format!("{} (cached)", bin.display()));
        return Ok(());
    }
    installing(
        "bpf-linker",
        &format!(
            "building against the nightly's LLVM into {} (about a minute or two)",
            bin.display()
        ),
    );
    let sysroot = tc::nightly_sysroot().map_err(anyhow::Error::msg)?;
    let libllvm = tc::nightly_libllvm(&sysroot).with_context(|| {
        format!(
            "no libLLVM.so.*-rust-* in {}/lib; the nightly is expected to ship its LLVM",
            sysroot.display()
        )
    })?;
    // bpf-linker's build looks for <prefix>/lib/libLLVM.so; the binary keeps
    // an rpath to <prefix>/lib and loads the file by its own name.
    let prefix = tc::llvm_prefix(&cache, &id);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let own_name = libllvm.file_name().context("libLLVM has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), own_name] {
        let link = lib.join(name);
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let root = tc::bpf_linker_root(&cache, &id);
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
            "--root",
        ])
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker")?;
    if output(Command::new(&bin).arg("--version")).is_none() {
        bail!("bpf-linker was built but does not run: {}", bin.display());
    }
    report.installed.push("bpf-linker".into());
    Ok(())
}

fn debian_packages(report: &mut Report) -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(pkg, _)| {
            let st = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !st.is_some_and(|s| s.contains("install ok installed"))
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        ok(
            "Debian packages",
            &format!("{} present", DEBIAN_PACKAGES.len()),
        );
        return Ok(());
    }
    for (pkg, why) in DEBIAN_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
        installing(pkg, why);
    }
    if !is_root() {
        bail!(
            "Debian packages missing ({}); run as root or: apt-get install -y {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    report
        .installed
        .extend(missing.iter().map(|s| s.to_string()));
    for (pkg, unit) in SERVICES_NOT_WANTED {
        if missing.contains(pkg) {
            stop_service(pkg, unit)?;
        }
    }
    Ok(())
}

/// True when systemd is PID 1 (then package installs start their units).
fn systemd_is_init() -> bool {
    fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd")
}

/// Stops and disables `unit`, which installing `pkg` just enabled (and,
/// with systemd as PID 1, started): `systemctl disable --now`. Without
/// systemd as PID 1 the postinst still enabled the unit for a later boot and
/// the package's init script in every runlevel, and started the daemon only
/// if `invoke-rc.d` let it: `systemctl --no-reload disable` undoes both
/// offline, and a daemon the init script reports running (by its pid file)
/// is stopped with it.
fn stop_service(pkg: &str, unit: &str) -> anyhow::Result<()> {
    eprintln!("  disable  {unit}: enabled by installing {pkg}; only its binaries are needed");
    if systemd_is_init() {
        return run(Command::new("systemctl").args(["disable", "--now", unit]));
    }
    run(Command::new("systemctl").args(["--no-reload", "disable", unit]))?;
    let script = format!("/etc/init.d/{pkg}");
    let running = std::path::Path::new(&script).is_file()
        && Command::new(&script)
            .arg("status")
            .output()
            .is_ok_and(|o| o.status.success());
    if running {
        run(Command::new(&script).arg("stop"))?;
    } else {
        ok(unit, "disabled; not running (systemd is not PID 1 here)");
    }
    Ok(())
}
