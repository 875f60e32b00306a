//! Kernel struct field offsets from the running kernel's BTF
//! (`/sys/kernel/btf/vmlinux`), resolved at load time: Rust eBPF programs
//! have no CO-RE relocations, and offsets compiled from one kernel break on
//! the next.

use std::path::Path;

use btf_rs::{Btf, BtfType as _, Type};

/// Where the kernel exposes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why an offset could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// No BTF for this kernel.
    #[error("cannot read kernel BTF at {path}: {reason}")]
    Unavailable {
        /// The file read.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The struct is not in the BTF.
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    /// None of the member names is in the struct.
    #[error("struct {strukt} has none of the fields {fields:?} on this kernel")]
    NoMember {
        /// The struct.
        strukt: String,
        /// The names tried.
        fields: Vec<String>,
    },
}

/// The parsed kernel BTF.
pub struct KernelBtf(Btf);

impl KernelBtf {
    /// Reads and parses the BTF at `path` (usually [`VMLINUX`]).
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        Btf::from_file(path)
            .map(Self)
            .map_err(|e| BtfError::Unavailable {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Byte offset of the first of `fields` that `struct strukt` has
    /// (several names cover renames, e.g. `__state` / `state`). Only direct
    /// members are looked at.
    pub fn member_offset(&self, strukt: &str, fields: &[&str]) -> Result<u32, BtfError> {
        let types = self
            .0
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct(strukt.to_owned()))?;
        let s = types
            .iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        for field in fields {
            for m in &s.members {
                if m.get_name_offset().is_some()
                    && self.0.resolve_name(m).is_ok_and(|n| n == *field)
                {
                    return Ok(m.bit_offset() / 8);
                }
            }
        }
        Err(BtfError::NoMember {
            strukt: strukt.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel when it has BTF (CI's does); the
    /// two offsets must differ and lie inside task_struct.
    #[test]
    fn task_struct_offsets_resolve_on_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let pid = btf.member_offset("task_struct", &["pid"]).unwrap();
        let state = btf
            .member_offset("task_struct", &["__state", "state"])
            .unwrap();
        assert_ne!(pid, state);
        assert!(pid > 0 && pid < 16384, "pid offset {pid}");
        assert!(matches!(
            btf.member_offset("task_struct", &["no_such_field"]),
            Err(BtfError::NoMember { .. })
        ));
    }
}
