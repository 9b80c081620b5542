//! Retained messages: a trie from topic name to the last retained message. Pure.
//!
//! Owns set / replace / clear, the lookup of every retained message matching a
//! (possibly wildcard) filter at subscribe time (section 3.3.1.3), and the
//! ordered, resumable walk the admin listing pages through (`page`). It does not
//! decide whether to send them (Retain Handling is the router's call).

use crate::hash::Map;
use std::cmp::Ordering;

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

/// One page of an ordered walk (`RetainTree::page`): where it starts, what it
/// lists, and how much it may do.
#[derive(Debug, Clone, Copy)]
pub struct PageQuery<'q> {
    /// List only topics after this one (level order, see `page`).
    pub after: Option<&'q str>,
    /// List only topics this (validated, non-shared) filter matches, with the
    /// subscription rules: a leading wildcard does not match `$` topics
    /// [MQTT-4.7.2-1].
    pub filter: Option<&'q str>,
    /// Leave out the `$SYS` tree, unless the filter names it (a first level
    /// `$SYS`, which asks for it in so many words).
    pub skip_sys: bool,
    /// Entries at most (at least 1).
    pub limit: usize,
    /// Nodes (and children scanned) past the cursor the walk may look at
    /// before it stops with a short page: a sparse filter over a large tree
    /// costs several requests, never one long one.
    pub budget: usize,
}

/// What `page` found: `(topic, value)` in order, and where the next page
/// starts (None: the walk reached the end).
#[derive(Debug, PartialEq, Eq)]
pub struct Page<'t, V> {
    pub entries: Vec<(String, &'t V)>,
    pub next_after: Option<String>,
}

/// Topic order of the listing: level by level, each level by its bytes, a
/// topic before the topics below it (`a`, `a/b`, `a/c`, `a-b`). This is the
/// order of a walk of the trie with each node's children sorted, which lets a
/// page start at its cursor without visiting what comes before it.
pub fn level_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

impl<V> RetainTree<V> {
    /// Up to `q.limit` retained messages in `level_order` after `q.after`,
    /// those `keep` refuses skipped (the router's expired ones).
    ///
    /// Cost: children live in hash maps, so a node's children cannot be
    /// taken in order without looking at all of them. The walk goes down the
    /// cursor's path (scanning the children of each node on it: the tree's
    /// fan-out along one path, not its size), then visits what follows in
    /// order: of the children of a node it sorts only as many as the page can
    /// still take, and it stops after `q.budget` nodes. So a page costs about
    /// its fan-out plus its own size, not the number of retained messages,
    /// and copies nothing but the page's topics.
    pub fn page<'t>(&'t self, q: PageQuery<'_>, keep: impl Fn(&V) -> bool) -> Page<'t, V> {
        let after: Option<Vec<&str>> = q.after.map(|a| a.split('/').collect());
        let filter: Option<Vec<&str>> = q.filter.map(|f| f.split('/').collect());
        let mut walk = Walk {
            skip_sys: q.skip_sys,
            limit: q.limit.max(1),
            budget: q.budget,
            keep,
            path: Vec::new(),
            entries: Vec::new(),
            work: 0,
            stop: None,
        };
        walk.visit(&self.root, after.as_deref(), filter.as_deref());
        Page {
            entries: walk.entries,
            next_after: walk.stop,
        }
    }
}

/// The state of one `page` walk.
struct Walk<'t, V, K> {
    skip_sys: bool,
    limit: usize,
    budget: usize,
    keep: K,
    /// The levels of the node being visited.
    path: Vec<&'t str>,
    entries: Vec<(String, &'t V)>,
    /// Nodes visited and children scanned past the cursor.
    work: usize,
    /// Set when the walk stops early: the cursor of the next page (the topic
    /// of the last node whose own value was dealt with).
    stop: Option<String>,
}

