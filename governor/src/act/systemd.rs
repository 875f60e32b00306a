//! systemd units as targets: `cpu_weight`, `cpu_limit` and `memory_high`
//! told to systemd (`SetUnitProperties`, runtime, over D-Bus) instead of
//! written into the unit's cgroup behind its back.
//!
//! # Why
//!
//! systemd owns the cgroup attributes of its units (design.md, "On a systemd
//! host"): `systemctl daemon-reload` and `set-property` write every running
//! unit's `cpu.weight`, `cpu.max` and `cpu.idle` back to the unit's values,
//! and the cpu controller is enabled under a slice only when some unit asks
//! for it. A value set through systemd is systemd's own instead: systemd
//! enables the controllers it needs and writes the files, the value lives in
//! a runtime drop-in that a daemon-reload reads again, and `systemctl show`
//! tells what is in force.
//!
//! # What systemd 252 does (Debian 12; read in `systemd-stable-252.39`)
//!
//! | agent action | D-Bus property (type `t`) | unset value | runtime drop-in line | cgroup2 files systemd writes |
//! |---|---|---|---|---|
//! | `cpu_weight` N | `CPUWeight` = N (1–10000) | `u64::MAX` (`CGROUP_WEIGHT_INVALID`) | `CPUWeight=N` | `cpu.idle` 0, `cpu.weight` N |
//! | `cpu_weight` idle | `CPUWeight` = 0 (`CGROUP_WEIGHT_IDLE`) | (same property) | `CPUWeight=idle` | `cpu.idle` 1; `cpu.weight` is left as it was |
//! | `cpu_limit` C CPUs | `CPUQuotaPerSecUSec` = C·10⁶ µs | `u64::MAX` (`USEC_INFINITY`) | `CPUQuota=P%` (whole percent, truncated) | `cpu.max` = `max(q·period/10⁶, 1000) period`, period 100 ms |
//! | `memory_high` B | `MemoryHigh` = B bytes | `u64::MAX` (`CGROUP_LIMIT_MAX`) | `MemoryHigh=B`, `MemoryHigh=infinity` | `memory.high` (`max` for infinity) |
//!
//! - `src/basic/cgroup-util.h`: `CGROUP_WEIGHT_INVALID` = `UINT64_MAX`,
//!   `CGROUP_WEIGHT_IDLE` = 0, `CGROUP_WEIGHT_MIN` 1, `CGROUP_WEIGHT_MAX`
//!   10000; `CGROUP_LIMIT_MAX` = `UINT64_MAX`.
//! - `src/core/dbus-cgroup.c`: `bus_cgroup_set_cpu_weight` accepts
//!   `CGROUP_WEIGHT_IS_OK(v) || v == CGROUP_WEIGHT_IDLE` and writes
//!   `CPUWeight=` / `CPUWeight=idle` / `CPUWeight=N`; `CPUQuotaPerSecUSec`
//!   refuses 0 and writes the drop-in under the name `CPUQuota` as
//!   `CPUQuota=%0.f%%` of `usec / 10000` (integer division: 255000 µs is
//!   written `25%`, read back as 250000 at the next daemon-reload, which is
//!   why [`to_systemd`] rounds to whole percent); `MemoryHigh` goes through
//!   `BUS_DEFINE_SET_CGROUP_LIMIT(memory, …, 1)` (refuses 0, writes
//!   `MemoryHigh=infinity` for `CGROUP_LIMIT_MAX`). The properties are on
//!   the unit type's interface (`bus_cgroup_vtable`, registered for
//!   `org.freedesktop.systemd1.Service`, `.Scope`, `.Slice`… in
//!   `src/core/dbus.c`), as is `ControlGroup`.
//! - `src/core/cgroup.c`: `cgroup_context_init` (unset values above);
//!   `cgroup_apply_unified_cpu_idle` writes `cpu.idle` = 1 for
//!   `CGROUP_WEIGHT_IDLE` and 0 otherwise, `cgroup_apply_unified_cpu_weight`
//!   skips `cpu.weight` for idle; on a kernel without `cpu.idle` (before 5.15)
//!   the idle write fails, is logged, and nothing else is written, so idle
//!   has no effect there ([`Fallback::NoCpuIdle`]). On a v1 cpu hierarchy
//!   `cgroup_cpu_weight_to_shares` maps idle to `cpu.shares` 2.
//! - `NEWS`, "CHANGES WITH 252": "The CPUWeight= setting of unit files now
//!   accepts a new special value "idle"". So 252 needs no fallback of
//!   writing `cpu.idle` directly; before 252 `CPUWeight` went through the
//!   generic weight check, which refuses 0, and weight 1 is set instead
//!   ([`IdleSupport`], [`Fallback::OldSystemd`]).
//! - `src/core/unit.c` `unit_write_setting` → `src/shared/dropin.c`
//!   `drop_in_file(dir, unit, 50, name)`: the runtime drop-in is
//!   `<dir>/<unit>.d/50-<name>.conf`, where `unit_drop_in_dir` picks
//!   `/run/systemd/system.control` for `runtime=true` (`acquire_control_dirs`
//!   in `src/basic/path-lookup.c`), but `/run/systemd/transient` for every
//!   transient unit (session scopes, `systemd-run` units), whatever the flag.
//!   Content: two comment lines, `[Service]` (the unit type's private
//!   section), the setting, a newline ([`dropin_content`]).
//! - `src/core/dbus-unit.c` `bus_unit_method_set_properties`: allowed for
//!   CAP_SYS_ADMIN, or a sender of systemd's own uid (0) when its
//!   capabilities are not known, as over dbus-daemon; otherwise polkit.
//!   `unit_need_daemon_reload` compares the unit's drop-in list with the
//!   disk: after [`SystemdUnits::restore`] removes the runtime drop-in,
//!   `systemctl` says "changed on disk, run daemon-reload" for that unit
//!   (`NeedDaemonReload=yes`) until the next reload, which then yields the
//!   unit's own value. That is cosmetic and expected.
//!
//! # Use (by [`super::cgroup::CgroupActuator`])
//!
//! 1. At start, [`systemd_manages_cgroups`], then [`SystemdUnits::connect`]
//!    and [`SystemdUnits::version`] (for [`idle_support`] and [`to_systemd`]),
//!    and [`SystemdUnits::reader`] for drift checks.
//! 2. Per target cgroup, [`SystemdUnits::resolve`]: `Some(unit)` only if the
//!    last path component is a unit name ([`unit_for`]) *and* the system
//!    manager has that unit with exactly that cgroup (a `*.service` under
//!    `user@1000.service` belongs to the user's manager: files for it).
//!    Every action on a unit then goes through systemd: a realize of the
//!    unit rewrites all of its cpu files, so a file written beside it would
//!    not last.
//! 3. Per change, [`SystemdUnits::prepare`] (reads, changes nothing), journal
//!    the [`Prior`], then [`SystemdUnits::apply`], so a crash after the change
//!    still finds it journaled. A unit already held gets
//!    [`Prior::with_held`] of its journaled prior, never a new `prepare`
//!    (which would take the agent's own value for the unit's).
//!    [`SystemdUnits::set_runtime`] does both for callers without a journal.
//! 4. Each tick, the unit's cgroup files ([`read_kernel`], [`kernel_agrees`]),
//!    and at most every second or so systemd's own value through the reader
//!    ([`Live::drift`] puts the two together; [`SystemdUnits::drift`] does
//!    it in one call). The cgroup files are written by systemd after it
//!    replies, so compare them from the next tick on.
//! 5. On lift, exit and after a crash, [`SystemdUnits::restore`] with the
//!    journaled prior (which checks that its drop-in is the unit's own).
//!
//! `test_support` (tests only) serves a fake systemd 252 on a private
//! dbus-daemon for this module's tests and the actuator's.
//!
//! The bus address and the file system root are parameters
//! ([`SystemdUnits::connect_to`]) so tests can serve a fake systemd on a
//! private bus over a temporary tree.

use std::{
    fmt, fs,
    io::{self, Write as _},
    os::unix::{fs::OpenOptionsExt as _, net::UnixStream},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value as Variant};

/// The system bus socket (dbus-daemon's and dbus-broker's default).
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// Exists, as a directory, while systemd is the service manager
/// (`sd_booted(3)`); relative to the root.
pub const BOOTED_MARKER: &str = "run/systemd/system";
/// Where systemd keeps the drop-ins of `set-property --runtime`, relative to
/// the root.
pub const RUNTIME_CONTROL_DIR: &str = "run/systemd/system.control";
/// Where systemd keeps transient units and all of their drop-ins, relative to
/// the root.
pub const TRANSIENT_DIR: &str = "run/systemd/transient";
/// How long one call may take. PID 1 answers in milliseconds, but not while
/// it reloads; a tick must not wait for systemd's own 25 s default.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

const DEST: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";
/// systemd's `UNIT_NAME_MAX`: names are shorter than this.
const UNIT_NAME_MAX: usize = 256;
/// The first lines of every drop-in `unit_write_setting` writes.
const DROPIN_HEADER: &str = "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n# or an equivalent operation. Do not edit.\n";

/// A kind of unit that has a cgroup the agent acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnitKind {
    /// `*.service`
    Service,
    /// `*.scope` (sessions, containers, `systemd-run --scope`)
    Scope,
    /// `*.slice`
    Slice,
}

impl UnitKind {
    /// The D-Bus interface that carries this kind's cgroup properties.
    pub fn interface(self) -> &'static str {
        match self {
            Self::Service => "org.freedesktop.systemd1.Service",
            Self::Scope => "org.freedesktop.systemd1.Scope",
            Self::Slice => "org.freedesktop.systemd1.Slice",
        }
    }

    /// The unit file section systemd writes this kind's settings into.
    pub fn section(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::Scope => "Scope",
            Self::Slice => "Slice",
        }
    }
}

/// The name of a service, scope or slice unit, valid as systemd's
/// `unit_name_is_valid(UNIT_NAME_PLAIN|UNIT_NAME_INSTANCE)` has it (templates
/// such as `getty@.service` have no cgroup and are refused).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName {
    name: String,
    kind: UnitKind,
}

impl UnitName {
    /// `name` if it is a valid service, scope or slice name.
    pub fn parse(name: &str) -> Option<Self> {
        unit_kind(name).map(|kind| Self {
            name: name.to_owned(),
            kind,
        })
    }

    /// The name, e.g. `hog.service`.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// Service, scope or slice.
    pub fn kind(&self) -> UnitKind {
        self.kind
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl TryFrom<String> for UnitName {
    type Error = String;
    fn try_from(name: String) -> Result<Self, String> {
        match unit_kind(&name) {
            Some(kind) => Ok(Self { name, kind }),
            None => Err(format!(
                "{name:?} is not a service, scope or slice unit name"
            )),
        }
    }
}

impl From<UnitName> for String {
    fn from(u: UnitName) -> String {
        u.name
    }
}

/// systemd's `unit_name_is_valid(name, UNIT_NAME_PLAIN|UNIT_NAME_INSTANCE)`
/// (`src/basic/unit-name.c`), restricted to the kinds the agent acts on.
fn unit_kind(name: &str) -> Option<UnitKind> {
    if name.is_empty() || name.len() >= UNIT_NAME_MAX {
        return None;
    }
    let (stem, suffix) = name.rsplit_once('.')?;
    let kind = match suffix {
        "service" => UnitKind::Service,
        "scope" => UnitKind::Scope,
        "slice" => UnitKind::Slice,
        _ => return None,
    };
    let valid = |b: u8| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b);
    if stem.is_empty() || !stem.bytes().all(valid) {
        return None;
    }
    match stem.find('@') {
        // `@foo.service`, or the template `foo@.service`.
        Some(0) => None,
        Some(at) if at + 1 == stem.len() => None,
        _ => Some(kind),
    }
}

/// The unit whose cgroup `cgroup` (relative to the cgroup2 mount, e.g.
/// `/system.slice/hog.service`) is, judged by its name alone: its last
/// component, unescaped as systemd's `cg_path_decode_unit` does (one leading
/// `_` removed: `_cpu.service` is the cgroup of `cpu.service`), if that is a
/// service, scope or slice name. Pure; [`SystemdUnits::resolve`] also asks
/// systemd whether that unit has this cgroup.
pub fn unit_for(cgroup: &str) -> Option<UnitName> {
    let last = cgroup.trim_end_matches('/').rsplit('/').next()?;
    UnitName::parse(last.strip_prefix('_').unwrap_or(last))
}

/// Checks that systemd is the cgroup manager: `<root>/run/systemd/system` is
/// a directory (what `sd_booted(3)` tests) and the system bus at
/// `bus_socket` accepts a connection. Without both, the agent acts through
/// cgroup files only.
pub fn systemd_manages_cgroups(root: &Path, bus_socket: &Path) -> Result<(), SystemdError> {
    let marker = root.join(BOOTED_MARKER);
    if !fs::symlink_metadata(&marker).is_ok_and(|m| m.is_dir()) {
        return Err(SystemdError::NotBooted { marker });
    }
    UnixStream::connect(bus_socket).map_err(|e| SystemdError::BusUnreachable {
        address: format!("unix:path={}", bus_socket.display()),
        reason: e.to_string(),
    })?;
    Ok(())
}

/// A cgroup property the agent sets through systemd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Property {
    /// `CPUWeight` (`cpu_weight` N and `cpu_weight` idle).
    CpuWeight,
    /// `CPUQuotaPerSecUSec` (`cpu_limit`).
    CpuQuota,
    /// `MemoryHigh` (`memory_high`).
    MemoryHigh,
}

