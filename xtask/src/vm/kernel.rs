//! Debian's cloud kernels, fetched once and cached:
//!
//! ```text
//! <cache>/kernels/<release>/
//! ├── apt/        private apt state (sources.list, lists, cache): the host's own is untouched
//! ├── deb/        the downloaded linux-image-*-cloud-amd64 package
//! ├── root/       its contents (dpkg-deb -x): boot/vmlinuz-*, [usr/]lib/modules/*
//! └── package     the package's name and version; written last, so it marks a complete cache
//! ```
//!
//! The mirror is the one the host's apt already uses (read from
//! `/etc/apt/sources.list.d/*.sources` or `/etc/apt/sources.list`), and
//! apt verifies each release's signature against Debian's archive keyring.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::util::{output, run, say, show};

/// The Debian releases whose cloud kernels the VM tests run, by kernel series.
pub const DEBIAN_KERNELS: &[(&str, &str)] = &[
    ("5.10", "bullseye"),
    ("6.1", "bookworm"),
    ("6.12", "trixie"),
];

/// Keyring used when the host's sources name none.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Which kernel to boot, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSpec {
    /// A Debian release's cloud kernel (`5.10`, `6.1`, `6.12`).
    Debian {
        series: &'static str,
        release: &'static str,
    },
    /// A kernel image on disk (`bzImage`/`vmlinuz`), booted without modules.
    Path(PathBuf),
}

impl KernelSpec {
    /// Parses `5.10`, `6.1`, `6.12`, or a path to a kernel image.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if let Some((series, release)) = DEBIAN_KERNELS.iter().find(|(v, _)| *v == s) {
            return Ok(Self::Debian { series, release });
        }
        let p = PathBuf::from(s);
        if p.is_file() {
            return Ok(Self::Path(p));
        }
        let known: Vec<&str> = DEBIAN_KERNELS.iter().map(|(v, _)| *v).collect();
        bail!(
            "--kernel {s}: neither one of {} nor an existing kernel image file",
            known.join(", ")
        )
    }

    /// A short name for messages, logs and file names (`6.1`, or the file name).
    pub fn label(&self) -> String {
        match self {
            Self::Debian { series, .. } => (*series).to_owned(),
            Self::Path(p) => p
                .file_name()
                .map_or_else(|| "kernel".into(), |n| n.to_string_lossy().into_owned()),
        }
    }
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Short name (`6.1`).
    pub label: String,
    /// What it is (`linux-image-6.1.0-35-cloud-amd64 6.1.137-1`, or the path).
    pub description: String,
    /// The image QEMU boots.
    pub image: PathBuf,
    /// `lib/modules/<version>` of the package, if any.
    pub modules: Option<PathBuf>,
}

/// Returns the kernel for `spec`, downloading and extracting it on first use.
pub fn fetch(spec: &KernelSpec, cache: &Path) -> anyhow::Result<Kernel> {
    match spec {
        KernelSpec::Path(p) => Ok(Kernel {
            label: spec.label(),
            description: p.display().to_string(),
            image: p.clone(),
            modules: None,
        }),
        KernelSpec::Debian { series, release } => {
            let dir = cache.join("kernels").join(release);
            let marker = dir.join("package");
            if !marker.is_file() {
                download(release, &dir)
                    .with_context(|| format!("fetching the {series} kernel ({release})"))?;
            } else {
                say(format!(
                    "kernel {series}: cached in {} (no network needed)",
                    dir.display()
                ));
            }
            let description = fs::read_to_string(&marker)
                .with_context(|| format!("reading {}", marker.display()))?
                .trim()
                .to_owned();
            let root = dir.join("root");
            let image = only_entry(&root.join("boot"), "vmlinuz-")?;
            // Newer packages (trixie) ship them under /usr (merged /usr).
            let modules = ["lib/modules", "usr/lib/modules"]
                .iter()
                .find_map(|d| only_entry(&root.join(d), "").ok());
            Ok(Kernel {
                label: (*series).to_owned(),
                description,
                image,
                modules,
            })
        }
    }
}

/// The single entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no {prefix}* in {}", dir.display()),
        _ => bail!("several {prefix}* in {}: {found:?}", dir.display()),
    }
}

