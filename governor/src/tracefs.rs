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

/// One field of a tracepoint record, from its `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Whether the type is signed.
    pub signed: bool,
}

/// Errors reading a tracepoint's format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The kernel has no such tracepoint.
    #[error("this kernel has no tracepoint {category}:{event} ({path}: {source})")]
    MissingEvent {
        /// Category, e.g. `sched`.
        category: String,
        /// Event, e.g. `sched_switch`.
        event: String,
        /// The format file looked for.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The tracepoint lacks a field.
    #[error("tracepoint {category}:{event} has no field {field:?} on this kernel")]
    MissingField {
        /// Category.
        category: String,
        /// Event.
        event: String,
        /// Field.
        field: String,
    },
}

/// Parses the `field:` lines of a format file.
pub fn parse_format(text: &str) -> Vec<Field> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut name = None;
        let (mut offset, mut size, mut signed) = (None, None, false);
        for part in rest.split(';').map(str::trim) {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse().ok();
            } else if let Some(v) = part.strip_prefix("signed:") {
                signed = v == "1";
            } else if name.is_none() && !part.is_empty() {
                // "unsigned short common_type" or "char prev_comm[16]"
                let decl = part.split('[').next().unwrap_or(part);
                name = decl.split_whitespace().last().map(str::to_owned);
            }
        }
        if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
            out.push(Field {
                name,
                offset,
                size,
                signed,
            });
        }
    }
    out
}

/// The field `field` of tracepoint `category:event`, read from `root`.
pub fn field_offset(root: &Path, category: &str, event: &str, field: &str) -> Result<Field, FormatError> {
    let path = root.join("events").join(category).join(event).join("format");
    let text = fs::read_to_string(&path).map_err(|source| FormatError::MissingEvent {
        category: category.into(),
        event: event.into(),
        path: path.clone(),
        source,
    })?;
    parse_format(&text)
        .into_iter()
        .find(|f| f.name == field)
        .ok_or_else(|| FormatError::MissingField {
            category: category.into(),
            event: event.into(),
            field: field.into(),
        })
}
