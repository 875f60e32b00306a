//! act: put decisions in force, and take them back.
//!
//! - [`cgroup`]: `cpu_weight`, `cpu_limit` and `memory_high` through cgroup
//!   files ([`cgroup::CgroupActuator`]), on pure cgroup2 hosts and on hybrid
//!   hosts (v1 cpu controller beside a controller-less cgroup2);
//! - [`journal`]: every file changed, with the text it replaced, on disk
//!   before the change, so exit, reload and a crash all end in a revert;
//! - [`net`]: connection throttling and rejection through BPF maps and the
//!   enforcement programs attached to the policies' cgroups and ports;
//! - [`rules`]: the agent's actuators together: which mechanism each
//!   decision goes through, and the stacks of rules held per target.
//!
//! The agent's use, in order:
//! 1. at start, [`journal::Journal::open`] (under [`journal::DEFAULT_DIR`])
//!    and [`cgroup::CgroupActuator::revert_all`]: entries left there belong
//!    to a process that died;
//! 2. per decision, [`cgroup::CgroupActuator::apply`] (`Change::Impose`) or
//!    [`cgroup::CgroupActuator::lift`] (`Change::Lift`);
//! 3. each tick, [`cgroup::CgroupActuator::retry_pending`] while reverts fail;
//! 4. on SIGTERM/SIGINT, [`cgroup::CgroupActuator::revert_all`].

pub mod cgroup;
pub mod journal;
pub mod net;
pub mod rules;
pub mod systemd;
