//! `cargo xtask vm-test --systemd`: governor's Debian package on a real
//! systemd host, in QEMU.
//!
//! 1. build (once) a Debian 12 root filesystem with systemd as PID 1 with
//!    `mmdebstrap`, from the mirror the host's apt already uses, and cache it
//!    outside the clone as a tarball and as a newc cpio:
//!    `<cache>/systemd-rootfs/bookworm-<hash>.{tar,cpio}`, where the hash
//!    covers the release and every mmdebstrap option (package list included),
//!    so a changed list builds a new one;
//! 2. fetch the kernel ([`super::kernel`], Debian's cloud kernels);
//! 3. write the initramfs `target/vm/systemd-<kernel>.cpio`: the cached
//!    rootfs cpio, followed by a second newc archive (the kernel unpacks
//!    concatenated archives in turn, later entries over earlier ones) with
//!    the kernel's `/lib/modules/<version>`, the `.deb` at
//!    [`GUEST_DEB`], the guest scripts of `tests/systemd/` in
//!    [`GUEST_DIR`], and the units: [`TEST_UNIT`] (a oneshot after
//!    `multi-user.target` that runs `check.sh` with its output on
//!    `/dev/ttyS0`, then powers off, on success and on failure alike).
//!    Debian's kernel packages ship no `modules.dep` (depmod makes it at
//!    install), and the host may have no `depmod`: the rootfs's own `kmod`
//!    is run on the host through the rootfs's dynamic loader
//!    (`<cache>/systemd-rootfs/bookworm-<hash>.kmod/`), and should that
//!    fail, a unit ordered before udev runs `depmod` in the guest (about
//!    16 s under TCG);
//! 4. boot it (`rdinit=/sbin/init`: systemd runs from the initramfs, and as
//!    there is no `/etc/initrd-release` it runs as a normal system), read the
//!    console and judge the `SYSTEMD-TEST:` lines: any `FAIL`, no `DONE`, a
//!    time-out, a hang or a kernel panic fails the run; `SKIP` is counted as
//!    skipped, never as passed.
//!
//! The package is `--deb PATH`, else built from this tree by
//! [`crate::deb::build`]. The console is kept in
//! `target/vm/systemd-<kernel>.log`.

use std::{
    fs,
    io::{BufWriter, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    KernelRun, Outcome, VmArgs,
    initramfs::Newc,
    kernel::{self, Kernel, KernelSpec},
    qemu,
};
use crate::{
    ebpf_toolchain::cache_dir,
    util::{is_root, output, run, say, show, workspace_root},
};

/// The Debian release of the root filesystem.
pub const RELEASE: &str = "bookworm";

/// Packages of the root filesystem (with their dependencies, no
/// recommends), beyond the `apt` variant's essential set. What the guest
/// tests use: systemd as init and its D-Bus, `ip`, `ps`/`pgrep`, `modprobe`
/// and `depmod` for the kernel's modules, python3 and curl for later checks
/// (metrics on localhost), bpftool to count loaded BPF programs.
/// (stress-ng is left out: with its mesa and ipsec libraries it adds about
/// 30 MB to a 200 MB initramfs.)
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "procps",
    "kmod",
    "python3",
    "curl",
    "bpftool",
];

/// mmdebstrap's hook that sets up merged /usr without the `usrmerge`
/// package (which would pull in perl: 50 MB more).
const MERGED_USR_HOOK: &str = "/usr/share/mmdebstrap/hooks/merged-usr";

