//! `cargo xtask deb`: the Debian package, built by hand with dpkg-deb (no
//! cargo-deb): the release binary, the systemd units, the config as a
//! conffile, docs, man pages and shell completions, and the maintainer
//! scripts of `debian/`. The tree is staged in `<target>/debian/staging`
//! and the package written to `<target>/debian/governor_<version>_<arch>.deb`
//! (`<target>`: `$CARGO_TARGET_DIR`, else `target/` of the workspace).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    setup,
    util::{run, say, show},
};

const PACKAGE: &str = "governor";

/// Builds the package; returns the path of the .deb.
pub fn build(root: &Path) -> anyhow::Result<PathBuf> {
    setup::setup()?;
    build_after_setup(root)
}

/// [`build`] once `cargo xtask setup` has run (as in `cargo xtask test`).
pub fn build_after_setup(root: &Path) -> anyhow::Result<PathBuf> {
    say("building governor (release; embeds the kernel programs)");
    run(Command::new("cargo")
        .args(["build", "--release", "--package", "governor"])
        .current_dir(root))?;
    let target = target_dir(root);
    let bin = target.join("release/governor");
    let version = debian_version(&workspace_version(root)?);
    let arch = debian_arch()?;
    let out_dir = target.join("debian");
    let staging = out_dir.join("staging");
    say(format!(
        "staging {PACKAGE} {version} ({arch}) in {}",
        staging.display()
    ));
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    fs::create_dir_all(&staging)?;

    // The binary, stripped as dh_strip does (the kernel object it embeds is
    // data and stays).
    let usr_bin = put_file(&staging, "usr/bin/governor", &read(&bin)?, 0o755)?;
    run(Command::new("strip")
        .args(["--remove-section=.comment", "--remove-section=.note"])
        .arg(&usr_bin))?;

    for unit in ["governor.service", "governor.slice"] {
        put_file(
            &staging,
            &format!("usr/lib/systemd/system/{unit}"),
            &read(&root.join("systemd").join(unit))?,
            0o644,
        )?;
    }
    put_file(
        &staging,
        "etc/governor/governor.toml",
        &read(&root.join("systemd/governor.toml"))?,
        0o644,
    )?;

    // Docs, compressed as dh_compress does (changelogs, files over 4 KiB;
    // not copyright, not examples).
    let doc = "usr/share/doc/governor";
    put_file(
        &staging,
        &format!("{doc}/copyright"),
        &read(&root.join("debian/copyright"))?,
        0o644,
    )?;
    // A native package: the changelog is changelog.gz (not changelog.Debian.gz).
    let changelog = read(&root.join("debian/changelog"))?;
    check_changelog(&changelog, &version);
    gzip(&put_file(
        &staging,
        &format!("{doc}/changelog"),
        &changelog,
        0o644,
    )?)?;
    let readme = read(&root.join("README.md"))?;
    let readme_path = put_file(&staging, &format!("{doc}/README.md"), &readme, 0o644)?;
    if readme.len() > 4096 {
        gzip(&readme_path)?;
    }
    let mut examples: Vec<PathBuf> = fs::read_dir(root.join("examples"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    examples.retain(|p| p.extension().is_some_and(|x| x == "toml"));
    examples.sort();
    for ex in &examples {
        let name = ex.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.context("example without a name")?;
        put_file(
            &staging,
            &format!("{doc}/examples/{name}"),
            &read(ex)?,
            0o644,
        )?;
    }

    // The Grafana dashboard and the Prometheus rules, their tests and an
    // example scrape config, uncompressed (they are imported and loaded as
    // they are), beside each other as in contrib/ (the test file names the
    // rules file relative to itself).
    for rel in CONTRIB_FILES {
        put_file(
            &staging,
            &format!("usr/share/governor/{rel}"),
            &read(&root.join("contrib").join(rel))?,
            0o644,
        )?;
    }

    // Man pages and completions, from the binary's clap definitions.
    let man_tmp = out_dir.join("man");
    if man_tmp.exists() {
        fs::remove_dir_all(&man_tmp)?;
    }
    run(Command::new(&bin)
        .args(["generate", "man", "--dir"])
        .arg(&man_tmp))?;
    let mut pages: Vec<PathBuf> = fs::read_dir(&man_tmp)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    if !pages.iter().any(|p| p.ends_with("governor.1")) {
        bail!("`governor generate man` wrote no governor.1");
    }
    for page in &pages {
        let name = page.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.context("man page without a name")?;
        gzip(&put_file(
            &staging,
            &format!("usr/share/man/man1/{name}"),
            &read(page)?,
            0o644,
        )?)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/governor"),
        ("zsh", "usr/share/zsh/vendor-completions/_governor"),
        ("fish", "usr/share/fish/vendor_completions.d/governor.fish"),
    ] {
        let out = Command::new(&bin)
            .args(["generate", "completions", shell])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "`governor generate completions {shell}` failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        put_file(&staging, path, &out.stdout, 0o644)?;
    }

    // DEBIAN/: control, conffiles, md5sums, maintainer scripts.
    let files = tree(&staging)?;
    let conffiles = read(&root.join("debian/conffiles"))?;
    let conffiles = String::from_utf8(conffiles).context("debian/conffiles is not UTF-8")?;
    for c in conffiles.lines().filter(|l| !l.trim().is_empty()) {
        if !staging.join(c.trim().trim_start_matches('/')).is_file() {
            bail!("debian/conffiles names {c}, which the package does not ship");
        }
    }
    let depends = depends(&out_dir, &usr_bin)?;
    let control = fs::read_to_string(root.join("debian/control.in"))
        .context("reading debian/control.in")?
        .replace("@VERSION@", &version)
        .replace("@ARCH@", arch)
        .replace("@DEPENDS@", &depends)
        .replace("@INSTALLED_SIZE@", &installed_size(&files)?.to_string());
    // A placeholder is @NAME@ (upper case, digits, underscores).
    let placeholder = |l: &&str| {
        l.split('@').skip(1).step_by(2).any(|w| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        }) && l.matches('@').count() >= 2
    };
    if let Some(left) = control.lines().find(placeholder) {
        bail!("debian/control.in: unreplaced placeholder in {left:?}");
    }
    put_file(&staging, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put_file(&staging, "DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    put_file(
        &staging,
        "DEBIAN/md5sums",
        md5sums(&staging, &files, &conffiles)?.as_bytes(),
        0o644,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put_file(
            &staging,
            &format!("DEBIAN/{script}"),
            &read(&root.join("debian").join(script))?,
            0o755,
        )?;
    }
    for dir in tree(&staging)?.iter().filter(|p| p.is_dir()) {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    }
    fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{arch}.deb"));
    if deb.exists() {
        fs::remove_file(&deb)?;
    }
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&staging)
        .arg(&deb))?;
    say(format!("built {}", deb.display()));
    Ok(deb)
}

