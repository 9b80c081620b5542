//! Mosquitto ACL files: `user` / `topic` / `pattern` lines, and the publish, read
//! and subscribe decisions. Pure; `$share/` prefixes are stripped by the caller
//! before `Acl::can_subscribe`.

use crate::hash::Map;
use crate::topic::{validate_filter, TopicLimits};

use super::{file_error, FileError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

/// One piece of a pattern level: text, or a value filled in per client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

/// One level of a rule's topic filter, split once at parse time so a check walks
/// the topic without allocating (delivery checks run per message per receiver).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// `#`
    Multi,
    /// `+`
    Single,
    Literal(String),
    /// A `pattern` level holding `%c` or `%u`.
    Pattern(Vec<Piece>),
}

impl Level {
    fn is_wildcard(&self) -> bool {
        matches!(self, Level::Multi | Level::Single)
    }
}

#[derive(Debug, Clone)]
struct Rule {
    access: Access,
    levels: Vec<Level>,
    uses_client_id: bool,
    uses_username: bool,
}

/// The client a decision is for. A value that is unusable in a pattern (missing,
/// empty, or holding '/', '+' or '#' that would change the filter's shape) is None.
struct Who<'a> {
    has_username: bool,
    username: Option<&'a str>,
    client_id: Option<&'a str>,
}

fn usable(s: &str) -> Option<&str> {
    (!s.is_empty() && !s.contains(['/', '+', '#'])).then_some(s)
}

impl<'a> Who<'a> {
    fn new(username: Option<&'a str>, client_id: &'a str) -> Who<'a> {
        Who {
            has_username: username.is_some(),
            username: username.and_then(usable),
            client_id: usable(client_id),
        }
    }
}

/// How a rule applies to a client.
enum Bound {
    /// Check its filter.
    Yes,
    /// Not at all: a `%u` pattern for a client without a username.
    No,
    /// A pattern whose `%c` / `%u` value is unusable. A grant then does not match
    /// (a client cannot widen its own subtree); a deny matches everything, so a
    /// client cannot escape a deny by choosing an odd id either.
    Unusable,
}

impl Rule {
    fn bind(&self, who: &Who<'_>) -> Bound {
        if self.uses_username && !who.has_username {
            return Bound::No;
        }
        if (self.uses_username && who.username.is_none())
            || (self.uses_client_id && who.client_id.is_none())
        {
            return Bound::Unusable;
        }
        Bound::Yes
    }
}

