//! The registry's map of user-given ids to the slots of the tasks holding
//! them (generated ids carry their slot and need no map).
//!
//! A [`HashTable`] rather than a `HashMap`, for two things a map cannot
//! do, both for a cancel by name (W6, `bench/README.md#w6-cancel-by-id`):
//! - the removal that follows a lookup in the same lock section (the
//!   cancel's finalize) takes the bucket the lookup found, without reading
//!   the task's name, hashing it or comparing it again;
//! - each entry keeps its hash, so growing or shrinking the table (a cancel
//!   storm shrinks it) rehashes no string.
//!
//! An entry is only a slot and a hash (8 bytes): the name itself is the
//! task's (`Job::name`, the `Arc<str>` its id and handle share), which a
//! lookup reads through the registry to confirm a hash match. A copy of the
//! `Arc` per entry made the table three times as large (random probes
//! into it are the cost of a cancel by name, W6) and took two atomic
//! reference-count operations per named task.
//!
//! Invariant: the table holds at most one entry per slot, the name of the
//! task in that registry slot. (`Engine::remove` is the one place a task
//! leaves the registry, and it removes the name; a name is inserted for a
//! new task only.) So an entry is known by its slot alone, which makes a
//! remembered bucket safe to trust once its slot matches.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use crate::queue::Slot;

/// User-given ids and their tasks' registry slots.
pub(crate) struct Names {
    table: HashTable<Named>,
    /// foldhash, not SipHash: SipHash made the lookup of a cancel by name
    /// cost as much as the rest of the cancel (W6). Its per-table random
    /// seed keeps the "quality" variant's protection against chosen
    /// colliding ids.
    hasher: foldhash::quality::RandomState,
    /// The slot and bucket of the name last found by [`get`](Self::get),
    /// for a [`remove_found`](Self::remove_found) that follows. A hint only: a removal
    /// trusts it only if that bucket still holds that slot (the invariant
    /// makes that enough), so nothing has to clear it.
    found: Cell<Option<(Slot, usize)>>,
}

/// One entry: the slot of the task holding the name, and the name's hash.
struct Named {
    slot: Slot,
    /// The name's hash, folded to 32 bits (see [`Names::hash`]).
    hash: u32,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            table: HashTable::new(),
            hasher: foldhash::quality::RandomState::default(),
            found: Cell::new(None),
        }
    }
}

/// The table's hash of an entry whose name hashed to `h`: `h` repeated in
/// both halves, so the bucket index (the low bits) and the control tag
/// (the top 7 bits) both come from it, and the 32 bits stored per entry
/// are the whole hash (no rehash of a string when the table resizes).
/// 32 bits index up to 2^32 buckets, more than the registry's `u32` slots
/// can fill.
fn spread(h: u32) -> u64 {
    u64::from(h) << 32 | u64::from(h)
}

impl Names {
    /// `name`'s 32-bit hash. One `write` of the bytes: the table hashes
    /// only strings, so it needs no prefix-free encoding (which `str`'s
    /// `Hash` adds, at a cost).
    fn hash(&self, name: &str) -> u32 {
        let mut h = self.hasher.build_hasher();
        h.write(name.as_bytes());
        let h = h.finish();
        (h ^ h >> 32) as u32
    }

