//! Topic names and topic filters: validation, `$share/` parsing and matching. Pure.
//!
//! Owns the rules of section 4.7 (topic names and filters) and 4.8.2 (shared
//! subscriptions). It knows nothing of who subscribed: see `subscriptions.rs`.

use std::fmt;
use std::sync::Arc;

/// Why a topic or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic")]
    Empty,
    #[error("topic longer than {0} bytes")]
    TooLong(usize),
    #[error("topic has more than {0} levels")]
    TooDeep(usize),
    #[error("wildcard in a topic name")]
    WildcardInName,
    #[error("'#' must be the last level and alone in it")]
    BadMultiLevelWildcard,
    #[error("'+' must fill a whole level")]
    BadSingleLevelWildcard,
    #[error("malformed shared subscription")]
    BadShare,
    #[error("malformed queue name in $queue/<name>")]
    BadQueue,
}

impl TopicError {
    /// Over one of Tern's own limits (length, levels), not against the spec: a
    /// well-formed filter this server does not accept (SUBACK 0x8F), where the
    /// other errors make the packet malformed.
    pub fn is_limit(&self) -> bool {
        matches!(self, TopicError::TooLong(_) | TopicError::TooDeep(_))
    }
}

/// Limits applied to every topic and filter (from `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct TopicLimits {
    pub max_levels: usize,
    pub max_len: usize,
}

impl TopicLimits {
    /// No limit beyond the spec's: for what the operator writes (ACL files,
    /// admin requests) and for syntax checks; peers get the configured ones.
    pub const UNLIMITED: TopicLimits = TopicLimits {
        max_levels: usize::MAX,
        max_len: usize::MAX,
    };
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits {
            max_levels: 32,
            max_len: 65535,
        }
    }
}

fn check_size(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    if s.is_empty() {
        // [MQTT-4.7.3-1] topic names and filters are at least one character long.
        return Err(TopicError::Empty);
    }
    if s.len() > limits.max_len {
        return Err(TopicError::TooLong(limits.max_len));
    }
    if s.split('/').count() > limits.max_levels {
        return Err(TopicError::TooDeep(limits.max_levels));
    }
    Ok(())
}

/// Validate a topic name of a PUBLISH or a Will.
pub fn validate_topic_name(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_size(s, limits)?;
    // [MQTT-3.3.2-2] [MQTT-4.7.1-1] wildcards never appear in a topic name.
    if s.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Is `topic` in the `$SYS` tree, the server's own? 4.7.2 advises that
/// `$SYS/` is used by the server for its information: clients may read it but
/// not publish into it, so nothing there can be forged.
pub fn is_sys_topic(topic: &str) -> bool {
    topic
        .strip_prefix("$SYS")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Validate a (non-shared) topic filter.
pub fn validate_filter(s: &str, limits: TopicLimits) -> Result<(), TopicError> {
    check_size(s, limits)?;
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            // [MQTT-4.7.1-2] '#' alone in the last level.
            return Err(TopicError::BadMultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            // [MQTT-4.7.1-3] '+' occupies an entire level.
            return Err(TopicError::BadSingleLevelWildcard);
        }
    }
    Ok(())
}

/// A subscription request's filter, parsed: plain, or a shared subscription
/// `$share/{ShareName}/{filter}` (section 4.8.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FilterSpec {
    pub share_group: Option<Arc<str>>,
    pub filter: Arc<str>,
}

impl FilterSpec {
    /// Parse and validate a filter as sent in SUBSCRIBE / UNSUBSCRIBE.
    pub fn parse(s: &str, limits: TopicLimits) -> Result<FilterSpec, TopicError> {
        if let Some(rest) = s.strip_prefix("$share/") {
            // [MQTT-4.8.2-1] ShareName is at least one character and has no '/',
            // '+' or '#'; [MQTT-4.8.2-2] a filter follows it.
            let (group, filter) = rest.split_once('/').ok_or(TopicError::BadShare)?;
            if group.is_empty() || group.contains(['+', '#']) {
                return Err(TopicError::BadShare);
            }
            validate_filter(filter, limits)?;
            return Ok(FilterSpec {
                share_group: Some(group.into()),
                filter: filter.into(),
            });
        }
        if s == "$share" {
            return Err(TopicError::BadShare);
        }
        validate_filter(s, limits)?;
        Ok(FilterSpec {
            share_group: None,
            filter: s.into(),
        })
    }

    /// Check a filter as sent in SUBSCRIBE / UNSUBSCRIBE against the spec only
    /// (no length or level limit): empty [MQTT-4.7.3-1], `#` not alone in the
    /// last level [MQTT-4.7.1-2], `+` not a whole level [MQTT-4.7.1-3] (3.1.1
    /// numbering; 5.0's [MQTT-4.7.1-1/2]), a `$share/` without a ShareName or a
    /// filter [MQTT-4.8.2-1] [MQTT-4.8.2-2].
    pub fn check_syntax(s: &str) -> Result<(), TopicError> {
        FilterSpec::parse(s, TopicLimits::UNLIMITED).map(drop)
    }

    pub fn is_shared(&self) -> bool {
        self.share_group.is_some()
    }
}

/// A `$queue/` filter of SUBSCRIBE / UNSUBSCRIBE: consume the work queue
/// `name`, and in EMQX's form `$queue/<name>/<filter>` also bind `filter` to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFilter<'a> {
    pub name: &'a str,
    pub bind: Option<&'a str>,
}