/// Does the pattern level `pieces`, filled in for `who`, equal `level`?
fn pieces_match(pieces: &[Piece], level: &str, who: &Who<'_>) -> bool {
    let mut rest = level;
    for piece in pieces {
        let s = match piece {
            Piece::Text(t) => t.as_str(),
            Piece::ClientId => who.client_id.unwrap_or_default(),
            Piece::Username => who.username.unwrap_or_default(),
        };
        match rest.strip_prefix(s) {
            Some(r) => rest = r,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Does the rule filter `levels` match the concrete `topic`?
fn matches_topic(levels: &[Level], topic: &str, who: &Who<'_>) -> bool {
    // [MQTT-4.7.2-1] a filter starting with a wildcard does not match '$' topics.
    if topic.starts_with('$') && levels.first().is_some_and(Level::is_wildcard) {
        return false;
    }
    let mut t = topic.split('/');
    for level in levels {
        let ok = match level {
            // Also matches the parent: `a/#` matches `a` [MQTT-4.7.1-2].
            Level::Multi => return true,
            Level::Single => t.next().is_some(),
            Level::Literal(s) => t.next() == Some(s.as_str()),
            Level::Pattern(p) => t.next().is_some_and(|tl| pieces_match(p, tl, who)),
        };
        if !ok {
            return false;
        }
    }
    t.next().is_none()
}

/// Is every topic the subscription filter `filter` can match also matched by the
/// rule filter `levels`? Decided level by level, which is exact except that it
/// answers no in a few cases where the answer is yes (e.g. `#` within `+/#`):
/// refusing a subscription is safe, granting too much is not.
fn covers(levels: &[Level], filter: &str, who: &Who<'_>) -> bool {
    // [MQTT-4.7.2-1] as in `matches_topic`: the rule does not reach '$' topics.
    if filter.starts_with('$') && levels.first().is_some_and(Level::is_wildcard) {
        return false;
    }
    let mut f = filter.split('/');
    let mut p = levels.iter();
    loop {
        let ok = match (p.next(), f.next()) {
            (Some(Level::Multi), _) => return true,
            (None, None) => return true,
            // The filter is longer than the rule, or ends first while the rule's
            // next level is not `#` (`a/#` covers `a`, `a/+` does not).
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(Level::Single), Some(fl)) => fl != "#",
            (Some(Level::Literal(s)), Some(fl)) => fl == s,
            (Some(Level::Pattern(pc)), Some(fl)) => {
                fl != "+" && fl != "#" && pieces_match(pc, fl, who)
            }
        };
        if !ok {
            return false;
        }
    }
}

/// Topic filters in the ACL file may be as long and deep as the admin likes; the
/// peer-facing limits are checked elsewhere.
const ACL_TOPIC_LIMITS: TopicLimits = TopicLimits::UNLIMITED;

fn parse_levels(topic: &str, is_pattern: bool) -> Vec<Level> {
    topic
        .split('/')
        .map(|level| match level {
            "#" => Level::Multi,
            "+" => Level::Single,
            _ if is_pattern && (level.contains("%c") || level.contains("%u")) => {
                Level::Pattern(parse_pieces(level))
            }
            _ => Level::Literal(level.to_string()),
        })
        .collect()
}

/// Split a pattern level at `%c` and `%u`; any other '%' is text.
fn parse_pieces(level: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = level.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match (c, chars.peek()) {
            ('%', Some('c')) => Some(Piece::ClientId),
            ('%', Some('u')) => Some(Piece::Username),
            _ => None,
        };
        match token {
            Some(t) => {
                chars.next();
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(t);
            }
            None => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// `[read|write|readwrite|deny] <topic>` after `topic` or `pattern`.
fn parse_rule(rest: &str, is_pattern: bool, n: usize) -> Result<Rule, FileError> {
    let rest = rest.trim();
    let (word, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let access = match word {
        "read" => Some(Access::Read),
        "write" => Some(Access::Write),
        "readwrite" => Some(Access::ReadWrite),
        "deny" => Some(Access::Deny),
        _ => None,
    };
    // Mosquitto's rule: one word alone is a topic granted both ways; with more,
    // the first must be an access word and the rest (spaces and all) is the topic.
    // So a typo like `topic dney secret/#` is an error, not a grant.
    let (access, topic) = match access {
        Some(a) => (a, after.trim()),
        None if after.trim().is_empty() => (Access::ReadWrite, rest),
        None => {
            return Err(file_error(
                n,
                format!("invalid access '{word}': expected read, write, readwrite or deny"),
            ))
        }
    };
    if topic.is_empty() {
        return Err(file_error(n, "missing topic"));
    }
    validate_filter(topic, ACL_TOPIC_LIMITS)
        .map_err(|e| file_error(n, format!("invalid topic '{topic}': {e}")))?;
    let levels = parse_levels(topic, is_pattern);
    let uses = |p: &Piece| {
        levels.iter().any(|l| match l {
            Level::Pattern(pieces) => pieces.contains(p),
            _ => false,
        })
    };
    let (uses_client_id, uses_username) = (uses(&Piece::ClientId), uses(&Piece::Username));
    Ok(Rule {
        access,
        levels,
        uses_client_id,
        uses_username,
    })
}

/// A Mosquitto ACL file.
///
/// `topic` lines before the first `user` line apply to clients without a
/// username; after `user X`, to username X (a repeated `user X` section adds to
/// the first). `pattern` lines apply to every client wherever they appear, with
/// `%c` the client id and `%u` the username. A matching `deny` beats any grant.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: Map<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl Acl {
    /// Parse a whole file; the first bad line fails it.
    pub fn parse(text: &str) -> Result<Acl, FileError> {
        let mut acl = Acl::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            match keyword {
                "user" => {
                    let name = rest.trim();
                    if name.is_empty() {
                        return Err(file_error(n, "user without a name"));
                    }
                    acl.users.entry(name.to_string()).or_default();
                    user = Some(name.to_string());
                }
                "topic" => {
                    let rule = parse_rule(rest, false, n)?;
                    match &user {
                        None => acl.anonymous.push(rule),
                        Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                    }
                }
                "pattern" => acl.patterns.push(parse_rule(rest, true, n)?),
                other => {
                    return Err(file_error(
                        n,
                        format!("unknown keyword '{other}' (expected user, topic or pattern)"),
                    ))
                }
            }
        }
        Ok(acl)
    }

    fn rules<'a>(&'a self, username: Option<&str>) -> impl Iterator<Item = &'a Rule> {
        let own = match username {
            None => self.anonymous.as_slice(),
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
        };
        own.iter().chain(&self.patterns)
    }

    /// The common decision: a deny rule that `applies` refuses (deny wins over
    /// any grant); otherwise a rule granting `needed` access that `applies` allows.
    fn decide(
        &self,
        username: Option<&str>,
        client_id: &str,
        needed: fn(Access) -> bool,
        applies: impl Fn(&[Level], &Who<'_>) -> bool,
    ) -> bool {
        let who = Who::new(username, client_id);
        let mut allowed = false;
        for rule in self.rules(username) {
            let deny = rule.access == Access::Deny;
            match rule.bind(&who) {
                Bound::No => continue,
                Bound::Unusable if deny => return false,
                Bound::Unusable => continue,
                Bound::Yes => {}
            }
            if deny {
                if applies(&rule.levels, &who) {
                    return false;
                }
            } else if !allowed && needed(rule.access) && applies(&rule.levels, &who) {
                allowed = true;
            }
        }
        allowed
    }

    /// May this client publish to `topic`?
    pub fn can_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.decide(username, client_id, Access::writes, |levels, who| {
            matches_topic(levels, topic, who)
        })
    }

    /// May a message on `topic` be delivered to this client? Checked per delivery as
    /// well as at subscribe time, so a deny inside a granted wildcard holds.
    pub fn can_read(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.decide(username, client_id, Access::reads, |levels, who| {
            matches_topic(levels, topic, who)
        })
    }

    /// May this client subscribe to `filter` (without any `$share/group/` prefix)?
    /// Refused when a deny rule covers the whole filter, granted when a read rule
    /// does. A filter only partly denied (e.g. `#` with `deny secret/#`) is granted,
    /// and `can_read` refuses the denied part at delivery.
    pub fn can_subscribe(&self, username: Option<&str>, client_id: &str, filter: &str) -> bool {
        self.decide(username, client_id, Access::reads, |levels, who| {
            covers(levels, filter, who)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(text: &str) -> Acl {
        match Acl::parse(text) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    const ALICE: Option<&str> = Some("alice");

    #[test]
    fn anonymous_section_and_user_sections() {
        let a = acl("\
# anonymous
topic read public/#
topic weather

user alice
topic write alice/out
topic read alice/in/+

user bob
topic readwrite bob/#

user alice
topic deny alice/in/secret
");
        // Anonymous: only the section before the first `user`.
        assert!(a.can_read(None, "c", "public/x"));
        assert!(!a.can_publish(None, "c", "public/x"));
        assert!(a.can_publish(None, "c", "weather"));
        assert!(a.can_read(None, "c", "weather"));
        assert!(!a.can_read(None, "c", "alice/in/x"));
        // Users do not get the anonymous rules.
        assert!(!a.can_read(ALICE, "c", "public/x"));
        assert!(a.can_publish(ALICE, "c", "alice/out"));
        assert!(!a.can_read(ALICE, "c", "alice/out"));
        assert!(a.can_read(ALICE, "c", "alice/in/x"));
        assert!(!a.can_publish(ALICE, "c", "alice/in/x"));
        // The second `user alice` section adds to the first.
        assert!(!a.can_read(ALICE, "c", "alice/in/secret"));
        assert!(a.can_publish(Some("bob"), "c", "bob"));
        assert!(!a.can_publish(Some("bob"), "c", "alice/out"));
        // A user with no section gets nothing.
        assert!(!a.can_read(Some("carol"), "c", "public/x"));
    }

    #[test]
    fn patterns_substitute_client_id_and_username() {
        let a = acl("\
pattern readwrite devices/%c/#
pattern read users/%u/+
pattern write log/dev-%c-%u
pattern read odd/%x/100%
user alice
");
        assert!(a.can_publish(None, "d1", "devices/d1/temp"));
        assert!(a.can_read(None, "d1", "devices/d1"));
        assert!(!a.can_publish(None, "d1", "devices/d2/temp"));
        assert!(a.can_read(ALICE, "d1", "users/alice/inbox"));
        assert!(!a.can_read(ALICE, "d1", "users/bob/inbox"));
        // %u never matches a client without a username.
        assert!(!a.can_read(None, "d1", "users//inbox"));
        assert!(!a.can_read(None, "d1", "users/%u/inbox"));
        assert!(a.can_publish(ALICE, "d1", "log/dev-d1-alice"));
        assert!(!a.can_publish(None, "d1", "log/dev-d1-"));
        // Only %c and %u are special, and only in `pattern` lines.
        assert!(a.can_read(None, "d1", "odd/%x/100%"));
        let t = acl("topic read x/%c\n");
        assert!(t.can_read(None, "c1", "x/%c"));
        assert!(!t.can_read(None, "c1", "x/c1"));
        // Subscribing inside one's own subtree, and not outside it.
        assert!(a.can_subscribe(None, "d1", "devices/d1/#"));
        assert!(a.can_subscribe(None, "d1", "devices/d1/+/x"));
        assert!(!a.can_subscribe(None, "d1", "devices/+/temp"));
        assert!(!a.can_subscribe(None, "d1", "devices/#"));
        assert!(a.can_subscribe(ALICE, "d1", "users/alice/+"));
        assert!(!a.can_subscribe(ALICE, "d1", "users/+/+"));
    }

    #[test]
    fn unusable_substitutions_never_widen_access() {
        let a = acl("\
topic read public/#
pattern readwrite devices/%c/#
pattern read users/%u/#
");
        for id in ["a/b", "+", "#", "x+y", ""] {
            // The client id would make `devices/%c/#` reach other devices.
            assert!(!a.can_publish(None, id, "devices/a/b/c"), "{id:?}");
            assert!(
                !a.can_publish(None, id, &format!("devices/{id}/x")),
                "{id:?}"
            );
            assert!(!a.can_subscribe(None, id, "devices/#"), "{id:?}");
            // Rules that do not use %c still apply.
            assert!(a.can_read(None, id, "public/x"), "{id:?}");
        }
        assert!(!a.can_read(Some("+"), "c", "users/x/y"));
        assert!(!a.can_subscribe(Some("#"), "c", "users/#"));
        assert!(!a.can_read(Some("a/b"), "c", "users/a/b/c"));
        assert!(!a.can_read(Some(""), "c", "users//c"));
        // A fine username with an odd client id: only the %c rule drops out.
        assert!(a.can_read(ALICE, "a/b", "users/alice/x"));
    }

    #[test]
    fn unusable_substitution_in_a_deny_denies() {
        let a = acl("\
topic read #
pattern deny devices/%c/secret
user alice
topic read #
pattern deny %u/private/#
");
        assert!(a.can_read(None, "d1", "devices/d2/secret"));
        assert!(!a.can_read(None, "d1", "devices/d1/secret"));
        // A client id with '/' cannot slip past the deny meant for it.
        assert!(!a.can_read(None, "d/1", "devices/d/1/secret"));
        assert!(!a.can_subscribe(None, "d/1", "x"));
        // A deny on %u does not apply to clients without a username...
        assert!(a.can_read(None, "d1", "bob/private/x"));
        // ...but does to a username it cannot be filled in with.
        assert!(!a.can_read(Some("a+"), "d1", "weather"));
        assert!(!a.can_read(ALICE, "d1", "alice/private/x"));
        assert!(a.can_read(ALICE, "d1", "bob/private/x"));
    }

    #[test]
    fn deny_wins_over_any_grant() {
        let a = acl("\
topic readwrite a/#
topic deny a/secret/#
topic write a/secret/log
pattern read a/secret/%c
");
        assert!(a.can_publish(None, "c", "a/x"));
        assert!(!a.can_publish(None, "c", "a/secret"));
        assert!(!a.can_publish(None, "c", "a/secret/log"));
        assert!(!a.can_read(None, "c", "a/secret/c"));
        assert!(!a.can_subscribe(None, "c", "a/secret/#"));
        assert!(!a.can_subscribe(None, "c", "a/secret/c"));
        // Only partly denied: granted, and delivery refuses the denied part.
        assert!(a.can_subscribe(None, "c", "a/#"));
        assert!(a.can_subscribe(None, "c", "a/+/log"));
        assert!(!a.can_read(None, "c", "a/secret/log"));
        assert!(a.can_read(None, "c", "a/public/log"));
        // A deny rule grants nothing.
        let a = acl("topic deny x/#\n");
        assert!(!a.can_read(None, "c", "y"));
    }

    #[test]
    fn subscribe_needs_the_whole_filter_granted() {
        let a = acl("topic read sensors/#\n");
        assert!(!a.can_subscribe(None, "c", "#"));
        assert!(!a.can_subscribe(None, "c", "+/temp"));
        assert!(a.can_subscribe(None, "c", "sensors/#"));
        assert!(a.can_subscribe(None, "c", "sensors"));
        assert!(a.can_subscribe(None, "c", "sensors/+/temp"));

        let a = acl("topic read #\ntopic deny secret/#\n");
        assert!(a.can_subscribe(None, "c", "#"));
        assert!(!a.can_read(None, "c", "secret/x"));
        assert!(!a.can_read(None, "c", "secret"));
        assert!(a.can_read(None, "c", "public/x"));
        assert!(!a.can_subscribe(None, "c", "secret/+"));

        // Write access does not let one subscribe or read.
        let a = acl("topic write out/#\n");
        assert!(!a.can_subscribe(None, "c", "out/#"));
        assert!(!a.can_read(None, "c", "out/x"));
        assert!(a.can_publish(None, "c", "out/x"));
    }

    #[test]
    fn wildcard_rules_do_not_reach_dollar_topics() {
        let a = acl("topic readwrite #\ntopic read +/broker/#\n");
        assert!(!a.can_read(None, "c", "$SYS/broker/uptime"));
        assert!(!a.can_publish(None, "c", "$SYS/x"));
        assert!(!a.can_subscribe(None, "c", "$SYS/#"));
        assert!(!a.can_subscribe(None, "c", "$SYS/broker/uptime"));
        assert!(a.can_read(None, "c", "x/broker/uptime"));

        let a = acl("topic readwrite #\ntopic read $SYS/#\n");
        assert!(a.can_read(None, "c", "$SYS/broker/uptime"));
        assert!(a.can_subscribe(None, "c", "$SYS/#"));
        assert!(a.can_subscribe(None, "c", "$SYS/+/uptime"));
        assert!(!a.can_publish(None, "c", "$SYS/x"));
        // `#` does not match `$SYS/...`, so a deny on `#` leaves `$SYS` alone.
        let a = acl("topic read $SYS/#\ntopic deny #\n");
        assert!(a.can_read(None, "c", "$SYS/x"));
        assert!(a.can_subscribe(None, "c", "$SYS/#"));
        assert!(!a.can_subscribe(None, "c", "#"));
    }

    #[test]
    fn topics_with_spaces_and_implicit_readwrite() {
        let a = acl("\
topic read   home/living room/temp   
topic readwrite kitchen/light 1
topic  readwrite\tbad idea/#
topic readers/x
");
        assert!(a.can_read(None, "c", "home/living room/temp"));
        assert!(!a.can_publish(None, "c", "home/living room/temp"));
        assert!(a.can_publish(None, "c", "kitchen/light 1"));
        assert!(a.can_read(None, "c", "kitchen/light 1"));
        assert!(a.can_publish(None, "c", "bad idea/x"));
        // `readers` is not an access word: the whole rest is the topic.
        assert!(a.can_publish(None, "c", "readers/x"));
    }

    #[test]
    fn acl_errors_report_their_line_number() {
        let cases = [
            ("users alice", "unknown keyword 'users'"),
            ("Topic read a", "unknown keyword 'Topic'"),
            ("user", "user without a name"),
            ("user   ", "user without a name"),
            ("topic", "missing topic"),
            ("topic read", "missing topic"),
            ("topic deny   ", "missing topic"),
            ("pattern write", "missing topic"),
            ("topic read a/#/b", "invalid topic 'a/#/b'"),
            ("topic dney secret/#", "invalid access 'dney'"),
            ("pattern reed a/%c", "invalid access 'reed'"),
            ("topic kitchen/light 1", "invalid access 'kitchen/light'"),
            ("topic read a/b#", "invalid topic"),
            ("topic a/+b", "invalid topic"),
            ("pattern read a/%c+", "invalid topic"),
            ("pattern read #/%c", "invalid topic"),
        ];
        for (bad, expected) in cases {
            let text = format!("# comment\n\ntopic read ok\n{bad}\ntopic read fine\n");
            match Acl::parse(&text) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => {
                    assert_eq!(e.line, 4, "{bad:?}: {e}");
                    assert!(e.message.contains(expected), "{bad:?}: {e}");
                }
            }
        }
        assert!(Acl::parse("").is_ok());
        assert!(Acl::parse("  # only a comment\r\n\r\n").is_ok());
    }

    /// Every filter over `levels`, up to `depth` levels, '#' only last.
    fn filters(levels: &[&str], depth: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut frontier: Vec<String> = vec![String::new()];
        for d in 0..depth {
            let mut next = Vec::new();
            for prefix in &frontier {
                for l in levels {
                    let f = if d == 0 {
                        (*l).to_string()
                    } else {
                        format!("{prefix}/{l}")
                    };
                    if *l != "#" {
                        next.push(f.clone());
                    }
                    out.push(f);
                }
            }
            frontier = next;
        }
        out
    }

    #[test]
    fn within_is_sound_against_the_reference_matcher() {
        // "z" and "" appear in topics but never in filters: a `+` must stand for
        // levels no filter names.
        let topics = filters(&["a", "b", "$s", "z", ""], 4);
        let fs = filters(&["a", "b", "$s", "+", "#"], 3);
        let who = Who::new(None, "c");
        let mut covered = 0;
        for p in &fs {
            let levels = parse_levels(p, false);
            for t in &topics {
                assert_eq!(
                    matches_topic(&levels, t, &who),
                    crate::topic::matches(p, t),
                    "{p} vs {t}"
                );
            }
            for f in &fs {
                if !covers(&levels, f, &who) {
                    continue;
                }
                covered += 1;
                for t in &topics {
                    if crate::topic::matches(f, t) {
                        assert!(crate::topic::matches(p, t), "{f} within {p}, but {t}");
                    }
                }
            }
        }
        // Not vacuous: many pairs were covered, and the obvious ones.
        assert!(covered > 500, "{covered}");
        let who2 = &who;
        let c = |p: &str, f: &str| covers(&parse_levels(p, false), f, who2);
        assert!(c("#", "#") && c("#", "a/+/b") && c("+/+", "a/+") && c("a/#", "a"));
        assert!(!c("a/+", "a") && !c("+", "#") && !c("a", "a/b") && !c("#", "$s/a"));
    }

    #[test]
    fn pattern_levels_cover_like_their_substitution() {
        let fs = filters(&["a", "b", "+", "#"], 3);
        let rules = filters(&["a", "%c", "+", "#", "x%cy"], 3);
        let who = Who::new(Some("u"), "b");
        for r in &rules {
            let pattern = parse_levels(r, true);
            let literal = parse_levels(&r.replace("%c", "b"), false);
            for f in &fs {
                assert_eq!(
                    covers(&pattern, f, &who),
                    covers(&literal, f, &who),
                    "{r} / {f}"
                );
                if !f.contains(['+', '#']) {
                    assert_eq!(
                        matches_topic(&pattern, f, &who),
                        matches_topic(&literal, f, &who),
                        "{r} / {f}"
                    );
                }
            }
        }
    }
}