/// Where cargo writes: `$CARGO_TARGET_DIR` (relative to `root`, as cargo
/// run from `root` reads it), else `root/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    }
}

/// The governor package's version, as cargo sees it (the workspace version).
fn workspace_version(root: &Path) -> anyhow::Result<String> {
    let out = Command::new("cargo")
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == PACKAGE))
        .and_then(|p| p["version"].as_str())
        .map(String::from)
        .context("cargo metadata names no governor package")
}

/// A Cargo version as a Debian one: a pre-release sorts before its release
/// (`1.0.0-rc.1` → `1.0.0~rc.1`). No Debian revision: a native package.
fn debian_version(cargo: &str) -> String {
    cargo.replacen('-', "~", 1)
}

fn debian_arch() -> anyhow::Result<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => bail!("no Debian architecture known for {other}"),
    }
}

/// Warns when debian/changelog's newest entry is not this version.
fn check_changelog(changelog: &[u8], version: &str) {
    let text = String::from_utf8_lossy(changelog);
    let top = text
        .lines()
        .next()
        .and_then(|l| l.split_once('(')?.1.split_once(')'))
        .map(|(v, _)| v.to_string());
    if top.as_deref() != Some(version) {
        eprintln!(
            "  warning: debian/changelog's newest entry is {top:?}, the package is {version}: \
             add an entry (`dch -v {version}`)"
        );
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Files of `contrib/` the package installs under `/usr/share/governor/`.
const CONTRIB_FILES: &[&str] = &[
    "grafana/governor.json",
    "prometheus/governor-rules.yml",
    "prometheus/governor-rules.test.yml",
    "prometheus/prometheus.yml",
];

/// Writes `data` at `staging/rel` with `mode`; returns the path.
fn put_file(staging: &Path, rel: &str, data: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
    let path = staging.join(rel);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(path)
}

/// `gzip -9n` in place (no name or time stamp in the header: reproducible).
fn gzip(path: &Path) -> anyhow::Result<()> {
    run(Command::new("gzip").args(["-9nf"]).arg(path))
}

/// Every path under `dir`, sorted, depth first.
fn tree(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for p in entries {
        let is_dir = fs::symlink_metadata(&p)?.is_dir();
        out.push(p.clone());
        if is_dir {
            out.extend(tree(&p)?);
        }
    }
    Ok(out)
}

/// Installed-Size in KiB, as dpkg-gencontrol counts it: each file rounded
/// up to a KiB, one KiB for each directory or link.
fn installed_size(files: &[PathBuf]) -> anyhow::Result<u64> {
    let mut kib = 0;
    for f in files {
        let m = fs::symlink_metadata(f)?;
        kib += if m.is_file() {
            m.len().div_ceil(1024)
        } else {
            1
        };
    }
    Ok(kib)
}

/// DEBIAN/md5sums: every regular file but the conffiles (dpkg keeps their
/// sums itself), as dh_md5sums writes it.
fn md5sums(staging: &Path, files: &[PathBuf], conffiles: &str) -> anyhow::Result<String> {
    let conf: Vec<&str> = conffiles.lines().map(str::trim).collect();
    let rel: Vec<String> = files
        .iter()
        .filter(|f| f.is_file())
        .filter_map(|f| f.strip_prefix(staging).ok())
        .map(|f| f.display().to_string())
        .filter(|f| !conf.contains(&format!("/{f}").as_str()))
        .collect();
    let mut cmd = Command::new("md5sum");
    cmd.args(&rel).current_dir(staging);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(&cmd)))?;
    if !out.status.success() {
        bail!("md5sum failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8(out.stdout).context("md5sum output is not UTF-8")
}

/// Depends: from dpkg-shlibdeps (the shared libraries the binary links and
/// the symbol versions it uses, against this host's symbols files); if
/// that fails, libc6 with the newest GLIBC_ symbol version the binary
/// needs, plus libgcc-s1 if it links libgcc_s.
fn depends(out_dir: &Path, bin: &Path) -> anyhow::Result<String> {
    // dpkg-shlibdeps wants a source package's debian/control in its cwd.
    let work = out_dir.join("shlibdeps");
    fs::create_dir_all(work.join("debian"))?;
    fs::write(
        work.join("debian/control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let mut cmd = Command::new("dpkg-shlibdeps");
    cmd.arg("-O")
        .arg(format!("-e{}", bin.display()))
        .current_dir(&work);
    match cmd.output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(deps) = text
                .lines()
                .find_map(|l| l.strip_prefix("shlibs:Depends="))
                .filter(|d| !d.trim().is_empty())
            {
                eprintln!("  Depends (dpkg-shlibdeps): {deps}");
                return Ok(deps.trim().to_string());
            }
            eprintln!("  dpkg-shlibdeps printed no shlibs:Depends; falling back");
        }
        Ok(out) => eprintln!(
            "  dpkg-shlibdeps failed ({}): {}; falling back",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("  cannot run dpkg-shlibdeps ({e}); falling back"),
    }
    depends_from_symbols(bin)
}

fn depends_from_symbols(bin: &Path) -> anyhow::Result<String> {
    let out = Command::new("objdump")
        .arg("-T")
        .arg(bin)
        .output()
        .context("running objdump -T (package binutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let newest = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            v.split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
                .ok()
        })
        .max()
        .context("the binary uses no GLIBC_ symbol version")?;
    let newest: Vec<String> = newest.iter().map(u32::to_string).collect();
    let mut deps = format!("libc6 (>= {})", newest.join("."));
    let dynamic = Command::new("readelf")
        .arg("-d")
        .arg(bin)
        .output()
        .context("running readelf -d")?;
    if String::from_utf8_lossy(&dynamic.stdout).contains("[libgcc_s.so.1]") {
        deps.push_str(", libgcc-s1");
    }
    eprintln!("  Depends (from symbol versions): {deps}");
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contrib_file_is_packaged() {
        let contrib = crate::util::workspace_root().join("contrib");
        let mut found = Vec::new();
        for dir in fs::read_dir(&contrib).expect("contrib/") {
            let dir = dir.expect("entry").path();
            for f in fs::read_dir(&dir).expect("a contrib folder") {
                let f = f.expect("entry").path();
                let rel = f.strip_prefix(&contrib).expect("under contrib");
                found.push(rel.to_string_lossy().into_owned());
            }
        }
        found.sort();
        let mut listed: Vec<String> = CONTRIB_FILES.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed, "CONTRIB_FILES lists contrib/ exactly");
    }

    #[test]
    fn versions() {
        assert_eq!(debian_version("0.1.0"), "0.1.0");
        assert_eq!(debian_version("1.0.0-rc.1"), "1.0.0~rc.1");
        assert_eq!(debian_version("1.0.0-rc-1+git"), "1.0.0~rc-1+git");
    }
}
