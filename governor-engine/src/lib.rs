//! governor-engine: the pure core of governor's loop (see `ARCHITECTURE.md`).
//!
//! - [`config`]: what the user writes in `governor.toml`, typed, parsed with
//!   the line and column of every error;
//! - [`snapshot`]: what the sensor saw in one interval;
//! - [`decide`]: a pure function of (policy state, snapshot, now) that
//!   returns the new state and the decisions, each with its reason.
//!
//! Architecture invariant: this crate does no I/O. It depends on no crate
//! that does (no tokio, aya, libc, netlink, sockets, procfs), reads no clock
//! and draws randomness only from a seeded source, so that the agent, the
//! simulations and a replay of a recording all run the same engine.

pub mod config;
pub mod decide;
pub mod record;
pub mod snapshot;
