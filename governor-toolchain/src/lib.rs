//! Where the eBPF toolchain lives and whether it is complete.
//!
//! Shared by `xtask` (which installs it) and `governor/build.rs` (which uses
//! it and fails with a clear message when a piece is missing), so that both
//! agree on one cache layout:
//!
//! ```text
//! $GOVERNOR_CACHE_DIR (default $XDG_CACHE_HOME/governor, else ~/.cache/governor)
//! ├── llvm/<nightly-id>/lib/libLLVM.so -> <nightly sysroot>/lib/libLLVM.so.*
//! └── bpf-linker/<nightly-id>/bin/bpf-linker
//! ```
//!
//! `<nightly-id>` is the nightly's release and commit (`1.97.0-nightly-e50aa6fba`):
//! bpf-linker is linked against that nightly's own LLVM, so a new nightly
//! gets a new linker.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain that builds the kernel programs.
pub const NIGHTLY: &str = "nightly";
/// The target of the kernel programs.
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// Root of governor's build cache, outside any clone.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = env::var_os("GOVERNOR_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("governor");
    }
    let home = env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("governor")
}

/// `rustc -vV` of the nightly toolchain, or why it could not be run.
fn nightly_version_verbose() -> Result<String, String> {
    let out = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "-vV"])
        .output()
        .map_err(|e| format!("cannot run rustup ({e})"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The nightly's identity, e.g. `1.97.0-nightly-e50aa6fba`.
pub fn nightly_id() -> Result<String, String> {
    let vv = nightly_version_verbose()?;
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let release = field("release:").ok_or("no `release:` in `rustc +nightly -vV`")?;
    let commit = field("commit-hash:").unwrap_or_default();
    let short: String = commit.chars().take(9).collect();
    Ok(if short.is_empty() {
        release
    } else {
        format!("{release}-{short}")
    })
}

/// The nightly's sysroot.
pub fn nightly_sysroot() -> Result<PathBuf, String> {
    let out = Command::new("rustup")
        .args(["run", NIGHTLY, "rustc", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustup ({e})"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// True if the nightly has the `rust-src` component (needed by `-Z build-std`).
pub fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// The nightly's own LLVM shared library, which bpf-linker links against.
pub fn nightly_libllvm(sysroot: &Path) -> Option<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The LLVM prefix directory bpf-linker is built against (and keeps an rpath to).
pub fn llvm_prefix(cache: &Path, nightly_id: &str) -> PathBuf {
    cache.join("llvm").join(nightly_id)
}

/// Where `cargo install` puts bpf-linker for this nightly.
pub fn bpf_linker_root(cache: &Path, nightly_id: &str) -> PathBuf {
    cache.join("bpf-linker").join(nightly_id)
}

/// The bpf-linker binary for this nightly, if it is present.
pub fn bpf_linker_bin(cache: &Path, nightly_id: &str) -> PathBuf {
    bpf_linker_root(cache, nightly_id)
        .join("bin")
        .join("bpf-linker")
}

/// The first `bpf-linker` on `PATH`, if any.
pub fn bpf_linker_on_path() -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// What the eBPF build needs, found; or a message naming the missing piece
/// and the command that installs it.
pub struct Toolchain {
    /// Directory holding the `bpf-linker` to use.
    pub bpf_linker_dir: PathBuf,
}

/// Checks nightly, rust-src and bpf-linker.
pub fn preflight() -> Result<Toolchain, String> {
    let fix = "run `cargo xtask setup` (installs everything the build needs)";
    let id = nightly_id().map_err(|e| {
        format!(
            "the nightly Rust toolchain is missing ({e}); the kernel programs need it.\n  \
             install: `rustup toolchain install nightly --component rust-src`, or {fix}"
        )
    })?;
    let sysroot = nightly_sysroot()?;
    if !has_rust_src(&sysroot) {
        return Err(format!(
            "rust-src is missing from the nightly toolchain ({}); `-Z build-std=core` needs it.\n  \
             install: `rustup component add rust-src --toolchain nightly`, or {fix}",
            sysroot.display()
        ));
    }
    let cached = bpf_linker_bin(&cache_dir(), &id);
    let linker = if cached.is_file() {
        cached
    } else if let Some(p) = bpf_linker_on_path() {
        p
    } else {
        return Err(format!(
            "bpf-linker is missing: not at {} nor on PATH. It links the kernel programs and must be \
             built against the nightly's LLVM.\n  install: {fix}",
            cached.display()
        ));
    };
    let dir = linker.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Toolchain {
        bpf_linker_dir: dir,
    })
}
