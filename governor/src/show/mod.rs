//! show: how the agent explains itself: `/metrics`, `observe` output, and
//! the status socket (server in the agent, client in `governor status` and
//! `governor top`).

pub mod log;
pub mod metrics;
pub mod observe;
pub mod status;
pub mod top;
