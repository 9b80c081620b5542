//! Who may connect and what they may touch: the password file, the ACL file and the
//! failed-login throttle. Pure: the caller reads and writes the files, decides when
//! to reload, and passes time in as `now`.
//!
//! Both files use Mosquitto's formats so an existing gateway's files keep working:
//! passwords as `$6$` (salted SHA-512), `$7$` (PBKDF2-HMAC-SHA512) or `$argon2id$`
//! (the PHC string libargon2 writes, which Mosquitto 2.1 uses); ACLs as
//! `user` / `topic` / `pattern` lines. Everything in the files is untrusted input: a
//! bad line is an error with its line number, never a panic, so a reload with a bad
//! file can keep the old one.
//!
//! This module knows nothing of connections, sessions or the router; `$share/`
//! prefixes are stripped by the caller before `Acl::can_subscribe`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use ring::rand::SecureRandom as _;

use crate::hash::Map;
use crate::topic::{validate_filter, TopicLimits};

/// A file problem, with its 1-based line number (0 when not line-specific).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct FileError {
    pub line: usize,
    pub message: String,
}

fn file_error(line: usize, message: impl Into<String>) -> FileError {
    FileError {
        line,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------
// Password file
// ---------------------------------------------------------------------------

/// SHA-512's output length: the hash length of `$6$` and `$7$` entries.
const SHA512_LEN: usize = 64;

/// A `$7$` entry may ask for at most this many PBKDF2 rounds. Mosquitto writes 101;
/// without a cap one line could make every login of that user (and every login of
/// an unknown user, see `PasswordFile::decoy`) take minutes.
const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;

/// An argon2id entry may use at most 256 MiB per verification (m is in KiB). A
/// gateway has little memory and verifies logins one CONNECT at a time.
const MAX_ARGON2_M_KIB: u32 = 256 * 1024;

/// ... and at most 1 GiB of memory passes (m * t), about a second on a gateway
/// CPU, so a large t cannot stall logins either.
const MAX_ARGON2_WORK_KIB: u64 = 1024 * 1024;

/// Salt and tag lengths accepted in argon2id entries. libargon2 allows 8-byte
/// salts and 4-byte tags; Mosquitto 2.1 writes 64 of each, `set` writes 16 and 32.
/// The caps keep a line from holding megabytes.
const ARGON2_SALT_LEN: std::ops::RangeInclusive<usize> = 8..=256;
const ARGON2_TAG_LEN: std::ops::RangeInclusive<usize> = 4..=64;

/// What `set` writes: OWASP's minimum argon2id cost (19 MiB, 2 passes, 1 lane).
/// The gateway verifies one password per CONNECT (and the throttle slows guessing),
/// so this cost is bounded by the connection rate, while a stolen file costs an
/// attacker the same 19 MiB per guess.
const SET_M_KIB: u32 = 19 * 1024;
const SET_T: u32 = 2;
const SET_P: u32 = 1;
const SET_SALT_LEN: usize = 16;
const SET_TAG_LEN: usize = 32;

/// One decoded password hash.
#[derive(Clone)]
enum Hash {
    /// `$6$`: SHA-512(password || salt).
    Sha512 {
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// `$7$`: PBKDF2-HMAC-SHA512(password, salt, iterations), 64 bytes.
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: [u8; SHA512_LEN],
    },
    /// `$argon2id$v=..$m=..,t=..,p=..$salt$tag`.
    Argon2id {
        version: Version,
        params: Params,
        salt: Vec<u8>,
        tag: Vec<u8>,
    },
}

/// Compare in time that depends only on the lengths (which come from the file, not
/// from the peer), so a guess does not learn how many leading bytes were right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

impl Hash {
    fn parse(s: &str) -> Result<Hash, String> {
        if let Some(rest) = s.strip_prefix("$6$") {
            let (salt, hash) = rest
                .split_once('$')
                .ok_or("$6$ hash needs $<salt>$<hash>")?;
            Ok(Hash::Sha512 {
                salt: mosquitto_salt(salt)?,
                hash: sha512_hash(hash)?,
            })
        } else if let Some(rest) = s.strip_prefix("$7$") {
            let mut fields = rest.split('$');
            let (Some(iterations), Some(salt), Some(hash), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err("$7$ hash needs $<iterations>$<salt>$<hash>".into());
            };
            Ok(Hash::Pbkdf2 {
                iterations: pbkdf2_iterations(iterations)?,
                salt: mosquitto_salt(salt)?,
                hash: sha512_hash(hash)?,
            })
        } else if let Some(rest) = s.strip_prefix("$argon2id$") {
            parse_argon2id(rest)
        } else {
            Err("unsupported hash: expected $6$, $7$ or $argon2id$".into())
        }
    }

    fn verify(&self, password: &[u8], memory: &mut HashMemory) -> bool {
        match self {
            Hash::Sha512 { salt, hash } => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                ct_eq(ctx.finish().as_ref(), hash)
            }
            // ring compares in constant time.
            Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Hash::Argon2id {
                version,
                params,
                salt,
                tag,
            } => {
                let argon = Argon2::new(Algorithm::Argon2id, *version, params.clone());
                let mut out = [0u8; 64];
                let Some(out) = out.get_mut(..tag.len()) else {
                    return false;
                };
                // No memory (out of it): no login.
                let Some(blocks) = memory.blocks(params.block_count()) else {
                    return false;
                };
                // Fails only for inputs `parse` already refused: no login.
                argon
                    .hash_password_into_with_memory(password, salt, out, blocks)
                    .is_ok()
                    && ct_eq(out, tag)
            }
        }
    }

    /// The same scheme and cost with a hash no password produces: checking a
    /// password against it takes as long as against the real one and fails.
    fn decoy(&self) -> Hash {
        let mut d = self.clone();
        match &mut d {
            Hash::Sha512 { hash, .. } | Hash::Pbkdf2 { hash, .. } => *hash = [0; SHA512_LEN],
            Hash::Argon2id { tag, .. } => tag.iter_mut().for_each(|b| *b = 0),
        }
        d
    }

    /// Entries with equal keys take the same time to check.
    fn cost_key(&self) -> (u8, u32, u32, u32) {
        match self {
            Hash::Sha512 { .. } => (6, 0, 0, 0),
            Hash::Pbkdf2 { iterations, .. } => (7, iterations.get(), 0, 0),
            Hash::Argon2id { params, .. } => (8, params.m_cost(), params.t_cost(), params.p_cost()),
        }
    }
}

/// The working memory of argon2id checks (m KiB each), owned by the caller and
/// reused from one check to the next. Allocating it per check is what let memory
/// grow without bound: glibc keeps a freed 19 MiB block in the arena of the
/// thread that freed it, so every blocking-pool thread that once hashed kept its
/// own. One `HashMemory` per hashing thread bounds it at threads x largest m.
#[derive(Default)]
pub struct HashMemory {
    blocks: Vec<Block>,
}

impl HashMemory {
    pub fn new() -> HashMemory {
        HashMemory::default()
    }

    /// The first `n` blocks, growing the buffer to `n` if it is smaller (it never
    /// shrinks: the next check of the same file needs the same size again). None
    /// if the memory cannot be had.
    fn blocks(&mut self, n: usize) -> Option<&mut [Block]> {
        if let Some(more) = n.checked_sub(self.blocks.len()).filter(|m| *m > 0) {
            self.blocks.try_reserve_exact(more).ok()?;
            self.blocks.resize(n, Block::new());
        }
        self.blocks.get_mut(..n)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.blocks.capacity() * Block::SIZE
    }
}

/// Mosquitto's salts are 12 bytes; 64 is accepted too (the size of its salt buffer).
fn mosquitto_salt(b64: &str) -> Result<Vec<u8>, String> {
    let salt = STANDARD
        .decode(b64)
        .map_err(|_| "salt is not valid base64")?;
    if salt.len() != 12 && salt.len() != 64 {
        return Err(format!("salt is {} bytes, expected 12 or 64", salt.len()));
    }
    Ok(salt)
}

fn sha512_hash(b64: &str) -> Result<[u8; SHA512_LEN], String> {
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "hash is not valid base64")?;
    <[u8; SHA512_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("hash is {} bytes, expected {SHA512_LEN}", bytes.len()))
}

