//! The subscription trie: topic filter -> subscribers, plus shared-subscription groups.
//! Pure.
//!
//! Owns matching a topic against every filter at once and choosing one member of each
//! matching `$share` group. It knows nothing of sessions or sockets: subscribers are
//! opaque keys `K` with a value `V` (the subscription options), and the caller says
//! which keys are available for a shared delivery.

use crate::hash::Map;
use crate::topic::FilterSpec;
use std::hash::Hash;
use std::sync::Arc;

struct SharedGroup<K, V> {
    members: Vec<(K, V)>,
    /// Round-robin cursor: index of the member that gets the next message.
    next: usize,
}

impl<K: Clone, V: Clone> SharedGroup<K, V> {
    /// The next member in turn that is `available`, else the next in turn (its
    /// session queues the message); moves the cursor past it.
    fn pick(&mut self, available: &impl Fn(&K) -> bool) -> Option<(K, V)> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        let pick = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.members.get(i).is_some_and(|(k, _)| available(k)))
            .unwrap_or(start);
        self.next = (pick + 1) % n;
        self.members.get(pick).cloned()
    }
}

struct Node<K, V> {
    /// Children by level text; "+" and "#" are children like any other level.
    children: Map<Box<str>, Node<K, V>>,
    subscribers: Map<K, V>,
    shared: Map<Arc<str>, SharedGroup<K, V>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: Map::default(),
            subscribers: Map::default(),
            shared: Map::default(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.shared.is_empty()
    }
}

/// The result of matching one topic.
#[derive(Debug)]
pub struct Matches<K, V> {
    /// Every non-shared subscription that matches; a client may appear several times
    /// when several of its filters match (the router merges them).
    pub plain: Vec<(K, V)>,
    /// One chosen member per matching shared group.
    pub shared: Vec<(K, V)>,
}

impl<K, V> Default for Matches<K, V> {
    fn default() -> Self {
        Matches {
            plain: Vec::new(),
            shared: Vec::new(),
        }
    }
}

pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

