//! tracefs: where tracepoints are found, and the `format` files that give
//! the offsets of their fields on the running kernel.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Where tracefs is mounted on current kernels.
pub const DEFAULT_ROOT: &str = "/sys/kernel/tracing";

/// A tracefs problem, with the path that failed.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// tracefs is not mounted at the root and mounting it failed.
    #[error(
        "tracefs is not mounted at {path} and mounting it failed: {source} (try `mount -t tracefs tracefs {path}`)"
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The error from mount(2).
        #[source]
        source: io::Error,
    },
}

/// True if `root` looks like a mounted tracefs (it has `events/`).
pub fn is_mounted(root: &Path) -> bool {
    root.join("events").is_dir()
}

/// Mounts tracefs at `root` unless it is mounted already. aya looks for
/// tracepoints there; a fresh host may not have mounted it.
pub fn ensure_mounted(root: &Path) -> Result<(), TracefsError> {
    if is_mounted(root) {
        return Ok(());
    }
    let err = |source| TracefsError::Mount {
        path: root.to_path_buf(),
        source,
    };
    fs::create_dir_all(root).map_err(err)?;
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| err(io::Error::other(e)));
    let target = c(&root.to_string_lossy())?;
    let fstype = c("tracefs")?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {}", root.display());
    Ok(())
}