/// The test unit.
pub const TEST_UNIT: &str = "governor-systemd-test.service";
/// The depmod unit (before udev).
const DEPMOD_UNIT: &str = "governor-vm-depmod.service";
/// Where the package goes in the guest.
pub const GUEST_DEB: &str = "/root/governor.deb";
/// Where `tests/systemd/*` goes in the guest.
pub const GUEST_DIR: &str = "/usr/local/lib/governor-systemd-test";
/// The guest's hostname.
const HOSTNAME: &str = "governor-vm";
/// A fixed machine id: with the rootfs's empty one, systemd would treat the
/// boot as a first boot (and `systemd-firstboot` would prompt on the console).
const MACHINE_ID: &str = "5e1f0c0ffee0000000000000000000aa";
/// Longest the guest script may run before systemd fails the unit (which
/// then powers off too).
const SCRIPT_TIMEOUT_SECS: u64 = 480;
/// systemd stays silent on the console from the kernel's start to the test
/// unit (about 100 s under TCG): the hang detector must wait longer.
const MIN_SILENCE: Duration = Duration::from_secs(300);
/// The guest needs room for the unpacked initramfs (about 300 MB) in its
/// tmpfs root, besides the archive itself while it is unpacked.
const MIN_MEMORY_MIB: u32 = 2048;

/// Units masked in the guest: the serial getty would hang up `/dev/ttyS0`
/// under the test's output; the others only cost time (or prompt).
const MASKED: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty@tty1.service",
    "systemd-firstboot.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
];

