//! The subscription index: who subscribes to what, both ways. Pure.
//!
//! The one owner of subscriptions: the trie (`SubscriptionTree`, topic -> who)
//! and each subscriber's own list (who -> filters, for a session's cap, its
//! UNSUBSCRIBE, the ACL sweep and the end of its session) change together
//! here, so they cannot drift apart.

use crate::hash::Map;
use crate::subscriptions::{Matches, SubscriptionTree};
use crate::topic::FilterSpec;
use std::hash::Hash;

pub struct SubscriptionIndex<K, V> {
    tree: SubscriptionTree<K, V>,
    /// Each subscriber's filters; no entry for one with none.
    by_key: Map<K, Map<FilterSpec, V>>,
}

impl<K, V> Default for SubscriptionIndex<K, V> {
    fn default() -> Self {
        SubscriptionIndex {
            tree: SubscriptionTree::default(),
            by_key: Map::default(),
        }
    }
}

impl<K: Clone + Eq + Hash, V: Clone> SubscriptionIndex<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add or replace `key`'s subscription to `spec`. Returns true when it
    /// replaced one ([MQTT-3.8.4-3]: a repeated filter replaces the subscription).
    pub fn add(&mut self, key: &K, spec: FilterSpec, value: V) -> bool {
        self.tree.insert(&spec, key.clone(), value.clone());
        self.by_key
            .entry(key.clone())
            .or_default()
            .insert(spec, value)
            .is_some()
    }

    /// Remove `key`'s subscription to `spec`; returns whether it existed.
    pub fn remove(&mut self, key: &K, spec: &FilterSpec) -> bool {
        let Some(own) = self.by_key.get_mut(key) else {
            return false;
        };
        if own.remove(spec).is_none() {
            return false;
        }
        if own.is_empty() {
            self.by_key.remove(key);
        }
        self.tree.remove(spec, key);
        true
    }

    /// Remove every subscription of `key` (its session ended); returns them.
    pub fn remove_client(&mut self, key: &K) -> Map<FilterSpec, V> {
        let own = self.by_key.remove(key).unwrap_or_default();
        for spec in own.keys() {
            self.tree.remove(spec, key);
        }
        own
    }

    /// `key`'s subscriptions.
    pub fn of(&self, key: &K) -> impl Iterator<Item = (&FilterSpec, &V)> {
        self.by_key.get(key).into_iter().flatten()
    }

    pub fn contains(&self, key: &K, spec: &FilterSpec) -> bool {
        self.by_key.get(key).is_some_and(|m| m.contains_key(spec))
    }

    /// How many subscriptions `key` has.
    pub fn count(&self, key: &K) -> usize {
        self.by_key.get(key).map_or(0, Map::len)
    }

    /// Subscriptions in all (plain and shared memberships).
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// See `SubscriptionTree::matches_into`.
    pub fn matches_into(
        &mut self,
        topic: &str,
        available: impl Fn(&K) -> bool,
        out: &mut Matches<K, V>,
    ) {
        self.tree.matches_into(topic, available, out);
    }

    /// See `SubscriptionTree::pick_shared`.
    pub fn pick_shared(
        &mut self,
        spec: &FilterSpec,
        available: impl Fn(&K) -> bool,
    ) -> Option<(K, V)> {
        self.tree.pick_shared(spec, available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::TopicLimits;

    fn spec(f: &str) -> FilterSpec {
        FilterSpec::parse(f, TopicLimits::default()).expect("valid filter")
    }

    fn topics_for(ix: &mut SubscriptionIndex<&'static str, u8>, topic: &str) -> Vec<&'static str> {
        let mut m = Matches::default();
        ix.matches_into(topic, |_| true, &mut m);
        let mut v: Vec<_> = m.plain.iter().chain(&m.shared).map(|(k, _)| *k).collect();
        v.sort();
        v
    }

    #[test]
    fn the_trie_and_each_subscriber_list_change_together() {
        let mut ix = SubscriptionIndex::new();
        assert!(!ix.add(&"a", spec("t/+"), 1));
        assert!(ix.add(&"a", spec("t/+"), 2), "a repeated filter replaces");
        assert!(!ix.add(&"a", spec("$share/g/t/x"), 1));
        assert!(!ix.add(&"b", spec("t/#"), 0));
        assert_eq!(ix.len(), 3);
        assert_eq!(ix.count(&"a"), 2);
        assert_eq!(
            ix.of(&"a")
                .find(|(s, _)| s.filter.as_ref() == "t/+")
                .map(|(_, v)| *v),
            Some(2)
        );
        assert_eq!(topics_for(&mut ix, "t/x"), vec!["a", "a", "b"]);

        assert!(ix.remove(&"a", &spec("t/+")));
        assert!(!ix.remove(&"a", &spec("t/+")), "already gone");
        assert!(!ix.contains(&"a", &spec("t/+")));
        assert_eq!(topics_for(&mut ix, "t/x"), vec!["a", "b"]);

        let gone = ix.remove_client(&"a");
        assert_eq!(gone.len(), 1);
        assert!(gone.contains_key(&spec("$share/g/t/x")));
        assert_eq!(topics_for(&mut ix, "t/x"), vec!["b"]);
        assert_eq!(ix.count(&"a"), 0);
        assert!(ix.remove_client(&"a").is_empty());

        ix.remove_client(&"b");
        assert!(ix.is_empty());
        assert!(
            ix.by_key.is_empty(),
            "no list kept for a subscriber with none"
        );
    }
}