fn decimal(s: &str) -> Option<u32> {
    // `u32::from_str` also takes a leading '+'; the formats have plain digits only.
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn pbkdf2_iterations(s: &str) -> Result<NonZeroU32, String> {
    let n = decimal(s)
        .and_then(NonZeroU32::new)
        .ok_or("iterations must be a whole number of at least 1")?;
    if n.get() > MAX_PBKDF2_ITERATIONS {
        return Err(format!(
            "{n} iterations is more than the {MAX_PBKDF2_ITERATIONS} allowed"
        ));
    }
    Ok(n)
}

/// Parse what follows `$argon2id$`: `v=19$m=..,t=..,p=..$<salt>$<tag>`, salt and tag
/// in unpadded base64, the parameters in libargon2's order. Parsed here rather than
/// with `argon2`'s PHC type because that caps salts at 48 bytes and Mosquitto 2.1
/// writes 64.
fn parse_argon2id(rest: &str) -> Result<Hash, String> {
    const SHAPE: &str =
        "argon2id hash needs $v=<version>$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>";
    let mut fields = rest.split('$');
    let (Some(version), Some(params), Some(salt), Some(tag), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(SHAPE.into());
    };
    let version = match version {
        "v=19" => Version::V0x13,
        "v=16" => Version::V0x10,
        _ => return Err("argon2id version must be v=19 or v=16".into()),
    };
    let mut kv = params.split(',');
    let (Some(m), Some(t), Some(p), None) = (kv.next(), kv.next(), kv.next(), kv.next()) else {
        return Err(SHAPE.into());
    };
    let value = |field: &str, name: &str| -> Result<u32, String> {
        field
            .strip_prefix(name)
            .and_then(|v| v.strip_prefix('='))
            .and_then(decimal)
            .ok_or_else(|| SHAPE.to_string())
    };
    let (m, t, p) = (value(m, "m")?, value(t, "t")?, value(p, "p")?);
    if m > MAX_ARGON2_M_KIB {
        return Err(format!(
            "argon2id m={m} KiB is more than the {MAX_ARGON2_M_KIB} allowed"
        ));
    }
    if u64::from(m) * u64::from(t) > MAX_ARGON2_WORK_KIB {
        return Err(format!(
            "argon2id m*t = {} KiB is more than the {MAX_ARGON2_WORK_KIB} allowed",
            u64::from(m) * u64::from(t)
        ));
    }
    let salt = STANDARD_NO_PAD
        .decode(salt)
        .map_err(|_| "argon2id salt is not valid unpadded base64")?;
    if !ARGON2_SALT_LEN.contains(&salt.len()) {
        return Err(format!("argon2id salt is {} bytes", salt.len()));
    }
    let tag = STANDARD_NO_PAD
        .decode(tag)
        .map_err(|_| "argon2id hash is not valid unpadded base64")?;
    if !ARGON2_TAG_LEN.contains(&tag.len()) {
        return Err(format!("argon2id hash is {} bytes", tag.len()));
    }
    // The crate checks the rest (t >= 1, 1 <= p, m >= 8 * p).
    let params =
        Params::new(m, t, p, Some(tag.len())).map_err(|e| format!("argon2id parameters: {e}"))?;
    Ok(Hash::Argon2id {
        version,
        params,
        salt,
        tag,
    })
}

/// A user's hash, and its text as it appears in the file.
struct Entry {
    hash: Hash,
    text: String,
}

enum Line {
    /// A comment or blank line, kept verbatim (without its line end).
    Other(String),
    /// `username:hash`; the hash lives in `PasswordFile::users`.
    User(String),
}

/// A Mosquitto password file: `username:hash` lines.
///
/// Every line is kept in order, so `to_text` after `set` / `remove` rewrites the
/// file with its comments where they were.
pub struct PasswordFile {
    lines: Vec<Line>,
    users: Map<String, Entry>,
    /// Checked instead of a hash when the username is unknown, so the time of a
    /// failed login does not tell which usernames exist. It has the cost of the
    /// most common kind of entry in the file, so it stays comparable when the
    /// file is all `$7$` (fast) or all argon2id (slow).
    decoy: Hash,
}

impl fmt::Debug for PasswordFile {
    // Hashes stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordFile")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Default for PasswordFile {
    fn default() -> Self {
        PasswordFile::new()
    }
}

/// The decoy of an empty file: what `set` would write.
fn default_decoy() -> Hash {
    match Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN)) {
        Ok(params) => Hash::Argon2id {
            version: Version::V0x13,
            params,
            salt: vec![0; SET_SALT_LEN],
            tag: vec![0; SET_TAG_LEN],
        },
        // INVARIANT: the constants are valid argon2 parameters (a unit test checks);
        // this arm only keeps the code free of `expect`.
        Err(_) => Hash::Sha512 {
            salt: vec![0; 12],
            hash: [0; SHA512_LEN],
        },
    }
}