impl Property {
    /// Every property.
    pub const ALL: [Self; 3] = [Self::CpuWeight, Self::CpuQuota, Self::MemoryHigh];

    /// The D-Bus property name, for reading and for `SetUnitProperties`.
    pub fn dbus_name(self) -> &'static str {
        match self {
            Self::CpuWeight => "CPUWeight",
            Self::CpuQuota => "CPUQuotaPerSecUSec",
            Self::MemoryHigh => "MemoryHigh",
        }
    }

    /// The name in the drop-in's file name, `50-<name>.conf`: the unit file
    /// setting's, which for the quota is not the D-Bus property's.
    pub fn dropin_name(self) -> &'static str {
        match self {
            Self::CpuWeight => "CPUWeight",
            Self::CpuQuota => "CPUQuota",
            Self::MemoryHigh => "MemoryHigh",
        }
    }

    /// The runtime drop-in systemd writes when this property of `unit` is
    /// set with `runtime=true`: under `/run/systemd/system.control`, or
    /// `/run/systemd/transient` for a transient unit.
    pub fn dropin_path(self, root: &Path, unit: &UnitName, transient: bool) -> PathBuf {
        let dir = if transient {
            TRANSIENT_DIR
        } else {
            RUNTIME_CONTROL_DIR
        };
        root.join(dir)
            .join(format!("{unit}.d"))
            .join(format!("50-{}.conf", self.dropin_name()))
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dbus_name())
    }
}

/// `CPUWeight` as systemd holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuWeight {
    /// Not set (`u64::MAX`): `cpu.weight` 100, `cpu.idle` 0.
    Unset,
    /// `idle` (0 over D-Bus): `cpu.idle` 1.
    Idle,
    /// A weight, 1–10000.
    Weight(u16),
}

/// `CPUQuotaPerSecUSec` as systemd holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuQuota {
    /// Not set (`u64::MAX`, infinity): `cpu.max` `max`.
    Unset,
    /// CPU time per second of wall time, in µs (250000 = 25% = 0.25 CPUs).
    PerSecUsec(u64),
}

/// `MemoryHigh` as systemd holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryHigh {
    /// Not set (`u64::MAX`, infinity): `memory.high` `max`.
    Unset,
    /// Bytes.
    Bytes(u64),
}

/// The value of one [`Property`], typed; the same set of values systemd's
/// `t` encodes, so a value read and written back is exactly the unit's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "property", content = "value", rename_all = "snake_case")]
pub enum Value {
    /// `CPUWeight`.
    CpuWeight(CpuWeight),
    /// `CPUQuotaPerSecUSec`.
    CpuQuota(CpuQuota),
    /// `MemoryHigh`.
    MemoryHigh(MemoryHigh),
}

impl Value {
    /// The property this is a value of.
    pub fn property(&self) -> Property {
        match self {
            Self::CpuWeight(_) => Property::CpuWeight,
            Self::CpuQuota(_) => Property::CpuQuota,
            Self::MemoryHigh(_) => Property::MemoryHigh,
        }
    }

    /// The property's unset value: what a unit without the setting has.
    pub fn unset(property: Property) -> Self {
        match property {
            Property::CpuWeight => Self::CpuWeight(CpuWeight::Unset),
            Property::CpuQuota => Self::CpuQuota(CpuQuota::Unset),
            Property::MemoryHigh => Self::MemoryHigh(MemoryHigh::Unset),
        }
    }

    /// The `t` sent over D-Bus.
    pub fn to_dbus(&self) -> u64 {
        match *self {
            Self::CpuWeight(CpuWeight::Unset)
            | Self::CpuQuota(CpuQuota::Unset)
            | Self::MemoryHigh(MemoryHigh::Unset) => u64::MAX,
            Self::CpuWeight(CpuWeight::Idle) => 0,
            Self::CpuWeight(CpuWeight::Weight(w)) => u64::from(w),
            Self::CpuQuota(CpuQuota::PerSecUsec(u)) => u,
            Self::MemoryHigh(MemoryHigh::Bytes(b)) => b,
        }
    }

    /// The value of `property` that systemd sent as `raw`; `None` if systemd
    /// would never hold it (a weight above 10000, a quota of 0).
    pub fn from_dbus(property: Property, raw: u64) -> Option<Self> {
        Some(match (property, raw) {
            (Property::CpuWeight, u64::MAX) => Self::CpuWeight(CpuWeight::Unset),
            (Property::CpuWeight, 0) => Self::CpuWeight(CpuWeight::Idle),
            (Property::CpuWeight, w @ 1..=10_000) => {
                Self::CpuWeight(CpuWeight::Weight(u16::try_from(w).ok()?))
            }
            (Property::CpuWeight, _) => return None,
            (Property::CpuQuota, u64::MAX) => Self::CpuQuota(CpuQuota::Unset),
            (Property::CpuQuota, 0) => return None,
            (Property::CpuQuota, u) => Self::CpuQuota(CpuQuota::PerSecUsec(u)),
            (Property::MemoryHigh, u64::MAX) => Self::MemoryHigh(MemoryHigh::Unset),
            (Property::MemoryHigh, b) => Self::MemoryHigh(MemoryHigh::Bytes(b)),
        })
    }

    /// The line systemd writes into the runtime drop-in for this value
    /// (`bus_cgroup_set_property` in `src/core/dbus-cgroup.c`).
    pub fn dropin_line(&self) -> String {
        match *self {
            Self::CpuWeight(CpuWeight::Unset) => "CPUWeight=".into(),
            Self::CpuWeight(CpuWeight::Idle) => "CPUWeight=idle".into(),
            Self::CpuWeight(CpuWeight::Weight(w)) => format!("CPUWeight={w}"),
            Self::CpuQuota(CpuQuota::Unset) => "CPUQuota=".into(),
            Self::CpuQuota(CpuQuota::PerSecUsec(u)) => format!("CPUQuota={}%", u / 10_000),
            Self::MemoryHigh(MemoryHigh::Unset) => "MemoryHigh=infinity".into(),
            Self::MemoryHigh(MemoryHigh::Bytes(b)) => format!("MemoryHigh={b}"),
        }
    }

    /// The agent action this value carries out; `None` for unset values,
    /// which no action sets (they are what a restore writes back).
    pub fn setting(&self) -> Option<Setting> {
        match *self {
            Self::CpuWeight(CpuWeight::Weight(w)) => Some(Setting::CpuWeight(w)),
            Self::CpuWeight(CpuWeight::Idle) => Some(Setting::CpuIdle),
            Self::CpuQuota(CpuQuota::PerSecUsec(u)) => Some(Setting::CpuLimit {
                cpus: u as f64 / 1e6,
            }),
            Self::MemoryHigh(MemoryHigh::Bytes(b)) => Some(Setting::MemoryHigh { bytes: b }),
            Self::CpuWeight(CpuWeight::Unset)
            | Self::CpuQuota(CpuQuota::Unset)
            | Self::MemoryHigh(MemoryHigh::Unset) => None,
        }
    }
}

impl fmt::Display for Value {
    /// `CPUWeight=idle`, `CPUQuota=25%`, `MemoryHigh=1073741824`; unset
    /// values say so and what they amount to (`CPUQuota unset (max)`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::CpuWeight(CpuWeight::Unset) => f.write_str("CPUWeight unset (100)"),
            Self::CpuQuota(CpuQuota::Unset) => f.write_str("CPUQuota unset (max)"),
            Self::MemoryHigh(MemoryHigh::Unset) => f.write_str("MemoryHigh unset (infinity)"),
            Self::CpuQuota(CpuQuota::PerSecUsec(u)) if u % 10_000 != 0 => {
                write!(f, "CPUQuota={}%", u as f64 / 10_000.0)
            }
            _ => f.write_str(&self.dropin_line()),
        }
    }
}

/// The whole runtime drop-in systemd writes when it sets `value` on a unit
/// of `kind` (`unit_write_setting` in `src/core/unit.c`).
pub fn dropin_content(kind: UnitKind, value: &Value) -> String {
    format!(
        "{DROPIN_HEADER}[{}]\n{}\n",
        kind.section(),
        value.dropin_line()
    )
}

/// One cgroup action of the agent, as its config states it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    /// `cpu_weight` N, 1–10000.
    CpuWeight(u16),
    /// `cpu_weight` idle.
    CpuIdle,
    /// `cpu_limit`: a quota in CPUs (0.25 = a quarter of one CPU).
    CpuLimit {
        /// CPUs, > 0.
        cpus: f64,
    },
    /// `memory_high`: bytes (`u64::MAX` = no limit).
    MemoryHigh {
        /// Bytes.
        bytes: u64,
    },
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CpuWeight(w) => write!(f, "cpu_weight {w}"),
            Self::CpuIdle => f.write_str("cpu_weight idle"),
            Self::CpuLimit { cpus } => write!(f, "cpu_limit {cpus} CPUs"),
            Self::MemoryHigh { bytes } => write!(f, "memory_high {bytes} bytes"),
        }
    }
}

/// Whether `CPUWeight=idle` takes effect through systemd on this host
/// ([`idle_support`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleSupport {
    /// It does: systemd 252 or later, and the unit's cgroup2 has `cpu.idle`
    /// (kernel 5.15 or later), or a hybrid host, where systemd maps idle to
    /// `cpu.shares` 2 (the lowest, as the file actuator's substitute).
    Idle,
    /// The kernel has no `cpu.idle` (before 5.15): systemd 252 writes
    /// nothing at all for idle.
    NoCpuIdle,
    /// systemd before 252 refuses `CPUWeight` 0 (`idle` came in 252).
    OldSystemd,
}

/// [`IdleSupport`] from systemd's major version ([`SystemdUnits::version`]),
/// whether the unit's cgroup2 directory has `cpu.idle`, and whether the host
/// is hybrid (cpu controller in v1).
pub fn idle_support(systemd_version: u32, cpu_idle_file: bool, hybrid: bool) -> IdleSupport {
    if systemd_version < 252 {
        IdleSupport::OldSystemd
    } else if cpu_idle_file || hybrid {
        IdleSupport::Idle
    } else {
        IdleSupport::NoCpuIdle
    }
}

/// Something done differently from what the action says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The kernel has no `cpu.idle` (before 5.15): systemd would write
    /// nothing for `CPUWeight=idle`, so the lowest weight, 1, is set.
    NoCpuIdle,
    /// systemd is older than 252 and refuses `CPUWeight=idle`: the lowest
    /// weight, 1, is set through systemd. (Writing `cpu.idle` directly would
    /// be closer, but the next daemon-reload resets it to 0, which
    /// [`SystemdUnits::drift`] cannot see and the agent would not repair.)
    OldSystemd,
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCpuIdle => f.write_str(
                "cpu.idle is not available (kernel before 5.15), where systemd's CPUWeight=idle does nothing; set CPUWeight=1 instead",
            ),
            Self::OldSystemd => f.write_str(
                "systemd before 252 does not accept CPUWeight=idle; set CPUWeight=1 instead",
            ),
        }
    }
}

