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
//! Invariant: the table holds at most one entry per slot, the name of the
//! task in that registry slot. (`Engine::remove` is the one place a task
//! leaves the registry, and it removes the name; a name is inserted for a
//! new task only.) So an entry is known by its slot alone, which makes a
//! remembered bucket safe to trust once its slot matches.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

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

/// One entry: 24 bytes, the hash in what would be padding.
struct Named {
    name: Arc<str>,
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

    /// The bucket holding `name`, if any.
    fn find(&self, name: &str) -> Option<usize> {
        let hash = self.hash(name);
        self.table
            .find_bucket_index(spread(hash), |n| n.hash == hash && *n.name == *name)
    }

    /// The slot of the task holding `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<&Slot> {
        let bucket = self.find(name)?;
        let slot = &self.table.get_bucket(bucket)?.slot;
        self.found.set(Some((*slot, bucket)));
        Some(slot)
    }

    /// Whether a task holds `name`.
    pub(crate) fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Records that the task in `slot` holds `name`, which no task holds.
    pub(crate) fn insert(&mut self, name: Arc<str>, slot: Slot) {
        debug_assert!(self.find(&name).is_none(), "{name} is already held");
        let hash = self.hash(&name);
        self.table
            .insert_unique(spread(hash), Named { name, slot, hash }, |n| spread(n.hash));
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

    /// What `Engine::remove` does: the hint first, else by name.
    fn forget(names: &mut Names, name: &str, slot: Slot) {
        if !names.remove_found(slot) {
            names.remove(name, slot);
        }
    }

    fn names(n: u32) -> Names {
        let mut names = Names::default();
        for i in 0..n {
            names.insert(Arc::from(format!("task-{i}")), i);
        }
        names
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let names = names(100);
        for i in 0..100 {
            assert_eq!(names.get(&format!("task-{i}")), Some(&i));
        }
        assert_eq!(names.get("task-100"), None);
        assert_eq!(names.get("task-"), None);
        assert!(!names.contains_key(""));
    }

    #[test]
    fn removes_after_a_lookup_by_the_bucket_found() {
        let mut names = names(100);
        for i in (0..100).step_by(3) {
            let name = format!("task-{i}");
            assert_eq!(names.get(&name), Some(&i));
            forget(&mut names, &name, i);
            assert_eq!(names.get(&name), None);
        }
        for i in 0..100 {
            let held = names.get(&format!("task-{i}")).is_some();
            assert_eq!(held, i % 3 != 0, "task-{i}");
        }
    }

    #[test]
    fn only_the_hint_of_that_slot_removes_without_the_name() {
        let mut names = names(10);
        assert!(!names.remove_found(3), "no lookup yet");
        assert_eq!(names.get("task-3"), Some(&3));
        assert!(!names.remove_found(4), "the hint is for slot 3");
        assert_eq!(names.get("task-3"), Some(&3));
        assert!(names.remove_found(3));
        assert_eq!(names.get("task-3"), None);
        assert!(!names.remove_found(3), "the hint is used up");
        assert_eq!(names.len(), 9);
    }

    #[test]
    fn a_stale_hint_removes_the_right_name() {
        let mut names = names(10);
        // The hint is for task-3; task-7 is removed (by its hash).
        assert_eq!(names.get("task-3"), Some(&3));
        forget(&mut names, "task-7", 7);
        assert_eq!(names.get("task-7"), None);
        assert_eq!(names.get("task-3"), Some(&3));
        // A hint that outlived a resize: the table grows, buckets move.
        assert_eq!(names.get("task-5"), Some(&5));
        for i in 10..1000 {
            names.insert(Arc::from(format!("task-{i}")), i);
        }
        forget(&mut names, "task-5", 5);
        assert_eq!(names.get("task-5"), None);
        assert_eq!(names.len(), 998);
        for i in (0..1000).filter(|&i| i != 5 && i != 7) {
            assert_eq!(names.get(&format!("task-{i}")), Some(&i), "task-{i}");
        }
    }

    #[test]
    fn a_removal_after_another_lookup_finds_its_own_name() {
        let mut names = names(4);
        assert_eq!(names.get("task-2"), Some(&2));
        forget(&mut names, "task-2", 2);
        // Slot 2 is reused by a new name, maybe in another bucket.
        names.insert(Arc::from("other"), 2);
        assert_eq!(names.get("task-1"), Some(&1));
        forget(&mut names, "other", 2);
        assert_eq!(names.get("other"), None);
        assert_eq!(names.get("task-1"), Some(&1));
        assert_eq!(names.len(), 3);
    }

    #[test]
    fn shrinking_keeps_every_name() {
        let mut names = names(5000);
        for i in 0..4990 {
            forget(&mut names, &format!("task-{i}"), i);
        }
        names.shrink_to_fit();
        assert_eq!(names.len(), 10);
        for i in 4990..5000 {
            assert_eq!(names.get(&format!("task-{i}")), Some(&i));
        }
    }
}
