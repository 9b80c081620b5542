//! Topic aliases both ways (5.0 section 3.3.2.3.4): the aliases a client sets on
//! its PUBLISHes, up to our Topic Alias Maximum, and the ones we assign on
//! deliveries to it, up to its own. Each table lives exactly as long as its
//! network connection [MQTT-3.3.2-7]. Pure.

use super::close::Close;
use crate::protocol::{Publish, ReasonCode};
use std::collections::HashMap;
use std::sync::Arc;

/// The aliases the client set on its PUBLISHes: alias -> topic. Boxed and
/// made at the first alias: most clients set none, and an empty map inline
/// would cost every connection 48 bytes for its whole life.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // 8 bytes inline, not 48: the point
pub(super) struct InboundAliases(Option<Box<HashMap<u16, String>>>);

impl InboundAliases {
    /// Give `p` the topic of its alias (when it has an alias and no topic), or
    /// record the alias for its topic. `max` is our Topic Alias Maximum.
    pub fn resolve(&mut self, p: &mut Publish, max: u16) -> Result<(), Close> {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(());
        };
        if alias == 0 || alias > max {
            // [MQTT-3.3.2-9/10] alias 0 or above our Topic Alias Maximum.
            return Err(Close::error(
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic alias out of range",
            ));
        }
        if p.topic.is_empty() {
            match self.0.as_ref().and_then(|m| m.get(&alias)) {
                Some(t) => p.topic.clone_from(t),
                None => {
                    // An alias never set is a Protocol Error (5.0 section 3.3.2.3.4).
                    return Err(Close::error(
                        ReasonCode::PROTOCOL_ERROR,
                        "unknown topic alias",
                    ));
                }
            }
        } else {
            self.0
                .get_or_insert_with(Default::default)
                .insert(alias, p.topic.clone());
        }
        Ok(())
    }
}

/// The aliases we assigned on deliveries: topic -> alias, numbered from 1
/// (boxed and made at the first, as `InboundAliases`).
#[derive(Debug)]
pub(super) struct OutboundAliases {
    #[allow(clippy::box_collection)] // as `InboundAliases`
    map: Option<Box<HashMap<Arc<str>, u16>>>,
    /// The client's Topic Alias Maximum, capped by ours (0 for 3.1.1).
    max: u16,
}

/// The alias a delivery goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutAlias {
    /// Assigned before: the topic itself is left out.
    Known(u16),
    /// Assigned now: sent with the topic, which sets it for the client.
    New(u16),
    /// The table is full: the topic alone.
    None,
}

impl OutboundAliases {
    pub fn new(max: u16) -> OutboundAliases {
        OutboundAliases { map: None, max }
    }

    /// The alias for `topic`, assigning the next one while there is room. Each
    /// alias keeps its topic for the connection's life.
    pub fn alias(&mut self, topic: &Arc<str>) -> OutAlias {
        if self.max == 0 {
            return OutAlias::None;
        }
        let map = self.map.get_or_insert_with(Default::default);
        if let Some(&alias) = map.get(topic) {
            OutAlias::Known(alias)
        } else if map.len() < usize::from(self.max) {
            let alias = u16::try_from(map.len() + 1).unwrap_or(u16::MAX);
            map.insert(topic.clone(), alias);
            OutAlias::New(alias)
        } else {
            OutAlias::None
        }
    }

    /// Take back the alias just assigned to `topic` (it was not sent).
    pub fn forget(&mut self, topic: &str) {
        if let Some(map) = &mut self.map {
            map.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PublishProperties, QoS};

    fn publish(topic: &str, alias: Option<u16>) -> Publish {
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties {
                topic_alias: alias,
                ..PublishProperties::default()
            },
            payload: bytes::Bytes::new(),
        }
    }

    fn refusal(r: Result<(), Close>) -> (Option<ReasonCode>, Option<&'static str>) {
        match r {
            Ok(()) => panic!("accepted"),
            Err(c) => (c.reason, c.reason_string),
        }
    }

    #[test]
    fn inbound_alias_is_set_then_used() {
        let mut a = InboundAliases::default();
        let mut p = publish("a/b", Some(2));
        assert!(a.resolve(&mut p, 2).is_ok());
        let mut q = publish("", Some(2));
        assert!(a.resolve(&mut q, 2).is_ok());
        assert_eq!(q.topic, "a/b");
        // Set again: the alias now means the new topic.
        assert!(a.resolve(&mut publish("c", Some(2)), 2).is_ok());
        let mut q = publish("", Some(2));
        assert!(a.resolve(&mut q, 2).is_ok());
        assert_eq!(q.topic, "c");
        // Without an alias nothing changes.
        let mut q = publish("d", None);
        assert!(a.resolve(&mut q, 2).is_ok());
        assert_eq!(q.topic, "d");
    }

    #[test]
    fn inbound_alias_out_of_range_or_unknown_is_refused() {
        let mut a = InboundAliases::default();
        for alias in [0, 3] {
            assert_eq!(
                refusal(a.resolve(&mut publish("t", Some(alias)), 2)),
                (
                    Some(ReasonCode::TOPIC_ALIAS_INVALID),
                    Some("topic alias out of range")
                )
            );
        }
        assert_eq!(
            refusal(a.resolve(&mut publish("", Some(1)), 2)),
            (
                Some(ReasonCode::PROTOCOL_ERROR),
                Some("unknown topic alias")
            )
        );
    }

    #[test]
    fn outbound_aliases_are_numbered_up_to_the_maximum() {
        let t = |s: &str| -> Arc<str> { Arc::from(s) };
        let mut a = OutboundAliases::new(2);
        assert_eq!(a.alias(&t("a")), OutAlias::New(1));
        assert_eq!(a.alias(&t("b")), OutAlias::New(2));
        assert_eq!(a.alias(&t("a")), OutAlias::Known(1));
        assert_eq!(a.alias(&t("c")), OutAlias::None);
        a.forget("b");
        assert_eq!(a.alias(&t("c")), OutAlias::New(2));
        assert_eq!(OutboundAliases::new(0).alias(&t("a")), OutAlias::None);
    }
}
