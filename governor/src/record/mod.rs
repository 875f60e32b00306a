//! Recording what the engine was given (`run`, `record`) and replaying it
//! (`replay`): segment files on disk, the replay runner, and its reports.

pub mod cli;
#[cfg(test)]
mod fixture;
pub mod html;
pub mod replay;
pub mod report;
pub mod segments;
