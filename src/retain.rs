//! Retained messages: a trie from topic name to the last retained message. Pure.
//!
//! Owns set / replace / clear and the lookup of every retained message matching a
//! (possibly wildcard) filter at subscribe time (section 3.3.1.3). It does not decide
//! whether to send them (Retain Handling is the router's call).

use crate::hash::Map;

struct Node<V> {
    children: Map<Box<str>, Node<V>>,
    value: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Node {
            children: Map::default(),
            value: None,
        }
    }
}

pub struct RetainTree<V> {
    root: Node<V>,
    len: usize,
}

impl<V> Default for RetainTree<V> {
    fn default() -> Self {
        RetainTree {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<V: Clone> RetainTree<V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Store `value` as the retained message of `topic`, replacing any earlier one
    /// [MQTT-3.3.1-5]. Returns the replaced value.
    pub fn set(&mut self, topic: &str, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let old = node.value.replace(value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Clear the retained message of `topic` (a retained PUBLISH with an empty
    /// payload, [MQTT-3.3.1-6]). Empty branches are pruned.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let levels: Vec<&str> = topic.split('/').collect();
        let old = Self::remove_in(&mut self.root, &levels);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    fn remove_in(node: &mut Node<V>, levels: &[&str]) -> Option<V> {
        match levels.split_first() {
            None => node.value.take(),
            Some((first, rest)) => {
                let child = node.children.get_mut(*first)?;
                let old = Self::remove_in(child, rest);
                if child.value.is_none() && child.children.is_empty() {
                    node.children.remove(*first);
                }
                old
            }
        }
    }

    pub fn get(&self, topic: &str) -> Option<&V> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.value.as_ref()
    }

    /// Every retained message whose topic matches `filter` (validated, not shared).
    pub fn matching(&self, filter: &str) -> Vec<V> {
        let mut out = Vec::new();
        let levels: Vec<&str> = filter.split('/').collect();
        Self::collect(&self.root, &levels, true, &mut out);
        out
    }

    fn collect(node: &Node<V>, levels: &[&str], at_root: bool, out: &mut Vec<V>) {
        match levels.split_first() {
            None => out.extend(node.value.iter().cloned()),
            Some((&"#", _)) => {
                // '#' matches the parent level itself and everything below it.
                out.extend(node.value.iter().filter(|_| !at_root).cloned());
                for (name, child) in &node.children {
                    // [MQTT-4.7.2-1] no '$' topic through a leading wildcard.
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    Self::collect_all(child, out);
                }
            }
            Some((&"+", rest)) => {
                for (name, child) in &node.children {
                    if at_root && name.starts_with('$') {
                        continue;
                    }
                    Self::collect(child, rest, false, out);
                }
            }
            Some((first, rest)) => {
                if let Some(child) = node.children.get(*first) {
                    Self::collect(child, rest, false, out);
                }
            }
        }
    }

    fn collect_all(node: &Node<V>, out: &mut Vec<V>) {
        out.extend(node.value.iter().cloned());
        for child in node.children.values() {
            Self::collect_all(child, out);
        }
    }

    /// Visit every retained message (for expiry sweeps and persistence).
    pub fn retain_where(&mut self, mut keep: impl FnMut(&V) -> bool) -> usize {
        let removed = Self::retain_in(&mut self.root, &mut keep);
        self.len -= removed;
        removed
    }

    fn retain_in(node: &mut Node<V>, keep: &mut impl FnMut(&V) -> bool) -> usize {
        let mut removed = 0;
        if node.value.as_ref().is_some_and(|v| !keep(v)) {
            node.value = None;
            removed += 1;
        }
        node.children.retain(|_, child| {
            removed += Self::retain_in(child, keep);
            child.value.is_some() || !child.children.is_empty()
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::matches;

    #[test]
    fn set_replace_clear() {
        let mut r = RetainTree::new();
        assert_eq!(r.set("a/b", 1), None);
        assert_eq!(r.set("a/b", 2), Some(1));
        assert_eq!(r.get("a/b"), Some(&2));
        assert_eq!(r.len(), 1);
        assert_eq!(r.remove("a/b"), Some(2));
        assert_eq!(r.remove("a/b"), None);
        assert!(r.is_empty());
        assert!(r.root.children.is_empty());
    }

    #[test]
    fn wildcard_lookup_agrees_with_reference() {
        let topics = [
            "a", "a/b", "a/b/c", "a//c", "/a", "$SYS/x", "$SYS/x/y", "b/b", "a/c/c",
        ];
        let mut r = RetainTree::new();
        for t in topics {
            r.set(t, t.to_string());
        }
        let filters = [
            "#",
            "+",
            "a/#",
            "a/+",
            "+/b",
            "+/+/c",
            "$SYS/#",
            "$SYS/+",
            "/+",
            "a/b/c",
            "+/#",
            "a/+/#",
            "nothing/#",
        ];
        for f in filters {
            let mut got = r.matching(f);
            got.sort();
            let mut want: Vec<String> = topics
                .iter()
                .filter(|t| matches(f, t))
                .map(|t| t.to_string())
                .collect();
            want.sort();
            assert_eq!(got, want, "filter {f}");
        }
    }

    #[test]
    fn retain_where_prunes() {
        let mut r = RetainTree::new();
        for (i, t) in ["x/1", "x/2", "y"].iter().enumerate() {
            r.set(t, i);
        }
        assert_eq!(r.retain_where(|v| *v == 2), 2);
        assert_eq!(r.len(), 1);
        assert_eq!(r.matching("#"), vec![2]);
        assert!(!r.root.children.contains_key("x"));
    }
}
