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
    /// tracefs has no `events/` directory at the root.
    #[error(
        "tracefs is not mounted at {path} (no {path}/events; try `mount -t tracefs tracefs {path}`)"
    )]
    NotMounted {
        /// The tracefs root that was looked at.
        path: PathBuf,
    },
    /// The field is not of the size the program reads.
    #[error(
        "{category}:{event} field {field} is {size} bytes on this kernel, the program reads {expected} ({path})"
    )]
    FieldSize {
        /// Tracepoint category.
        category: String,
        /// Tracepoint name.
        event: String,
        /// The field.
        field: String,
        /// Its size on this kernel.
        size: u32,
        /// The size the program reads.
        expected: u32,
        /// The `format` file.
        path: PathBuf,
    },
    /// The running kernel does not have the tracepoint.
    #[error("the kernel lacks the tracepoint {category}:{event} ({path} does not exist)")]
    EventMissing {
        /// Tracepoint category (`sched`, `sock`, …).
        category: String,
        /// Tracepoint name (`sched_switch`, …).
        event: String,
        /// The `format` file that was looked for.
        path: PathBuf,
    },
    /// The tracepoint exists but has no field of that name on this kernel.
    #[error(
        "the tracepoint {category}:{event} has no field {field:?} on this kernel (it has: {available}; see {path})"
    )]
    FieldMissing {
        /// Tracepoint category.
        category: String,
        /// Tracepoint name.
        event: String,
        /// The field that was asked for.
        field: String,
        /// The fields the format file does list, comma-separated.
        available: String,
        /// The `format` file.
        path: PathBuf,
    },
    /// Reading a format file failed.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A `format` file has a field line that cannot be parsed.
    #[error("cannot parse {path} line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
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

/// How a tracepoint field stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A scalar or pointer stored in place (`pid_t pid`, `const void * skaddr`).
    Scalar,
    /// A fixed-size array stored in place (`char prev_comm[16]`, `__u8 saddr[4]`);
    /// `len` elements, `size / len` bytes each.
    Array {
        /// Number of elements.
        len: u32,
    },
    /// A dynamic array (`__data_loc char[] filename`): the field itself is a
    /// `u32` whose low 16 bits are the data's offset from the start of the
    /// record and whose high 16 bits are its length in bytes.
    DataLoc,
}

/// One field of a tracepoint record, as its `format` file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name (`prev_pid`, `prev_comm`, `filename`).
    pub name: String,
    /// Byte offset from the start of the record (the tracepoint context).
    pub offset: u32,
    /// Size in bytes of the field in the record (for [`FieldKind::DataLoc`]: 4).
    pub size: u32,
    /// True if the value is signed.
    pub signed: bool,
    /// The C type as written, without the name and array suffix (`char`, `pid_t`).
    pub type_name: String,
    /// How the value is stored.
    pub kind: FieldKind,
}

/// A parsed `events/<category>/<event>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// The event name from the `name:` line.
    pub name: String,
    /// The event id from the `ID:` line (what `perf_event_open` takes).
    pub id: Option<u32>,
    /// All fields, common ones (`common_type`, `common_pid`, …) first, in file order.
    pub fields: Vec<Field>,
}

impl EventFormat {
    /// Parses the text of a `format` file. The error is `(line, reason)`, 1-based.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut name = String::new();
        let mut id = None;
        let mut fields = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if let Some(n) = t.strip_prefix("name:") {
                name = n.trim().to_owned();
            } else if let Some(n) = t.strip_prefix("ID:") {
                id = Some(
                    n.trim()
                        .parse()
                        .map_err(|e| (i + 1, format!("bad ID {n:?}: {e}")))?,
                );
            } else if t.starts_with("field:") {
                fields.push(parse_field_line(t).map_err(|reason| (i + 1, reason))?);
            } else if t.starts_with("print fmt:") {
                break;
            }
        }
        Ok(Self { name, id, fields })
    }

    /// The field called `name`, if the event has one.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Parses `field:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;`.