impl<'t, V, K: Fn(&V) -> bool> Walk<'t, V, K> {
    /// Visit `node` (at `self.path`) and what lies below it, in order.
    /// `bound`: Some(the cursor's levels left) while on the cursor's path,
    /// None once past it. `filter`: the filter's levels left, None for no
    /// filter.
    fn visit(&mut self, node: &'t Node<V>, bound: Option<&[&str]>, filter: Option<&[&str]>) {
        let at_root = self.path.is_empty();
        // On the cursor's path this node's topic is the cursor or a prefix of
        // it: not after it. The root holds no value (a topic has a level).
        if bound.is_none() && !at_root {
            let matched = match filter {
                None | Some([]) | Some(["#"]) => true,
                Some(_) => false,
            };
            if let Some(v) = node.value.as_ref().filter(|v| matched && (self.keep)(v)) {
                let topic = self.path.join("/");
                self.entries.push((topic, v));
                if self.entries.len() >= self.limit {
                    self.stop = self.entries.last().map(|(t, _)| t.clone());
                    return;
                }
            }
            self.work += 1;
            if self.work >= self.budget {
                self.stop = Some(self.path.join("/"));
                return;
            }
        }
        // The first level a child needs to be visited at all, and the cursor
        // left for the child that is on the cursor's path.
        let (low, below) = match bound {
            Some([first, rest @ ..]) => (Some(*first), rest),
            // The node is the cursor itself: everything below comes after it.
            _ => (None, &[][..]),
        };
        let child_bound = |name: &str| match low {
            Some(l) if name == l => Some(below),
            _ => None,
        };
        let (wanted, child_filter): (Option<&str>, Option<&[&str]>) = match filter {
            None => (None, None),
            // Nothing below a node matches a filter that ends there.
            Some([]) => return,
            Some(["#"]) => (None, filter),
            Some(["+", rest @ ..]) => (None, Some(rest)),
            Some([level, rest @ ..]) => (Some(*level), Some(rest)),
        };
        if let Some(level) = wanted {
            // A literal level: one child, looked up.
            if low.is_some_and(|l| level < l) {
                return;
            }
            if let Some((name, child)) = node.children.get_key_value(level) {
                if bound.is_none() {
                    self.work += 1;
                }
                self.descend(name, child, child_bound(name), child_filter);
            }
            return;
        }
        let wildcard = filter.is_some();
        let mut candidates: Vec<(&'t str, &'t Node<V>)> = node
            .children
            .iter()
            .map(|(name, child)| (&**name, child))
            .filter(|(name, _)| low.is_none_or(|l| *name >= l))
            .filter(|(name, _)| {
                // [MQTT-4.7.2-1] no `$` topic through a leading wildcard, and
                // `$SYS` only when asked for.
                !(at_root
                    && (wildcard && name.starts_with('$') || self.skip_sys && *name == "$SYS"))
            })
            .collect();
        if bound.is_none() {
            self.work += node.children.len();
        }
        let mut rest = &mut candidates[..];
        while !rest.is_empty() {
            // Each child holds at least one value (empty branches are
            // pruned), so sorting as many as the page still takes is usually
            // enough; a filter, or values `keep` refuses, may need another
            // round.
            let take = self
                .limit
                .saturating_sub(self.entries.len())
                .clamp(1, rest.len());
            if take < rest.len() {
                rest.select_nth_unstable_by(take - 1, |a, b| a.0.cmp(b.0));
            }
            let (now, later) = std::mem::take(&mut rest).split_at_mut(take);
            now.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for &(name, child) in now.iter() {
                self.descend(name, child, child_bound(name), child_filter);
                if self.stop.is_some() {
                    return;
                }
            }
            rest = later;
        }
    }

