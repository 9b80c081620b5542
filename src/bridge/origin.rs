//! Which Tern a bridged message passed through first, so that a copy coming
//! back is known. A Tern's bridges stamp what they send out and what they
//! bring in with the user property `tern-origin = <node id>` (kept when one is
//! there); a PUBLISH that arrives carrying this broker's own id, from a client
//! or from a bridge, is a copy of a message that already passed here, and is
//! acknowledged and dropped (counted). That breaks loops where the path back
//! keeps MQTT 5 user properties (Mosquitto's v5 bridges do) even when the
//! other broker's bridge does not identify itself; over 3.1.1 the bridge flag
//! in the CONNECT does that job (see `router::came_through_a_bridge`).
//!
//! The node id is random, made once and kept in the data directory
//! (`node-id`), so a copy still travelling during a restart is known after it.

use crate::protocol::UserProperties;
use std::path::Path;

pub const ORIGIN: &str = "tern-origin";

/// This broker's id: read from `dir/node-id`, made there when missing; with
/// no directory (an in-memory broker) a new one each start.
pub fn node_id(dir: Option<&Path>) -> std::io::Result<String> {
    let Some(dir) = dir else {
        return Ok(random_id());
    };
    let path = dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if valid(s.trim()) => Ok(s.trim().to_string()),
        Ok(_) | Err(_) => {
            let id = random_id();
            std::fs::create_dir_all(dir)?;
            std::fs::write(&path, format!("{id}\n"))?;
            Ok(id)
        }
    }
}

fn valid(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: the clock and the process id still make two
        // brokers' ids differ.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Does a message with these properties carry `id` as its origin?
pub fn is_echo(props: &UserProperties, id: &str) -> bool {
    props.iter().any(|(k, v)| k == ORIGIN && v == id)
}

/// Has it an origin already?
pub fn has_origin(props: &UserProperties) -> bool {
    props.iter().any(|(k, _)| k == ORIGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_kept_in_the_data_dir_and_echoes_are_known() {
        let dir = tempfile::tempdir().expect("dir");
        let a = node_id(Some(dir.path())).expect("made");
        assert!(valid(&a), "{a}");
        assert_eq!(node_id(Some(dir.path())).expect("read"), a);
        assert_ne!(node_id(None).expect("random"), a);
        let mut b = crate::protocol::UserPropertiesBuilder::default();
        b.push("x", "1");
        b.push(ORIGIN, &a);
        let props = b.build();
        assert!(is_echo(&props, &a));
        assert!(!is_echo(&props, "0123456789abcdef"));
        assert!(has_origin(&props));
        assert!(!has_origin(&UserProperties::default()));
    }
}