fn parse_field_line(line: &str) -> Result<Field, String> {
    let mut decl = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("expected key:value, found {part:?}"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|e| format!("bad {key} {v:?}: {e}"))
        };
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(num(value)?),
            "size" => size = Some(num(value)?),
            // Kernels before 2.6.32 have no `signed:`; everything since does.
            "signed" => signed = num(value)? != 0,
            _ => {} // later kernels may add keys; they do not change these.
        }
    }
    let decl = decl.ok_or("no field: declaration")?;
    let offset = offset.ok_or_else(|| format!("field {decl:?} has no offset"))?;
    let size = size.ok_or_else(|| format!("field {decl:?} has no size"))?;

    // The name is the last token; the type is everything before it.
    let (type_part, last) = decl
        .rsplit_once(|c: char| c.is_whitespace() || c == '*')
        .ok_or_else(|| format!("field declaration {decl:?} has no type"))?;
    let mut type_name = type_part.trim().to_owned();
    if decl[type_part.len()..].starts_with('*') {
        type_name.push_str(" *");
    }
    let (name, kind) = match last.split_once('[') {
        Some((name, rest)) => {
            let len = rest
                .strip_suffix(']')
                .ok_or_else(|| format!("unclosed array in {decl:?}"))?;
            let kind = if len.is_empty() {
                FieldKind::DataLoc // `char name[]`, as old kernels write dynamic arrays
            } else {
                FieldKind::Array {
                    len: len
                        .parse()
                        .map_err(|e| format!("bad array length in {decl:?}: {e}"))?,
                }
            };
            (name, kind)
        }
        None => (last, FieldKind::Scalar),
    };
    let kind = if type_name.starts_with("__data_loc") || type_name.starts_with("__rel_loc") {
        FieldKind::DataLoc
    } else {
        kind
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad field name {name:?} in {decl:?}"));
    }
    Ok(Field {
        name: name.to_owned(),
        offset,
        size,
        signed,
        type_name,
        kind,
    })
}

/// Reads and parses `<root>/events/<category>/<event>/format`.
pub fn event_format(root: &Path, category: &str, event: &str) -> Result<EventFormat, TracefsError> {
    let path = root
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(if is_mounted(root) {
                TracefsError::EventMissing {
                    category: category.to_owned(),
                    event: event.to_owned(),
                    path,
                }
            } else {
                TracefsError::NotMounted {
                    path: root.to_path_buf(),
                }
            });
        }
        Err(source) => return Err(TracefsError::Read { path, source }),
    };
    EventFormat::parse(&text).map_err(|(line, reason)| TracefsError::Malformed {
        path,
        line,
        reason,
    })
}

/// The offset, size and signedness of `field` in tracepoint `category:event`
/// on the running kernel (tracefs at `root`, usually [`DEFAULT_ROOT`]).
///
/// This is what the kernel programs need instead of hard-coded offsets.
pub fn field_offset(
    root: &Path,
    category: &str,
    event: &str,
    field: &str,
) -> Result<Field, TracefsError> {
    let format = event_format(root, category, event)?;
    format
        .field(field)
        .cloned()
        .ok_or_else(|| TracefsError::FieldMissing {
            category: category.to_owned(),
            event: event.to_owned(),
            field: field.to_owned(),
            available: format
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            path: root
                .join("events")
                .join(category)
                .join(event)
                .join("format"),
        })
}