/// What [`to_systemd`] maps an action to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// The value to set.
    pub value: Value,
    /// A documented substitute, if the action could not be mapped as written.
    pub fallback: Option<Fallback>,
}

/// The systemd property value that carries out `setting`, given whether
/// idle takes effect here ([`idle_support`]); where it does not, weight 1 is
/// set and the [`Fallback`] says why.
///
/// A quota is rounded to a whole percent (at least 1%): systemd writes the
/// drop-in in whole percent, truncating, and a value the drop-in cannot
/// carry would change at the next daemon-reload and be reported as drift.
pub fn to_systemd(setting: Setting, idle: IdleSupport) -> Result<Mapped, SystemdError> {
    let invalid = |reason: &'static str| SystemdError::Invalid {
        what: setting.to_string(),
        reason,
    };
    let (value, fallback) = match setting {
        Setting::CpuWeight(w @ 1..=10_000) => (Value::CpuWeight(CpuWeight::Weight(w)), None),
        Setting::CpuWeight(_) => return Err(invalid("a CPU weight is 1 to 10000")),
        Setting::CpuIdle => match idle {
            IdleSupport::Idle => (Value::CpuWeight(CpuWeight::Idle), None),
            IdleSupport::NoCpuIdle => (
                Value::CpuWeight(CpuWeight::Weight(1)),
                Some(Fallback::NoCpuIdle),
            ),
            IdleSupport::OldSystemd => (
                Value::CpuWeight(CpuWeight::Weight(1)),
                Some(Fallback::OldSystemd),
            ),
        },
        Setting::CpuLimit { cpus } => {
            if !(cpus.is_finite() && cpus > 0.0) {
                return Err(invalid("a CPU quota is a positive number of CPUs"));
            }
            let percent = (cpus * 100.0).round().max(1.0);
            if percent >= (u64::MAX / 10_000) as f64 {
                return Err(invalid("a CPU quota that large is no quota"));
            }
            let usec = percent as u64 * 10_000;
            (Value::CpuQuota(CpuQuota::PerSecUsec(usec)), None)
        }
        Setting::MemoryHigh { bytes: 0 } => {
            return Err(invalid("systemd refuses MemoryHigh=0"));
        }
        Setting::MemoryHigh { bytes: u64::MAX } => (Value::MemoryHigh(MemoryHigh::Unset), None),
        Setting::MemoryHigh { bytes } => (Value::MemoryHigh(MemoryHigh::Bytes(bytes)), None),
    };
    Ok(Mapped { value, fallback })
}

/// What the kernel shows in a unit's cgroup2 files for one property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelValue {
    /// `cpu.weight`, and `cpu.idle` where it exists (kernel 5.15 or later).
    Cpu {
        /// `cpu.idle` is 1; `None`: there is no `cpu.idle`.
        idle: Option<bool>,
        /// `cpu.weight`.
        weight: u64,
    },
    /// `cpu.max`.
    CpuMax {
        /// The quota in µs per period; `None`: `max`.
        quota_us: Option<u64>,
        /// The period in µs.
        period_us: u64,
    },
    /// `memory.high` in bytes; `None`: `max`.
    MemoryHigh(Option<u64>),
}

impl fmt::Display for KernelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu { idle: None, weight } => write!(f, "cpu.weight {weight}"),
            Self::Cpu {
                idle: Some(idle),
                weight,
            } => write!(f, "cpu.idle {}, cpu.weight {weight}", u8::from(*idle)),
            Self::CpuMax {
                quota_us: None,
                period_us,
            } => write!(f, "cpu.max \"max {period_us}\""),
            Self::CpuMax {
                quota_us: Some(q),
                period_us,
            } => write!(f, "cpu.max \"{q} {period_us}\""),
            Self::MemoryHigh(None) => f.write_str("memory.high max"),
            Self::MemoryHigh(Some(b)) => write!(f, "memory.high {b}"),
        }
    }
}

/// Reads `property`'s files in the cgroup2 directory `dir`; `None` if they
/// are not there (the cgroup is gone, or systemd has not enabled the
/// controller yet). Hybrid hosts keep the cpu files in the v1 hierarchy:
/// there only systemd's own value is compared.
pub fn read_kernel(dir: &Path, property: Property) -> Result<Option<KernelValue>, SystemdError> {
    match property {
        Property::CpuWeight => {
            let Some(weight) = read_file(&dir.join("cpu.weight"))? else {
                return Ok(None);
            };
            let weight = parse_u64(&dir.join("cpu.weight"), &weight)?;
            let idle_file = dir.join("cpu.idle");
            let idle = match read_file(&idle_file)? {
                Some(t) => Some(parse_u64(&idle_file, &t)? != 0),
                None => None,
            };
            Ok(Some(KernelValue::Cpu { idle, weight }))
        }
        Property::CpuQuota => {
            let file = dir.join("cpu.max");
            let Some(text) = read_file(&file)? else {
                return Ok(None);
            };
            let (quota, period) = text
                .split_once(' ')
                .ok_or_else(|| SystemdError::CgroupFile {
                    path: file.clone(),
                    reason: format!("expected `QUOTA PERIOD`, found {text:?}"),
                })?;
            let quota_us = match quota {
                "max" => None,
                q => Some(parse_u64(&file, q)?),
            };
            Ok(Some(KernelValue::CpuMax {
                quota_us,
                period_us: parse_u64(&file, period)?,
            }))
        }
        Property::MemoryHigh => {
            let file = dir.join("memory.high");
            let Some(text) = read_file(&file)? else {
                return Ok(None);
            };
            Ok(Some(KernelValue::MemoryHigh(match text.as_str() {
                "max" => None,
                b => Some(parse_u64(&file, b)?),
            })))
        }
    }
}

/// True if the kernel's files hold what systemd writes for `held`:
/// `cpu.max`'s quota is systemd's `max(usec·period/10⁶, 1000)` for the
/// period in force, `memory.high` is rounded down to whole pages (the
/// kernel keeps pages, and shows `max` from `i64::MAX` bytes up).
pub fn kernel_agrees(held: &Value, kernel: &KernelValue) -> bool {
    match (*held, kernel) {
        (Value::CpuWeight(CpuWeight::Idle), KernelValue::Cpu { idle, .. }) => *idle == Some(true),
        (Value::CpuWeight(w), KernelValue::Cpu { idle, weight }) => {
            let want = match w {
                CpuWeight::Weight(n) => u64::from(n),
                _ => 100,
            };
            *idle != Some(true) && *weight == want
        }
        (Value::CpuQuota(CpuQuota::Unset), KernelValue::CpuMax { quota_us, .. }) => {
            quota_us.is_none()
        }
        (
            Value::CpuQuota(CpuQuota::PerSecUsec(u)),
            KernelValue::CpuMax {
                quota_us,
                period_us,
            },
        ) => {
            let want = (u128::from(u) * u128::from(*period_us) / 1_000_000).max(1000);
            quota_us.is_some_and(|q| u128::from(q) == want)
        }
        (Value::MemoryHigh(m), KernelValue::MemoryHigh(shown)) => {
            let page = page_size();
            let max_pages = i64::MAX as u64 / page;
            match (m, shown) {
                (MemoryHigh::Unset, None) => true,
                (MemoryHigh::Bytes(b), None) => b / page >= max_pages,
                (MemoryHigh::Bytes(b), Some(s)) => b / page < max_pages && *s == b / page * page,
                (MemoryHigh::Unset, Some(_)) => false,
            }
        }
        _ => false,
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf takes no pointers; it reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// What the agent needs to put a unit's property back: the value systemd had
/// before the agent's first change, and the runtime drop-in that was there
/// (or not). Journaled before the change ([`SystemdUnits::prepare`]), so a
/// crash still reverts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prior {
    /// The unit.
    pub unit: UnitName,
    /// systemd's value before the agent first changed it: what a restore
    /// sets again.
    pub original: Value,
    /// The value the agent holds (set, or about to be).
    pub held: Value,
    /// The unit is transient (its drop-ins live in `/run/systemd/transient`).
    pub transient: bool,
    /// The runtime drop-in systemd writes for this property of this unit.
    pub dropin: PathBuf,
    /// That drop-in's content before the agent's first change; `None`: it
    /// did not exist, and a restore removes it.
    pub dropin_before: Option<String>,
}

impl Prior {
    /// The property held.
    pub fn property(&self) -> Property {
        self.held.property()
    }

    /// The same prior holding `value` instead (the next rung on a unit
    /// already held): the original and the drop-in stay the first change's.
    pub fn with_held(&self, value: Value) -> Result<Self, SystemdError> {
        if value.property() != self.property() {
            return Err(SystemdError::Invalid {
                what: format!("{} held as {value}", self.unit),
                reason: "a prior holds one property",
            });
        }
        Ok(Self {
            held: value,
            ..self.clone()
        })
    }
}

/// What [`SystemdUnits::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Restored {
    /// systemd has the original value again, and the runtime drop-in is as
    /// it was before the agent (removed, or its old content back).
    Restored,
    /// The unit is gone from systemd: nothing to set; the drop-in was put
    /// back as it was, so a later start of the unit gets its own value.
    Vanished,
    /// Someone told systemd another value since the agent set it (a
    /// `systemctl set-property`, or an edited drop-in and a daemon-reload):
    /// theirs is left in force, and their drop-in with it.
    Superseded {
        /// What systemd has now.
        live: Value,
    },
}

impl fmt::Display for Restored {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Restored => f.write_str("restored"),
            Self::Vanished => f.write_str("unit gone"),
            Self::Superseded { live } => {
                write!(f, "left alone: changed to {live} through systemd since")
            }
        }
    }
}

/// A property's value as systemd has it, and as the kernel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    /// systemd's value (D-Bus).
    pub systemd: Value,
    /// The cgroup directory read, and its files; `None` if none was asked
    /// for or the files are not there.
    pub kernel: Option<(PathBuf, KernelValue)>,
}

impl Live {
    /// How this differs from `held`, if it does; systemd's value first.
    pub fn drift(&self, unit: &UnitName, held: &Value) -> Option<Drift> {
        if self.systemd != *held {
            return Some(Drift::Systemd {
                unit: unit.clone(),
                held: *held,
                systemd: self.systemd,
            });
        }
        match &self.kernel {
            Some((dir, kernel)) if !kernel_agrees(held, kernel) => Some(Drift::Kernel {
                unit: unit.clone(),
                held: *held,
                dir: dir.clone(),
                kernel: kernel.clone(),
            }),
            _ => None,
        }
    }
}

/// A held value someone else changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// systemd's own value is another: changed through systemd.
    Systemd {
        /// The unit.
        unit: UnitName,
        /// What the agent holds.
        held: Value,
        /// What systemd has.
        systemd: Value,
    },
    /// systemd agrees, the cgroup files do not: written behind systemd's
    /// back (systemd puts its value back at its next realize of the unit).
    Kernel {
        /// The unit.
        unit: UnitName,
        /// What the agent holds.
        held: Value,
        /// The unit's cgroup directory.
        dir: PathBuf,
        /// What its files hold.
        kernel: KernelValue,
    },
}

impl fmt::Display for Drift {
    /// `hog.service: held CPUQuota=25%, systemd has CPUQuota unset (max)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Systemd {
                unit,
                held,
                systemd,
            } => write!(f, "{unit}: held {held}, systemd has {systemd}"),
            Self::Kernel {
                unit,
                held,
                dir,
                kernel,
            } => write!(
                f,
                "{unit}: held {held}, systemd agrees but {} has {kernel} (written behind systemd's back)",
                dir.display()
            ),
        }
    }
}