/// Parse a `$queue/` filter; None when `s` is not one. The name is one topic
/// level (no wildcards); a filter after it is checked like any other.
pub fn parse_queue_filter(
    s: &str,
    limits: TopicLimits,
) -> Option<Result<QueueFilter<'_>, TopicError>> {
    let rest = s.strip_prefix("$queue/")?;
    let (name, bind) = match rest.split_once('/') {
        Some((n, f)) => (n, Some(f)),
        None => (rest, None),
    };
    if crate::config::queues::valid_queue_name(name).is_err() {
        return Some(Err(TopicError::BadQueue));
    }
    if let Some(f) = bind {
        if let Err(e) = validate_filter(f, limits) {
            return Some(Err(e));
        }
    }
    Some(Ok(QueueFilter { name, bind }))
}

impl fmt::Display for FilterSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.share_group {
            Some(g) => write!(f, "$share/{}/{}", g, self.filter),
            None => f.write_str(&self.filter),
        }
    }
}

/// Does `filter` (already validated) match `topic` (already validated)?
/// The reference implementation that the tries are tested against.
pub fn matches(filter: &str, topic: &str) -> bool {
    // [MQTT-4.7.2-1] a filter starting with a wildcard does not match '$' topics.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: TopicLimits = TopicLimits {
        max_levels: 8,
        max_len: 100,
    };

    #[test]
    fn names() {
        assert!(validate_topic_name("a/b", L).is_ok());
        assert!(validate_topic_name("/", L).is_ok());
        assert_eq!(validate_topic_name("", L), Err(TopicError::Empty));
        assert_eq!(
            validate_topic_name("a/+/b", L),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_topic_name("a/#", L),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            validate_topic_name("1/2/3/4/5/6/7/8/9", L),
            Err(TopicError::TooDeep(8))
        );
        assert_eq!(
            validate_topic_name(&"x".repeat(101), L),
            Err(TopicError::TooLong(100))
        );
    }

    #[test]
    fn sys_tree() {
        for sys in ["$SYS", "$SYS/", "$SYS/broker/uptime"] {
            assert!(is_sys_topic(sys), "{sys}");
        }
        for other in ["$SYSTEM/x", "$sys/x", "a/$SYS/x", "SYS/x", "$share/g/x"] {
            assert!(!is_sys_topic(other), "{other}");
        }
    }

    #[test]
    fn filters() {
        for ok in ["#", "+", "a/#", "+/+", "/+", "a/+/b/#", "sport/tennis/+"] {
            assert!(validate_filter(ok, L).is_ok(), "{ok}");
        }
        for bad in ["a#", "a/#/b", "a/b#", "a+", "+a/b", "##"] {
            assert!(validate_filter(bad, L).is_err(), "{bad}");
        }
    }

    #[test]
    fn shares() {
        let s = FilterSpec::parse("$share/g1/a/+", L).unwrap();
        assert_eq!(s.share_group.as_deref(), Some("g1"));
        assert_eq!(&*s.filter, "a/+");
        assert_eq!(s.to_string(), "$share/g1/a/+");
        for bad in ["$share/", "$share//a", "$share/g", "$share/g+/a", "$share"] {
            assert!(FilterSpec::parse(bad, L).is_err(), "{bad}");
        }
        assert!(!FilterSpec::parse("$SYS/#", L).unwrap().is_shared());
    }

    /// The spec's syntax alone: a filter over Tern's limits passes it (it gets
    /// SUBACK 0x8F), a malformed one fails it however short.
    #[test]
    fn syntax_without_limits() {
        let deep = "a/".repeat(20) + "#";
        assert_eq!(FilterSpec::parse(&deep, L), Err(TopicError::TooDeep(8)));
        assert!(FilterSpec::parse(&deep, L).unwrap_err().is_limit());
        assert!(FilterSpec::check_syntax(&deep).is_ok());
        for bad in [
            "",
            "#/a",
            "a+",
            "a/#/b",
            "$share/g",
            "$share//a",
            "$share/g/",
        ] {
            let e = FilterSpec::check_syntax(bad).unwrap_err();
            assert!(!e.is_limit(), "{bad}: {e}");
        }
    }

    #[test]
    fn matching() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            ("sport/#", "sport", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
        ];
        for (f, t, want) in cases {
            assert_eq!(matches(f, t), want, "{f} vs {t}");
        }
    }

    #[test]
    fn queue_filters() {
        let l = TopicLimits::default();
        assert_eq!(parse_queue_filter("jobs", l), None);
        assert_eq!(
            parse_queue_filter("$queue/jobs", l),
            Some(Ok(QueueFilter {
                name: "jobs",
                bind: None
            }))
        );
        assert_eq!(
            parse_queue_filter("$queue/jobs/sensors/+/temp", l),
            Some(Ok(QueueFilter {
                name: "jobs",
                bind: Some("sensors/+/temp")
            }))
        );
        assert_eq!(
            parse_queue_filter("$queue/", l),
            Some(Err(TopicError::BadQueue))
        );
        assert_eq!(
            parse_queue_filter("$queue/j+b", l),
            Some(Err(TopicError::BadQueue))
        );
        assert!(matches!(
            parse_queue_filter("$queue/jobs/a/#/b", l),
            Some(Err(_))
        ));
    }
}