/// Usernames `set` refuses because the file could not hold them: ':' ends the
/// username, line ends end the line, a leading '#' makes a comment, and `parse`
/// trims surrounding whitespace.
fn check_new_username(username: &str) -> Result<(), FileError> {
    if username.is_empty() {
        return Err(file_error(0, "empty username"));
    }
    if username.contains(':') {
        return Err(file_error(0, "a username cannot contain ':'"));
    }
    if username.chars().any(char::is_control) {
        return Err(file_error(
            0,
            "a username cannot contain control characters",
        ));
    }
    if username.trim() != username {
        return Err(file_error(
            0,
            "a username cannot start or end with whitespace",
        ));
    }
    if username.starts_with('#') {
        return Err(file_error(0, "a username cannot start with '#'"));
    }
    Ok(())
}

impl PasswordFile {
    /// An empty file (no users).
    pub fn new() -> PasswordFile {
        PasswordFile {
            lines: Vec::new(),
            users: Map::default(),
            decoy: default_decoy(),
        }
    }

    /// Parse a whole file. Any bad line fails the whole parse, so a reload with a
    /// broken file keeps the old users instead of silently losing some.
    ///
    /// The username and hash are trimmed of surrounding whitespace. A username
    /// that appears twice is an error (naming both lines): which of two hashes an
    /// operator meant is not ours to guess.
    pub fn parse(text: &str) -> Result<PasswordFile, FileError> {
        let mut file = PasswordFile::new();
        let mut first_line: Map<String, usize> = Map::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            // `lines` has already removed "\n" and one "\r" before it.
            let line = raw.trim_end();
            let content = line.trim_start();
            if content.is_empty() || content.starts_with('#') {
                file.lines.push(Line::Other(line.to_string()));
                continue;
            }
            let (username, hash) = content
                .split_once(':')
                .ok_or_else(|| file_error(n, "expected username:hash"))?;
            let (username, hash) = (username.trim(), hash.trim());
            if username.is_empty() {
                return Err(file_error(n, "empty username"));
            }
            if let Some(first) = first_line.get(username) {
                return Err(file_error(
                    n,
                    format!("user '{username}' is already defined on line {first}"),
                ));
            }
            let parsed = Hash::parse(hash).map_err(|m| file_error(n, m))?;
            first_line.insert(username.to_string(), n);
            file.users.insert(
                username.to_string(),
                Entry {
                    hash: parsed,
                    text: hash.to_string(),
                },
            );
            file.lines.push(Line::User(username.to_string()));
        }
        file.refresh_decoy();
        Ok(file)
    }

    /// Is `password` right for `username`? An unknown username costs about as much
    /// as a known one, and is false.
    pub fn verify(&self, username: &str, password: &[u8]) -> bool {
        self.verify_with(username, password, &mut HashMemory::new())
    }

    /// `verify` with argon2id's working memory from `memory` (the decoy uses it
    /// too, so an unknown user costs the same memory and time as a known one).
    pub fn verify_with(&self, username: &str, password: &[u8], memory: &mut HashMemory) -> bool {
        match self.users.get(username) {
            Some(entry) => entry.hash.verify(password, memory),
            None => {
                std::hint::black_box(self.decoy.verify(password, memory));
                false
            }
        }
    }

    /// Add `username` or replace its password (in place, keeping its line), hashed
    /// with argon2id and a fresh random salt.
    pub fn set(&mut self, username: &str, password: &[u8]) -> Result<(), FileError> {
        check_new_username(username)?;
        let mut salt = [0u8; SET_SALT_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| file_error(0, "the system random generator failed"))?;
        let params = Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN))
            .map_err(|e| file_error(0, format!("argon2id parameters: {e}")))?;
        let mut tag = [0u8; SET_TAG_LEN];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into(password, &salt, &mut tag)
            .map_err(|e| file_error(0, format!("argon2id: {e}")))?;
        let text = format!(
            "$argon2id$v=19$m={SET_M_KIB},t={SET_T},p={SET_P}${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(tag)
        );
        let entry = Entry {
            hash: Hash::Argon2id {
                version: Version::V0x13,
                params,
                salt: salt.to_vec(),
                tag: tag.to_vec(),
            },
            text,
        };
        if self.users.insert(username.to_string(), entry).is_none() {
            self.lines.push(Line::User(username.to_string()));
        }
        self.refresh_decoy();
        Ok(())
    }

    /// Remove `username`; true when it existed.
    pub fn remove(&mut self, username: &str) -> bool {
        if self.users.remove(username).is_none() {
            return false;
        }
        self.lines
            .retain(|l| !matches!(l, Line::User(u) if u == username));
        self.refresh_decoy();
        true
    }

    pub fn contains(&self, username: &str) -> bool {
        self.users.contains_key(username)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The file, ready to write: every line in order, '\n' line ends.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Other(s) => out.push_str(s),
                Line::User(u) => {
                    out.push_str(u);
                    out.push(':');
                    // Always present: `lines` and `users` change together.
                    if let Some(e) = self.users.get(u) {
                        out.push_str(&e.text);
                    }
                }
            }
            out.push('\n');
        }
        out
    }

    /// Pick the decoy: the most common cost among the entries (first in file order
    /// on a tie), or what `set` writes when there are none.
    fn refresh_decoy(&mut self) {
        let mut counts: Map<(u8, u32, u32, u32), usize> = Map::default();
        let mut best: Option<(&Hash, usize)> = None;
        for line in &self.lines {
            let Line::User(u) = line else { continue };
            let Some(entry) = self.users.get(u) else {
                continue;
            };
            let count = counts.entry(entry.hash.cost_key()).or_insert(0);
            *count += 1;
            if best.is_none_or(|(_, c)| *count > c) {
                best = Some((&entry.hash, *count));
            }
        }
        self.decoy = best.map_or_else(default_decoy, |(h, _)| h.decoy());
    }
}

