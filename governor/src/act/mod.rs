//! act: put decisions in force, and take them back.
//!
//! - [`cgroup`]: `cpu_weight`, `cpu_limit` and `memory_high`
//!   ([`cgroup::CgroupActuator`]): through cgroup files, on pure cgroup2
//!   hosts and on hybrid hosts (v1 cpu controller beside a controller-less
//!   cgroup2), or, for a target that is a systemd unit on a host where
//!   systemd is the cgroup manager, through systemd ([`cgroup::route`]);
//!   and drift: held values someone else rewrote;
//! - [`systemd`]: unit properties set and restored through systemd over
//!   D-Bus (`SetUnitProperties`, runtime), and what each amounts to in the
//!   unit's cgroup files;
//! - [`journal`]: every file changed, with the text it replaced, and every
//!   unit property set, with systemd's value and drop-in before, on disk
//!   before the change, so exit, reload and a crash all end in a revert;
//! - [`net`]: connection throttling and rejection through BPF maps and the
//!   enforcement programs attached to the policies' cgroups and ports;
//! - [`rules`]: the agent's actuators together: which mechanism each
//!   decision goes through, and the stacks of rules held per target.
//!
//! The agent's use, in order:
//! 1. at start, [`journal::Journal::open`] (under [`journal::DEFAULT_DIR`]),
//!    [`cgroup::CgroupActuator::for_host`] (connects to systemd if it is the
//!    cgroup manager, and logs which route targets take) and
//!    [`cgroup::CgroupActuator::revert_all`]: entries left there belong to a
//!    process that died;
//! 2. per decision, [`cgroup::CgroupActuator::apply`] (`Change::Impose`) or
//!    [`cgroup::CgroupActuator::lift`] (`Change::Lift`);
//! 3. each tick, [`cgroup::CgroupActuator::retry_pending`] while reverts
//!    fail, and [`cgroup::CgroupActuator::check_drift`];
//! 4. on SIGTERM/SIGINT, [`cgroup::CgroupActuator::revert_all`].

pub mod cgroup;
pub mod journal;
pub mod net;
pub mod rules;
pub mod systemd;