    fn descend(
        &mut self,
        name: &'t str,
        child: &'t Node<V>,
        bound: Option<&[&str]>,
        filter: Option<&[&str]>,
    ) {
        self.path.push(name);
        self.visit(child, bound, filter);
        self.path.pop();
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

    /// Every page of a listing, followed to the end: the entries in order and
    /// how many requests it took.
    fn all_pages(
        r: &RetainTree<String>,
        filter: Option<&str>,
        skip_sys: bool,
        limit: usize,
        budget: usize,
    ) -> (Vec<String>, usize) {
        let (mut out, mut after, mut requests) = (Vec::new(), None::<String>, 0);
        loop {
            requests += 1;
            assert!(requests < 10_000, "no progress");
            let p = r.page(
                PageQuery {
                    after: after.as_deref(),
                    filter,
                    skip_sys,
                    limit,
                    budget,
                },
                |_| true,
            );
            assert!(p.entries.len() <= limit);
            for (t, v) in &p.entries {
                assert_eq!(t, *v, "an entry's topic is its value's");
                out.push(t.clone());
            }
            match p.next_after {
                Some(n) => {
                    // The cursor moves forward, and is at or after the last
                    // entry given.
                    if let Some(a) = &after {
                        assert_eq!(level_order(&n, a), Ordering::Greater, "{n} after {a}");
                    }
                    if let Some((t, _)) = p.entries.last() {
                        assert_ne!(level_order(&n, t), Ordering::Less);
                    }
                    after = Some(n);
                }
                None => return (out, requests),
            }
        }
    }

    /// What a listing must return, by brute force over `topics`.
    fn reference(topics: &[String], filter: Option<&str>, skip_sys: bool) -> Vec<String> {
        let named_sys = filter.is_some_and(|f| f.split('/').next() == Some("$SYS"));
        let mut want: Vec<String> = topics
            .iter()
            .filter(|t| filter.is_none_or(|f| matches(f, t)))
            .filter(|t| !(skip_sys && !named_sys && crate::topic::is_sys_topic(t)))
            .cloned()
            .collect();
        want.sort_by(|a, b| level_order(a, b));
        want.dedup();
        want
    }

    /// A few thousand topics of up to 4 levels over a small alphabet (so
    /// levels repeat, prefixes and empty levels occur), plus the cases that
    /// tell level order from string order.
    fn sample_topics() -> Vec<String> {
        let mut topics: Vec<String> = [
            "a", "a/b", "a-b", "a/b/c", "a//c", "/a", "a/", "$SYS", "$SYS/x", "$SYS/x/y",
            "$other/y", "b", "a0", "a/b-c", "a/b/c/d",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let alphabet = ["", "a", "b", "ab", "a-b", "$SYS", "z", "0"];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..3_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let depth = 1 + (x % 4) as usize;
            let levels: Vec<&str> = (0..depth)
                .map(|i| alphabet[((x >> (8 + 3 * i)) % alphabet.len() as u64) as usize])
                .collect();
            topics.push(levels.join("/"));
        }
        topics
    }

    #[test]
    fn level_order_puts_a_topic_before_its_subtopics() {
        let mut v = vec!["a-b", "a/b", "a", "a/c", "a0", "a//x", "/"];
        v.sort_by(|a, b| level_order(a, b));
        assert_eq!(v, ["/", "a", "a//x", "a/b", "a/c", "a-b", "a0"]);
    }

    #[test]
    fn pages_agree_with_a_sorted_filtered_list() {
        let topics = sample_topics();
        let mut r = RetainTree::new();
        for t in &topics {
            r.set(t, t.clone());
        }
        let filters = [
            None,
            Some("#"),
            Some("a/#"),
            Some("+"),
            Some("+/b"),
            Some("a/+/#"),
            Some("+/+/+/+"),
            Some("$SYS/#"),
            Some("$SYS/+"),
            Some("a/b"),
            Some("z/#"),
            Some("nothing/here"),
            Some("/#"),
        ];
        for filter in filters {
            for skip_sys in [true, false] {
                let want = reference(&topics, filter, skip_sys);
                for (limit, budget) in
                    [(1, usize::MAX), (7, usize::MAX), (1000, 1_000_000), (50, 3)]
                {
                    let (got, requests) = all_pages(&r, filter, skip_sys, limit, budget);
                    assert_eq!(
                        got, want,
                        "filter {filter:?} skip_sys {skip_sys} limit {limit} budget {budget}"
                    );
                    if budget == usize::MAX {
                        // Full pages until the end (the last may be empty).
                        assert!(requests <= want.len() / limit + 2, "{requests} requests");
                    }
                }
            }
        }
    }

    #[test]
    fn a_page_starts_after_any_cursor_and_skips_what_keep_refuses() {
        let mut r = RetainTree::new();
        for (i, t) in ["a", "a/b", "a/b/c", "a-b", "b", "b/x"].iter().enumerate() {
            r.set(t, i);
        }
        let q = |after| PageQuery {
            after,
            filter: None,
            skip_sys: true,
            limit: 3,
            budget: usize::MAX,
        };
        let topics = |p: Page<'_, usize>| -> (Vec<String>, Option<String>) {
            (
                p.entries.into_iter().map(|(t, _)| t).collect(),
                p.next_after,
            )
        };
        assert_eq!(
            topics(r.page(q(None), |_| true)),
            (
                vec!["a".into(), "a/b".into(), "a/b/c".into()],
                Some("a/b/c".into())
            )
        );
        // A cursor that is no retained topic (gone since, or never there).
        assert_eq!(
            topics(r.page(q(Some("a/a")), |_| true)),
            (
                vec!["a/b".into(), "a/b/c".into(), "a-b".into()],
                Some("a-b".into())
            )
        );
        assert_eq!(
            topics(r.page(q(Some("a/zzz")), |v| *v != 4)),
            (vec!["a-b".into(), "b/x".into()], None)
        );
        assert_eq!(topics(r.page(q(Some("c")), |_| true)), (vec![], None));
    }

    /// A filter that matches nothing in a large tree: no one request walks
    /// it all, each one moves the cursor on, and the last says it is done.
    #[test]
    fn the_budget_splits_a_long_walk_into_short_pages() {
        let mut r = RetainTree::new();
        for i in 0..1_000 {
            let t = format!("t/{i:04}");
            r.set(&t, t.clone());
        }
        let (got, requests) = all_pages(&r, Some("+/+/never"), true, 100, 50);
        assert!(got.is_empty());
        assert!((15..=25).contains(&requests), "{requests} requests");
        let (got, requests) = all_pages(&r, Some("+/+/never"), true, 100, usize::MAX);
        assert!(got.is_empty());
        assert_eq!(requests, 1);
    }
}
