//! The hash maps used for broker state keyed by what peers send (client ids, topic
//! levels): foldhash with a per-process random seed. SipHash (std's default) showed
//! up at ~6% of the broker's CPU under load; foldhash is several times faster and,
//! seeded randomly, still resists precomputed collision floods.

pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
pub type Set<K> = std::collections::HashSet<K, foldhash::quality::RandomState>;