impl<K, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        SubscriptionTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<K: Clone + Eq + Hash, V: Clone> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of subscriptions (plain + shared memberships).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add or replace `key`'s subscription to `spec`. Returns true when it replaced an
    /// existing one ([MQTT-3.8.4-3]: a repeated filter replaces the subscription).
    pub fn insert(&mut self, spec: &FilterSpec, key: K, value: V) -> bool {
        let mut node = &mut self.root;
        for level in spec.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let replaced = match &spec.share_group {
            None => node.subscribers.insert(key, value).is_some(),
            Some(group) => {
                let g = node
                    .shared
                    .entry(group.clone())
                    .or_insert_with(|| SharedGroup {
                        members: Vec::new(),
                        next: 0,
                    });
                if let Some(m) = g.members.iter_mut().find(|(k, _)| *k == key) {
                    m.1 = value;
                    true
                } else {
                    g.members.push((key, value));
                    false
                }
            }
        };
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Remove `key`'s subscription to `spec`. Returns whether it existed. Empty nodes
    /// are pruned so the trie never keeps memory for filters nobody holds.
    pub fn remove(&mut self, spec: &FilterSpec, key: &K) -> bool {
        let levels: Vec<&str> = spec.filter.split('/').collect();
        let removed = Self::remove_in(&mut self.root, &levels, spec, key);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_in(node: &mut Node<K, V>, levels: &[&str], spec: &FilterSpec, key: &K) -> bool {
        match levels.split_first() {
            None => match &spec.share_group {
                None => node.subscribers.remove(key).is_some(),
                Some(group) => {
                    let Some(g) = node.shared.get_mut(group) else {
                        return false;
                    };
                    let Some(pos) = g.members.iter().position(|(k, _)| k == key) else {
                        return false;
                    };
                    g.members.remove(pos);
                    if g.members.is_empty() {
                        node.shared.remove(group);
                    } else if g.next > pos {
                        g.next -= 1;
                    }
                    true
                }
            },
            Some((first, rest)) => {
                let Some(child) = node.children.get_mut(*first) else {
                    return false;
                };
                let removed = Self::remove_in(child, rest, spec, key);
                if removed && child.is_empty() {
                    node.children.remove(*first);
                }
                removed
            }
        }
    }

    /// Every subscription matching `topic`. For each matching shared group one member
    /// is chosen round-robin among those `available` says can take it now; if none
    /// is available the next member in turn gets it (its session queues it).
    pub fn matches(&mut self, topic: &str, available: impl Fn(&K) -> bool) -> Matches<K, V> {
        let mut out = Matches::default();
        self.matches_into(topic, available, &mut out);
        out
    }

    /// `matches` into caller-owned buffers (cleared first), so the hot path reuses
    /// their capacity instead of allocating per message.
    pub fn matches_into(
        &mut self,
        topic: &str,
        available: impl Fn(&K) -> bool,
        out: &mut Matches<K, V>,
    ) {
        out.plain.clear();
        out.shared.clear();
        // [MQTT-4.7.2-1] wildcards at the first level do not match '$' topics.
        let dollar = topic.starts_with('$');
        Self::collect(&mut self.root, Some(topic), dollar, &available, out);
    }

    fn take_node(node: &mut Node<K, V>, available: &impl Fn(&K) -> bool, out: &mut Matches<K, V>) {
        out.plain
            .extend(node.subscribers.iter().map(|(k, v)| (k.clone(), v.clone())));
        for g in node.shared.values_mut() {
            if let Some(m) = g.pick(available) {
                out.shared.push(m);
            }
        }
    }

    /// One member of the shared group `spec` names, chosen as for a message
    /// (round-robin, preferring `available` members); None when the group has no
    /// members left.
    pub fn pick_shared(
        &mut self,
        spec: &FilterSpec,
        available: impl Fn(&K) -> bool,
    ) -> Option<(K, V)> {
        let group = spec.share_group.as_ref()?;
        let mut node = &mut self.root;
        for level in spec.filter.split('/') {
            node = node.children.get_mut(level)?;
        }
        node.shared.get_mut(group)?.pick(&available)
    }

    /// Walk the levels of `rest` (None once every level is consumed) without
    /// collecting them.
    fn collect(
        node: &mut Node<K, V>,
        rest: Option<&str>,
        no_wildcards: bool,
        available: &impl Fn(&K) -> bool,
        out: &mut Matches<K, V>,
    ) {
        if !no_wildcards {
            // '#' also matches the parent level: "a/#" matches "a" [MQTT-4.7.1-2].
            if let Some(hash) = node.children.get_mut("#") {
                Self::take_node(hash, available, out);
            }
        }
        let Some(rest) = rest else {
            Self::take_node(node, available, out);
            return;
        };
        let (first, tail) = match rest.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (rest, None),
        };
        if let Some(child) = node.children.get_mut(first) {
            Self::collect(child, tail, false, available, out);
        }
        if !no_wildcards {
            if let Some(plus) = node.children.get_mut("+") {
                Self::collect(plus, tail, false, available, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::{matches, TopicLimits};

    fn spec(s: &str) -> FilterSpec {
        FilterSpec::parse(s, TopicLimits::default()).unwrap()
    }

    fn plain_keys(t: &mut SubscriptionTree<u32, ()>, topic: &str) -> Vec<u32> {
        let mut v: Vec<u32> = t
            .matches(topic, |_| true)
            .plain
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn insert_match_remove() {
        let mut t = SubscriptionTree::new();
        assert!(!t.insert(&spec("a/+/c"), 1, ()));
        assert!(t.insert(&spec("a/+/c"), 1, ()));
        t.insert(&spec("a/#"), 2, ());
        t.insert(&spec("#"), 3, ());
        t.insert(&spec("a/b/c"), 4, ());
        assert_eq!(t.len(), 4);
        assert_eq!(plain_keys(&mut t, "a/b/c"), vec![1, 2, 3, 4]);
        assert_eq!(plain_keys(&mut t, "a"), vec![2, 3]);
        assert_eq!(plain_keys(&mut t, "$SYS/a"), Vec::<u32>::new());
        assert!(t.remove(&spec("a/+/c"), &1));
        assert!(!t.remove(&spec("a/+/c"), &1));
        assert_eq!(plain_keys(&mut t, "a/b/c"), vec![2, 3, 4]);
        for (f, k) in [("a/#", 2), ("#", 3), ("a/b/c", 4)] {
            assert!(t.remove(&spec(f), &k));
        }
        assert!(t.is_empty());
        assert!(t.root.is_empty(), "trie must be pruned");
    }

    #[test]
    fn shared_round_robin_and_availability() {
        let mut t: SubscriptionTree<u32, ()> = SubscriptionTree::new();
        for k in 1..=3 {
            t.insert(&spec("$share/g/x/+"), k, ());
        }
        t.insert(&spec("$share/h/x/y"), 9, ());
        let mut got = Vec::new();
        for _ in 0..6 {
            let m = t.matches("x/y", |_| true);
            assert!(m.plain.is_empty());
            assert_eq!(m.shared.len(), 2);
            got.push(m.shared.iter().find(|(k, _)| *k != 9).unwrap().0);
        }
        assert_eq!(got, vec![1, 2, 3, 1, 2, 3]);
        // Only member 3 available: it gets every message.
        for _ in 0..3 {
            let m = t.matches("x/y", |k| *k == 3 || *k == 9);
            assert!(m.shared.iter().any(|(k, _)| *k == 3));
        }
        assert!(t.remove(&spec("$share/g/x/+"), &2));
        assert_eq!(t.len(), 3);
    }

    /// Property test against the naive matcher in `topic.rs`, with a fixed-seed PRNG.
    #[test]
    fn trie_agrees_with_reference() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let words = ["a", "b", "c", "$SYS", ""];
        let mut filters = Vec::new();
        for _ in 0..300 {
            let depth = 1 + rnd(4);
            let mut levels = Vec::new();
            for i in 0..depth {
                let r = rnd(10);
                if r < 2 {
                    levels.push("+".to_string());
                } else if r == 2 && i == depth - 1 {
                    levels.push("#".to_string());
                } else {
                    levels.push(words[rnd(words.len() as u64) as usize].to_string());
                }
            }
            let f = levels.join("/");
            // A lone empty level is not a valid filter [MQTT-4.7.3-1].
            if !f.is_empty() {
                filters.push(f);
            }
        }
        let mut t = SubscriptionTree::new();
        for (i, f) in filters.iter().enumerate() {
            t.insert(&spec(f), i as u32, ());
        }
        for _ in 0..2000 {
            let depth = 1 + rnd(4);
            let topic: Vec<&str> = (0..depth)
                .map(|_| words[rnd(words.len() as u64) as usize])
                .collect();
            let topic = topic.join("/");
            if topic.is_empty() {
                continue;
            }
            let mut want: Vec<u32> = filters
                .iter()
                .enumerate()
                .filter(|(_, f)| matches(f, &topic))
                .map(|(i, _)| i as u32)
                .collect();
            want.sort();
            assert_eq!(plain_keys(&mut t, &topic), want, "topic {topic:?}");
        }
    }
}