/// `cargo xtask vm-test --systemd [--kernel …] [--deb PATH]`.
pub fn vm_test(args: &VmArgs) -> anyhow::Result<ExitCode> {
    let specs = if args.kernels.is_empty() {
        vec![KernelSpec::parse("6.1")?]
    } else {
        args.kernels
            .iter()
            .map(|k| KernelSpec::parse(k))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    // `--deb PATH` overrides building the package from this tree.
    let deb = match &args.deb {
        Some(p) => p.clone(),
        None => crate::deb::build(&workspace_root())?,
    };
    let machine = qemu::Machine {
        kvm: args.kvm,
        timeout: Duration::from_secs(args.timeout),
        append: args.append.clone(),
        ..qemu::Machine::default()
    };
    let mut runs = Vec::new();
    for spec in &specs {
        runs.push(run_systemd(spec, &deb, &machine)?);
    }
    super::print_summary(&runs);
    Ok(if runs.iter().all(KernelRun::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Boots `kernel` with the systemd root filesystem, installs `deb` in it
/// and runs `tests/systemd/check.sh` as a unit; returns the judged run
/// (label `systemd-<kernel>`). `machine` is used with at least 2 GiB of
/// memory and a 300 s silence limit; its `append` is added to the command
/// line.
pub fn run_systemd(
    kernel: &KernelSpec,
    deb: &Path,
    machine: &qemu::Machine,
) -> anyhow::Result<KernelRun> {
    let deb = fs::canonicalize(deb).with_context(|| format!("--deb {}", deb.display()))?;
    let package = output(
        Command::new("dpkg-deb")
            .args([
                "--show",
                "--showformat=${Package} ${Version} ${Architecture}",
            ])
            .arg(&deb),
    )
    .with_context(|| {
        format!(
            "{} is not a Debian package (dpkg-deb --show)",
            deb.display()
        )
    })?;
    let cache = cache_dir();
    let k = kernel::fetch(kernel, &cache)?;
    let label = format!("systemd-{}", k.label);
    let rootfs = rootfs(&cache)?;

    let root = workspace_root();
    let out_dir = root.join("target").join("vm");
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let initrd = out_dir.join(format!("{label}.cpio"));
    let started = Instant::now();
    // Without these, the guest's depmod unit makes them (about 16 s under TCG).
    let depmod_out = match &k.modules {
        Some(m) => match depmod(&rootfs.kmod, m, &out_dir.join(format!("{label}-depmod"))) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("vm {label}: depmod on the host failed ({e:#}); the guest runs it");
                None
            }
        },
        None => None,
    };
    let overlay = Overlay {
        deb: &deb,
        scripts: &root.join("tests").join("systemd"),
        modules: k.modules.as_deref(),
        depmod: depmod_out.as_deref(),
    };
    let size = pack(&rootfs.cpio, &overlay, &initrd)?;
    say(format!(
        "vm {label}: packed {} ({} MB: {}, {}{}, tests/systemd) in {:.1}s",
        initrd.display(),
        size / 1_000_000,
        rootfs
            .tar
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        package.trim(),
        if k.modules.is_some() {
            ", the kernel's modules"
        } else {
            ", no modules (a kernel image given by path)"
        },
        started.elapsed().as_secs_f64()
    ));

    let mut machine = machine.clone();
    machine.memory_mib = machine.memory_mib.max(MIN_MEMORY_MIB);
    machine.silence = machine.silence.max(MIN_SILENCE);
    machine.append = format!(
        "rdinit=/sbin/init systemd.show_status=0 systemd.firstboot=off {}",
        machine.append
    )
    .trim_end()
    .to_owned();
    boot_and_judge(&k, &label, &initrd, &machine, &out_dir)
}

/// The cached root filesystem.
#[derive(Debug)]
pub struct Rootfs {
    /// mmdebstrap's tarball.
    pub tar: PathBuf,
    /// The same tree as a newc cpio, ready to be the initramfs's first part.
    pub cpio: PathBuf,
    /// The rootfs's own `kmod`, its libraries and dynamic loader, to run
    /// its `depmod` on the host (which may have none) for the guest's kernel.
    pub kmod: PathBuf,
}

/// Returns the cached root filesystem, building what is missing.
pub fn rootfs(cache: &Path) -> anyhow::Result<Rootfs> {
    let dir = cache.join("systemd-rootfs");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let options = mmdebstrap_options();
    let stem = format!("{RELEASE}-{:016x}", fnv1a(options.join("\n").as_bytes()));
    let tar = dir.join(format!("{stem}.tar"));
    let cpio = dir.join(format!("{stem}.cpio"));
    if tar.is_file() {
        say(format!(
            "vm systemd: root filesystem cached: {}",
            tar.display()
        ));
    } else {
        build_tar(&options, &tar)?;
    }
    if !cpio.is_file() {
        build_cpio(&tar, &cpio)?;
    }
    let kmod = dir.join(format!("{stem}.kmod"));
    if !kmod.join("kmod").is_file() {
        extract_kmod(&tar, &kmod)?;
    }
    Ok(Rootfs { tar, cpio, kmod })
}

/// Where the rootfs keeps its libraries (and its dynamic loader).
const LIBDIR: &str = "usr/lib/x86_64-linux-gnu";
const LOADER: &str = "ld-linux-x86-64.so.2";

/// Copies `usr/bin/kmod`, the libraries it links and the dynamic loader
/// out of the rootfs tarball into `dest` (`kmod`, `lib/*`): they run on any
/// x86-64 Linux host when started through that loader. No root needed.
fn extract_kmod(tar: &Path, dest: &Path) -> anyhow::Result<()> {
    let tmp = dest.with_extension("kmod.partial");
    let _ = fs::remove_dir_all(&tmp);
    let tree = tmp.join("tree");
    fs::create_dir_all(tmp.join("lib")).with_context(|| format!("creating {}", tmp.display()))?;
    fs::create_dir_all(&tree)?;
    let result = (|| {
        run(Command::new("tar")
            .args(["--extract", "--file"])
            .arg(tar)
            .arg("--directory")
            .arg(&tree)
            .args(["./usr/bin/kmod", &format!("./{LIBDIR}")]))?;
        let libdir = tree.join(LIBDIR);
        let loader = libdir.join(LOADER);
        let mut list = Command::new(&loader);
        list.arg("--library-path")
            .arg(&libdir)
            .arg("--list")
            .arg(tree.join("usr/bin/kmod"));
        let libs = output(&mut list).with_context(|| format!("`{}` failed", show(&list)))?;
        for lib in libs
            .lines()
            .filter_map(|l| l.split_once(" => ")?.1.split_whitespace().next())
            .map(Path::new)
            .filter(|p| p.starts_with(&libdir))
        {
            let name = lib.file_name().context("a library without a name")?;
            fs::copy(lib, tmp.join("lib").join(name))
                .with_context(|| format!("copying {}", lib.display()))?;
        }
        fs::copy(&loader, tmp.join(LOADER))?;
        fs::copy(tree.join("usr/bin/kmod"), tmp.join("kmod"))?;
        fs::remove_dir_all(&tree)?;
        let _ = fs::remove_dir_all(dest);
        fs::rename(&tmp, dest).with_context(|| format!("renaming to {}", dest.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// Runs the rootfs's `depmod` for the kernel modules in `modules`
/// (`…/lib/modules/<version>`) in `work`, over a tree of symlinks to them,
/// and returns the directory holding the generated `modules.*` files.
fn depmod(kmod: &Path, modules: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let version = modules
        .file_name()
        .context("the kernel's modules directory has no name")?;
    let _ = fs::remove_dir_all(work);
    let out = work.join("lib/modules").join(version);
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for e in fs::read_dir(modules).with_context(|| format!("listing {}", modules.display()))? {
        let p = e?.path();
        let Some(name) = p.file_name() else { continue };
        if p.is_dir() {
            std::os::unix::fs::symlink(&p, out.join(name))?;
        } else {
            fs::copy(&p, out.join(name))?;
        }
    }
    let mut cmd = Command::new(kmod.join(LOADER));
    cmd.arg("--library-path")
        .arg(kmod.join("lib"))
        .args(["--argv0", "depmod"])
        .arg(kmod.join("kmod"))
        .arg("-b")
        .arg(work)
        .arg(version);
    run(&mut cmd)?;
    if !out.join("modules.dep.bin").is_file() {
        bail!("`{}` wrote no modules.dep.bin", show(&cmd));
    }
    Ok(out)
}

/// Every mmdebstrap option but the output and the mirror: the cache key.
fn mmdebstrap_options() -> Vec<String> {
    let mut o = vec![
        "--variant=apt".to_owned(),
        "--format=tar".to_owned(),
        format!("--include={}", PACKAGES.join(",")),
        "--aptopt=Acquire::Languages \"none\"".to_owned(),
        format!("--hook-dir={MERGED_USR_HOOK}"),
    ];
    // Documentation, manuals and translations: a smaller initramfs boots faster.
    for p in [
        "/usr/share/doc/*",
        "/usr/share/man/*",
        "/usr/share/info/*",
        "/usr/share/locale/*",
    ] {
        o.push(format!("--dpkgopt=path-exclude={p}"));
    }
    o.push(RELEASE.to_owned());
    o
}

/// Runs mmdebstrap into a temporary file beside `tar`, then renames it.
fn build_tar(options: &[String], tar: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "building the systemd root filesystem needs root (mmdebstrap's root mode); \
             run once as root, the result is cached in {}",
            tar.display()
        );
    }
    if output(Command::new("mmdebstrap").arg("--version")).is_none() {
        bail!("mmdebstrap is missing: `cargo xtask setup` (or apt-get install mmdebstrap)");
    }
    if !Path::new(MERGED_USR_HOOK).is_dir() {
        bail!("{MERGED_USR_HOOK} is missing (is mmdebstrap older than 1.0?)");
    }
    // The mirror (and its keyring) the host's apt uses, as for the kernels.
    let mirror = kernel::host_mirror()?;
    let source = format!(
        "deb [signed-by={}] {} {RELEASE} main",
        mirror.keyring, mirror.uri
    );
    let partial = tar.with_extension("tar.partial");
    let _ = fs::remove_file(&partial);
    say(format!(
        "vm systemd: building the {RELEASE} root filesystem with mmdebstrap from the host's \
         mirror {} (packages {}); takes a minute or two, once",
        mirror.uri,
        PACKAGES.join(" ")
    ));
    let started = Instant::now();
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(options).arg(&partial).arg(&source);
    let result = run(&mut cmd);
    if let Err(e) = result {
        let _ = fs::remove_file(&partial);
        return Err(e.context("building the systemd root filesystem"));
    }
    fs::rename(&partial, tar).with_context(|| format!("renaming to {}", tar.display()))?;
    say(format!(
        "vm systemd: root filesystem built in {:.1}s: {} ({} MB)",
        started.elapsed().as_secs_f64(),
        tar.display(),
        fs::metadata(tar).map_or(0, |m| m.len()) / 1_000_000
    ));
    Ok(())
}

/// Unpacks the tarball into a temporary directory and writes it as a newc
/// cpio (GNU cpio keeps owners, modes, hard links and device nodes).
fn build_cpio(tar: &Path, cpio: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "converting the root filesystem to cpio needs root (owners, device nodes); \
             run once as root, the result is cached in {}",
            cpio.display()
        );
    }
    if output(Command::new("cpio").arg("--version")).is_none() {
        bail!("cpio is missing: `cargo xtask setup` (or apt-get install cpio)");
    }
    let started = Instant::now();
    say(format!("vm systemd: converting {} to cpio", tar.display()));
    let tree = cpio.with_extension("cpio.tree");
    let partial = cpio.with_extension("cpio.partial");
    let _ = fs::remove_dir_all(&tree);
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    let result = (|| {
        run(Command::new("tar")
            .args([
                "--extract",
                "--numeric-owner",
                "--same-permissions",
                "--file",
            ])
            .arg(tar)
            .arg("--directory")
            .arg(&tree))?;
        // systemd runs as an initrd (and switches root) if this exists.
        let initrd_release = tree.join("etc/initrd-release");
        if initrd_release.symlink_metadata().is_ok() {
            fs::remove_file(&initrd_release).context("removing etc/initrd-release")?;
        }
        // The overlay writes to usr/lib/modules; a symlinked /lib must stay
        // a symlink (the kernel would replace it by a directory).
        let lib = fs::read_link(tree.join("lib")).ok();
        if lib.as_deref() != Some(Path::new("usr/lib")) {
            bail!(
                "{}: /lib is not a symlink to usr/lib (merged /usr)",
                tar.display()
            );
        }
        let file = fs::File::create(&partial)
            .with_context(|| format!("creating {}", partial.display()))?;
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "find . -mindepth 1 -print0 | LC_ALL=C sort -z | \
             cpio --null --create --format=newc --quiet --reproducible",
        ])
        .current_dir(&tree)
        .stdout(Stdio::from(file));
        run(&mut cmd)?;
        fs::rename(&partial, cpio).with_context(|| format!("renaming to {}", cpio.display()))
    })();
    let _ = fs::remove_dir_all(&tree);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result?;
    say(format!(
        "vm systemd: {} written in {:.1}s ({} MB)",
        cpio.display(),
        started.elapsed().as_secs_f64(),
        fs::metadata(cpio).map_or(0, |m| m.len()) / 1_000_000
    ));
    Ok(())
}

/// What goes over the root filesystem.
struct Overlay<'a> {
    deb: &'a Path,
    /// `tests/systemd/`.
    scripts: &'a Path,
    /// The kernel's `lib/modules/<version>`, if it has modules.
    modules: Option<&'a Path>,
    /// depmod's output for them (`modules.dep`, …), if made on the host.
    depmod: Option<&'a Path>,
}

