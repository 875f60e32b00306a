//! The engine as `run` and `record` drive it.

use governor_engine::{
    decide::{Decision, PolicyStatus, State},
    record::{DecisionRecord as Recorded, Engine, Frame, Input, Watch},
};

use crate::record::segments::Recorder;

/// The engine as the agent drives it: every input is fed, and recorded
/// with its decisions when a recorder runs; `replay` feeds the same inputs
/// to the same [`Engine`].
pub struct Driver {
    /// The engine.
    pub engine: Engine,
    /// Where every input goes with its decisions, if recording.
    pub recorder: Option<Recorder>,
    /// What of each snapshot the config reads (what is recorded and decided on).
    pub watch: Watch,
}

impl Driver {
    /// Feeds `input` to the engine, records it with its decisions, and
    /// returns them.
    pub fn feed(&mut self, input: Input) -> Vec<Decision> {
        let decisions = match self.engine.feed(&input) {
            Ok(d) => d.to_vec(),
            Err(e) => {
                // Configs are checked before they are fed: not expected.
                tracing::error!("the engine refused an input: {e}");
                Vec::new()
            }
        };
        if let Some(r) = &self.recorder {
            r.record(Frame {
                input,
                decisions: decisions.iter().map(Recorded::from).collect(),
            });
        }
        decisions
    }

    /// Every policy's state.
    pub fn status(&self) -> Vec<PolicyStatus> {
        self.engine.state().map(State::status).unwrap_or_default()
    }

    /// Watches what the config in force reads (after a start or reload).
    pub fn reconfigure(&mut self) {
        if let Some(cfg) = self.engine.config() {
            self.watch = Watch::of(cfg);
        }
    }
}
