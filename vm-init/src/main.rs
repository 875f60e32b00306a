//! The init (PID 1) of governor's VM tests, packed by `cargo xtask vm-test`
//! into a newc initramfs beside the integration test binaries.
//!
//! It mounts what a modern host has (proc, sysfs, devtmpfs, a tmpfs `/tmp`,
//! cgroup2 at `/sys/fs/cgroup` with every controller enabled for children,
//! bpffs, tracefs), loads the kernel modules packed under `/modules`, brings
//! `lo` up, runs each binary under `/tests` with `--test-threads=1` (and every
//! test's output shown, passing or not) between
//! marker lines on the serial console, prints one result line, and powers
//! off. It powers off on its own panic too, so a broken init never hangs
//! the VM until the runner's time-out.
//!
//! Console protocol (read by `xtask/src/vm/mod.rs`):
//!
//! ```text
//! GOVTEST-INIT start                       first line: the guest reached userspace
//! GOVTEST-INIT kernel <release>
//! GOVTEST-INIT note <text>                 setup facts (a module that did not load, …)
//! GOVTEST-BEGIN <binary>
//! ...libtest output...
//! GOVTEST-END <binary> <exit code | signal N>
//! GOVTEST-RESULT binaries=<n> failed=<n>   last line before power-off
//! GOVTEST-INIT panic <message>             instead of the result, if init itself failed
//! ```
//!
//! Invoked as `ip` (a symlink in the initramfs) it does only
//! `ip link set DEV up`, the one iproute2 command the tests run, so that
//! guests need no iproute2.

use std::{
    ffi::CString,
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

/// Test binaries, one per file.
const TESTS_DIR: &str = "/tests";
/// Kernel modules, loaded in file-name order.
const MODULES_DIR: &str = "/modules";

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if Path::new(&argv0).file_name().is_some_and(|n| n == "ip") {
        return ip_applet();
    }
    std::panic::set_hook(Box::new(|info| {
        println!("GOVTEST-INIT panic {info}");
        power_off();
    }));
    println!("GOVTEST-INIT start");
    if let Err(e) = init() {
        println!("GOVTEST-INIT panic {e}");
    }
    power_off();
}

fn init() -> io::Result<()> {
    setup()?;
    let mut tests: Vec<PathBuf> = fs::read_dir(TESTS_DIR)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    tests.sort();
    // `govtest.only=sensors,record_cli` on the kernel command line (`cargo
    // xtask vm-test --append …`) runs only those test binaries.
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if let Some(only) = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("govtest.only="))
    {
        let only: Vec<&str> = only.split(',').collect();
        tests.retain(|t| {
            t.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| only.contains(&n))
        });
        println!("GOVTEST-INIT note only {only:?}");
    }
    let mut failed = 0;
    for t in &tests {
        let name = t
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        println!("GOVTEST-BEGIN {name}");
        let status = Command::new(t)
            .args(["--test-threads=1", "--show-output"])
            .env_clear()
            .envs([
                ("PATH", "/sbin:/bin"),
                ("HOME", "/tmp"),
                ("TMPDIR", "/tmp"),
                // Lets a test adapt to emulation, only with a stated reason.
                ("GOVERNOR_TEST_ENV", "vm"),
                ("GOVERNOR_BIN", "/bin/governor"),
            ])
            .current_dir("/tmp")
            .status();
        let how = match status {
            Ok(s) => {
                if !s.success() {
                    failed += 1;
                }
                match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(sig)) => format!("signal {sig}"),
                    (None, None) => "unknown".into(),
                }
            }
            Err(e) => {
                failed += 1;
                format!("not started: {e}")
            }
        };
        println!("GOVTEST-END {name} {how}");
    }
    println!("GOVTEST-RESULT binaries={} failed={failed}", tests.len());
    Ok(())
}

/// The mounts, modules and loopback a test expects of a host. `/tmp` is the
/// initramfs's own (writable) directory, not a new tmpfs: the workload
/// binaries are packed at the absolute paths the tests were built with,
/// which lie under /tmp when the clone does.
fn setup() -> io::Result<()> {
    for (fstype, target) in [
        ("proc", "/proc"),
        ("sysfs", "/sys"),
        ("devtmpfs", "/dev"),
        ("cgroup2", "/sys/fs/cgroup"),
        ("bpf", "/sys/fs/bpf"),
        ("tracefs", "/sys/kernel/tracing"),
    ] {
        mount(fstype, target).map_err(|e| io::Error::other(format!("mount {target}: {e}")))?;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("GOVTEST-INIT kernel {}", release.trim());

    // Every controller available to the root's children, as on a systemd host.
    let controllers = fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")?;
    for c in controllers.split_whitespace() {
        if let Err(e) = fs::write("/sys/fs/cgroup/cgroup.subtree_control", format!("+{c}")) {
            println!("GOVTEST-INIT note cgroup controller {c} not enabled: {e}");
        }
    }
    println!(
        "GOVTEST-INIT note cgroup2 controllers: {}",
        controllers.trim()
    );

    if let Ok(dir) = fs::read_dir(MODULES_DIR) {
        let mut modules: Vec<PathBuf> = dir.filter_map(Result::ok).map(|e| e.path()).collect();
        modules.sort();
        for m in modules {
            match load_module(&m) {
                Ok(()) => println!("GOVTEST-INIT note module loaded: {}", m.display()),
                Err(e) => println!("GOVTEST-INIT note module {} not loaded: {e}", m.display()),
            }
        }
    }
    link_up("lo").map_err(|e| io::Error::other(format!("bringing lo up: {e}")))?;
    io::stdout().flush()
}

fn mount(fstype: &str, target: &str) -> io::Result<()> {
    fs::create_dir_all(target)?;
    let t = CString::new(target).map_err(io::Error::other)?;
    let f = CString::new(fstype).map_err(io::Error::other)?;
    // SAFETY: every pointer is a valid NUL-terminated string or null (data).
    let rc = unsafe { libc::mount(f.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn load_module(path: &Path) -> io::Result<()> {
    let file = fs::File::open(path)?;
    let params = c"";
    // SAFETY: a valid open fd and a NUL-terminated parameter string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            params.as_ptr(),
            0,
        )
    };
    match rc {
        0 => Ok(()),
        _ => {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Sets IFF_UP on `dev` in the calling thread's network namespace.
fn link_up(dev: &str) -> io::Result<()> {
    // SAFETY: socket takes plain integers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened by us and is owned from here on.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = dev.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::other(format!("interface name {dev:?} too long")));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: fd is a socket and req a valid ifreq naming the interface.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS as _, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above, with the flags to set.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS as _, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `ip link set DEV up`, and nothing else.
fn ip_applet() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["link", "set", dev, "up"] | ["link", "set", "dev", dev, "up"] => match link_up(dev) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ip (vm-init): link set {dev} up: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "ip (vm-init): only `ip link set DEV up` is implemented in the test VM, not {:?}",
                args
            );
            ExitCode::FAILURE
        }
    }
}

fn power_off() -> ! {
    let _ = io::stdout().flush();
    // SAFETY: sync and reboot take no pointers; as PID 1 we may power off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // reboot only returns on failure; exiting PID 1 panics the kernel, which
    // the runner reports (and -no-reboot turns into QEMU's exit).
    std::process::exit(1)
}