/// A problem with systemd, naming the unit and property.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// systemd is not the service manager.
    #[error("systemd is not the service manager here: {} is not a directory", marker.display())]
    NotBooted {
        /// The directory looked for.
        marker: PathBuf,
    },
    /// No connection to the system bus.
    #[error(
        "cannot reach the D-Bus system bus at {address}: {reason} (is dbus running, and does the agent's unit allow AF_UNIX in RestrictAddressFamilies= and connect(2) in SystemCallFilter=?)"
    )]
    BusUnreachable {
        /// The bus address.
        address: String,
        /// Why.
        reason: String,
    },
    /// systemd has no such unit loaded (never was, or stopped and unloaded).
    #[error("{method} {unit}: no such unit: {message}")]
    NoSuchUnit {
        /// The call.
        method: &'static str,
        /// The unit.
        unit: UnitName,
        /// systemd's words.
        message: String,
    },
    /// systemd refused the caller.
    #[error(
        "{method} {}: access denied (is the agent running as root, and does the unit's SystemCallFilter/RestrictAddressFamilies allow AF_UNIX to {SYSTEM_BUS_SOCKET}?): {message}",
        at(unit, what)
    )]
    AccessDenied {
        /// The call.
        method: &'static str,
        /// The unit.
        unit: UnitName,
        /// The property, or the assignment made (`CPUWeight=1`).
        what: String,
        /// systemd's or polkit's words.
        message: String,
    },
    /// Another failure of a call (refused value, timeout, lost connection).
    #[error("{method} {}: {reason}", at(unit, what))]
    Call {
        /// The call.
        method: &'static str,
        /// The unit.
        unit: UnitName,
        /// The property, or the assignment made (`CPUWeight=1`).
        what: String,
        /// The D-Bus error, or the I/O error.
        reason: String,
    },
    /// systemd answered something this module does not expect of it.
    #[error("{method} {}: unexpected answer: {found}", at(unit, what))]
    Unexpected {
        /// The call.
        method: &'static str,
        /// The unit.
        unit: UnitName,
        /// The property.
        what: String,
        /// What came.
        found: String,
    },
    /// A question to the manager itself failed.
    #[error("Get {what} of the systemd manager: {reason}")]
    Manager {
        /// The property.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// An action with no systemd value.
    #[error("{what}: {reason}")]
    Invalid {
        /// The action.
        what: String,
        /// Why.
        reason: &'static str,
    },
    /// A runtime drop-in could not be read, written or removed.
    #[error("runtime drop-in {} of {unit}: {source}", path.display())]
    DropIn {
        /// The unit.
        unit: UnitName,
        /// The drop-in.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A cgroup file could not be read or parsed.
    #[error("cannot read {}: {reason}", path.display())]
    CgroupFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

fn at(unit: &UnitName, what: &str) -> String {
    if what.is_empty() {
        unit.to_string()
    } else {
        format!("{unit} {what}")
    }
}

/// Maps a failed call to the error that names it.
fn call_error(err: zbus::Error, method: &'static str, unit: &UnitName, what: &str) -> SystemdError {
    let (name, message) = match &err {
        zbus::Error::MethodError(name, message, _) => (
            name.as_str().to_owned(),
            message.clone().unwrap_or_default(),
        ),
        zbus::Error::FDO(e) => match &**e {
            zbus::fdo::Error::AccessDenied(m) => (
                "org.freedesktop.DBus.Error.AccessDenied".to_owned(),
                m.clone(),
            ),
            other => (String::new(), other.to_string()),
        },
        other => (String::new(), other.to_string()),
    };
    match name.as_str() {
        "org.freedesktop.systemd1.NoSuchUnit" => SystemdError::NoSuchUnit {
            method,
            unit: unit.clone(),
            message,
        },
        "org.freedesktop.DBus.Error.AccessDenied"
        | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
            SystemdError::AccessDenied {
                method,
                unit: unit.clone(),
                what: what.to_owned(),
                message,
            }
        }
        "" => SystemdError::Call {
            method,
            unit: unit.clone(),
            what: what.to_owned(),
            reason: message,
        },
        _ => SystemdError::Call {
            method,
            unit: unit.clone(),
            what: what.to_owned(),
            reason: format!("{name}: {message}"),
        },
    }
}

/// The system manager over D-Bus: reads and sets the cgroup properties of
/// units, and puts them back.
pub struct SystemdUnits {
    conn: zbus::blocking::Connection,
    address: String,
    root: PathBuf,
}

impl fmt::Debug for SystemdUnits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SystemdUnits")
            .field("address", &self.address)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl SystemdUnits {
    /// Connects to the system bus (`$DBUS_SYSTEM_BUS_ADDRESS`, else
    /// [`SYSTEM_BUS_SOCKET`]); drop-ins are under `/run/systemd`.
    pub fn connect() -> Result<Self, SystemdError> {
        let address = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|_| format!("unix:path={SYSTEM_BUS_SOCKET}"));
        Self::connect_to(&address, Path::new("/"))
    }

    /// Connects to the bus at `address` (a D-Bus address,
    /// `unix:path=/run/dbus/system_bus_socket`), with drop-ins under
    /// `<root>/run/systemd` ("/" in production; a test's temporary tree).
    pub fn connect_to(address: &str, root: &Path) -> Result<Self, SystemdError> {
        Self::connect_with_timeout(address, root, CALL_TIMEOUT)
    }

    /// [`Self::connect_to`], with calls given up after `timeout` instead of
    /// [`CALL_TIMEOUT`].
    pub fn connect_with_timeout(
        address: &str,
        root: &Path,
        timeout: Duration,
    ) -> Result<Self, SystemdError> {
        let conn = zbus::blocking::connection::Builder::address(address)
            .and_then(|b| b.method_timeout(timeout).build())
            .map_err(|e| SystemdError::BusUnreachable {
                address: address.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            conn,
            address: address.to_owned(),
            root: root.to_path_buf(),
        })
    }

    /// The bus address connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A second connection to the same bus whose calls give up after
    /// `timeout`: for reads inside a tick (drift checks), which must not
    /// wait [`CALL_TIMEOUT`] for a PID 1 that is busy reloading.
    pub fn reader(&self, timeout: Duration) -> Result<Self, SystemdError> {
        Self::connect_with_timeout(&self.address, &self.root, timeout)
    }

    /// systemd's major version: the manager's `Version` (`252.39-1~deb12u2`
    /// is 252), for [`idle_support`].
    pub fn version(&self) -> Result<u32, SystemdError> {
        const WHAT: &str = "Version";
        let failed = |reason: String| SystemdError::Manager { what: WHAT, reason };
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(PROPERTIES_IFACE),
                "Get",
                &(MANAGER_IFACE, WHAT),
            )
            .map_err(|e| failed(e.to_string()))?;
        let value: OwnedValue = reply
            .body()
            .deserialize()
            .map_err(|e| failed(e.to_string()))?;
        let Variant::Str(text) = &*value else {
            return Err(failed(format!(
                "a value of type {}",
                value.value_signature()
            )));
        };
        (text.as_str().split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|major| major.parse().ok())
            .ok_or_else(|| failed(format!("{:?} does not start with a number", text.as_str())))
    }

    /// The unit of `cgroup` (relative to the cgroup2 mount), if systemd's
    /// manager has a unit of that name whose `ControlGroup` is exactly that
    /// cgroup. `None` for cgroups that are not units (act through files).
    pub fn resolve(&self, cgroup: &str) -> Result<Option<UnitName>, SystemdError> {
        let Some(unit) = unit_for(cgroup) else {
            return Ok(None);
        };
        let path = match self.unit_object(&unit) {
            Ok(p) => p,
            Err(SystemdError::NoSuchUnit { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let owned = self.get(&unit, &path, unit.kind().interface(), "ControlGroup")?;
        let control_group = match &*owned {
            Variant::Str(s) => s.as_str().to_owned(),
            other => return Err(unexpected("Get", &unit, "ControlGroup", other)),
        };
        let wanted = format!("/{}", cgroup.trim_matches('/'));
        Ok((control_group == wanted).then_some(unit))
    }

    /// systemd's current value of `property` of `unit`.
    pub fn read(&self, unit: &UnitName, property: Property) -> Result<Value, SystemdError> {
        let path = self.unit_object(unit)?;
        self.read_at(unit, &path, property)
    }

    /// Same as [`Self::read`], for drift checks: every call asks systemd,
    /// nothing is cached.
    pub fn live(
        &self,
        unit: &UnitName,
        property: Property,
        cgroup_dir: Option<&Path>,
    ) -> Result<Live, SystemdError> {
        let systemd = self.read(unit, property)?;
        let kernel = match cgroup_dir {
            Some(dir) => read_kernel(dir, property)?.map(|k| (dir.to_path_buf(), k)),
            None => None,
        };
        Ok(Live { systemd, kernel })
    }

    /// How the unit differs from what `prior` holds, if it does; reads
    /// systemd's value and, with `cgroup_dir` (the unit's cgroup2 directory),
    /// the kernel's files.
    pub fn drift(
        &self,
        prior: &Prior,
        cgroup_dir: Option<&Path>,
    ) -> Result<Option<Drift>, SystemdError> {
        let live = self.live(&prior.unit, prior.property(), cgroup_dir)?;
        Ok(live.drift(&prior.unit, &prior.held))
    }

    /// What to journal before setting `value` on `unit`: its current value,
    /// whether it is transient, and the runtime drop-in as it is. Changes
    /// nothing. For a unit the agent already holds, use [`Prior::with_held`]
    /// on the journaled prior instead.
    pub fn prepare(&self, unit: &UnitName, value: Value) -> Result<Prior, SystemdError> {
        let path = self.unit_object(unit)?;
        let original = self.read_at(unit, &path, value.property())?;
        let transient = match &*self.get(unit, &path, UNIT_IFACE, "Transient")? {
            Variant::Bool(b) => *b,
            other => return Err(unexpected("Get", unit, "Transient", other)),
        };
        let dropin = value.property().dropin_path(&self.root, unit, transient);
        let dropin_before = read_dropin(unit, &dropin)?;
        Ok(Prior {
            unit: unit.clone(),
            original,
            held: value,
            transient,
            dropin,
            dropin_before,
        })
    }

    /// Sets `prior.held` on the unit: `SetUnitProperties(unit, runtime=true,
    /// [(property, t)])`. systemd applies it, writes the runtime drop-in and
    /// enables the controllers the unit now needs.
    pub fn apply(&self, prior: &Prior) -> Result<(), SystemdError> {
        self.set(&prior.unit, &prior.held)
    }

    /// [`Self::prepare`] and [`Self::apply`] in one, returning what to
    /// restore. The change is made before the caller can journal the prior:
    /// the actuator, which journals first, calls the two itself.
    pub fn set_runtime(&self, unit: &UnitName, value: Value) -> Result<Prior, SystemdError> {
        let prior = self.prepare(unit, value)?;
        self.apply(&prior)?;
        Ok(prior)
    }

    /// Puts back what `prior` recorded: sets the original value again
    /// (runtime), then removes the runtime drop-in systemd wrote, or writes
    /// back the content it had, so that no drop-in of the agent is left and
    /// the next daemon-reload yields the unit's own configured value.
    ///
    /// If systemd has neither the held nor the original value, someone
    /// changed it through systemd since: that is left in force, and the
    /// drop-in too unless it is still exactly the one written for the
    /// agent's value ([`Restored::Superseded`]). A failure leaves the prior
    /// valid for another try.
    ///
    /// A prior whose drop-in is not the unit's own runtime drop-in for that
    /// property (a journal edited by hand, or damaged) is refused: no other
    /// file is ever written or removed. A prior that was journaled but never
    /// applied (systemd still has the original, the drop-in is as it was)
    /// needs no call that changes anything.
    pub fn restore(&self, prior: &Prior) -> Result<Restored, SystemdError> {
        let own = prior
            .property()
            .dropin_path(&self.root, &prior.unit, prior.transient);
        if prior.dropin != own || prior.original.property() != prior.property() {
            return Err(SystemdError::Invalid {
                what: format!(
                    "restoring {} {} with the drop-in {}",
                    prior.unit,
                    prior.property(),
                    prior.dropin.display()
                ),
                reason: "that is not the unit's own runtime drop-in for the property; refused (restore it by hand)",
            });
        }
        let path = match self.unit_object(&prior.unit) {
            Ok(p) => p,
            Err(SystemdError::NoSuchUnit { .. }) => {
                // A transient unit's drop-ins went with it; another's stay
                // on disk for its next start, so they are put back.
                if prior.transient {
                    remove_dropin(&prior.unit, &prior.dropin)?;
                } else {
                    self.put_back_dropin(prior)?;
                }
                return Ok(Restored::Vanished);
            }
            Err(e) => return Err(e),
        };
        let live = self.read_at(&prior.unit, &path, prior.property())?;
        if live != prior.held && live != prior.original {
            let ours = dropin_content(prior.unit.kind(), &prior.held);
            if read_dropin(&prior.unit, &prior.dropin)?.as_deref() == Some(ours.as_str()) {
                self.put_back_dropin(prior)?;
            }
            return Ok(Restored::Superseded { live });
        }
        if live == prior.original && read_dropin(&prior.unit, &prior.dropin)? == prior.dropin_before
        {
            return Ok(Restored::Restored);
        }
        self.set(&prior.unit, &prior.original)?;
        self.put_back_dropin(prior)?;
        Ok(Restored::Restored)
    }

    fn put_back_dropin(&self, prior: &Prior) -> Result<(), SystemdError> {
        match &prior.dropin_before {
            Some(text) => write_dropin(&prior.unit, &prior.dropin, text),
            None => remove_dropin(&prior.unit, &prior.dropin),
        }
    }

    /// `GetUnit`: the unit's object path. Does not load units: a unit
    /// systemd does not have loaded has no cgroup to act on.
    fn unit_object(&self, unit: &UnitName) -> Result<OwnedObjectPath, SystemdError> {
        const METHOD: &str = "GetUnit";
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(MANAGER_IFACE),
                METHOD,
                &(unit.as_str(),),
            )
            .map_err(|e| call_error(e, METHOD, unit, ""))?;
        reply
            .body()
            .deserialize::<OwnedObjectPath>()
            .map_err(|e| SystemdError::Unexpected {
                method: METHOD,
                unit: unit.clone(),
                what: String::new(),
                found: e.to_string(),
            })
    }

    fn read_at(
        &self,
        unit: &UnitName,
        path: &OwnedObjectPath,
        property: Property,
    ) -> Result<Value, SystemdError> {
        let name = property.dbus_name();
        let owned = self.get(unit, path, unit.kind().interface(), name)?;
        match &*owned {
            Variant::U64(raw) => {
                Value::from_dbus(property, *raw).ok_or_else(|| SystemdError::Unexpected {
                    method: "Get",
                    unit: unit.clone(),
                    what: name.to_owned(),
                    found: format!("{raw}, a value systemd does not hold"),
                })
            }
            other => Err(unexpected("Get", unit, name, other)),
        }
    }

    /// `org.freedesktop.DBus.Properties.Get(interface, name)` on the unit.
    fn get(
        &self,
        unit: &UnitName,
        path: &OwnedObjectPath,
        interface: &str,
        name: &str,
    ) -> Result<OwnedValue, SystemdError> {
        const METHOD: &str = "Get";
        let reply = self
            .conn
            .call_method(
                Some(DEST),
                path.as_str(),
                Some(PROPERTIES_IFACE),
                METHOD,
                &(interface, name),
            )
            .map_err(|e| call_error(e, METHOD, unit, name))?;
        reply
            .body()
            .deserialize::<OwnedValue>()
            .map_err(|e| SystemdError::Unexpected {
                method: METHOD,
                unit: unit.clone(),
                what: name.to_owned(),
                found: e.to_string(),
            })
    }

    /// `SetUnitProperties(unit, runtime=true, [(property, <t>)])`.
    fn set(&self, unit: &UnitName, value: &Value) -> Result<(), SystemdError> {
        const METHOD: &str = "SetUnitProperties";
        let properties = [(value.property().dbus_name(), Variant::U64(value.to_dbus()))];
        self.conn
            .call_method(
                Some(DEST),
                MANAGER_PATH,
                Some(MANAGER_IFACE),
                METHOD,
                &(unit.as_str(), true, &properties[..]),
            )
            .map_err(|e| call_error(e, METHOD, unit, &value.to_string()))?;
        Ok(())
    }
}

fn unexpected(
    method: &'static str,
    unit: &UnitName,
    what: &str,
    found: &Variant<'_>,
) -> SystemdError {
    SystemdError::Unexpected {
        method,
        unit: unit.clone(),
        what: what.to_owned(),
        found: format!("a value of type {}", found.value_signature()),
    }
}

fn read_dropin(unit: &UnitName, path: &Path) -> Result<Option<String>, SystemdError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SystemdError::DropIn {
            unit: unit.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn remove_dropin(unit: &UnitName, path: &Path) -> Result<(), SystemdError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SystemdError::DropIn {
            unit: unit.clone(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to the drop-in `path` whole: into a file beside it whose
/// name does not end in `.conf` (systemd never reads it), then renamed over
/// it, so a daemon-reload in between reads the old or the new content.
fn write_dropin(unit: &UnitName, path: &Path, text: &str) -> Result<(), SystemdError> {
    let err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| SystemdError::DropIn {
            unit: unit.clone(),
            path: p,
            source,
        }
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(err(dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{}.governor-tmp", name.unwrap_or_default()));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(err(path))
}

/// A cgroup file's text without its trailing newline; `None` if absent.
fn read_file(path: &Path) -> Result<Option<String>, SystemdError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t.trim_end().to_owned())),
        Err(e)
            if matches!(e.kind(), io::ErrorKind::NotFound)
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(SystemdError::CgroupFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, SystemdError> {
    text.trim().parse().map_err(|e| SystemdError::CgroupFile {
        path: path.to_path_buf(),
        reason: format!("{text:?}: {e}"),
    })
}

/// Test support shared by the crate's tests: a fake systemd on a private
/// dbus-daemon.
#[cfg(test)]
pub(crate) mod test_support {
    #![allow(clippy::unwrap_used)]

    use std::{
        fs, io,
        path::{Path, PathBuf},
    };

    /// A fake `org.freedesktop.systemd1` on a private bus: the calls the
    /// client makes, answered and recorded as systemd 252 would, including
    /// the runtime drop-ins it writes, and (with [`fake::State::cgroup_root`])
    /// the cgroup2 files it realizes.
    pub mod fake {
        use std::{
            collections::BTreeMap,
            sync::{Arc, Mutex},
        };

        use zbus::{
            blocking::{Connection, MessageIterator},
            message::Type,
            zvariant::{ObjectPath, OwnedValue, Value},
        };

        use super::super::{MANAGER_IFACE, MANAGER_PATH, PROPERTIES_IFACE, UNIT_IFACE};
        use std::path::{Path, PathBuf};

        pub struct Unit {
            pub section: &'static str,
            pub cgroup: String,
            pub transient: bool,
            pub props: BTreeMap<&'static str, u64>,
        }

        impl Unit {
            pub fn new(section: &'static str, cgroup: &str) -> Self {
                let props = [
                    ("CPUWeight", u64::MAX),
                    ("CPUQuotaPerSecUSec", u64::MAX),
                    ("MemoryHigh", u64::MAX),
                ];
                Self {
                    section,
                    cgroup: cgroup.into(),
                    transient: false,
                    props: props.into_iter().collect(),
                }
            }
        }

        #[derive(Default)]
        pub struct State {
            pub units: BTreeMap<String, Unit>,
            /// Units whose SetUnitProperties polkit would refuse.
            pub denied: Vec<String>,
            /// Every call, as `Member args`.
            pub calls: Vec<String>,
            /// Where the units' cgroups are (a fake cgroup2 mount): if set,
            /// every value set is also written into the unit's cgroup files,
            /// as systemd's realize does.
            pub cgroup_root: Option<PathBuf>,
        }

        pub type Shared = Arc<Mutex<State>>;

        /// `bus_label_escape`: how systemd makes a unit's object path.
        pub fn object_path(unit: &str) -> String {
            let mut p = String::from("/org/freedesktop/systemd1/unit/");
            for (i, b) in unit.bytes().enumerate() {
                if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
                    p.push(char::from(b));
                } else {
                    p.push_str(&format!("_{b:02x}"));
                }
            }
            p
        }

        /// The line `bus_cgroup_set_property` writes, formatted here on its
        /// own (from dbus-cgroup.c), not by the module under test.
        fn setting_line(name: &str, v: u64) -> (String, String) {
            match name {
                "CPUWeight" => (
                    "CPUWeight".into(),
                    match v {
                        u64::MAX => "CPUWeight=".into(),
                        0 => "CPUWeight=idle".into(),
                        n => format!("CPUWeight={n}"),
                    },
                ),
                "CPUQuotaPerSecUSec" => (
                    "CPUQuota".into(),
                    if v == u64::MAX {
                        "CPUQuota=".into()
                    } else {
                        format!("CPUQuota={:.0}%", (v / 10_000) as f64)
                    },
                ),
                _ => (
                    name.into(),
                    if v == u64::MAX {
                        format!("{name}=infinity")
                    } else {
                        format!("{name}={v}")
                    },
                ),
            }
        }

        /// What SetUnitProperties(runtime=true) does to one property.
        pub fn set(state: &mut State, root: &Path, unit: &str, name: &str, v: u64) {
            let u = state.units.get_mut(unit).expect("unit");
            u.props.insert(
                match name {
                    "CPUWeight" => "CPUWeight",
                    "CPUQuotaPerSecUSec" => "CPUQuotaPerSecUSec",
                    _ => "MemoryHigh",
                },
                v,
            );
            let dir = if u.transient {
                "run/systemd/transient"
            } else {
                "run/systemd/system.control"
            };
            let dir = root.join(dir).join(format!("{unit}.d"));
            std::fs::create_dir_all(&dir).unwrap();
            let (file, line) = setting_line(name, v);
            std::fs::write(
                dir.join(format!("50-{file}.conf")),
                format!(
                    "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n# or an equivalent operation. Do not edit.\n[{}]\n{line}\n",
                    u.section
                ),
            )
            .unwrap();
            if let Some(cg) = &state.cgroup_root {
                realize(&cg.join(u.cgroup.trim_start_matches('/')), name, v);
            }
        }

        /// What systemd 252's `cgroup_context_apply` writes into a unit's
        /// cgroup2 directory for one property (`src/core/cgroup.c`),
        /// written here on its own, not by the module under test.
        pub fn realize(dir: &Path, name: &str, v: u64) {
            std::fs::create_dir_all(dir).unwrap();
            let put = |f: &str, t: String| std::fs::write(dir.join(f), format!("{t}\n")).unwrap();
            match name {
                "CPUWeight" if v == 0 => put("cpu.idle", "1".into()),
                "CPUWeight" => {
                    put("cpu.idle", "0".into());
                    put(
                        "cpu.weight",
                        if v == u64::MAX { 100 } else { v }.to_string(),
                    );
                }
                "CPUQuotaPerSecUSec" if v == u64::MAX => put("cpu.max", "max 100000".into()),
                "CPUQuotaPerSecUSec" => {
                    put("cpu.max", format!("{} 100000", (v / 10).max(1000)));
                }
                _ if v == u64::MAX => put("memory.high", "max".into()),
                _ => put("memory.high", (v / 4096 * 4096).to_string()),
            }
        }

        type Answer = Result<Reply, (&'static str, String)>;

        enum Reply {
            Path(String),
            Variant(OwnedValue),
            Empty,
        }

        fn no_unit(name: &str) -> (&'static str, String) {
            (
                "org.freedesktop.systemd1.NoSuchUnit",
                format!("Unit {name} not loaded."),
            )
        }

        fn answer(state: &Shared, root: &Path, msg: &zbus::Message) -> Answer {
            let hdr = msg.header();
            let path = hdr
                .path()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let iface = hdr
                .interface()
                .map(|i| i.as_str().to_owned())
                .unwrap_or_default();
            let member = hdr
                .member()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            let body = msg.body();
            let signature = body.signature().to_string_no_parens();
            let bad = |e: zbus::Error| ("org.freedesktop.DBus.Error.InvalidArgs", e.to_string());
            let mut st = state.lock().unwrap();
            match (path.as_str(), iface.as_str(), member.as_str()) {
                (MANAGER_PATH, MANAGER_IFACE, "GetUnit") => {
                    let (name,): (String,) = body.deserialize().map_err(bad)?;
                    st.calls.push(format!("GetUnit {name}"));
                    if st.units.contains_key(&name) {
                        Ok(Reply::Path(object_path(&name)))
                    } else {
                        Err(no_unit(&name))
                    }
                }
                (MANAGER_PATH, MANAGER_IFACE, "SetUnitProperties") => {
                    let (name, runtime, props): (String, bool, Vec<(String, OwnedValue)>) =
                        body.deserialize().map_err(bad)?;
                    let shown: Vec<String> = props
                        .iter()
                        .map(|(p, v)| match &**v {
                            Value::U64(n) => format!("{p} t {n}"),
                            other => format!("{p} {} {other:?}", other.value_signature()),
                        })
                        .collect();
                    st.calls.push(format!(
                        "SetUnitProperties({signature}) {name} runtime={runtime} [{}]",
                        shown.join(", ")
                    ));
                    if st.denied.contains(&name) {
                        return Err((
                            "org.freedesktop.DBus.Error.AccessDenied",
                            "Access denied".into(),
                        ));
                    }
                    if !st.units.contains_key(&name) {
                        return Err(no_unit(&name));
                    }
                    // Check every value first, then set them (systemd's two passes).
                    let mut checked = Vec::new();
                    for (p, v) in &props {
                        let Value::U64(n) = &**v else {
                            return Err((
                                "org.freedesktop.DBus.Error.InvalidArgs",
                                format!("{p}: wants t"),
                            ));
                        };
                        let ok = match p.as_str() {
                            "CPUWeight" => *n == u64::MAX || *n <= 10_000,
                            "CPUQuotaPerSecUSec" | "MemoryHigh" => *n > 0,
                            _ => {
                                return Err((
                                    "org.freedesktop.DBus.Error.PropertyReadOnly",
                                    format!("Cannot set property {p}, or unknown property."),
                                ));
                            }
                        };
                        if !ok {
                            return Err((
                                "org.freedesktop.DBus.Error.InvalidArgs",
                                format!("Value specified in {p} is out of range"),
                            ));
                        }
                        checked.push((p.clone(), *n));
                    }
                    for (p, n) in checked {
                        set(&mut st, root, &name, &p, n);
                    }
                    Ok(Reply::Empty)
                }
                (_, PROPERTIES_IFACE, "Get") => {
                    let (want_iface, prop): (String, String) = body.deserialize().map_err(bad)?;
                    st.calls.push(format!("Get {path} {want_iface} {prop}"));
                    if (path.as_str(), want_iface.as_str(), prop.as_str())
                        == (MANAGER_PATH, MANAGER_IFACE, "Version")
                    {
                        let v = Value::from("252.39-1~deb12u2");
                        return Ok(Reply::Variant(v.try_to_owned().map_err(|e| bad(e.into()))?));
                    }
                    let Some((name, u)) = st.units.iter().find(|(n, _)| object_path(n) == path)
                    else {
                        return Err((
                            "org.freedesktop.DBus.Error.UnknownObject",
                            format!("Unknown object '{path}'."),
                        ));
                    };
                    let own_iface = format!("org.freedesktop.systemd1.{}", u.section);
                    let v: Value<'_> = match (want_iface.as_str(), prop.as_str()) {
                        (UNIT_IFACE, "Id") => Value::from(name.as_str()),
                        (UNIT_IFACE, "Transient") => Value::Bool(u.transient),
                        (i, "ControlGroup") if i == own_iface => Value::from(u.cgroup.as_str()),
                        (i, p) if i == own_iface && u.props.contains_key(p) => {
                            Value::U64(u.props[p])
                        }
                        _ => {
                            return Err((
                                "org.freedesktop.DBus.Error.UnknownProperty",
                                format!("Unknown property {want_iface}.{prop}"),
                            ));
                        }
                    };
                    Ok(Reply::Variant(v.try_to_owned().map_err(|e| bad(e.into()))?))
                }
                _ => Err((
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    format!("{iface}.{member} on {path}"),
                )),
            }
        }

        /// Serves `state` as `org.freedesktop.systemd1` on the bus at
        /// `address`, with drop-ins under `root`, until the bus goes away.
        pub fn serve(address: &str, root: PathBuf, state: Shared) -> zbus::Result<()> {
            let conn = zbus::blocking::connection::Builder::address(address)?
                .name("org.freedesktop.systemd1")?
                .build()?;
            let messages = MessageIterator::from(&conn);
            std::thread::spawn(move || serve_on(&conn, messages, &root, &state));
            Ok(())
        }

        fn serve_on(conn: &Connection, messages: MessageIterator, root: &Path, state: &Shared) {
            for msg in messages {
                let Ok(msg) = msg else { return };
                if msg.message_type() != Type::MethodCall {
                    continue;
                }
                let hdr = msg.header();
                let sent = match answer(state, root, &msg) {
                    Ok(Reply::Path(p)) => {
                        conn.reply(&hdr, &ObjectPath::try_from(p.as_str()).unwrap())
                    }
                    Ok(Reply::Variant(v)) => conn.reply(&hdr, &*v),
                    Ok(Reply::Empty) => conn.reply(&hdr, &()),
                    Err((name, text)) => conn.reply_error(&hdr, name, &text),
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }

    /// A private dbus-daemon, stopped when dropped.
    pub struct Bus {
        child: std::process::Child,
        /// Its address, for [`super::SystemdUnits::connect_to`].
        pub address: String,
        _dir: tempfile::TempDir,
    }

    impl Drop for Bus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// The dbus-daemon executable on `$PATH`, if installed.
    pub fn dbus_daemon() -> Option<PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|d| d.join("dbus-daemon"))
            .find(|p| p.is_file())
    }

    /// Starts a private dbus-daemon `exe`.
    pub fn start_bus(exe: &Path) -> Bus {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("bus.conf");
        fs::write(
            &conf,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
                dir.path().join("bus").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("dbus-daemon.log");
        let mut child = std::process::Command::new(exe)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--print-address", "--nofork"])
            .stdout(std::process::Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut address = String::new();
        io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut address)
            .unwrap();
        let address = address.trim().to_owned();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon printed {address:?}; its log: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Bus {
            child,
            address,
            _dir: dir,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{
        test_support::{dbus_daemon, fake, start_bus},
        *,
    };

    fn unit(name: &str) -> UnitName {
        UnitName::parse(name).unwrap()
    }

    #[test]
    fn units_are_told_by_the_last_component_of_the_cgroup() {
        for (cgroup, want) in [
            ("/system.slice/hog.service", Some("hog.service")),
            ("/system.slice/hog.service/", Some("hog.service")),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
            ),
            ("/workload.slice", Some("workload.slice")),
            (
                "/workload.slice/workload-batch.slice",
                Some("workload-batch.slice"),
            ),
            ("/init.scope", Some("init.scope")),
            (
                "/system.slice/getty@tty1.service",
                Some("getty@tty1.service"),
            ),
            (
                "/system.slice/foo\\x2dbar.service",
                Some("foo\\x2dbar.service"),
            ),
            // cg_escape prefixes names that clash with kernel files: `cpu.service`.
            ("/system.slice/_cpu.service", Some("cpu.service")),
            // Not units: plain directories, sub-cgroups of a unit, other kinds.
            ("/", None),
            ("", None),
            ("/batch", None),
            ("/system.slice/hog.service/worker", None),
            ("/system.slice/docker.socket", None),
            ("/system.slice/backup.timer", None),
            ("/system.slice/.service", None),
            ("/system.slice/getty@.service", None),
            ("/system.slice/@tty1.service", None),
            ("/system.slice/hog service.service", None),
            ("/system.slice/hög.service", None),
        ] {
            assert_eq!(
                unit_for(cgroup).as_ref().map(UnitName::as_str),
                want,
                "{cgroup:?}"
            );
        }
        let long = format!("/{}.service", "a".repeat(247));
        assert!(unit_for(&long).is_some());
        let too_long = format!("/{}.service", "a".repeat(248));
        assert!(unit_for(&too_long).is_none(), "names are shorter than 256");
        assert_eq!(unit("a.scope").kind(), UnitKind::Scope);
        assert_eq!(
            unit("a.slice").kind().interface(),
            "org.freedesktop.systemd1.Slice"
        );
    }

    #[test]
    fn systemd_is_the_manager_only_when_booted_with_and_a_bus() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("system_bus_socket");
        let err = systemd_manages_cgroups(d.path(), &sock).unwrap_err();
        assert!(matches!(err, SystemdError::NotBooted { .. }), "{err}");
        assert!(err.to_string().contains("run/systemd/system"), "{err}");
        // A file is not the marker: sd_booted wants a directory.
        fs::create_dir_all(d.path().join("run/systemd")).unwrap();
        fs::write(d.path().join(BOOTED_MARKER), "").unwrap();
        assert!(systemd_manages_cgroups(d.path(), &sock).is_err());
        fs::remove_file(d.path().join(BOOTED_MARKER)).unwrap();
        fs::create_dir(d.path().join(BOOTED_MARKER)).unwrap();
        let err = systemd_manages_cgroups(d.path(), &sock).unwrap_err();
        assert!(matches!(err, SystemdError::BusUnreachable { .. }), "{err}");
        assert!(err.to_string().contains("AF_UNIX"), "{err}");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        systemd_manages_cgroups(d.path(), &sock).unwrap();
    }

    #[test]
    fn actions_map_to_systemd_values_and_back() {
        let map = |s| to_systemd(s, IdleSupport::Idle).unwrap().value;
        assert_eq!(
            map(Setting::CpuWeight(1)),
            Value::CpuWeight(CpuWeight::Weight(1))
        );
        assert_eq!(map(Setting::CpuIdle), Value::CpuWeight(CpuWeight::Idle));
        assert_eq!(
            map(Setting::CpuLimit { cpus: 0.25 }),
            Value::CpuQuota(CpuQuota::PerSecUsec(250_000))
        );
        assert_eq!(
            map(Setting::CpuLimit { cpus: 2.0 }),
            Value::CpuQuota(CpuQuota::PerSecUsec(2_000_000))
        );
        // Whole percent, at least 1%: what the drop-in can carry.
        assert_eq!(
            map(Setting::CpuLimit { cpus: 0.254 }),
            Value::CpuQuota(CpuQuota::PerSecUsec(250_000))
        );
        assert_eq!(
            map(Setting::CpuLimit { cpus: 0.001 }),
            Value::CpuQuota(CpuQuota::PerSecUsec(10_000))
        );
        assert_eq!(
            map(Setting::MemoryHigh { bytes: 1 << 30 }),
            Value::MemoryHigh(MemoryHigh::Bytes(1 << 30))
        );
        assert_eq!(
            map(Setting::MemoryHigh { bytes: u64::MAX }),
            Value::MemoryHigh(MemoryHigh::Unset)
        );
        for bad in [
            Setting::CpuWeight(0),
            Setting::CpuWeight(10_001),
            Setting::CpuLimit { cpus: 0.0 },
            Setting::CpuLimit { cpus: -1.0 },
            Setting::CpuLimit { cpus: f64::NAN },
            Setting::CpuLimit {
                cpus: f64::INFINITY,
            },
            Setting::MemoryHigh { bytes: 0 },
        ] {
            let err = to_systemd(bad, IdleSupport::Idle).unwrap_err();
            assert!(err.to_string().starts_with(&bad.to_string()), "{err}");
        }
        // The reverse: the action a value carries out.
        for s in [
            Setting::CpuWeight(7),
            Setting::CpuIdle,
            Setting::CpuLimit { cpus: 0.25 },
            Setting::MemoryHigh { bytes: 4096 },
        ] {
            assert_eq!(map(s).setting(), Some(s));
        }
        assert_eq!(Value::unset(Property::CpuQuota).setting(), None);
    }

    #[test]
    fn idle_is_weight_zero_and_falls_back_to_weight_one_without_cpu_idle() {
        let idle = to_systemd(Setting::CpuIdle, IdleSupport::Idle).unwrap();
        assert_eq!(idle.value.to_dbus(), 0, "CGROUP_WEIGHT_IDLE");
        assert_eq!(idle.value.dropin_line(), "CPUWeight=idle");
        assert_eq!(idle.fallback, None);
        let old = to_systemd(Setting::CpuIdle, IdleSupport::NoCpuIdle).unwrap();
        assert_eq!(old.value, Value::CpuWeight(CpuWeight::Weight(1)));
        assert_eq!(old.fallback, Some(Fallback::NoCpuIdle));
        assert!(old.fallback.unwrap().to_string().contains("5.15"));
        let old = to_systemd(Setting::CpuIdle, IdleSupport::OldSystemd).unwrap();
        assert_eq!(old.value, Value::CpuWeight(CpuWeight::Weight(1)));
        assert!(old.fallback.unwrap().to_string().contains("252"));
        assert_eq!(idle_support(252, true, false), IdleSupport::Idle);
        assert_eq!(idle_support(257, false, true), IdleSupport::Idle);
        assert_eq!(idle_support(252, false, false), IdleSupport::NoCpuIdle);
        assert_eq!(idle_support(247, true, false), IdleSupport::OldSystemd);
    }

    #[test]
    fn dbus_values_round_trip_and_unset_is_u64_max() {
        for p in Property::ALL {
            let unset = Value::unset(p);
            assert_eq!(unset.to_dbus(), u64::MAX, "{p}");
            assert_eq!(Value::from_dbus(p, u64::MAX), Some(unset));
        }
        for (p, raw) in [
            (Property::CpuWeight, 0),
            (Property::CpuWeight, 1),
            (Property::CpuWeight, 100),
            (Property::CpuWeight, 10_000),
            (Property::CpuQuota, 1),
            (Property::CpuQuota, 250_000),
            (Property::MemoryHigh, 0),
            (Property::MemoryHigh, 1 << 30),
        ] {
            let v = Value::from_dbus(p, raw).unwrap();
            assert_eq!(v.property(), p);
            assert_eq!(v.to_dbus(), raw, "{v}");
        }
        // Values systemd never holds.
        assert_eq!(Value::from_dbus(Property::CpuWeight, 10_001), None);
        assert_eq!(Value::from_dbus(Property::CpuQuota, 0), None);
        assert_eq!(Property::CpuQuota.dbus_name(), "CPUQuotaPerSecUSec");
    }

    #[test]
    fn values_read_as_systemd_writes_them() {
        let cases = [
            (
                Value::CpuWeight(CpuWeight::Unset),
                "CPUWeight=",
                "CPUWeight unset (100)",
            ),
            (
                Value::CpuWeight(CpuWeight::Idle),
                "CPUWeight=idle",
                "CPUWeight=idle",
            ),
            (
                Value::CpuWeight(CpuWeight::Weight(5)),
                "CPUWeight=5",
                "CPUWeight=5",
            ),
            (
                Value::CpuQuota(CpuQuota::Unset),
                "CPUQuota=",
                "CPUQuota unset (max)",
            ),
            (
                Value::CpuQuota(CpuQuota::PerSecUsec(250_000)),
                "CPUQuota=25%",
                "CPUQuota=25%",
            ),
            // systemd truncates to whole percent in the drop-in.
            (
                Value::CpuQuota(CpuQuota::PerSecUsec(255_000)),
                "CPUQuota=25%",
                "CPUQuota=25.5%",
            ),
            (
                Value::CpuQuota(CpuQuota::PerSecUsec(3_000_000)),
                "CPUQuota=300%",
                "CPUQuota=300%",
            ),
            (
                Value::MemoryHigh(MemoryHigh::Unset),
                "MemoryHigh=infinity",
                "MemoryHigh unset (infinity)",
            ),
            (
                Value::MemoryHigh(MemoryHigh::Bytes(1 << 20)),
                "MemoryHigh=1048576",
                "MemoryHigh=1048576",
            ),
        ];
        for (v, line, shown) in cases {
            assert_eq!(v.dropin_line(), line);
            assert_eq!(v.to_string(), shown);
        }
    }

    #[test]
    fn runtime_drop_ins_are_where_systemd_252_writes_them() {
        let root = Path::new("/");
        let hog = unit("hog.service");
        assert_eq!(
            Property::CpuWeight.dropin_path(root, &hog, false),
            Path::new("/run/systemd/system.control/hog.service.d/50-CPUWeight.conf")
        );
        // The quota's drop-in is named after the unit setting, not the property.
        assert_eq!(
            Property::CpuQuota.dropin_path(root, &hog, false),
            Path::new("/run/systemd/system.control/hog.service.d/50-CPUQuota.conf")
        );
        assert_eq!(
            Property::MemoryHigh.dropin_path(Path::new("/tmp/x"), &unit("w.slice"), false),
            Path::new("/tmp/x/run/systemd/system.control/w.slice.d/50-MemoryHigh.conf")
        );
        // Transient units keep every drop-in in the transient directory.
        assert_eq!(
            Property::CpuWeight.dropin_path(root, &unit("session-3.scope"), true),
            Path::new("/run/systemd/transient/session-3.scope.d/50-CPUWeight.conf")
        );
        assert_eq!(
            dropin_content(UnitKind::Service, &Value::CpuWeight(CpuWeight::Idle)),
            "# This is a drop-in unit file extension, created via \"systemctl set-property\"\n\
             # or an equivalent operation. Do not edit.\n\
             [Service]\n\
             CPUWeight=idle\n"
        );
        assert!(
            dropin_content(UnitKind::Slice, &Value::MemoryHigh(MemoryHigh::Unset))
                .ends_with("\n[Slice]\nMemoryHigh=infinity\n")
        );
        assert!(
            dropin_content(UnitKind::Scope, &Value::CpuQuota(CpuQuota::Unset))
                .ends_with("\n[Scope]\nCPUQuota=\n")
        );
    }

    #[test]
    fn a_prior_survives_the_journal() {
        let prior = Prior {
            unit: unit("hog.service"),
            original: Value::CpuWeight(CpuWeight::Unset),
            held: Value::CpuWeight(CpuWeight::Idle),
            transient: false,
            dropin: PathBuf::from("/run/systemd/system.control/hog.service.d/50-CPUWeight.conf"),
            dropin_before: None,
        };
        let text = serde_json::to_string(&prior).unwrap();
        for needle in [
            "\"unit\":\"hog.service\"",
            "\"original\":{\"property\":\"cpu_weight\",\"value\":\"unset\"}",
            "\"held\":{\"property\":\"cpu_weight\",\"value\":\"idle\"}",
            "\"dropin_before\":null",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert_eq!(serde_json::from_str::<Prior>(&text).unwrap(), prior);
        let mut q = prior.clone();
        q.original = Value::CpuQuota(CpuQuota::PerSecUsec(50_000));
        q.held = Value::CpuQuota(CpuQuota::PerSecUsec(10_000));
        q.dropin_before = Some("[Service]\nCPUQuota=5%\n".into());
        let text = serde_json::to_string(&q).unwrap();
        assert_eq!(serde_json::from_str::<Prior>(&text).unwrap(), q);
        // A unit name is checked when read back.
        let bad = text.replace("hog.service", "hog.timer");
        let err = serde_json::from_str::<Prior>(&bad).unwrap_err();
        assert!(err.to_string().contains("hog.timer"), "{err}");
        // The next rung keeps the first change's original and drop-in.
        let next = prior
            .with_held(Value::CpuWeight(CpuWeight::Weight(1)))
            .unwrap();
        assert_eq!(next.original, prior.original);
        assert_eq!(next.held, Value::CpuWeight(CpuWeight::Weight(1)));
        assert!(
            prior
                .with_held(Value::MemoryHigh(MemoryHigh::Bytes(1)))
                .is_err()
        );
    }

    #[test]
    fn kernel_files_are_compared_as_systemd_writes_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let read = |p| read_kernel(dir, p).unwrap();
        assert_eq!(read(Property::CpuWeight), None, "no files: cannot tell");
        fs::write(dir.join("cpu.weight"), "100\n").unwrap();
        fs::write(dir.join("cpu.idle"), "1\n").unwrap();
        fs::write(dir.join("cpu.max"), "25000 100000\n").unwrap();
        fs::write(dir.join("memory.high"), "max\n").unwrap();
        let cpu = read(Property::CpuWeight).unwrap();
        assert_eq!(cpu.to_string(), "cpu.idle 1, cpu.weight 100");
        // Idle leaves cpu.weight as it was.
        assert!(kernel_agrees(&Value::CpuWeight(CpuWeight::Idle), &cpu));
        assert!(!kernel_agrees(&Value::CpuWeight(CpuWeight::Unset), &cpu));
        let weight = KernelValue::Cpu {
            idle: Some(false),
            weight: 1,
        };
        assert!(kernel_agrees(
            &Value::CpuWeight(CpuWeight::Weight(1)),
            &weight
        ));
        assert!(!kernel_agrees(&Value::CpuWeight(CpuWeight::Idle), &weight));
        let unset = KernelValue::Cpu {
            idle: None,
            weight: 100,
        };
        assert!(kernel_agrees(&Value::CpuWeight(CpuWeight::Unset), &unset));
        let max = read(Property::CpuQuota).unwrap();
        assert!(kernel_agrees(
            &Value::CpuQuota(CpuQuota::PerSecUsec(250_000)),
            &max
        ));
        assert!(!kernel_agrees(
            &Value::CpuQuota(CpuQuota::PerSecUsec(200_000)),
            &max
        ));
        assert!(!kernel_agrees(&Value::CpuQuota(CpuQuota::Unset), &max));
        // systemd's 1 ms floor per period.
        let floor = KernelValue::CpuMax {
            quota_us: Some(1000),
            period_us: 100_000,
        };
        assert!(kernel_agrees(
            &Value::CpuQuota(CpuQuota::PerSecUsec(5_000)),
            &floor
        ));
        let mem = read(Property::MemoryHigh).unwrap();
        assert!(kernel_agrees(&Value::MemoryHigh(MemoryHigh::Unset), &mem));
        assert!(!kernel_agrees(
            &Value::MemoryHigh(MemoryHigh::Bytes(1 << 30)),
            &mem
        ));
        let page = page_size();
        let shown = KernelValue::MemoryHigh(Some(page * 3));
        // The kernel keeps whole pages.
        assert!(kernel_agrees(
            &Value::MemoryHigh(MemoryHigh::Bytes(page * 3 + 1)),
            &shown
        ));
        assert!(!kernel_agrees(
            &Value::MemoryHigh(MemoryHigh::Bytes(page * 4)),
            &shown
        ));
        fs::write(dir.join("cpu.max"), "nonsense\n").unwrap();
        let err = read_kernel(dir, Property::CpuQuota).unwrap_err();
        assert!(err.to_string().contains("cpu.max"), "{err}");
    }

    #[test]
    fn drift_names_what_is_held_and_what_is_there() {
        let hog = unit("hog.service");
        let held = Value::CpuQuota(CpuQuota::PerSecUsec(250_000));
        let same = Live {
            systemd: held,
            kernel: None,
        };
        assert_eq!(same.drift(&hog, &held), None);
        let reset = Live {
            systemd: Value::CpuQuota(CpuQuota::Unset),
            kernel: None,
        };
        let d = reset.drift(&hog, &held).unwrap();
        assert_eq!(
            d.to_string(),
            "hog.service: held CPUQuota=25%, systemd has CPUQuota unset (max)"
        );
        let behind = Live {
            systemd: held,
            kernel: Some((
                PathBuf::from("/sys/fs/cgroup/system.slice/hog.service"),
                KernelValue::CpuMax {
                    quota_us: None,
                    period_us: 100_000,
                },
            )),
        };
        let d = behind.drift(&hog, &held).unwrap();
        assert!(matches!(d, Drift::Kernel { .. }));
        assert!(
            d.to_string()
                .contains("/sys/fs/cgroup/system.slice/hog.service has cpu.max \"max 100000\""),
            "{d}"
        );
    }

    #[test]
    fn errors_name_the_call_the_unit_and_the_assignment() {
        let e = SystemdError::AccessDenied {
            method: "SetUnitProperties",
            unit: unit("hog.service"),
            what: "CPUWeight=1".into(),
            message: "Access denied".into(),
        };
        assert!(
            e.to_string().starts_with(
                "SetUnitProperties hog.service CPUWeight=1: access denied (is the agent running as root, and does the unit's SystemCallFilter/RestrictAddressFamilies allow AF_UNIX to /run/dbus/system_bus_socket?)"
            ),
            "{e}"
        );
        let e = call_error(
            zbus::Error::Failure("boom".into()),
            "GetUnit",
            &unit("a.slice"),
            "",
        );
        assert_eq!(e.to_string(), "GetUnit a.slice: boom");
    }

    #[test]
    fn wire_calls_against_a_fake_systemd_on_a_private_bus() {
        const TEST: &str = "wire_calls_against_a_fake_systemd_on_a_private_bus";
        let Some(exe) = dbus_daemon() else {
            println!("SKIPPED: {TEST}: dbus-daemon is not installed (apt-get install dbus)");
            return;
        };
        let bus = start_bus(&exe);
        let root = tempfile::tempdir().unwrap();
        let state = fake::Shared::default();
        {
            let mut st = state.lock().unwrap();
            let mut u = |name: &str, section, cgroup| {
                st.units
                    .insert(name.into(), fake::Unit::new(section, cgroup));
            };
            u("hog.service", "Service", "/system.slice/hog.service");
            u("workload.slice", "Slice", "/workload.slice");
            u("locked.service", "Service", "/system.slice/locked.service");
            u(
                "session-3.scope",
                "Scope",
                "/user.slice/user-1000.slice/session-3.scope",
            );
            let s = st.units.get_mut("session-3.scope").unwrap();
            s.transient = true;
            s.props.insert("CPUWeight", 50);
            st.denied.push("locked.service".into());
        }
        // The scope's own drop-in, from whoever set CPUWeight=50 before.
        let scope_dropin = root
            .path()
            .join("run/systemd/transient/session-3.scope.d/50-CPUWeight.conf");
        fs::create_dir_all(scope_dropin.parent().unwrap()).unwrap();
        let scope_before = "[Scope]\nCPUWeight=50\n";
        fs::write(&scope_dropin, scope_before).unwrap();
        fake::serve(&bus.address, root.path().to_path_buf(), state.clone()).unwrap();
        let units = SystemdUnits::connect_to(&bus.address, root.path()).unwrap();
        let calls = |st: &fake::Shared| std::mem::take(&mut st.lock().unwrap().calls);
        assert_eq!(units.version().unwrap(), 252);
        calls(&state);

        // Resolving: by name, then by systemd's own ControlGroup.
        let hog = units.resolve("/system.slice/hog.service").unwrap().unwrap();
        assert_eq!(hog.as_str(), "hog.service");
        assert_eq!(
            calls(&state),
            [
                "GetUnit hog.service".to_owned(),
                format!(
                    "Get {} org.freedesktop.systemd1.Service ControlGroup",
                    fake::object_path("hog.service")
                ),
            ]
        );
        // A unit of that name elsewhere (a user manager's) is not this cgroup.
        assert_eq!(
            units
                .resolve("/user.slice/user-1000.slice/user@1000.service/app.slice/hog.service")
                .unwrap(),
            None
        );
        assert_eq!(units.resolve("/system.slice/gone.service").unwrap(), None);
        calls(&state);
        assert_eq!(units.resolve("/batch").unwrap(), None);
        assert!(calls(&state).is_empty(), "no call for a non-unit");

        // Set idle through systemd: the wire call, systemd's value, the drop-in.
        assert_eq!(
            units.read(&hog, Property::CpuWeight).unwrap(),
            Value::CpuWeight(CpuWeight::Unset)
        );
        let idle = to_systemd(Setting::CpuIdle, IdleSupport::Idle)
            .unwrap()
            .value;
        let prior = units.prepare(&hog, idle).unwrap();
        assert_eq!(prior.original, Value::CpuWeight(CpuWeight::Unset));
        assert_eq!(prior.held, idle);
        assert!(!prior.transient);
        let hog_dropin = root
            .path()
            .join("run/systemd/system.control/hog.service.d/50-CPUWeight.conf");
        assert_eq!(prior.dropin, hog_dropin);
        assert_eq!(prior.dropin_before, None);
        assert!(
            !calls(&state)
                .iter()
                .any(|c| c.starts_with("SetUnitProperties")),
            "prepare changes nothing"
        );
        units.apply(&prior).unwrap();
        assert_eq!(
            calls(&state),
            ["SetUnitProperties(sba(sv)) hog.service runtime=true [CPUWeight t 0]"]
        );
        assert_eq!(units.read(&hog, Property::CpuWeight).unwrap(), idle);
        assert_eq!(
            fs::read_to_string(&hog_dropin).unwrap(),
            dropin_content(UnitKind::Service, &idle)
        );
        assert_eq!(units.drift(&prior, None).unwrap(), None);

        // Drift: the kernel's files, then systemd's own value.
        let cg = tempfile::tempdir().unwrap();
        fs::write(cg.path().join("cpu.weight"), "100\n").unwrap();
        fs::write(cg.path().join("cpu.idle"), "0\n").unwrap();
        let d = units.drift(&prior, Some(cg.path())).unwrap().unwrap();
        assert!(matches!(d, Drift::Kernel { .. }), "{d}");
        fs::write(cg.path().join("cpu.idle"), "1\n").unwrap();
        assert_eq!(units.drift(&prior, Some(cg.path())).unwrap(), None);
        state
            .lock()
            .unwrap()
            .units
            .get_mut("hog.service")
            .unwrap()
            .props
            .insert("CPUWeight", 100);
        let d = units.drift(&prior, Some(cg.path())).unwrap().unwrap();
        assert_eq!(
            d.to_string(),
            "hog.service: held CPUWeight=idle, systemd has CPUWeight=100"
        );
        state
            .lock()
            .unwrap()
            .units
            .get_mut("hog.service")
            .unwrap()
            .props
            .insert("CPUWeight", 0);

        // The journal's copy restores, as after a crash: unset again, no drop-in left.
        let journaled: Prior =
            serde_json::from_str(&serde_json::to_string(&prior).unwrap()).unwrap();
        calls(&state);
        assert_eq!(units.restore(&journaled).unwrap(), Restored::Restored);
        assert!(calls(&state).contains(
            &"SetUnitProperties(sba(sv)) hog.service runtime=true [CPUWeight t 18446744073709551615]"
                .to_owned()
        ));
        assert_eq!(
            units.read(&hog, Property::CpuWeight).unwrap(),
            Value::CpuWeight(CpuWeight::Unset)
        );
        assert!(!hog_dropin.exists(), "no drop-in of the agent is left");

        // Quota: CPUQuotaPerSecUSec over the wire, 50-CPUQuota.conf on disk.
        let quota = to_systemd(Setting::CpuLimit { cpus: 0.25 }, IdleSupport::Idle)
            .unwrap()
            .value;
        let qprior = units.set_runtime(&hog, quota).unwrap();
        assert!(calls(&state).contains(
            &"SetUnitProperties(sba(sv)) hog.service runtime=true [CPUQuotaPerSecUSec t 250000]"
                .to_owned()
        ));
        assert!(
            fs::read_to_string(&qprior.dropin)
                .unwrap()
                .ends_with("[Service]\nCPUQuota=25%\n")
        );
        assert!(qprior.dropin.ends_with("hog.service.d/50-CPUQuota.conf"));
        // The next rung reuses the journaled prior.
        let tighter = qprior
            .with_held(
                to_systemd(Setting::CpuLimit { cpus: 0.1 }, IdleSupport::Idle)
                    .unwrap()
                    .value,
            )
            .unwrap();
        units.apply(&tighter).unwrap();
        assert_eq!(
            units.read(&hog, Property::CpuQuota).unwrap(),
            Value::CpuQuota(CpuQuota::PerSecUsec(100_000))
        );
        assert_eq!(units.restore(&tighter).unwrap(), Restored::Restored);
        assert_eq!(
            units.read(&hog, Property::CpuQuota).unwrap(),
            Value::CpuQuota(CpuQuota::Unset)
        );
        assert!(!tighter.dropin.exists());

        // A transient scope: its drop-in is in the transient directory, and
        // the one that was there comes back exactly.
        let scope = units
            .resolve("/user.slice/user-1000.slice/session-3.scope")
            .unwrap()
            .unwrap();
        let sprior = units
            .set_runtime(&scope, Value::CpuWeight(CpuWeight::Weight(10)))
            .unwrap();
        assert!(sprior.transient);
        assert_eq!(sprior.dropin, scope_dropin);
        assert_eq!(sprior.original, Value::CpuWeight(CpuWeight::Weight(50)));
        assert_eq!(sprior.dropin_before.as_deref(), Some(scope_before));
        assert!(
            fs::read_to_string(&scope_dropin)
                .unwrap()
                .ends_with("[Scope]\nCPUWeight=10\n")
        );
        assert_eq!(units.restore(&sprior).unwrap(), Restored::Restored);
        assert_eq!(fs::read_to_string(&scope_dropin).unwrap(), scope_before);
        assert_eq!(
            units.read(&scope, Property::CpuWeight).unwrap(),
            Value::CpuWeight(CpuWeight::Weight(50))
        );

        // Someone else set the slice's MemoryHigh through systemd: theirs stays.
        let slice = unit("workload.slice");
        let mprior = units
            .set_runtime(&slice, Value::MemoryHigh(MemoryHigh::Bytes(1 << 30)))
            .unwrap();
        fake::set(
            &mut state.lock().unwrap(),
            root.path(),
            "workload.slice",
            "MemoryHigh",
            2 << 30,
        );
        let theirs = fs::read_to_string(&mprior.dropin).unwrap();
        assert!(theirs.ends_with("[Slice]\nMemoryHigh=2147483648\n"));
        assert_eq!(
            units.restore(&mprior).unwrap(),
            Restored::Superseded {
                live: Value::MemoryHigh(MemoryHigh::Bytes(2 << 30))
            }
        );
        assert_eq!(fs::read_to_string(&mprior.dropin).unwrap(), theirs);
        assert_eq!(
            units.read(&slice, Property::MemoryHigh).unwrap(),
            Value::MemoryHigh(MemoryHigh::Bytes(2 << 30))
        );

        // The unit went away while held: its drop-in is still put back.
        let gone = units
            .set_runtime(&hog, Value::MemoryHigh(MemoryHigh::Bytes(1 << 20)))
            .unwrap();
        assert!(gone.dropin.exists());
        state.lock().unwrap().units.remove("hog.service");
        assert_eq!(units.restore(&gone).unwrap(), Restored::Vanished);
        assert!(!gone.dropin.exists());
        let err = units.read(&hog, Property::CpuWeight).unwrap_err();
        assert!(matches!(err, SystemdError::NoSuchUnit { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("GetUnit hog.service: no such unit"),
            "{err}"
        );

        // Refused: the error names the call, the unit and the assignment.
        let locked = unit("locked.service");
        let err = units
            .set_runtime(&locked, Value::CpuWeight(CpuWeight::Weight(1)))
            .unwrap_err();
        assert!(matches!(err, SystemdError::AccessDenied { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("SetUnitProperties locked.service CPUWeight=1: access denied (is the agent running as root"),
            "{err}"
        );
        // A value systemd refuses (as systemd before 252 refuses idle).
        state.lock().unwrap().denied.clear();
        let err = units
            .apply(&Prior {
                held: Value::CpuQuota(CpuQuota::PerSecUsec(0)),
                ..units
                    .prepare(&locked, Value::CpuQuota(CpuQuota::Unset))
                    .unwrap()
            })
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "SetUnitProperties locked.service CPUQuota=0%: org.freedesktop.DBus.Error.InvalidArgs: Value specified in CPUQuotaPerSecUSec is out of range"
            ),
            "{err}"
        );

        // Journaled but never applied (a crash in between): restoring is harmless.
        let unapplied = units
            .prepare(&slice, Value::CpuWeight(CpuWeight::Weight(5)))
            .unwrap();
        assert_eq!(units.restore(&unapplied).unwrap(), Restored::Restored);
        assert!(!unapplied.dropin.exists());
        assert_eq!(
            units.read(&slice, Property::CpuWeight).unwrap(),
            Value::CpuWeight(CpuWeight::Unset)
        );
        // Superseded by a value from elsewhere (a persistent drop-in and a
        // reload): the runtime drop-in is still the agent's, and goes.
        let wprior = units
            .set_runtime(&slice, Value::CpuWeight(CpuWeight::Weight(5)))
            .unwrap();
        (state
            .lock()
            .unwrap()
            .units
            .get_mut("workload.slice")
            .unwrap())
        .props
        .insert("CPUWeight", 7);
        assert_eq!(
            units.restore(&wprior).unwrap(),
            Restored::Superseded {
                live: Value::CpuWeight(CpuWeight::Weight(7))
            }
        );
        assert!(!wprior.dropin.exists());

        // The agent calls its actuators inside its tokio runtime: the blocking
        // calls (zbus on async-io, not on tokio) work there.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let inside = rt.block_on(async { units.read(&slice, Property::CpuWeight) });
        assert_eq!(inside.unwrap(), Value::CpuWeight(CpuWeight::Weight(7)));
        drop(bus);
    }
}
