//! act: applying decisions.

pub mod net;