/// Writes `initrd`: the rootfs cpio, then a second archive with the
/// overlay. Returns its size.
fn pack(rootfs_cpio: &Path, o: &Overlay<'_>, initrd: &Path) -> anyhow::Result<u64> {
    fs::copy(rootfs_cpio, initrd)
        .with_context(|| format!("copying {} to {}", rootfs_cpio.display(), initrd.display()))?;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(initrd)
        .with_context(|| format!("opening {}", initrd.display()))?;
    // Each archive must start 4-byte aligned (GNU cpio pads to 512 anyway).
    let len = file.seek(SeekFrom::End(0))?;
    file.write_all(&[0; 3][..((4 - len % 4) % 4) as usize])?;
    let mut a = Newc::new(BufWriter::new(file));
    let read = |p: &Path| fs::read(p).with_context(|| format!("reading {}", p.display()));

    a.file("/etc/hostname", 0o644, format!("{HOSTNAME}\n").as_bytes())?;
    a.file(
        "/etc/hosts",
        0o644,
        format!("127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
            .as_bytes(),
    )?;
    a.file(
        "/etc/machine-id",
        0o444,
        format!("{MACHINE_ID}\n").as_bytes(),
    )?;
    for unit in MASKED {
        a.symlink(&format!("/etc/systemd/system/{unit}"), "/dev/null")?;
    }
    let units = [
        (TEST_UNIT, test_unit(), "multi-user.target.wants"),
        (
            DEPMOD_UNIT,
            DEPMOD_UNIT_TEXT.to_owned(),
            "sysinit.target.wants",
        ),
    ];
    for (name, text, wants) in units {
        let path = format!("/etc/systemd/system/{name}");
        a.file(&path, 0o644, text.as_bytes())?;
        a.symlink(&format!("/etc/systemd/system/{wants}/{name}"), &path)?;
    }
    a.file(GUEST_DEB, 0o644, &read(o.deb)?)?;

    let scripts: Vec<PathBuf> = list_dir(o.scripts)?
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    if !scripts.iter().any(|p| p.ends_with("check.sh")) {
        bail!("{}/check.sh is missing", o.scripts.display());
    }
    for s in &scripts {
        let name = s
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mode = if name.ends_with(".sh") { 0o755 } else { 0o644 };
        a.file(&format!("{GUEST_DIR}/{name}"), mode, &read(s)?)?;
    }

    if let Some(dir) = o.modules {
        let version = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the kernel's modules directory has no name")?;
        // Not /lib/modules: the rootfs's /lib is a symlink to usr/lib.
        let to = format!("/usr/lib/modules/{version}");
        add_tree(&mut a, dir, &to)?;
        for p in o.depmod.map(list_dir).transpose()?.unwrap_or_default() {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = p.symlink_metadata()?;
            if meta.is_file() && !dir.join(&name).exists() {
                a.file(&format!("{to}/{name}"), 0o644, &read(&p)?)?;
            }
        }
    }
    a.finish()
        .with_context(|| format!("writing {}", initrd.display()))?;
    Ok(fs::metadata(initrd).map_or(0, |m| m.len()))
}

/// The entries of `dir`, sorted.
fn list_dir(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    Ok(entries)
}

/// Adds the tree at `src` as `dst` (files, directories, symlinks), sorted.
fn add_tree<W: std::io::Write>(a: &mut Newc<W>, src: &Path, dst: &str) -> anyhow::Result<()> {
    a.dir(dst)?;
    for p in list_dir(src)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = format!("{dst}/{name}");
        let meta = p
            .symlink_metadata()
            .with_context(|| format!("reading {}", p.display()))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&p)?;
            a.symlink(&to, &target.to_string_lossy())?;
        } else if meta.is_dir() {
            add_tree(a, &p, &to)?;
        } else if meta.is_file() {
            use std::os::unix::fs::PermissionsExt as _;
            let bytes = fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            a.file(&to, meta.permissions().mode(), &bytes)?;
        }
    }
    Ok(())
}

