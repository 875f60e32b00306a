//! Histogram slots: which cgroups get a slot in the per-CPU array
//! `SLOT_RUNQ` (an array index in the probes instead of a hash lookup, see
//! `governor_common::slots`), and the deltas of their cumulative
//! histograms. Pure bookkeeping; [`super::Probes`] applies what it decides
//! to the maps.
//!
//! - A cgroup that waited in a tick (in the hash) gets a free slot after
//!   that tick; a watched cgroup gets one at once, and keeps it while
//!   watched.
//! - When no slot is free, a cgroup that waited in two ticks in a row takes
//!   the one idle longest (at least two ticks, not watched), so that
//!   short-lived cgroups (a build's, a cron job's) do not push out busy
//!   ones; a watched cgroup may take any unwatched one. A removed
//!   cgroup's slot is thus reclaimed only when needed.
//! - Every change to the slots bumps a generation the probes compare with
//!   each task's cached slot, so that no task keeps adding to a slot it
//!   lost past its next switch-in. A program running while the agent
//!   hands a slot over may still add one wait to it: the new owner's delta
//!   starts from the slot's count when it was handed over, so that wait is
//!   the new owner's (a window of nanoseconds, once per handover).

use std::collections::{BTreeSet, HashMap, HashSet};

use governor_common::slots::{NONE, WATCHED};

/// Ticks a slot must have been idle before an unwatched cgroup takes it.
const IDLE_BEFORE_REUSE: u32 = 2;

/// One slot's owner.
#[derive(Debug, Clone)]
struct Owner {
    id: u64,
    /// The slot's counts (summed over CPUs, modulo 2^32) when last read.
    base: Vec<u32>,
    /// Ticks since its last wait.
    idle: u32,
    watched: bool,
}

/// A change to `SLOT_OF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Cgroup `id` has `SLOT_OF` value `value` (a slot, maybe with `WATCHED`).
    Set { id: u64, value: u32 },
    /// Cgroup `id` has no slot any more.
    Remove { id: u64 },
}

/// The slots and their owners.
#[derive(Debug, Clone)]
pub struct SlotTable {
    owners: Vec<Option<Owner>>,
    by_id: HashMap<u64, u32>,
    /// Cgroups that waited (in the hash) in the previous tick.
    seen_last: HashSet<u64>,
    watched: BTreeSet<u64>,
    /// Bumped with every change (the probes' `CONF_GEN`).
    generation: u32,
}

impl SlotTable {
    /// A table of `capacity` slots, all free.
    pub fn new(capacity: u32) -> Self {
        Self {
            owners: vec![None; capacity as usize],
            by_id: HashMap::new(),
            seen_last: HashSet::new(),
            watched: BTreeSet::new(),
            generation: 0,
        }
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.owners.len()
    }

    /// The generation to write to `CONF_GEN` (changes with every change).
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The slots in use and their cgroups.
    pub fn owned(&self) -> Vec<(u32, u64)> {
        (self.owners.iter().enumerate())
            .filter_map(|(s, o)| o.as_ref().map(|o| (s as u32, o.id)))
            .collect()
    }

    /// Cgroup `id`'s slot, if it has one.
    pub fn slot_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// The waits slot `slot` counted since its last read (`current`: its
    /// counts summed over CPUs modulo 2^32), and, if `advance`, makes
    /// `current` the base of the next read. Empty if the slot is free.
    pub fn delta(&mut self, slot: u32, current: &[u32], advance: bool) -> Vec<u64> {
        let Some(Some(o)) = self.owners.get_mut(slot as usize) else {
            return Vec::new();
        };
        let d = crate::probes::runq::wrapping_delta(current, Some(&o.base));
        if advance {
            o.idle = if d.iter().any(|&c| c != 0) {
                0
            } else {
                o.idle.saturating_add(1)
            };
            o.base = current.to_vec();
        }
        d
    }

    /// Watches `ids` (given slots first); returns the changes to apply.
    /// `read` gives a slot's current counts, the new owner's base.
    pub fn set_watched(
        &mut self,
        ids: &BTreeSet<u64>,
        read: &mut dyn FnMut(u32) -> Vec<u32>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let was = std::mem::replace(&mut self.watched, ids.clone());
        for id in was.difference(ids) {
            if let Some(slot) = self.slot_of(*id)
                && let Some(Some(o)) = self.owners.get_mut(slot as usize)
            {
                o.watched = false;
                changes.push(Change::Set {
                    id: *id,
                    value: slot,
                });
            }
        }
        for &id in ids {
            match self.slot_of(id) {
                Some(slot) => {
                    if let Some(Some(o)) = self.owners.get_mut(slot as usize)
                        && !o.watched
                    {
                        o.watched = true;
                        changes.push(Change::Set {
                            id,
                            value: slot | WATCHED,
                        });
                    }
                }
                None => self.assign(id, true, true, read, &mut changes),
            }
        }
        self.bump_if(&changes);
        changes
    }

    /// After a tick's read: `hot` are the cgroups that waited this tick in
    /// the hash (they had no slot). They get free slots; once none is
    /// free, those that also waited the tick before get idle ones. Returns
    /// the changes to apply.
    pub fn promote(
        &mut self,
        hot: impl IntoIterator<Item = u64>,
        read: &mut dyn FnMut(u32) -> Vec<u32>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let now: HashSet<u64> = hot.into_iter().collect();
        let mut want: Vec<u64> = now
            .iter()
            .copied()
            .filter(|id| !self.by_id.contains_key(id))
            .collect();
        // Those that waited two ticks in a row first, then by id.
        want.sort_unstable_by_key(|id| (!self.seen_last.contains(id), *id));
        for id in want {
            let before = changes.len();
            self.assign(id, false, self.seen_last.contains(&id), read, &mut changes);
            if changes.len() == before {
                break; // no slot left to give
            }
        }
        self.seen_last = now;
        self.bump_if(&changes);
        changes
    }

