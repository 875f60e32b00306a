//! The accept-queue guard's slow loop: where its bound stands.
//!
//! The kernel refuses a SYN while the listener's accept queue is at the
//! bound; this decides the bound, once a tick, from what the server is seen
//! to drain. By Little's law a queue of `drain × max_delay` connections
//! waits about `max_delay`, so that is the bound, clamped to
//! `[min, ceiling]` (the ceiling: `max_queue`, a count or a share of the
//! listener's backlog). It is armed at `min` (until a drain is measured, a
//! cold start under overload is refused from the first SYN); while the
//! drain is unknown the bound stays where it is (no data is not zero); while the queue stays empty for `relax_after`
//! the bound goes back to the ceiling. Every move and every tick with
//! refusals is a [`GuardEvent`] with its reason. Pure: no I/O, no clock.

use std::time::Duration;

use crate::config::{Ratio, RejectMode};

/// How deep the queue may get at most.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxQueue {
    /// A number of connections.
    Count(u32),
    /// A share of the listener's backlog (`sk_max_ack_backlog`).
    Share(Ratio),
}

/// A guard as configured on a policy: `guard = { port = 8080, max_queue =
/// "50%", max_delay = "100ms", mode = "reset" }` (also `min`, default 4,
/// and `relax_after`, default `"5s"`). Armed from the start, not on a trip.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GuardSpec {
    /// The guarded local port.
    pub port: u16,
    /// The ceiling of the bound.
    pub max_queue: MaxQueue,
    /// The queueing delay to keep under; `None`: the bound is the ceiling.
    pub max_delay: Option<Duration>,
    /// The bound never goes below this (so a stalled server still gets work).
    pub min: u32,
    /// How long the queue must stay empty before the bound relaxes.
    pub relax_after: Duration,
    /// How refused SYNs are answered.
    pub mode: RejectMode,
}

/// What one tick saw of the guarded port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardInput {
    /// Connections the server accepted per second over the tick; `None`
    /// if not measured.
    pub drain_per_s: Option<f64>,
    /// The accept queue's depth now; `None` if not read.
    pub queue: Option<u32>,
    /// The listener's backlog (`sk_max_ack_backlog`); `None` if not read.
    pub backlog: Option<u32>,
    /// SYNs the guard refused since it was armed (the kernel's counter).
    pub guarded_total: u64,
}

/// What the guard's loop decided in one tick.
#[derive(Debug, Clone, PartialEq)]
pub enum GuardEvent {
    /// The bound moved.
    Bound {
        /// Port.
        port: u16,
        /// Bound before (`None`: first bound, at arming).
        from: Option<u32>,
        /// Bound now.
        to: u32,
        /// Why, in words.
        reason: String,
    },
    /// The kernel refused SYNs during the tick.
    Refused {
        /// Port.
        port: u16,
        /// How many.
        count: u64,
        /// Why, in words.
        reason: String,
    },
}

/// The guard's state between ticks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuardState {
    /// The bound in force; `None` until the first tick.
    pub bound: Option<u32>,
    /// Since when (time since start) the queue has been seen empty.
    empty_since: Option<Duration>,
    /// The kernel's refusal counter at the last tick.
    last_guarded: u64,
}

impl GuardSpec {
    /// The ceiling for a listener with `backlog` (unknown: a share is
    /// taken of the kernel's default `somaxconn`, 4096).
    pub fn ceiling(&self, backlog: Option<u32>) -> u32 {
        let ceiling = match self.max_queue {
            MaxQueue::Count(n) => n,
            MaxQueue::Share(r) => (f64::from(backlog.unwrap_or(4096)) * r.get()).floor() as u32,
        };
        ceiling.max(self.min).max(1)
    }

    /// Little's law: the queue that waits `max_delay` at `drain` per second,
    /// clamped to `[min, ceiling]`.
    pub fn bound_for(&self, drain_per_s: f64, backlog: Option<u32>) -> u32 {
        let ceiling = self.ceiling(backlog);
        let Some(delay) = self.max_delay else {
            return ceiling;
        };
        let n = (drain_per_s.max(0.0) * delay.as_secs_f64()).floor();
        (n.min(f64::from(ceiling)) as u32).clamp(self.min.min(ceiling), ceiling)
    }
}