/// The oneshot that runs the guest script, its output on the serial
/// console, and powers the guest off however it ends.
fn test_unit() -> String {
    format!(
        "\
# Written by `cargo xtask vm-test --systemd` (xtask/src/vm/systemd.rs).
[Unit]
Description=governor's systemd VM test (cargo xtask vm-test --systemd)
After=multi-user.target
SuccessAction=poweroff
FailureAction=poweroff

[Service]
Type=oneshot
Environment=GOVERNOR_DEB={GUEST_DEB} SYSTEMD_COLORS=0 SYSTEMD_PAGER=cat COLUMNS=160
ExecStart=/bin/bash {GUEST_DIR}/check.sh
StandardInput=null
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
TimeoutStartSec={SCRIPT_TIMEOUT_SECS}

[Install]
WantedBy=multi-user.target
"
    )
}

/// Debian's kernel packages leave `modules.dep` (and the alias index udev
/// loads modules by) to depmod at install time.
const DEPMOD_UNIT_TEXT: &str = "\
# Written by `cargo xtask vm-test --systemd` (xtask/src/vm/systemd.rs).
[Unit]
Description=depmod for the kernel packed by cargo xtask vm-test --systemd
DefaultDependencies=no
Before=systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service kmod-static-nodes.service sysinit.target
ConditionPathExists=!/lib/modules/%v/modules.dep
ConditionPathIsDirectory=/lib/modules/%v