    /// Gives `id` a slot if one is free, else, if `may_evict`, one idle
    /// long enough (any unwatched one if `watched`); pushes the changes.
    fn assign(
        &mut self,
        id: u64,
        watched: bool,
        may_evict: bool,
        read: &mut dyn FnMut(u32) -> Vec<u32>,
        changes: &mut Vec<Change>,
    ) {
        let slot = match self.owners.iter().position(Option::is_none) {
            Some(free) => free as u32,
            None if !may_evict => return,
            None => {
                let min_idle = if watched { 0 } else { IDLE_BEFORE_REUSE };
                let Some((slot, old)) = (self.owners.iter().enumerate())
                    .filter_map(|(s, o)| o.as_ref().map(|o| (s, o)))
                    .filter(|(_, o)| !o.watched && o.idle >= min_idle)
                    .max_by_key(|(s, o)| (o.idle, std::cmp::Reverse(*s)))
                    .map(|(s, o)| (s as u32, o.id))
                else {
                    return;
                };
                self.by_id.remove(&old);
                changes.push(Change::Remove { id: old });
                slot
            }
        };
        self.owners[slot as usize] = Some(Owner {
            id,
            base: read(slot),
            idle: 0,
            watched,
        });
        self.by_id.insert(id, slot);
        let value = if watched { slot | WATCHED } else { slot };
        debug_assert_ne!(value, NONE);
        changes.push(Change::Set { id, value });
    }

    fn bump_if(&mut self, changes: &[Change]) {
        if !changes.is_empty() {
            self.generation = self.generation.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeros(_: u32) -> Vec<u32> {
        vec![0; 3]
    }

    #[test]
    fn a_cgroup_that_waited_gets_a_free_slot_after_the_tick() {
        let mut t = SlotTable::new(2);
        assert_eq!(t.generation(), 0);
        let c = t.promote([7], &mut zeros);
        assert_eq!(c, vec![Change::Set { id: 7, value: 0 }]);
        assert_eq!(t.generation(), 1);
        assert_eq!(t.slot_of(7), Some(0));
        // 7 keeps its slot; 8 gets the other; 9 finds none free.
        let c = t.promote([8, 9], &mut zeros);
        assert_eq!(c, vec![Change::Set { id: 8, value: 1 }]);
        assert_eq!(t.slot_of(9), None);
        assert!(t.promote([], &mut zeros).is_empty());
        assert_eq!(t.generation(), 2, "no change, no new generation");
    }

    #[test]
    fn deltas_are_taken_in_u32_across_a_wrap_and_from_the_handover_count() {
        let mut t = SlotTable::new(1);
        let mut read = |_| vec![u32::MAX - 1, 5, 0];
        t.promote([1], &mut read);
        assert_eq!(t.slot_of(1), Some(0));
        // Counts before the handover are not the new owner's.
        let d = t.delta(0, &[1, 5, 0], false);
        assert_eq!(d, vec![3, 0, 0], "wrapped: MAX-1 → 1 is 3 waits");
        // A peek does not move the base.
        assert_eq!(t.delta(0, &[1, 5, 0], true), vec![3, 0, 0]);
        assert_eq!(t.delta(0, &[1, 7, 0], true), vec![0, 2, 0]);
        assert!(t.delta(3, &[0, 0, 0], true).is_empty(), "no such slot");
    }

    #[test]
    fn a_full_table_hands_over_the_slot_idle_longest_but_never_a_watched_one() {
        let mut t = SlotTable::new(2);
        t.promote([1, 2], &mut zeros);
        assert_eq!((t.slot_of(1), t.slot_of(2)), (Some(0), Some(1)));
        t.set_watched(&BTreeSet::from([1]), &mut zeros);
        // Three idle ticks for both; 3 waits twice and wants a slot: not
        // after its first tick (it may be short-lived), after its second.
        for _ in 0..3 {
            t.delta(0, &[0, 0, 0], true);
            t.delta(1, &[0, 0, 0], true);
        }
        assert!(t.promote([3], &mut zeros).is_empty());
        let c = t.promote([3], &mut zeros);
        assert_eq!(
            c,
            vec![Change::Remove { id: 2 }, Change::Set { id: 3, value: 1 }]
        );
        assert_eq!(t.slot_of(1), Some(0), "the watched cgroup keeps its slot");
        // 3 is busy (not idle): 4 gets nothing, and nothing changes.
        t.delta(1, &[1, 0, 0], true);
        t.promote([4], &mut zeros);
        let g = t.generation();
        assert!(t.promote([4], &mut zeros).is_empty());
        assert_eq!(t.generation(), g);
    }

    #[test]
    fn a_watched_cgroup_gets_a_slot_at_once_marked_and_unmarked() {
        let mut t = SlotTable::new(1);
        t.promote([5], &mut zeros);
        // Full, and 5 is busy: a watched cgroup takes its slot anyway.
        t.delta(0, &[1, 0, 0], true);
        let c = t.set_watched(&BTreeSet::from([9]), &mut zeros);
        assert_eq!(
            c,
            vec![
                Change::Remove { id: 5 },
                Change::Set {
                    id: 9,
                    value: WATCHED
                }
            ]
        );
        let c = t.set_watched(&BTreeSet::new(), &mut zeros);
        assert_eq!(c, vec![Change::Set { id: 9, value: 0 }], "unwatched, kept");
        assert_eq!(t.owned(), vec![(0, 9)]);
    }
}