    /// The bucket holding `name`, if any. `name_of` gives the name of the
    /// task in a slot (the table holds no names).
    fn find<'a>(&self, name: &str, name_of: impl Fn(Slot) -> Option<&'a str>) -> Option<usize> {
        let hash = self.hash(name);
        self.table.find_bucket_index(spread(hash), |n| {
            n.hash == hash && name_of(n.slot).is_some_and(|held| held == name)
        })
    }

    /// The slot of the task holding `name`, if any; `name_of` gives the
    /// name of the task in a slot.
    pub(crate) fn get<'a>(
        &self,
        name: &str,
        name_of: impl Fn(Slot) -> Option<&'a str>,
    ) -> Option<Slot> {
        let bucket = self.find(name, name_of)?;
        let slot = self.table.get_bucket(bucket)?.slot;
        self.found.set(Some((slot, bucket)));
        Some(slot)
    }

    /// Records that the task in `slot` holds `name`, which no task holds.
    pub(crate) fn insert(&mut self, name: &str, slot: Slot) {
        let hash = self.hash(name);
        self.table
            .insert_unique(spread(hash), Named { slot, hash }, |n| spread(n.hash));
    }

    /// Forgets the name of the task in `slot` if the last [`get`](Self::get)
    /// found it: at the bucket found, without the name (a cancel by name
    /// then never reads the task's name, a cache miss per cancel in W6).
    /// `false` if the hint is for another slot or went stale; the caller
    /// then asks the task for its name and calls [`remove`](Self::remove).
    pub(crate) fn remove_found(&mut self, slot: Slot) -> bool {
        let Some((found, bucket)) = self.found.take() else {
            return false;
        };
        if found != slot {
            return false;
        }
        match self.table.get_bucket_entry(bucket) {
            Ok(e) if e.get().slot == slot => {
                e.remove();
                true
            }
            _ => false,
        }
    }

    /// Forgets `name`, held by the task in `slot`, by its hash.
    pub(crate) fn remove(&mut self, name: &str, slot: Slot) {
        let hash = self.hash(name);
        // By slot: the invariant makes it the key, and it spares the string compare.
        if let Ok(e) = self.table.find_entry(spread(hash), |n| n.slot == slot) {
            e.remove();
        }
    }

    /// Gives memory back after a mass removal.
    pub(crate) fn shrink_to_fit(&mut self) {
        self.table.shrink_to_fit(|n| spread(n.hash));
    }

    /// No task has a user-given id (the engine then skips asking a
    /// finished task for its name).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table and what it indexes: the name held in each slot (the
    /// registry's tasks, in the engine).
    #[derive(Default)]
    struct Registry {
        names: Names,
        held: Vec<Option<String>>,
    }

    impl Registry {
        fn with(n: u32) -> Self {
            let mut r = Registry::default();
            for i in 0..n {
                r.add(&format!("task-{i}"), i);
            }
            r
        }

        fn add(&mut self, name: &str, slot: Slot) {
            let i = slot as usize;
            if self.held.len() <= i {
                self.held.resize(i + 1, None);
            }
            assert!(self.held[i].is_none(), "slot {slot} is taken");
            self.held[i] = Some(name.to_owned());
            self.names.insert(name, slot);
        }

        fn get(&self, name: &str) -> Option<Slot> {
            let held = &self.held;
            self.names.get(name, |s| held.get(s as usize)?.as_deref())
        }

        /// What `Engine::remove` does: the task leaves its slot, then its
        /// name goes, by the hint if it is for this slot, else by name.
        fn remove(&mut self, slot: Slot) {
            let name = self.held[slot as usize].take().expect("slot is held");
            if !self.names.remove_found(slot) {
                self.names.remove(&name, slot);
            }
        }
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let r = Registry::with(100);
        for i in 0..100 {
            assert_eq!(r.get(&format!("task-{i}")), Some(i));
        }
        assert_eq!(r.get("task-100"), None);
        assert_eq!(r.get("task-"), None);
        assert_eq!(r.get(""), None);
    }

    #[test]
    fn a_hash_match_counts_only_if_the_slot_holds_the_name() {
        let mut r = Registry::with(3);
        // Slot 1 now holds another name than the table was told (never so
        // in the engine): the table confirms every match by the holder's name.
        r.held[1] = Some("renamed".into());
        assert_eq!(r.get("task-1"), None);
        assert_eq!(r.get("task-0"), Some(0));
        r.held[1] = None;
        assert_eq!(r.get("task-1"), None);
    }

    #[test]
    fn removes_after_a_lookup_by_the_bucket_found() {
        let mut r = Registry::with(100);
        for i in (0..100).step_by(3) {
            let name = format!("task-{i}");
            assert_eq!(r.get(&name), Some(i));
            r.remove(i);
            assert_eq!(r.get(&name), None);
        }
        for i in 0..100 {
            let held = r.get(&format!("task-{i}")).is_some();
            assert_eq!(held, i % 3 != 0, "task-{i}");
        }
        assert_eq!(r.names.len(), 66);
    }

    #[test]
    fn only_the_hint_of_that_slot_removes_without_the_name() {
        let mut r = Registry::with(10);
        assert!(!r.names.remove_found(3), "no lookup yet");
        assert_eq!(r.get("task-3"), Some(3));
        assert!(!r.names.remove_found(4), "the hint is for slot 3");
        assert_eq!(r.get("task-3"), Some(3));
        assert!(r.names.remove_found(3));
        r.held[3] = None;
        assert_eq!(r.get("task-3"), None);
        assert!(!r.names.remove_found(3), "the hint is used up");
        assert_eq!(r.names.len(), 9);
    }

    #[test]
    fn a_stale_hint_removes_the_right_name() {
        let mut r = Registry::with(10);
        // The hint is for task-3; task-7 is removed (by its hash).
        assert_eq!(r.get("task-3"), Some(3));
        r.remove(7);
        assert_eq!(r.get("task-7"), None);
        assert_eq!(r.get("task-3"), Some(3));
        // A hint that outlived a resize: the table grows, buckets move.
        assert_eq!(r.get("task-5"), Some(5));
        for i in 10..1000 {
            r.add(&format!("task-{i}"), i);
        }
        r.remove(5);
        assert_eq!(r.get("task-5"), None);
        assert_eq!(r.names.len(), 998);
        for i in (0..1000).filter(|&i| i != 5 && i != 7) {
            assert_eq!(r.get(&format!("task-{i}")), Some(i), "task-{i}");
        }
    }

    #[test]
    fn a_removal_after_another_lookup_finds_its_own_name() {
        let mut r = Registry::with(4);
        assert_eq!(r.get("task-2"), Some(2));
        r.remove(2);
        // Slot 2 is reused by a new name, maybe in another bucket.
        r.add("other", 2);
        assert_eq!(r.get("task-1"), Some(1));
        r.remove(2);
        assert_eq!(r.get("other"), None);
        assert_eq!(r.get("task-1"), Some(1));
        assert_eq!(r.names.len(), 3);
    }

    #[test]
    fn shrinking_keeps_every_name() {
        let mut r = Registry::with(5000);
        for i in 0..4990 {
            r.remove(i);
        }
        r.names.shrink_to_fit();
        assert_eq!(r.names.len(), 10);
        for i in 4990..5000 {
            assert_eq!(r.get(&format!("task-{i}")), Some(i));
        }
    }
}
