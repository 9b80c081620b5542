//! A bridge's topic mapping, as Mosquitto's `topic` lines remap it: a filter,
//! a direction, a QoS, and a prefix on each side. Locally the filter is
//! `local_prefix + filter`; on the remote, `remote_prefix + filter`; a topic
//! crossing the bridge swaps one prefix for the other and keeps the rest. Pure.

use crate::protocol::QoS;
use crate::topic::{matches, validate_filter, validate_topic_name, TopicLimits};

/// Which way messages of a mapping cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local messages go to the remote.
    Out,
    /// Remote messages come in (subscribed on the remote).
    In,
    Both,
}

impl Direction {
    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "out" => Some(Direction::Out),
            "in" => Some(Direction::In),
            "both" => Some(Direction::Both),
            _ => None,
        }
    }

    pub fn outgoing(self) -> bool {
        self != Direction::In
    }

    pub fn incoming(self) -> bool {
        self != Direction::Out
    }
}

/// One mapping, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    pub filter: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicMap {
    /// Check a mapping: the filters on both sides must be valid, and a prefix
    /// holds no wildcard (it is a literal part of topic names).
    pub fn new(
        filter: &str,
        direction: Direction,
        qos: QoS,
        local_prefix: &str,
        remote_prefix: &str,
        limits: TopicLimits,
    ) -> Result<TopicMap, String> {
        for (what, prefix) in [
            ("local_prefix", local_prefix),
            ("remote_prefix", remote_prefix),
        ] {
            if prefix.contains(['+', '#']) {
                return Err(format!("{what} {prefix:?} must not contain a wildcard"));
            }
        }
        let m = TopicMap {
            filter: filter.to_owned(),
            direction,
            qos,
            local_prefix: local_prefix.to_owned(),
            remote_prefix: remote_prefix.to_owned(),
        };
        for f in [m.local_filter(), m.remote_filter()] {
            validate_filter(&f, limits).map_err(|e| format!("filter {f:?}: {e}"))?;
        }
        Ok(m)
    }

    /// The filter on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.filter)
    }

    /// The filter on the remote broker.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.filter)
    }

    /// The remote topic for a local one this mapping sends out, if it does.
    pub fn to_remote(&self, local: &str, limits: TopicLimits) -> Option<String> {
        if !self.direction.outgoing() {
            return None;
        }
        swap(
            local,
            &self.local_prefix,
            &self.remote_prefix,
            &self.filter,
            limits,
        )
    }

    /// The local topic for a remote one this mapping brings in, if it does.
    pub fn to_local(&self, remote: &str, limits: TopicLimits) -> Option<String> {
        if !self.direction.incoming() {
            return None;
        }
        swap(
            remote,
            &self.remote_prefix,
            &self.local_prefix,
            &self.filter,
            limits,
        )
    }
}

/// `topic` with prefix `from` replaced by `to`, when the rest matches `filter`
/// and the result is a valid topic name under `limits`.
fn swap(topic: &str, from: &str, to: &str, filter: &str, limits: TopicLimits) -> Option<String> {
    let rest = topic.strip_prefix(from)?;
    if rest.is_empty() || !matches(filter, rest) {
        return None;
    }
    let out = format!("{to}{rest}");
    validate_topic_name(&out, limits).ok()?;
    Some(out)
}

/// The first of `maps` that sends `local` out, with the remote topic and the
/// mapping's QoS.
pub fn outgoing<'a>(
    maps: &'a [TopicMap],
    local: &str,
    limits: TopicLimits,
) -> Option<(String, &'a TopicMap)> {
    maps.iter()
        .find_map(|m| m.to_remote(local, limits).map(|t| (t, m)))
}

/// The first of `maps` that brings `remote` in, with the local topic.
pub fn incoming<'a>(
    maps: &'a [TopicMap],
    remote: &str,
    limits: TopicLimits,
) -> Option<(String, &'a TopicMap)> {
    maps.iter()
        .find_map(|m| m.to_local(remote, limits).map(|t| (t, m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: TopicLimits = TopicLimits {
        max_levels: 32,
        max_len: 1024,
    };

    fn map(filter: &str, d: Direction, local: &str, remote: &str) -> TopicMap {
        TopicMap::new(filter, d, QoS::AtLeastOnce, local, remote, L).expect("valid")
    }

    #[test]
    fn prefixes_are_swapped_and_the_rest_kept() {
        let m = map("sensors/#", Direction::Both, "site/", "fleet/gw1/");
        assert_eq!(m.local_filter(), "site/sensors/#");
        assert_eq!(m.remote_filter(), "fleet/gw1/sensors/#");
        assert_eq!(
            m.to_remote("site/sensors/t1", L).as_deref(),
            Some("fleet/gw1/sensors/t1")
        );
        assert_eq!(
            m.to_local("fleet/gw1/sensors/t1", L).as_deref(),
            Some("site/sensors/t1")
        );
        assert_eq!(m.to_remote("other/sensors/t1", L), None, "prefix missing");
        assert_eq!(
            m.to_remote("site/alarms/x", L),
            None,
            "filter does not match"
        );
    }

    #[test]
    fn direction_decides_what_crosses() {
        let out = map("a/+", Direction::Out, "", "up/");
        assert_eq!(out.to_remote("a/1", L).as_deref(), Some("up/a/1"));
        assert_eq!(out.to_local("up/a/1", L), None);
        let inc = map("a/+", Direction::In, "down/", "");
        assert_eq!(inc.to_local("a/1", L).as_deref(), Some("down/a/1"));
        assert_eq!(inc.to_remote("down/a/1", L), None);
        let maps = [out, inc];
        assert_eq!(
            outgoing(&maps, "a/2", L).map(|(t, _)| t).as_deref(),
            Some("up/a/2")
        );
        assert_eq!(
            incoming(&maps, "a/2", L).map(|(t, _)| t).as_deref(),
            Some("down/a/2")
        );
    }

    #[test]
    fn bad_mappings_are_refused_with_a_reason() {
        let e = TopicMap::new("a/#", Direction::Out, QoS::AtMostOnce, "x/+/", "", L);
        assert!(e.unwrap_err().contains("local_prefix"));
        let e = TopicMap::new("a/#/b", Direction::Out, QoS::AtMostOnce, "", "", L);
        assert!(e.unwrap_err().contains("filter"));
        assert_eq!(Direction::parse("sideways"), None);
        // A topic that would be too long on the other side does not cross.
        let m = map("#", Direction::Out, "", &format!("{}/", "r".repeat(1018)));
        assert_eq!(m.to_remote("abcdefgh", L), None);
    }
}