[Service]
Type=oneshot
ExecStart=/sbin/depmod -a %v

[Install]
WantedBy=sysinit.target
";

fn boot_and_judge(
    k: &Kernel,
    label: &str,
    initrd: &Path,
    machine: &qemu::Machine,
    out_dir: &Path,
) -> anyhow::Result<KernelRun> {
    let log = out_dir.join(format!("{label}.log"));
    say(format!(
        "vm {label}: booting {} with systemd under {} ({} MiB, time-out {}s)",
        k.description,
        if machine.kvm { "KVM" } else { "TCG" },
        machine.memory_mib,
        machine.timeout.as_secs()
    ));
    let console = qemu::boot(machine, &k.image, initrd, &log, |t, line| {
        eprintln!("  [{label} {t:6.1}s] {line}");
    })?;
    let lines: Vec<&str> = console.lines.iter().map(|(_, l)| l.as_str()).collect();
    let verdict = judge(&lines);
    let boot_secs = verdict.begin.map(|i| console.lines[i].0);
    let mut problems = verdict.problems();
    if console.hung {
        problems.push(format!(
            "the guest hung (nothing printed for {}s, or a kernel lockup; QEMU killed)",
            machine.silence.as_secs()
        ));
    }
    if console.timed_out {
        problems.push(format!(
            "timed out after {}s (QEMU killed)",
            machine.timeout.as_secs()
        ));
    }
    if !console.timed_out && !console.hung && !verdict.done {
        problems.push(format!(
            "QEMU ended ({}) before `SYSTEMD-TEST: DONE`",
            console.exit
        ));
    }
    Ok(KernelRun {
        label: label.to_owned(),
        outcome: Outcome {
            passed: verdict.passed,
            failed: verdict.failed.into_iter().map(|(n, _)| n).collect(),
            skipped: verdict.skipped,
            panic: verdict.panic,
            ..Outcome::default()
        },
        problems,
        boot_secs,
        total_secs: console.secs,
        log,
        description: k.description.clone(),
    })
}