/// Downloads `release`'s cloud kernel package into `dir` with a private apt state.
fn download(release: &str, dir: &Path) -> anyhow::Result<()> {
    let mirror = host_mirror()?;
    say(format!(
        "kernel ({release}): fetching the package list from the host's mirror {}",
        mirror.uri
    ));
    if !Path::new(&mirror.keyring).is_file() {
        bail!(
            "keyring {} is missing, so {release}'s signature cannot be verified; \
             install it: apt-get install debian-archive-keyring",
            mirror.keyring
        );
    }
    let apt = dir.join("apt");
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(sub))
            .with_context(|| format!("creating {}", apt.join(sub).display()))?;
    }
    let list = apt.join("sources.list");
    fs::write(
        &list,
        format!(
            "deb [signed-by={}] {} {release} main\n",
            mirror.keyring, mirror.uri
        ),
    )
    .with_context(|| format!("writing {}", list.display()))?;
    let private = |cmd: &mut Command| {
        for (key, value) in [
            ("Dir::Etc::SourceList", list.clone()),
            ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
            ("Dir::Etc::PreferencesParts", PathBuf::from("/dev/null")),
            ("Dir::State::Lists", apt.join("lists")),
            ("Dir::Cache", apt.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
        // Only the package lists: no translations or AppStream metadata.
        cmd.args([
            "-o",
            "Acquire::Languages=none",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false",
            "-o",
            "Acquire::IndexTargets::deb::CNF::DefaultEnabled=false",
            "-o",
            "APT::Sandbox::User=root",
        ]);
    };

    // apt-get update fails (and says why) when the Release signature does
    // not verify; that failure stops us: verification is never switched off.
    let mut update = Command::new("apt-get");
    update.arg("-q");
    private(&mut update);
    update.arg("update");
    let out = update
        .output()
        .with_context(|| format!("starting `{}`", show(&update)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() || text.contains("NO_PUBKEY") || text.contains("not signed") {
        bail!(
            "`{}` failed or could not verify {release}'s signature:\n{text}",
            show(&update)
        );
    }

    let mut depends = Command::new("apt-cache");
    private(&mut depends);
    depends.args(["depends", "linux-image-cloud-amd64"]);
    let deps = output(&mut depends).with_context(|| format!("`{}` failed", show(&depends)))?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64"))
        .with_context(|| format!("no linux-image-*-cloud-amd64 among:\n{deps}"))?
        .to_owned();

    let debs = dir.join("deb");
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    say(format!("kernel ({release}): downloading {package}"));
    let mut dl = Command::new("apt-get");
    dl.arg("-q");
    private(&mut dl);
    dl.args(["download", &package]).current_dir(&debs);
    run(&mut dl)?;
    let deb = only_entry(&debs, &format!("{package}_"))?;

    let root = dir.join("root");
    let partial = dir.join("root.partial");
    let _ = fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&partial))?;
    let _ = fs::remove_dir_all(&root);
    fs::rename(&partial, &root).with_context(|| format!("renaming to {}", root.display()))?;
    let version = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )
    .unwrap_or_default();
    fs::write(
        dir.join("package"),
        format!("{package} {}\n", version.trim()),
    )
    .context("writing the cache marker")?;
    Ok(())
}

/// The Debian mirror the host's apt uses.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mirror {
    /// The archive's URI, without a trailing slash.
    pub uri: String,
    /// The keyring that signs it (`Signed-By`, else Debian's archive keyring).
    pub keyring: String,
}

/// Reads the host's main Debian mirror from its apt sources.
pub(super) fn host_mirror() -> anyhow::Result<Mirror> {
    let dir = Path::new("/etc/apt/sources.list.d");
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sources"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    for f in &files {
        let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        if let Some(m) = mirror_from_deb822(&text) {
            return Ok(m);
        }
    }
    let legacy = Path::new("/etc/apt/sources.list");
    if let Ok(text) = fs::read_to_string(legacy)
        && let Some(m) = mirror_from_one_line(&text)
    {
        return Ok(m);
    }
    bail!(
        "no Debian mirror found in {}/*.sources or {}: the VM kernels and the systemd root \
         filesystem come from the mirror the host's apt already uses",
        dir.display(),
        legacy.display()
    )
}

/// The first `deb` stanza of a deb822 sources file that serves Debian's
/// main archive (suites without `-security`, `main` component).
fn mirror_from_deb822(text: &str) -> Option<Mirror> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (!l.starts_with('#') && k.trim().eq_ignore_ascii_case(name))
                    .then(|| v.trim().to_owned())
            })
        };
        let (Some(types), Some(uris), Some(suites), Some(components)) = (
            field("Types"),
            field("URIs"),
            field("Suites"),
            field("Components"),
        ) else {
            continue;
        };
        if field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
            || !types.split_whitespace().any(|t| t == "deb")
            || !components.split_whitespace().any(|c| c == "main")
            || suites.split_whitespace().all(|s| s.ends_with("-security"))
        {
            continue;
        }
        let uri = uris
            .split_whitespace()
            .next()?
            .trim_end_matches('/')
            .to_owned();
        let keyring = field("Signed-By")
            .filter(|k| k.starts_with('/'))
            .unwrap_or_else(|| DEFAULT_KEYRING.to_owned());
        return Some(Mirror { uri, keyring });
    }
    None
}

/// The first `deb URI suite main` line of a one-line-style sources.list.
fn mirror_from_one_line(text: &str) -> Option<Mirror> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().peekable();
        if words.next()? != "deb" {
            return None;
        }
        let mut keyring = DEFAULT_KEYRING.to_owned();
        if words.peek()?.starts_with('[') {
            for w in words.by_ref() {
                let w = w.trim_start_matches('[');
                if let Some(k) = w.trim_end_matches(']').strip_prefix("signed-by=") {
                    keyring = k.to_owned();
                }
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let uri = words.next()?.trim_end_matches('/').to_owned();
        let suite = words.next()?;
        (!suite.ends_with("-security") && words.any(|c| c == "main"))
            .then_some(Mirror { uri, keyring })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_main_archive_not_security() {
        let text = "Types: deb\n# a comment: here\nURIs: http://mirror.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n\
                    Components: main contrib\nSigned-By: /usr/share/keyrings/x.gpg\n";
        assert_eq!(
            mirror_from_deb822(text),
            Some(Mirror {
                uri: "http://mirror.example/debian".into(),
                keyring: "/usr/share/keyrings/x.gpg".into()
            })
        );
        assert_eq!(mirror_from_deb822("Types: deb\nURIs: x\n"), None);
    }

    #[test]
    fn one_line_sources() {
        let text = "# x\ndeb http://m.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n";
        assert_eq!(
            mirror_from_one_line(text),
            Some(Mirror {
                uri: "http://m.example/debian".into(),
                keyring: "/k.gpg".into()
            })
        );
    }

    #[test]
    fn kernel_specs() {
        assert_eq!(
            KernelSpec::parse("6.1").expect("known"),
            KernelSpec::Debian {
                series: "6.1",
                release: "bookworm"
            }
        );
        assert!(KernelSpec::parse("4.19").is_err());
    }
}
