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
    /// The member is not of the size the programs read.
    #[error("{strukt}.{field} is {size} bytes on this kernel, the programs read {expected}")]
    Size {
        /// The struct.
        strukt: String,
        /// The member.
        field: String,
        /// Its size here (0: not a scalar).
        size: u32,
        /// The sizes that are read correctly.
        expected: String,
    },
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

    /// The definition of `struct strukt` (not a forward declaration).
    fn structure(&self, strukt: &str) -> Result<btf_rs::Struct, BtfError> {
        self.0
            .resolve_types_by_name(strukt)
            .map_err(|_| BtfError::NoStruct(strukt.to_owned()))?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))
    }

    /// Size in bytes of a scalar member's type (through typedefs,
    /// `volatile` and `const`), 0 if it is not a scalar.
    fn scalar_size(&self, m: &btf_rs::Member) -> u32 {
        let mut t = self.0.resolve_chained_type(m).ok();
        for _ in 0..16 {
            t = match t {
                Some(Type::Int(i)) => return u32::try_from(i.size()).unwrap_or(0),
                Some(Type::Enum(e)) => return u32::try_from(e.size()).unwrap_or(0),
                Some(Type::Ptr(_)) => return 8,
                Some(Type::Typedef(x)) => self.0.resolve_chained_type(&x).ok(),
                Some(Type::Volatile(x)) => self.0.resolve_chained_type(&x).ok(),
                Some(Type::Const(x)) => self.0.resolve_chained_type(&x).ok(),
                _ => return 0,
            };
        }
        0
    }

    /// [`Self::member_offset`], refusing a member whose size is not one of
    /// `sizes` (a type change on another kernel would be read as garbage).
    pub fn sized_member_offset(
        &self,
        strukt: &str,
        fields: &[&str],
        sizes: &[u32],
    ) -> Result<u32, BtfError> {
        let s = self.structure(strukt)?;
        for field in fields {
            for m in &s.members {
                if m.get_name_offset().is_some()
                    && self.0.resolve_name(m).is_ok_and(|n| n == *field)
                {
                    let size = self.scalar_size(m);
                    if !sizes.contains(&size) {
                        return Err(BtfError::Size {
                            strukt: strukt.to_owned(),
                            field: (*field).to_owned(),
                            size,
                            expected: format!("{sizes:?}"),
                        });
                    }
                    return Ok(m.bit_offset() / 8);
                }
            }
        }
        Err(BtfError::NoMember {
            strukt: strukt.to_owned(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        })
    }

    /// Byte offset of the first of `fields` that `struct strukt` has
    /// (several names cover renames, e.g. `__state` / `state`). Only direct
    /// members are looked at.
    pub fn member_offset(&self, strukt: &str, fields: &[&str]) -> Result<u32, BtfError> {
        let s = self.structure(strukt)?;
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

    /// Byte offset of `field` in `struct strukt`, looking also inside its
    /// anonymous struct and union members (`sock_common.skc_num` lives in
    /// an anonymous struct inside an anonymous union). Bit fields are
    /// refused: the programs read whole bytes; so is a field whose size is
    /// not one of `sizes`.
    pub fn nested_offset(&self, strukt: &str, field: &str, sizes: &[u32]) -> Result<u32, BtfError> {
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            fields: vec![field.to_owned()],
        };
        let s = self.structure(strukt)?;
        let (offset, size) = self.find_in(&s.members, field, 0).ok_or_else(no_member)?;
        if !sizes.contains(&size) {
            return Err(BtfError::Size {
                strukt: strukt.to_owned(),
                field: field.to_owned(),
                size,
                expected: format!("{sizes:?}"),
            });
        }
        Ok(offset)
    }

    /// Byte offset and size of `field` among `members` (and their anonymous
    /// members), which start `base` bits into the outer struct; `None` if
    /// absent or a bit field.
    fn find_in(&self, members: &[btf_rs::Member], field: &str, base: u32) -> Option<(u32, u32)> {
        self.find_member(members, field, base)
            .map(|(offset, m)| (offset, self.scalar_size(&m)))
    }

    /// Byte offset and definition of `field` among `members` (and their
    /// anonymous members); `None` if absent or a bit field.
    fn find_member(
        &self,
        members: &[btf_rs::Member],
        field: &str,
        base: u32,
    ) -> Option<(u32, btf_rs::Member)> {
        for m in members {
            let named = m.get_name_offset().is_some_and(|o| o != 0);
            if named {
                if self.0.resolve_name(m).is_ok_and(|n| n == field) {
                    let bits = base + m.bit_offset();
                    return (m.bitfield_size().is_none_or(|s| s == 0) && bits.is_multiple_of(8))
                        .then(|| (bits / 8, m.clone()));
                }
                continue;
            }
            // An anonymous struct or union: search inside it.
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = self.0.resolve_chained_type(m)
                && let Some(found) = self.find_member(&inner.members, field, base + m.bit_offset())
            {
                return Some(found);
            }
        }
        None
    }

    /// Byte offset of a chain of members in `struct strukt`, each a member
    /// of the previous one's struct type (through typedefs, and inside
    /// anonymous members): `["__sk_common", "skc_net", "net"]`. The last
    /// must be a scalar or pointer of one of `sizes`.
    pub fn path_offset(&self, strukt: &str, path: &[&str], sizes: &[u32]) -> Result<u32, BtfError> {
        let no_member = |field: &str| BtfError::NoMember {
            strukt: strukt.to_owned(),
            fields: vec![field.to_owned()],
        };
        let mut members = self.structure(strukt)?.members;
        let mut offset = 0;
        let mut last = None;
        for field in path {
            let (at, m) = self
                .find_member(&members, field, 0)
                .ok_or_else(|| no_member(field))?;
            offset += at;
            members = self.struct_of(&m).map(|s| s.members).unwrap_or_default();
            last = Some((field, m));
        }
        let (_, m) = last.ok_or_else(|| no_member(""))?;
        let size = self.scalar_size(&m);
        if !sizes.contains(&size) {
            return Err(BtfError::Size {
                strukt: strukt.to_owned(),
                field: path.join("."),
                size,
                expected: format!("{sizes:?}"),
            });
        }
        Ok(offset)
    }

    /// The struct a member's type is (through typedefs and qualifiers).
    fn struct_of(&self, m: &btf_rs::Member) -> Option<btf_rs::Struct> {
        let mut t = self.0.resolve_chained_type(m).ok();
        for _ in 0..16 {
            t = match t {
                Some(Type::Struct(s)) => return Some(s),
                Some(Type::Typedef(x)) => self.0.resolve_chained_type(&x).ok(),
                Some(Type::Volatile(x)) => self.0.resolve_chained_type(&x).ok(),
                Some(Type::Const(x)) => self.0.resolve_chained_type(&x).ok(),
                _ => return None,
            };
        }
        None
    }

    /// Offsets the raw `inet_sock_set_state` program reads to tell a
    /// socket's network namespace: `struct sock` → `struct net *`
    /// (`__sk_common.skc_net.net`), and `struct net` → its inode number
    /// (`ns.inum`, what `stat /proc/PID/ns/net` shows as the inode).
    pub fn netns_offsets(&self) -> Result<(u32, u32), BtfError> {
        let net = self.path_offset("sock", &["__sk_common", "skc_net", "net"], &[8])?;
        let inum = self.path_offset("net", &["ns", "inum"], &[4])?;
        Ok((net, inum))
    }

    /// Offsets the raw `inet_sock_set_state` program reads from a `struct
    /// sock *`: the local port (`__sk_common.skc_num`) and `sk_protocol`.
    pub fn sock_offsets(&self) -> Result<(u32, u32), BtfError> {
        let common = self.member_offset("sock", &["__sk_common"])?;
        let num = self.nested_offset("sock_common", "skc_num", &[2])?;
        let protocol = self.nested_offset("sock", "sk_protocol", &[2])?;
        Ok((common + num, protocol))
    }

    /// Offsets of the chain from a task to its cgroup2 id,
    /// `task->cgroups->dfl_cgrp->kn->id` (three pointers and the `u64` id),
    /// which the BTF-tracepoint `sched_switch` follows for the task it
    /// switches in.
    pub fn cgroup_id_offsets(&self) -> Result<[u32; 4], BtfError> {
        Ok([
            self.sized_member_offset("task_struct", &["cgroups"], &[8])?,
            self.sized_member_offset("css_set", &["dfl_cgrp"], &[8])?,
            self.sized_member_offset("cgroup", &["kn"], &[8])?,
            self.sized_member_offset("kernfs_node", &["id"], &[8])?,
        ])
    }

    /// Offsets of the kernel's own run-queue accounting, which the
    /// `sched_info` variant of the BTF `sched_switch` reads:
    /// `task_struct.sched_info.run_delay` and `.last_queued` (`u64`s,
    /// CONFIG_SCHED_INFO), `task_struct.se.cfs_rq` (CONFIG_FAIR_GROUP_SCHED),
    /// `cfs_rq.rq` and `rq.clock`.
    pub fn sched_info_offsets(&self) -> Result<[u32; 5], BtfError> {
        Ok([
            self.path_offset("task_struct", &["sched_info", "run_delay"], &[8])?,
            self.path_offset("task_struct", &["sched_info", "last_queued"], &[8])?,
            self.path_offset("task_struct", &["se", "cfs_rq"], &[8])?,
            self.sized_member_offset("cfs_rq", &["rq"], &[8])?,
            self.sized_member_offset("rq", &["clock"], &[8])?,
        ])
    }

    /// Offset of a listener's accept-queue depth, `struct sock.sk_ack_backlog`
    /// (a `u32` since 5.5), which the enforcement object's guard reads.
    pub fn ack_backlog_offset(&self) -> Result<u32, BtfError> {
        self.sized_member_offset("sock", &["sk_ack_backlog"], &[4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's kernel when it has BTF (CI's does); the
    /// two offsets must differ and lie inside task_struct.
    /// The namespace offsets on this kernel: `skc_net` lies in
    /// `sock_common` after the port and before `sk_protocol`, and `ns.inum`
    /// inside `struct net`.
    /// On this kernel (CI's has CONFIG_SCHED_INFO and group scheduling)
    /// the chain resolves: `last_queued` after `run_delay` inside
    /// `sched_info`, all of them inside `task_struct`, and a `sched_info`
    /// without `last_queued` (a made-up path) is an error, not an offset.
    #[test]
    fn sched_info_offsets_resolve_on_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let [delay, queued, cfs_rq, rq, clock] = btf.sched_info_offsets().unwrap();
        assert!(
            delay < queued && queued - delay < 48,
            "run_delay {delay}, last_queued {queued}"
        );
        let task = btf
            .sized_member_offset("task_struct", &["pid"], &[4])
            .unwrap();
        assert!(
            task > 0 && cfs_rq > 0 && rq > 0 && clock > 0,
            "{cfs_rq} {rq} {clock}"
        );
        assert!(
            btf.path_offset("task_struct", &["sched_info", "no_such_field"], &[8])
                .is_err()
        );
    }

    #[test]
    fn netns_offsets_resolve_on_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let (net, inum) = btf.netns_offsets().unwrap();
        let (port, protocol) = btf.sock_offsets().unwrap();
        assert!(
            port < net && net < protocol,
            "skc_net at {net}: port {port}, protocol {protocol}"
        );
        assert!(inum > 0 && inum < 4096, "ns.inum at {inum}");
        assert!(
            matches!(
                btf.path_offset("sock", &["__sk_common", "skc_net"], &[8]),
                Err(BtfError::Size { .. })
            ),
            "possible_net_t is a struct, not the pointer inside it"
        );
    }

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

    /// The cgroup-id chain on this kernel: every link is found, and each
    /// offset lies inside its struct (`kn` and `id` are near the start of
    /// theirs; `cgroups` is deep in `task_struct`).
    #[test]
    fn cgroup_id_chain_resolves_on_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let [cgroups, dfl, kn, id] = btf.cgroup_id_offsets().unwrap();
        let pid = btf.member_offset("task_struct", &["pid"]).unwrap();
        assert!(
            cgroups > pid,
            "task_struct.cgroups at {cgroups}, pid at {pid}"
        );
        assert!(dfl < 4096 && kn < 4096 && id < 512, "{dfl} {kn} {id}");
        assert!(matches!(
            btf.sized_member_offset("cgroup", &["kn"], &[4]),
            Err(BtfError::Size { .. })
        ));
    }

    /// `skc_num` is inside an anonymous struct in an anonymous union of
    /// `sock_common`, right after `skc_dport` (both `u16`): the nested
    /// lookup must find both, two bytes apart, and refuse what is absent.
    #[test]
    fn sock_offsets_resolve_through_anonymous_members_on_this_kernel() {
        if !Path::new(VMLINUX).exists() {
            eprintln!("skipped: no {VMLINUX}");
            return;
        }
        let btf = KernelBtf::open(Path::new(VMLINUX)).unwrap();
        let dport = btf.nested_offset("sock_common", "skc_dport", &[2]).unwrap();
        let num = btf.nested_offset("sock_common", "skc_num", &[2]).unwrap();
        assert_eq!(num, dport + 2, "skc_num follows skc_dport");
        assert!(
            matches!(
                btf.member_offset("sock_common", &["skc_num"]),
                Err(BtfError::NoMember { .. })
            ),
            "skc_num is not a direct member: the nested lookup is needed"
        );
        let (port, protocol) = btf.sock_offsets().unwrap();
        assert_eq!(port, num, "__sk_common is the first member of struct sock");
        assert!(
            protocol > port && protocol < 4096,
            "sk_protocol at {protocol}"
        );
        assert!(btf.nested_offset("sock", "no_such_field", &[2]).is_err());
        // A size the programs do not read is refused, not read as garbage.
        assert!(matches!(
            btf.nested_offset("sock_common", "skc_num", &[4]),
            Err(BtfError::Size { size: 2, .. })
        ));
        assert!(matches!(
            btf.sized_member_offset("task_struct", &["pid"], &[8]),
            Err(BtfError::Size { size: 4, .. })
        ));
        assert!(
            btf.sized_member_offset("task_struct", &["pid"], &[4])
                .is_ok()
        );
    }
}
