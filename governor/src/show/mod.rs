//! show: how the agent explains itself: `observe` output and `/metrics`.

pub mod metrics;
pub mod observe;