impl GuardState {
    /// One tick at `now` (time since start).
    pub fn step(&mut self, spec: &GuardSpec, input: &GuardInput, now: Duration) -> Vec<GuardEvent> {
        let mut out = Vec::new();
        let ceiling = spec.ceiling(input.backlog);
        let empty = input.queue == Some(0);
        if empty {
            self.empty_since.get_or_insert(now);
        } else if input.queue.is_some() {
            self.empty_since = None;
        }
        let relaxed = self
            .empty_since
            .is_some_and(|since| now.saturating_sub(since) >= spec.relax_after);
        let target = match (self.bound, input.drain_per_s) {
            // Arming: fail fast from the first SYN, at `min`, until the
            // drain is known (a cold start under overload fills a queue
            // long before a tick has measured anything).
            (None, None) => Some((
                spec.min.min(ceiling),
                "armed at min until the drain is measured".to_owned(),
            )),
            (Some(b), _) if relaxed && b != ceiling => Some((
                ceiling,
                format!(
                    "queue empty for {}: relaxed to the ceiling",
                    humantime::format_duration(spec.relax_after)
                ),
            )),
            (_, Some(drain)) if !relaxed && drain > 0.0 => {
                let b = spec.bound_for(drain, input.backlog);
                let why = match spec.max_delay {
                    Some(d) => format!(
                        "server drains {drain:.0}/s, {} target",
                        humantime::format_duration(d)
                    ),
                    None => "no delay target: the ceiling".to_owned(),
                };
                Some((b, why))
            }
            // No drain seen (or none measured): the bound holds.
            _ => None,
        };
        if let Some((to, why)) = target
            && self.bound != Some(to)
        {
            out.push(GuardEvent::Bound {
                port: spec.port,
                from: self.bound,
                to,
                reason: format!("guard on :{} bound {to} ({why})", spec.port),
            });
            self.bound = Some(to);
        }
        let refused = input.guarded_total.saturating_sub(self.last_guarded);
        self.last_guarded = input.guarded_total;
        if refused > 0 {
            let verb = match spec.mode {
                RejectMode::Reset => "reset",
                RejectMode::Drop => "dropped",
            };
            out.push(GuardEvent::Refused {
                port: spec.port,
                count: refused,
                reason: format!(
                    "guard on :{} {verb} {refused} SYNs: accept queue at its bound {}",
                    spec.port,
                    self.bound.unwrap_or(ceiling)
                ),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> GuardSpec {
        GuardSpec {
            port: 8080,
            max_queue: MaxQueue::Share(Ratio::new(0.5).unwrap()),
            max_delay: Some(Duration::from_millis(100)),
            min: 4,
            relax_after: Duration::from_secs(5),
            mode: RejectMode::Reset,
        }
    }

    fn input(drain: Option<f64>, queue: u32, guarded: u64) -> GuardInput {
        GuardInput {
            drain_per_s: drain,
            queue: Some(queue),
            backlog: Some(128),
            guarded_total: guarded,
        }
    }

    #[test]
    fn littles_law_bound_clamped_to_min_and_ceiling() {
        let s = spec();
        assert_eq!(s.ceiling(Some(128)), 64, "50% of the backlog");
        assert_eq!(s.bound_for(400.0, Some(128)), 40, "400/s × 100ms");
        assert_eq!(s.bound_for(10_000.0, Some(128)), 64, "at most the ceiling");
        assert_eq!(s.bound_for(5.0, Some(128)), 4, "at least min");
        let count = GuardSpec {
            max_queue: MaxQueue::Count(16),
            max_delay: None,
            ..spec()
        };
        assert_eq!(
            count.bound_for(400.0, Some(128)),
            16,
            "no delay target: the ceiling"
        );
    }

    #[test]
    fn arms_at_min_then_follows_the_drain_with_reasons() {
        let s = spec();
        let mut st = GuardState::default();
        let ev = st.step(&s, &input(None, 3, 0), Duration::from_secs(0));
        assert!(
            matches!(
                ev[..],
                [GuardEvent::Bound {
                    from: None,
                    to: 4,
                    ..
                }]
            ),
            "{ev:?}"
        );
        let ev = st.step(&s, &input(Some(400.0), 30, 0), Duration::from_millis(100));
        match &ev[..] {
            [
                GuardEvent::Bound {
                    from: Some(4),
                    to: 40,
                    reason,
                    ..
                },
            ] => assert_eq!(
                reason,
                "guard on :8080 bound 40 (server drains 400/s, 100ms target)"
            ),
            other => panic!("{other:?}"),
        }
        // Same drain: no move, no event.
        assert!(
            st.step(&s, &input(Some(400.0), 30, 0), Duration::from_millis(200))
                .is_empty()
        );
        // Drain unknown: the bound holds (no data is not zero).
        assert!(
            st.step(&s, &input(None, 30, 0), Duration::from_millis(300))
                .is_empty()
        );
        assert_eq!(st.bound, Some(40));
    }

    #[test]
    fn refusals_are_counted_per_tick_from_the_kernel_counter() {
        let s = spec();
        let mut st = GuardState::default();
        st.step(&s, &input(Some(400.0), 40, 0), Duration::ZERO);
        let ev = st.step(&s, &input(Some(400.0), 40, 7), Duration::from_millis(100));
        match &ev[..] {
            [
                GuardEvent::Refused {
                    count: 7, reason, ..
                },
            ] => {
                assert_eq!(
                    reason,
                    "guard on :8080 reset 7 SYNs: accept queue at its bound 40"
                );
            }
            other => panic!("{other:?}"),
        }
        let ev = st.step(&s, &input(Some(400.0), 40, 10), Duration::from_millis(200));
        assert!(
            matches!(ev[..], [GuardEvent::Refused { count: 3, .. }]),
            "only the new ones"
        );
    }

    #[test]
    fn an_empty_queue_relaxes_the_bound_only_after_relax_after() {
        let s = spec();
        let mut st = GuardState::default();
        st.step(&s, &input(Some(100.0), 5, 0), Duration::ZERO);
        assert_eq!(st.bound, Some(10));
        // Empty, with little drain: not yet relaxed.
        assert!(
            st.step(&s, &input(Some(100.0), 0, 0), Duration::from_secs(1))
                .is_empty()
        );
        assert!(
            st.step(&s, &input(Some(100.0), 0, 0), Duration::from_secs(5))
                .is_empty()
        );
        let ev = st.step(&s, &input(Some(100.0), 0, 0), Duration::from_secs(6));
        assert!(
            matches!(ev[..], [GuardEvent::Bound { to: 64, .. }]),
            "{ev:?}"
        );
        // A queue again: the drain sets the bound.
        let ev = st.step(&s, &input(Some(100.0), 2, 0), Duration::from_secs(7));
        assert!(
            matches!(
                ev[..],
                [GuardEvent::Bound {
                    from: Some(64),
                    to: 10,
                    ..
                }]
            ),
            "{ev:?}"
        );
    }
}