/// What the guest script reported.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    pub passed: Vec<String>,
    /// (check, why).
    pub failed: Vec<(String, String)>,
    /// (check, why).
    pub skipped: Vec<(String, String)>,
    /// `SYSTEMD-TEST: DONE` was printed.
    pub done: bool,
    /// Index of the `SYSTEMD-TEST: BEGIN` line (the test unit started).
    pub begin: Option<usize>,
    /// A kernel panic line.
    pub panic: Option<String>,
}

impl Verdict {
    /// Reasons to fail the run, from the console alone.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(panic) = &self.panic {
            p.push(format!("panic: {panic}"));
        }
        for (name, why) in &self.failed {
            p.push(format!("failed check: {name}: {why}"));
        }
        if self.begin.is_none() {
            p.push(format!(
                "the test unit never started (no `SYSTEMD-TEST: BEGIN`): systemd did not \
                 reach multi-user.target or did not start {TEST_UNIT}"
            ));
        } else if !self.done {
            p.push("no `SYSTEMD-TEST: DONE`: the guest script did not finish".into());
        }
        if self.done && self.passed.is_empty() && self.failed.is_empty() && self.skipped.is_empty()
        {
            p.push("no check reported".into());
        }
        p
    }
}

/// Reads the `SYSTEMD-TEST:` lines (anywhere in a line: kernel messages may
/// share it) and kernel panics from the console.
pub fn judge(lines: &[&str]) -> Verdict {
    const MARK: &str = "SYSTEMD-TEST: ";
    let mut v = Verdict::default();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.trim_end();
        if line.contains("Kernel panic") && v.panic.is_none() {
            v.panic = Some(line.trim().to_owned());
        }
        let Some(at) = line.find(MARK) else {
            continue;
        };
        let rest = line[at + MARK.len()..].trim();
        let (word, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let (name, why) = rest
            .split_once(": ")
            .map_or((rest.trim(), ""), |(n, w)| (n.trim(), w.trim()));
        let why = if why.is_empty() {
            "no reason given"
        } else {
            why
        };
        match word {
            "BEGIN" => v.begin = v.begin.or(Some(i)),
            "DONE" => v.done = true,
            "PASS" => v.passed.push(name.to_owned()),
            "FAIL" => v.failed.push((name.to_owned(), why.to_owned())),
            "SKIP" => v.skipped.push((name.to_owned(), why.to_owned())),
            _ => {}
        }
    }
    v
}