/// [`field_offset`] of a field the program reads as `size` bytes: another
/// size (a type changed on this kernel) is an error, not garbage read.
pub fn sized_field_offset(
    root: &Path,
    category: &str,
    event: &str,
    field: &str,
    size: u32,
) -> Result<Field, TracefsError> {
    let f = field_offset(root, category, event, field)?;
    if f.size != size {
        return Err(TracefsError::FieldSize {
            category: category.to_owned(),
            event: event.to_owned(),
            field: field.to_owned(),
            size: f.size,
            expected: size,
            path: root
                .join("events")
                .join(category)
                .join(event)
                .join("format"),
        });
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Format files copied verbatim from the build machine (kernel 6.18).
    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tracefs")
    }

    fn field(cat: &str, ev: &str, name: &str) -> Field {
        field_offset(&fixtures(), cat, ev, name).unwrap()
    }

    #[test]
    fn sched_switch_fields() {
        let f = event_format(&fixtures(), "sched", "sched_switch").unwrap();
        assert_eq!(f.name, "sched_switch");
        assert_eq!(f.id, Some(372));
        let names: Vec<_> = f.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "prev_comm",
                "prev_pid",
                "prev_prio",
                "prev_state",
                "next_comm",
                "next_pid",
                "next_prio"
            ]
        );
        let comm = field("sched", "sched_switch", "prev_comm");
        assert_eq!((comm.offset, comm.size, comm.signed), (8, 16, false));
        assert_eq!(comm.kind, FieldKind::Array { len: 16 });
        assert_eq!(comm.type_name, "char");
        let pid = field("sched", "sched_switch", "next_pid");
        assert_eq!((pid.offset, pid.size, pid.signed), (56, 4, true));
        assert_eq!(pid.type_name, "pid_t");
        assert_eq!(pid.kind, FieldKind::Scalar);
        let state = field("sched", "sched_switch", "prev_state");
        assert_eq!((state.offset, state.size, state.signed), (32, 8, true));
        let common = field("sched", "sched_switch", "common_type");
        assert_eq!((common.offset, common.size, common.signed), (0, 2, false));
        assert_eq!(common.type_name, "unsigned short");
    }

    #[test]
    fn sched_wakeup_fields() {
        let pid = field("sched", "sched_wakeup", "pid");
        assert_eq!((pid.offset, pid.size, pid.signed), (24, 4, true));
        let cpu = field("sched", "sched_wakeup", "target_cpu");
        assert_eq!((cpu.offset, cpu.size), (32, 4));
        assert_eq!(
            field("sched", "sched_wakeup", "comm").kind,
            FieldKind::Array { len: 16 }
        );
    }

    #[test]
    fn inet_sock_set_state_fields() {
        let sk = field("sock", "inet_sock_set_state", "skaddr");
        assert_eq!((sk.offset, sk.size, sk.signed), (8, 8, false));
        assert_eq!(sk.type_name, "const void *");
        assert_eq!(sk.kind, FieldKind::Scalar);
        let new = field("sock", "inet_sock_set_state", "newstate");
        assert_eq!((new.offset, new.size, new.signed), (20, 4, true));
        let sport = field("sock", "inet_sock_set_state", "sport");
        assert_eq!((sport.offset, sport.size, sport.signed), (24, 2, false));
        assert_eq!(sport.type_name, "__u16");
        let v6 = field("sock", "inet_sock_set_state", "saddr_v6");
        assert_eq!((v6.offset, v6.size), (40, 16));
        assert_eq!(v6.kind, FieldKind::Array { len: 16 });
    }

    #[test]
    fn a_field_of_another_size_is_refused() {
        let root = fixtures();
        let ok = sized_field_offset(&root, "sock", "inet_sock_set_state", "sport", 2).unwrap();
        assert_eq!(ok.offset, 24);
        let err = sized_field_offset(&root, "sock", "inet_sock_set_state", "sport", 4).unwrap_err();
        assert!(
            matches!(
                err,
                TracefsError::FieldSize {
                    size: 2,
                    expected: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("sport is 2 bytes on this kernel, the program reads 4")
        );
    }

    #[test]
    fn data_loc_fields() {
        let f = field("sched", "sched_process_exec", "filename");
        assert_eq!((f.offset, f.size), (8, 4));
        assert_eq!(f.kind, FieldKind::DataLoc);
        assert_eq!(f.type_name, "__data_loc char[]");
        assert_eq!(field("sched", "sched_process_exec", "old_pid").offset, 16);
    }

    #[test]
    fn missing_event_says_the_kernel_lacks_it() {
        let err = field_offset(&fixtures(), "sched", "sched_nonesuch", "pid").unwrap_err();
        assert!(matches!(err, TracefsError::EventMissing { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("kernel lacks the tracepoint sched:sched_nonesuch"),
            "{msg}"
        );
    }

    #[test]
    fn missing_field_is_named() {
        let err = field_offset(&fixtures(), "sched", "sched_wakeup", "success").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TracefsError::FieldMissing { .. }), "{err:?}");
        assert!(msg.contains("no field \"success\""), "{msg}");
        assert!(msg.contains("target_cpu"), "lists what exists: {msg}");
    }

    #[test]
    fn unmounted_root_is_not_a_missing_event() {
        let dir = tempfile::tempdir().unwrap();
        let err = field_offset(dir.path(), "sched", "sched_switch", "prev_pid").unwrap_err();
        assert!(matches!(err, TracefsError::NotMounted { .. }), "{err:?}");
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let dir = tempfile::tempdir().unwrap();
        let ev = dir.path().join("events/x/y");
        fs::create_dir_all(&ev).unwrap();
        fs::write(
            ev.join("format"),
            "name: y\nID: 1\nformat:\n\tfield:int a;\toffset:zero;\tsize:4;\tsigned:1;\n",
        )
        .unwrap();
        let err = field_offset(dir.path(), "x", "y", "a").unwrap_err();
        assert!(
            matches!(err, TracefsError::Malformed { line: 4, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn old_style_dynamic_arrays_and_pointers() {
        let f = parse_field_line("field:char name[];\toffset:12;\tsize:4;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.kind), ("name", FieldKind::DataLoc));
        let f = parse_field_line("field:struct task_struct *p;\toffset:8;\tsize:8;\tsigned:0;")
            .unwrap();
        assert_eq!(
            (f.name.as_str(), f.type_name.as_str()),
            ("p", "struct task_struct *")
        );
        assert!(parse_field_line("field:int;\toffset:8;\tsize:4;").is_err());
    }
}