// ---------------------------------------------------------------------------
// ACL file
// ---------------------------------------------------------------------------

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
const ACL_TOPIC_LIMITS: TopicLimits = TopicLimits {
    max_levels: usize::MAX,
    max_len: usize::MAX,
};

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

// ---------------------------------------------------------------------------
// Login throttle
// ---------------------------------------------------------------------------

/// Failures below this many cost nothing: people mistype.
const FREE_FAILURES: u32 = 3;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Slows repeated failed logins from one address: after a few failures each next
/// check waits twice as long, up to a cap. Memory is bounded by `max_entries`.
#[derive(Debug)]
pub struct LoginThrottle {
    base_delay: Duration,
    max_delay: Duration,
    forget_after: Duration,
    max_entries: usize,
    entries: Map<IpAddr, Failures>,
    /// Addresses a login succeeded from, with when (at most `max_entries`, the
    /// oldest forgotten first): their checks go ahead of strangers' when the
    /// login queue is full. Only a valid password adds one, so an attacker
    /// cannot fill it.
    known: Map<IpAddr, Instant>,
}

/// The address a failure counts against. An IPv6 address counts as its /64: one
/// host usually holds a whole /64 and could otherwise try from a fresh address
/// every time. An IPv4-mapped address counts as the IPv4 address.
fn throttle_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl LoginThrottle {
    /// `delay` is `base_delay * 2^(failures - 3)` from the third failure on, at most
    /// `max_delay`; an address is forgotten `forget_after` its last failure; at most
    /// `max_entries` addresses are tracked.
    pub fn new(
        base_delay: Duration,
        max_delay: Duration,
        forget_after: Duration,
        max_entries: usize,
    ) -> LoginThrottle {
        LoginThrottle {
            base_delay,
            max_delay,
            forget_after,
            max_entries,
            entries: Map::default(),
            known: Map::default(),
        }
    }

    fn expired(&self, f: &Failures, now: Instant) -> bool {
        now.saturating_duration_since(f.last) >= self.forget_after
    }

    /// Has a login succeeded from this address before?
    pub fn known(&self, ip: IpAddr) -> bool {
        self.known.contains_key(&throttle_key(ip))
    }

    /// Failures counted against this address (0 when none or forgotten).
    pub fn failures(&self, ip: IpAddr, now: Instant) -> u32 {
        self.entries
            .get(&throttle_key(ip))
            .filter(|f| !self.expired(f, now))
            .map_or(0, |f| f.count)
    }

    /// How long to wait before checking this address's next attempt.
    pub fn delay(&mut self, ip: IpAddr, now: Instant) -> Duration {
        let key = throttle_key(ip);
        let Some(f) = self.entries.get(&key).copied() else {
            return Duration::ZERO;
        };
        if self.expired(&f, now) {
            self.entries.remove(&key);
            return Duration::ZERO;
        }
        if f.count < FREE_FAILURES {
            return Duration::ZERO;
        }
        // None when the doubling overflows: the cap applies long before that.
        1u32.checked_shl(f.count - FREE_FAILURES)
            .and_then(|factor| self.base_delay.checked_mul(factor))
            .map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// Count a failed login from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if self.max_entries == 0 {
            return;
        }
        let key = throttle_key(ip);
        if let Some(mut f) = self.entries.get(&key).copied() {
            f.count = if self.expired(&f, now) {
                1
            } else {
                f.count.saturating_add(1)
            };
            f.last = now;
            self.entries.insert(key, f);
            return;
        }
        if self.entries.len() >= self.max_entries {
            self.make_room(now);
        }
        self.entries.insert(
            key,
            Failures {
                count: 1,
                last: now,
            },
        );
    }

    /// A successful login takes back its own attempt (the caller counts every
    /// attempt as failed when it arrives), and nothing more: wiping the record
    /// would let one valid account reset the count between guesses at others.
    pub fn succeeded(&mut self, ip: IpAddr, now: Instant) {
        let key = throttle_key(ip);
        if self.max_entries > 0 {
            if self.known.len() >= self.max_entries && !self.known.contains_key(&key) {
                let oldest = self.known.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.known.remove(&k);
                }
            }
            self.known.insert(key, now);
        }
        if let Some(f) = self.entries.get_mut(&key) {
            f.count = f.count.saturating_sub(1);
            if f.count == 0 {
                self.entries.remove(&key);
            }
        }
    }

    /// Free one slot: drop what has expired, else the address with the fewest
    /// failures, the oldest of those. Fewest first, not oldest first: addresses
    /// that cost nothing to use (password-less CONNECTs from a spread of
    /// addresses, one failure each) would otherwise push out a throttled
    /// address's record and reset its delay for free; now they only push out each
    /// other, and evicting an address with n failures takes new addresses with n
    /// failures each, every one of which paid its delays. O(entries), paid only
    /// when the table is full, i.e. under an attack from many addresses.
    fn make_room(&mut self, now: Instant) {
        let forget_after = self.forget_after;
        self.entries
            .retain(|_, f| now.saturating_duration_since(f.last) < forget_after);
        if self.entries.len() < self.max_entries {
            return;
        }
        let cheapest = self
            .entries
            .iter()
            .min_by_key(|(_, f)| (f.count, f.last))
            .map(|(k, _)| *k);
        if let Some(k) = cheapest {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // ---- password file ----

    /// python3: pw = b"tern-pw"; salt = bytes(range(12));
    /// hashlib.sha512(pw + salt), standard base64.
    const SHA512_VECTOR: &str = "$6$AAECAwQFBgcICQoL$15MvHxUfRBT6nzbxX/YKq3imKFYjtgtD9ib7IL5RAkuvPnia/Y3uHtRPIYsj2oOJEGX8wN6YBJyjZE+PblYiKA==";

    /// python3: hashlib.pbkdf2_hmac('sha512', b"tern-pw", bytes(range(100, 164)), 101),
    /// a 64-byte salt.
    const PBKDF2_VECTOR: &str = "$7$101$ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoOEhYaHiImKi4yNjo+QkZKTlJWWl5iZmpucnZ6foKGiow==$r8gB0IhKJJakOCC/5U2q9ceftQwJTmlRMUzG1tElPiuW9mxN8/2BjELA2kEEMVikAiqq+jElRfsg2HdDwGv9zw==";

    /// python3: hashlib.pbkdf2_hmac('sha512', b"\x00\xffbin", bytes(range(12)), 1):
    /// a binary password and a single iteration.
    const PBKDF2_BINARY: &str = "$7$1$AAECAwQFBgcICQoL$mXPbbWp1kKNV6DL7qMu1N6ayCFdwwBJQmUw/M9JRiUnZ6iFtqmPiLc9BzxLltRiDn7hxQ2iEJDb7L3vo/swENA==";

    /// Written by Mosquitto 2.0.11's own tool:
    /// `mosquitto_passwd -c -b pw alice secret; mosquitto_passwd -b pw bob hunter2;
    /// mosquitto_passwd -H sha512 -b pw carol 'pa:ss'`.
    const MOSQUITTO_FILE: &str = "\
alice:$7$101$SEfXSkxSi7wplhIu$af0yYXoT34TLnT6Yb5UWFu9junSbxOvVyYQ/IuC7ncbsKTO7n4Wxob3HCApgH7n2Nc8heymw0fRotLubFzUNpg==
bob:$7$101$NL8TWkLippw3tbHb$0BCw6Un4baenegw2rYhnLD2hnL+ZtJ9VbIG8un53TJ0Ob1QNFRWo6NYiTyMG6JPXxZyEdt5sJiNOi47o7cuQFw==
carol:$6$beaGLMJ9fP9SyF1D$85ZG0ZdqZgsyabutF/+wm46NiWS9V580r955Gd6xl72/S8Z7Rrg6mR3fycfO8upilt3rzom9wBz7k0pe/mKutw==
";

    /// libargon2 (`argon2id_hash_encoded` through python3 ctypes) with a 64-byte
    /// salt and a 64-byte hash, the sizes Mosquitto 2.1 writes; password
    /// "mosquitto-2.1", m=4096, t=2, p=1.
    const ARGON2_MOSQUITTO_SIZES: &str = "$argon2id$v=19$m=4096,t=2,p=1$AwoRGB8mLTQ7QklQV15lbHN6gYiPlp2kq7K5wMfO1dzj6vH4/wYNFBsiKTA3PkVMU1phaG92fYSLkpmgp661vA$Ffjqm1CfPoAJ+gpjJGA4OLmrTDXLLDGhENVuVoh0ccguHdKnYomIU5PC2fiaxx9Kqqf1RgyambYMD8ngv1p4NQ";

    /// libargon2 again: password b"\x00\xff\x01", salt "0123456789abcdef",
    /// m=64, t=1, p=2, 32-byte hash.
    const ARGON2_TWO_LANES: &str = "$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg$UMRTe1o1qafAaAWtTh1NG/rJA6JposNRitN1xhD8+d4";

    fn file(text: &str) -> PasswordFile {
        match PasswordFile::parse(text) {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn sha512_vector() {
        let f = file(&format!("u:{SHA512_VECTOR}\n"));
        assert!(f.verify("u", b"tern-pw"));
        assert!(!f.verify("u", b"tern-pw "));
        assert!(!f.verify("u", b""));
    }

    #[test]
    fn pbkdf2_vectors() {
        let f = file(&format!("u:{PBKDF2_VECTOR}\nbin:{PBKDF2_BINARY}\n"));
        assert!(f.verify("u", b"tern-pw"));
        assert!(!f.verify("u", b"tern-pW"));
        assert!(f.verify("bin", b"\x00\xffbin"));
        assert!(!f.verify("bin", b"\x00\xffbi"));
        // A password is checked against its own user only.
        assert!(!f.verify("bin", b"tern-pw"));
    }

    #[test]
    fn real_mosquitto_passwd_file() {
        let f = file(MOSQUITTO_FILE);
        assert_eq!(f.len(), 3);
        assert!(f.verify("alice", b"secret"));
        assert!(f.verify("bob", b"hunter2"));
        assert!(f.verify("carol", b"pa:ss"));
        assert!(!f.verify("alice", b"hunter2"));
        assert!(!f.verify("carol", b"pa"));
        assert_eq!(f.to_text(), MOSQUITTO_FILE);
    }

    #[test]
    fn libargon2_vectors() {
        let f = file(&format!(
            "m:{ARGON2_MOSQUITTO_SIZES}\np:{ARGON2_TWO_LANES}\n"
        ));
        assert!(f.verify("m", b"mosquitto-2.1"));
        assert!(!f.verify("m", b"mosquitto-2.0"));
        assert!(f.verify("p", b"\x00\xff\x01"));
        assert!(!f.verify("p", b"\x00\xff\x02"));
    }

    #[test]
    fn set_params_are_valid() {
        // `default_decoy` relies on this.
        assert!(Params::new(SET_M_KIB, SET_T, SET_P, Some(SET_TAG_LEN)).is_ok());
        assert!(matches!(default_decoy(), Hash::Argon2id { .. }));
    }

    #[test]
    fn set_writes_argon2id_and_round_trips() {
        let mut f = PasswordFile::new();
        assert!(f.is_empty());
        assert_eq!(f.set("dave", b"\x00binary\xff"), Ok(()));
        assert!(f.contains("dave"));
        assert_eq!(f.len(), 1);
        let text = f.to_text();
        assert!(
            text.starts_with("dave:$argon2id$v=19$m=19456,t=2,p=1$"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        let reread = file(&text);
        assert!(reread.verify("dave", b"\x00binary\xff"));
        assert!(!reread.verify("dave", b"\x00binary"));
    }

    #[test]
    fn set_replaces_in_place_and_salts_afresh() {
        let mut f = file(&format!("# users\na:{SHA512_VECTOR}\nb:{PBKDF2_BINARY}\n"));
        assert_eq!(f.set("a", b"new"), Ok(()));
        let first = f.to_text();
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], "# users");
        assert!(lines[1].starts_with("a:$argon2id$"));
        assert_eq!(lines[2], format!("b:{PBKDF2_BINARY}"));
        assert!(f.verify("a", b"new"));
        assert!(!f.verify("a", b"tern-pw"));
        assert_eq!(f.len(), 2);
        // Same password again: a new random salt, so a different line.
        assert_eq!(f.set("a", b"new"), Ok(()));
        assert_ne!(f.to_text(), first);
    }

    #[test]
    fn set_refuses_usernames_the_file_cannot_hold() {
        let mut f = PasswordFile::new();
        for bad in ["", "a:b", "a\nb", "a\rb", " a", "a ", "#a", "a\tb"] {
            let err = f.set(bad, b"pw").err();
            assert!(err.is_some_and(|e| e.line == 0), "{bad:?}");
        }
        assert!(f.is_empty());
    }

    #[test]
    fn unknown_user_and_wrong_password_fail() {
        let f = file(MOSQUITTO_FILE);
        assert!(!f.verify("mallory", b"secret"));
        assert!(!f.verify("", b""));
        assert!(!f.verify("Alice", b"secret"));
        assert!(!PasswordFile::new().verify("alice", b"secret"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_decoy_of_the_usual_cost() {
        let f = file(MOSQUITTO_FILE);
        // Two $7$ 101-round entries against one $6$: the decoy is $7$ with 101
        // rounds, whose hash matches nobody.
        assert_eq!(f.decoy.cost_key(), (7, 101, 0, 0));
        assert!(!f.decoy.verify(b"secret", &mut HashMemory::new()));
        assert_eq!(
            PasswordFile::new().decoy.cost_key(),
            (8, SET_M_KIB, SET_T, SET_P)
        );
        let f = file(&format!("m:{ARGON2_MOSQUITTO_SIZES}\n"));
        assert_eq!(f.decoy.cost_key(), (8, 4096, 2, 1));
        assert!(!f.decoy.verify(b"mosquitto-2.1", &mut HashMemory::new()));
        assert!(!f.verify("x", b"mosquitto-2.1"));
        let mut f = file(&format!("s:{SHA512_VECTOR}\n"));
        assert_eq!(f.decoy.cost_key(), (6, 0, 0, 0));
        assert!(f.remove("s"));
        assert_eq!(f.decoy.cost_key(), (8, SET_M_KIB, SET_T, SET_P));
    }

    #[test]
    fn remove_user() {
        let mut f = file(MOSQUITTO_FILE);
        assert!(f.remove("bob"));
        assert!(!f.remove("bob"));
        assert!(!f.contains("bob"));
        assert!(!f.verify("bob", b"hunter2"));
        assert!(f.verify("alice", b"secret"));
        assert_eq!(f.len(), 2);
        let text = f.to_text();
        assert!(!text.contains("bob:"));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn to_text_keeps_comments_blanks_and_order() {
        let input = format!(
            "# Gateway users\r\n\r\n  # indented comment   \nzed:{SHA512_VECTOR}   \r\n\nalpha : {PBKDF2_BINARY}\n# end"
        );
        let f = file(&input);
        assert!(f.verify("zed", b"tern-pw"));
        assert!(f.verify("alpha", b"\x00\xffbin"));
        assert_eq!(
            f.to_text(),
            format!(
                "# Gateway users\n\n  # indented comment\nzed:{SHA512_VECTOR}\n\nalpha:{PBKDF2_BINARY}\n# end\n"
            )
        );
        assert_eq!(file("").to_text(), "");
    }

    #[test]
    fn malformed_lines_report_their_line_number() {
        let good = format!("ok:{SHA512_VECTOR}");
        let salt12 = "AAECAwQFBgcICQoL";
        let hash64 = "15MvHxUfRBT6nzbxX/YKq3imKFYjtgtD9ib7IL5RAkuvPnia/Y3uHtRPIYsj2oOJEGX8wN6YBJyjZE+PblYiKA==";
        let argon_tail = "MDEyMzQ1Njc4OWFiY2RlZg$UMRTe1o1qafAaAWtTh1NG/rJA6JposNRitN1xhD8+d4";
        let cases: Vec<(String, &str)> = vec![
            ("no colon here".into(), "expected username:hash"),
            (format!(":{SHA512_VECTOR}"), "empty username"),
            (format!("  :{SHA512_VECTOR}"), "empty username"),
            ("u:".into(), "unsupported hash"),
            ("u:plaintext".into(), "unsupported hash"),
            ("u:$5$abc$def".into(), "unsupported hash"),
            ("u:$6$onlyone".into(), "$6$ hash needs"),
            (format!("u:$6$!!!!${hash64}"), "salt is not valid base64"),
            (
                format!("u:$6$AAECAwQFBgcICQ==${hash64}"),
                "salt is 10 bytes",
            ),
            (format!("u:$6${salt12}$AAAA"), "hash is 3 bytes"),
            (format!("u:$6${salt12}$@@@@"), "hash is not valid base64"),
            // Mosquitto writes padding; a hash without it is refused.
            (
                format!("u:$6${salt12}${}", hash64.trim_end_matches('=')),
                "hash is not valid base64",
            ),
            (format!("u:$7$101${salt12}"), "$7$ hash needs"),
            (format!("u:$7$101${salt12}${hash64}$x"), "$7$ hash needs"),
            (format!("u:$7$0${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$-1${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$+5${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$99999999999${salt12}${hash64}"), "at least 1"),
            (format!("u:$7$10000001${salt12}${hash64}"), "more than"),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2".into(),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=18$m=64,t=1,p=2${argon_tail}"),
                "version",
            ),
            (
                format!("u:$argon2id$m=64,t=1,p=2${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$t=1,m=64,p=2${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1,p=2,k=1${argon_tail}"),
                "argon2id hash needs",
            ),
            (
                format!("u:$argon2id$v=19$m=262145,t=1,p=1${argon_tail}"),
                "m=262145",
            ),
            (
                format!("u:$argon2id$v=19$m=262144,t=5,p=1${argon_tail}"),
                "m*t",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=0,p=2${argon_tail}"),
                "parameters",
            ),
            (
                format!("u:$argon2id$v=19$m=64,t=1,p=0${argon_tail}"),
                "parameters",
            ),
            (
                format!("u:$argon2id$v=19$m=8,t=1,p=2${argon_tail}"),
                "parameters",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEy$UMRTe1o1qafAaAWtTh1NG".into(),
                "salt is 3 bytes",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg==$UMRTe1o1qafAaAWtTh1NG"
                    .into(),
                "unpadded base64",
            ),
            (
                "u:$argon2id$v=19$m=64,t=1,p=2$MDEyMzQ1Njc4OWFiY2RlZg$UMQ".into(),
                "hash is 2 bytes",
            ),
            (
                format!("u:$argon2i$v=19$m=64,t=1,p=2${argon_tail}"),
                "unsupported hash",
            ),
        ];
        for (bad, expected) in &cases {
            let text = format!("# header\n{good}\n\n{bad}\nlast:{SHA512_VECTOR}\n");
            match PasswordFile::parse(&text) {
                Ok(_) => panic!("accepted {bad:?}"),
                Err(e) => {
                    assert_eq!(e.line, 4, "{bad:?}: {e}");
                    assert!(e.message.contains(expected), "{bad:?}: {e}");
                }
            }
        }
    }

    #[test]
    fn duplicate_username_is_an_error() {
        let text = format!("a:{SHA512_VECTOR}\nb:{SHA512_VECTOR}\n a :{PBKDF2_BINARY}\n");
        let err = PasswordFile::parse(&text).err();
        assert_eq!(
            err,
            Some(file_error(3, "user 'a' is already defined on line 1"))
        );
        assert_eq!(
            err.map(|e| e.to_string()).unwrap_or_default(),
            "line 3: user 'a' is already defined on line 1"
        );
    }

    #[test]
    fn hash_memory_is_reused_and_sized_by_the_largest_check() {
        let f = file(&format!(
            "m:{ARGON2_MOSQUITTO_SIZES}\np:{ARGON2_TWO_LANES}\n"
        ));
        let mut memory = HashMemory::new();
        assert!(f.verify_with("p", b"\x00\xff\x01", &mut memory));
        assert_eq!(memory.bytes(), 64 * 1024);
        assert!(f.verify_with("m", b"mosquitto-2.1", &mut memory));
        assert_eq!(memory.bytes(), 4096 * 1024);
        // A smaller check runs in the same buffer (a prefix of it), which stays.
        assert!(f.verify_with("p", b"\x00\xff\x01", &mut memory));
        assert!(!f.verify_with("p", b"\x00\xff\x02", &mut memory));
        assert!(!f.verify_with("nobody", b"x", &mut memory));
        assert_eq!(memory.bytes(), 4096 * 1024);
    }

    #[test]
    fn argon2_verify_time() {
        // Not an assertion: how long one login costs with what `set` writes
        // (run with --release --nocapture for the number that matters).
        let mut f = PasswordFile::new();
        assert_eq!(f.set("u", b"password"), Ok(()));
        let start = Instant::now();
        assert!(f.verify("u", b"password"));
        let known = start.elapsed();
        let start = Instant::now();
        assert!(!f.verify("nobody", b"password"));
        let unknown = start.elapsed();
        println!("argon2id m=19456 t=2 p=1 verify: known user {known:?}, unknown user {unknown:?}");
    }

    // ---- ACL ----

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

    // ---- login throttle ----

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const MS: Duration = Duration::from_millis(1);

    fn throttle(max_entries: usize) -> LoginThrottle {
        LoginThrottle::new(100 * MS, 1000 * MS, Duration::from_secs(60), max_entries)
    }

    #[test]
    fn delay_doubles_from_the_third_failure_up_to_the_cap() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        assert_eq!(t.delay(IP, t0), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..8 {
            t.failed(IP, t0);
            seen.push(t.delay(IP, t0).as_millis());
        }
        assert_eq!(seen, [0, 0, 100, 200, 400, 800, 1000, 1000]);
        // Counts far past the doubling range stay at the cap.
        for _ in 0..100 {
            t.failed(IP, t0);
        }
        assert_eq!(t.delay(IP, t0), 1000 * MS);
        // Other addresses are not slowed.
        assert_eq!(t.delay(IpAddr::V4(Ipv4Addr::LOCALHOST), t0), Duration::ZERO);
    }

    /// Only a success makes an address known, and the table stays bounded.
    #[test]
    fn successful_addresses_are_remembered_within_the_bound() {
        let t0 = Instant::now();
        let mut t = throttle(2);
        assert!(!t.known(IP));
        t.failed(IP, t0);
        assert!(!t.known(IP));
        t.succeeded(IP, t0);
        assert!(t.known(IP));
        let other = |i: u8| IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, i));
        t.succeeded(other(1), t0 + Duration::from_secs(1));
        t.succeeded(other(2), t0 + Duration::from_secs(2));
        assert_eq!(t.known.len(), 2);
        assert!(!t.known(IP), "the oldest is forgotten first");
        assert!(t.known(other(2)));
    }

    #[test]
    fn failures_are_forgotten_and_cleared() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        for _ in 0..4 {
            t.failed(IP, t0);
        }
        let later = t0 + Duration::from_secs(59);
        assert_eq!(t.delay(IP, later), 200 * MS);
        assert_eq!(t.delay(IP, t0 + Duration::from_secs(60)), Duration::ZERO);
        assert!(t.entries.is_empty());

        // A failure after the window starts a new count.
        for _ in 0..4 {
            t.failed(IP, t0);
        }
        let t1 = t0 + Duration::from_secs(61);
        t.failed(IP, t1);
        assert_eq!(t.entries.get(&IP).map(|f| f.count), Some(1));
        assert_eq!(t.delay(IP, t1), Duration::ZERO);

        for _ in 0..5 {
            t.failed(IP, t1);
        }
        // 6 failures: 800 ms. A success takes back one attempt only (5: 400 ms),
        // so a valid account cannot reset the count for guesses at others.
        assert_eq!(t.delay(IP, t1), 800 * MS);
        t.succeeded(IP, t0);
        assert_eq!(t.delay(IP, t1), 400 * MS);
        for _ in 0..5 {
            t.succeeded(IP, t0);
        }
        assert!(
            t.entries.is_empty(),
            "the record goes when its count reaches 0"
        );
        t.succeeded(IP, t0);
        assert_eq!(t.delay(IP, t1), Duration::ZERO);
        // An earlier `now` than the last failure does not panic.
        t.failed(IP, t1);
        assert_eq!(t.delay(IP, t0), Duration::ZERO);
    }

    fn v4(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    #[test]
    fn table_is_bounded_dropping_expired_then_oldest() {
        let t0 = Instant::now();
        let mut t = throttle(3);
        t.failed(v4(1), t0);
        t.failed(v4(2), t0 + Duration::from_secs(10));
        t.failed(v4(3), t0 + Duration::from_secs(20));
        // Full; at 65 s only v4(1) has expired: it goes, the others stay.
        let at = t0 + Duration::from_secs(65);
        t.failed(v4(4), at);
        assert_eq!(t.entries.len(), 3);
        assert!(!t.entries.contains_key(&v4(1)));
        // Full, nothing expired: the oldest last failure (v4(2)) goes.
        t.failed(v4(3), at); // refreshes v4(3)
        t.failed(v4(5), at + Duration::from_secs(1));
        assert_eq!(t.entries.len(), 3);
        assert!(!t.entries.contains_key(&v4(2)));
        assert!(t.entries.contains_key(&v4(3)));
        assert!(t.entries.contains_key(&v4(4)));
        assert!(t.entries.contains_key(&v4(5)));

        let mut none = throttle(0);
        for _ in 0..5 {
            none.failed(IP, t0);
        }
        assert_eq!(none.delay(IP, t0), Duration::ZERO);
        assert!(none.entries.is_empty());
    }

    /// Issue 10, item 10: 4,200 password-less CONNECTs from 4,200 addresses
    /// evicted a throttled address's record (the oldest went first), resetting its
    /// delay for free. Fewest failures go first now.
    #[test]
    fn a_spread_of_one_failure_addresses_never_evicts_a_throttled_one() {
        let t0 = Instant::now();
        let mut t = throttle(4096);
        for _ in 0..6 {
            t.failed(IP, t0);
        }
        let throttled = t.delay(IP, t0);
        assert_eq!(throttled, 800 * MS);
        let loopback = |i: u32| IpAddr::V4(Ipv4Addr::from(0x7f00_0001 + i));
        for i in 0..4200 {
            // Every one later than the throttled address's last failure.
            t.failed(loopback(i), t0 + (i + 1) * MS);
        }
        let now = t0 + Duration::from_secs(5);
        assert_eq!(t.entries.len(), 4096, "the table stays bounded");
        assert_eq!(t.failures(IP, now), 6);
        assert_eq!(t.delay(IP, now), throttled);
        // Among equals the oldest goes: the first spread addresses are gone.
        assert_eq!(t.failures(loopback(0), now), 0);
        assert_eq!(t.failures(loopback(4199), now), 1);

        // Only addresses that failed as often can push it out.
        let mut t = throttle(3);
        for _ in 0..4 {
            t.failed(v4(1), t0);
        }
        t.failed(v4(2), t0);
        t.failed(v4(3), t0);
        for _ in 0..4 {
            t.failed(v4(4), t0 + MS);
        }
        assert_eq!(
            t.failures(v4(1), t0 + MS),
            4,
            "v4(2) or v4(3) went, not v4(1)"
        );
        assert_eq!(t.entries.len(), 3);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut t = throttle(10);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1));
        let same64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0xffff, 1, 2, 3));
        let other64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        t.failed(a, t0);
        t.failed(same64, t0);
        t.failed(a, t0);
        assert_eq!(t.delay(same64, t0), 100 * MS);
        assert_eq!(t.delay(other64, t0), Duration::ZERO);

        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        for _ in 0..3 {
            t.failed(mapped, t0);
        }
        assert_eq!(t.delay(IP, t0), 100 * MS);
        t.succeeded(IP, t0);
        assert_eq!(
            t.delay(mapped, t0),
            Duration::ZERO,
            "3 - 1 failures are free"
        );
    }
}