/// 64-bit FNV-1a: a stable hash for cache names (std's hasher is not
/// guaranteed stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_fails_skips_and_done() {
        let v = judge(&[
            "[  3.0] some kernel line",
            "SYSTEMD-TEST: BEGIN kernel 6.1.0-35-cloud-amd64",
            "SYSTEMD-TEST: PASS dpkg-install",
            "[ 99.1] kmsg line SYSTEMD-TEST: PASS active-after-install",
            "SYSTEMD-TEST: FAIL restart-after-kill: NRestarts stayed 0",
            "SYSTEMD-TEST: SKIP watchdog-catches-sigstop: needs the real package",
            "SYSTEMD-TEST: DONE",
        ]);
        assert_eq!(v.passed, ["dpkg-install", "active-after-install"]);
        assert_eq!(
            v.failed,
            [(
                "restart-after-kill".to_owned(),
                "NRestarts stayed 0".to_owned()
            )]
        );
        assert_eq!(v.skipped.len(), 1);
        assert!(v.done);
        assert_eq!(v.begin, Some(1));
        assert_eq!(v.problems().len(), 1);
    }

    #[test]
    fn missing_done_or_begin_or_a_panic_fails() {
        let v = judge(&["SYSTEMD-TEST: BEGIN", "SYSTEMD-TEST: PASS a"]);
        assert!(!v.done);
        assert_eq!(v.problems().len(), 1);
        let v = judge(&["[ 1.0] Kernel panic - not syncing: Attempted to kill init!"]);
        assert!(v.panic.is_some());
        assert_eq!(v.problems().len(), 2);
        let v = judge(&["SYSTEMD-TEST: BEGIN", "SYSTEMD-TEST: DONE"]);
        assert_eq!(v.problems(), ["no check reported"]);
        let v = judge(&[
            "SYSTEMD-TEST: BEGIN",
            "SYSTEMD-TEST: PASS a",
            "SYSTEMD-TEST: DONE",
        ]);
        assert!(v.problems().is_empty());
    }

    #[test]
    fn cache_key_is_stable_and_follows_the_package_list() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let o = mmdebstrap_options();
        assert!(o.iter().any(|x| x.starts_with("--include=systemd,")));
        assert_eq!(o.last().map(String::as_str), Some(RELEASE));
    }

    #[test]
    fn test_unit_powers_off_either_way() {
        let u = test_unit();
        assert!(u.contains("SuccessAction=poweroff\nFailureAction=poweroff\n"));
        assert!(u.contains("TTYPath=/dev/ttyS0"));
        assert!(u.contains(&format!("ExecStart=/bin/bash {GUEST_DIR}/check.sh")));
    }
}
