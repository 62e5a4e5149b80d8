//! Connections counted per key (a source address, a certificate), for the per-address and
//! per-identity limits (`limits.max_connections_per_ip`, `limits.max_connections_per_identity`).
//!
//! A [`Slot`] is held for a connection's whole life and gives its place back when dropped; a
//! key whose count falls to zero leaves the map, so the map holds only keys with live
//! connections. A limit of 0 is no limit, and then nothing is counted at all.

use std::hash::Hash;
use std::sync::Arc;

use dashmap::DashMap;

/// Live connections per key, at most `max` each.
pub(crate) struct PerKey<K: Eq + Hash> {
    counts: DashMap<K, usize>,
    max: usize,
}

/// One connection's place under its key's limit.
#[must_use = "the place is given back when the slot is dropped"]
pub(crate) struct Slot<K: Eq + Hash + Clone> {
    held: Option<(Arc<PerKey<K>>, K)>,
}

impl<K: Eq + Hash + Clone> PerKey<K> {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PerKey { counts: DashMap::new(), max })
    }

    /// A place for one more connection of `key`, or `None` when it has `max` already.
    pub(crate) fn acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        if self.max == 0 {
            return Some(Slot { held: None });
        }
        let mut count = self.counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        drop(count);
        Some(Slot { held: Some((Arc::clone(self), key)) })
    }

    fn release(&self, key: &K) {
        if let Some(mut count) = self.counts.get_mut(key) {
            *count = count.saturating_sub(1);
        }
        // The guard above is gone: remove_if locks the shard itself.
        self.counts.remove_if(key, |_, count| *count == 0);
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Some((owner, key)) = self.held.take() {
            owner.release(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_key_and_given_back() {
        let per = PerKey::new(2);
        let a1 = per.acquire("a").unwrap();
        let _a2 = per.acquire("a").unwrap();
        assert!(per.acquire("a").is_none(), "a third for the same key is refused");
        let _b = per.acquire("b").unwrap();
        drop(a1);
        let _a3 = per.acquire("a").unwrap();
        assert_eq!(per.counts.len(), 2);
    }

    #[test]
    fn keys_without_connections_leave_the_map_and_zero_counts_nothing() {
        let per = PerKey::new(1);
        drop(per.acquire(7).unwrap());
        assert!(per.counts.is_empty());
        let unlimited = PerKey::new(0);
        let slots: Vec<_> = (0..100).map(|_| unlimited.acquire(1).unwrap()).collect();
        assert_eq!(slots.len(), 100);
        assert!(unlimited.counts.is_empty(), "nothing is counted without a limit");
    }
}
